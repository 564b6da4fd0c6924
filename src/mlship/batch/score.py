"""Score one chunk: validate every row against the contract, predict the valid ones, and return the
predictions (input order, id column carried through) and the rejects (row number and reason).

Runs in a worker process (one Predictor per process, loaded by :func:`init_worker`) or in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from mlship.batch.columns import compiled_columns
from mlship.batch.formats import TEXT_KEY, records
from mlship.errors import ContractError
from mlship.serving.predictor import Predictor
from mlship.serving.validation import InvalidInput, Validator, make_validator

_WORKER: Scorer | None = None


@dataclass
class Scored:
    index: int  # the chunk's number
    predictions: pa.Table
    rejects: pa.Table


class Scorer:
    """A loaded Predictor (compiled path where it applies) and a validator sized for whole chunks."""

    def __init__(self, contract_path: Path, chunk_rows: int) -> None:
        from mlship.contract_io import load_project

        project = load_project(contract_path)
        if project.contract.input.tensor is not None:
            raise ContractError("mlship batch scores tables of named features; this contract's input is a tensor.",
                                fix="Send tensors to the HTTP server (`mlship serve`: concurrent requests are "
                                "batched into model calls); mlship batch and predict_fn score named features.")
        self.predictor = Predictor(project)
        self.predictor.load()
        self.features = project.contract.feature_names
        self.types = {name: f.type for name, f in project.contract.input.features.items()}
        validator = make_validator(project.contract.input, max(chunk_rows, 1))
        assert isinstance(validator, Validator)
        self.validator = validator
        #: the prediction columns (names and types), from the warm-up: a chunk whose rows are all rejected has them
        self.empty = pa.table(flatten(self.predictor.warm_up())).slice(0, 0)
        specs = project.contract.input.features.values()
        self._array_ok = self.predictor.compiled is not None and not project.contract.predict and all(
            f.type == "float" and f.enum is None and f.minimum is None and f.maximum is None for f in specs)
        #: the features when all are floats: a JSON Lines chunk is then parsed by Arrow into float64 columns
        self.json_floats = self.features if all(f.type == "float" for f in specs) else None
        #: chunks go to onnxruntime as one array, which runs without the GIL: threads of one process score in parallel
        self.releases_gil = self._array_ok

    def rows(self, values: dict[str, list[Any]], n: int,
             problems: list[str | None]) -> tuple[list[int], list[list[Any]], list[tuple[int, str]]]:
        """(positions of the valid rows, their validated rows, [(position, reason)] of the invalid ones)."""
        columns = [values[f] for f in self.features]
        raw = [list(row) for row in zip(*columns, strict=True)] if columns else [[]] * n
        if not any(problems):
            try:
                return list(range(n)), self.validator.validate(raw).rows if raw else [], []
            except InvalidInput:
                pass  # one row at a time: which rows, and why
        keep: list[int] = []
        good: list[list[Any]] = []
        bad: list[tuple[int, str]] = []
        for i, row in enumerate(raw):
            if problems[i]:
                bad.append((i, str(problems[i])))
                continue
            try:
                good.extend(self.validator.validate([row]).rows)
                keep.append(i)
            except InvalidInput as exc:
                bad.append((i, self._reason(row, exc)))
        return keep, good, bad

    def _reason(self, row: list[Any], exc: InvalidInput) -> str:
        parts = []
        for error in exc.errors:
            loc = error["loc"]
            j = loc[2] if len(loc) > 2 and isinstance(loc[2], int) else None
            name = self.features[j] if j is not None else "row"
            if j is not None and row[j] is None:
                parts.append(f"{name}: missing (expected {error['expected']})")
            else:
                parts.append(f"{name}: {error['msg']} (expected {error['expected']}, got {error['got']})")
        return "; ".join(parts)

    def _clean_matrix(self, table: pa.Table) -> Any:
        """The chunk as one float64 array when the compiled model serves, every feature is an unbounded float and
        every value of the chunk is a finite float64 (what the validator would pass unchanged); else None. A CSV
        chunk's text and float32 columns are cast as the row path casts them (a text that is not a number: None)."""
        if not self._array_ok or not all(name in table.column_names for name in self.features):
            return None
        import pyarrow.compute as pc  # type: ignore[import-untyped]

        text = bool((table.schema.metadata or {}).get(TEXT_KEY))
        try:
            columns = [_as_float64(table.column(name), text) for name in self.features]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if any(c.type != pa.float64() or c.null_count or not pc.all(pc.is_finite(c)).as_py() for c in columns):
            return None
        return np.column_stack([c.to_numpy() for c in columns]) if columns else None

    def score(self, index: int, start: int, table: pa.Table, id_column: str | None) -> Scored:
        n = table.num_rows
        matrix = self._clean_matrix(table)
        if matrix is not None:  # every value valid: checked column by column, no Python rows
            values: dict[str, list[Any]] = {id_column: []} if id_column else {}
            keep, bad = list(range(n)), list[tuple[int, str]]()
            fast = compiled_columns(self.predictor, matrix)
            out = [] if fast is not None or not n else self.predictor.predict(matrix)
        else:
            fast = None
            values, problems = records(table, self.features + ([id_column] if id_column else []), self.types)
            keep, good, bad = self.rows(values, n, problems)
            out = self.predictor.predict(good) if good else []
        columns: dict[str, Any] = {}
        if id_column:
            columns[id_column] = _ids(table, values[id_column], id_column, keep)
        flat = fast if fast is not None else flatten(out)
        for field in self.empty.schema:
            value = flat.get(field.name, [])
            columns[field.name] = value if isinstance(value, pa.Array) and value.type == field.type else pa.array(
                value, field.type)
        predictions = pa.table(columns)
        reject_cols: dict[str, Any] = {"row": pa.array([start + i for i, _ in bad], pa.int64())}
        if id_column:
            reject_cols[id_column] = _ids(table, values[id_column], id_column, [i for i, _ in bad])
        reject_cols["reason"] = pa.array([why for _, why in bad], pa.string())
        return Scored(index, predictions, pa.table(reject_cols))


