"""A batch task's rejects table: the file, and the row (Parquet) or line offset (CSV / JSON Lines) of each."""

from __future__ import annotations

from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

REJECTS_SCHEMA = pa.schema([("file", pa.string()), ("row", pa.int64()), ("offset", pa.int64()),
                            ("reason", pa.string())])


def rejects_table(rejects: pa.Table, file: str, offsets: list[int] | None) -> pa.Table:
    """A chunk's rejects (``row``, the id column, ``reason``) as the task's: the file, and the row number in it
    (Parquet) or the byte offset of its line (CSV / JSON Lines: the row number would need the file read from the
    start)."""
    n = rejects.num_rows
    rows = rejects.column("row")
    columns: dict[str, Any] = {"file": pa.array([file] * n, pa.string())}
    if offsets is None:
        columns["row"], columns["offset"] = rows, pa.nulls(n, pa.int64())
    else:
        columns["row"] = pa.nulls(n, pa.int64())
        columns["offset"] = pa.array([offsets[i] for i in rows.to_pylist()], pa.int64())
    for name in rejects.column_names:
        if name not in ("row", "reason"):
            columns[name] = rejects.column(name)
    columns["reason"] = rejects.column("reason")
    return pa.table(columns)