def _as_float64(column: Any, text: bool) -> Any:
    """float32 widened, and a CSV chunk's text parsed by Arrow's cast (the row path's conversion: the same
    float64); anything else as it is."""
    import pyarrow.compute as pc

    if column.type == pa.float32() or (text and pa.types.is_string(column.type)):
        return pc.cast(column, pa.float64())
    return column


def _ids(table: pa.Table, ids: list[Any], name: str, positions: list[int]) -> Any:
    """The id column at ``positions``, in the input's own type."""
    if name in table.column_names and len(positions) == table.num_rows:  # every row (positions are increasing)
        return table.column(name)
    if name in table.column_names:
        return table.column(name).take(pa.array(positions, pa.int64()))
    if not ids:  # a JSON Lines chunk parsed by Arrow whose lines have no id: null, as the row path reads them
        return pa.nulls(len(positions))
    return [ids[i] for i in positions]


def flatten(predictions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """JSON-ready predictions -> columns: ``label``, ``value``, and ``probabilities_<class>`` for nested dicts."""
    columns: dict[str, list[Any]] = {}
    if not predictions:
        return columns
    for key, first in predictions[0].items():
        if isinstance(first, dict):
            for sub in first:
                columns[f"{key}_{sub}"] = [p[key][sub] for p in predictions]
        else:
            columns[key] = [p.get(key) for p in predictions]
    return columns


def init_worker(contract_path: Path, chunk_rows: int) -> None:
    """A worker process's initializer: load the model once."""
    global _WORKER
    _WORKER = Scorer(contract_path, chunk_rows)


def worker_ready() -> bool:
    """A no-op the pool submits once per worker: done when the workers have loaded their model."""
    return _WORKER is not None


def score_in_worker(index: int, start: int, table: pa.Table, id_column: str | None) -> Scored:
    assert _WORKER is not None, "init_worker runs first"
    return _WORKER.score(index, start, table, id_column)
