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

from mlship.batch.columns import arrow, arrow_table, compiled_columns, float_matrix, native_columns
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
    kept: bool = False  # its part files are written (by the thread that scored it)


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
        self.empty = arrow_table(flatten(self.predictor.warm_up())).slice(0, 0)
        specs = project.contract.input.features.values()
        #: chunks go to the model as one array when every feature is an unbounded float and no predict snippet
        #: answers: the compiled model, or the runtime's own predict on the array (what the server calls for rows)
        self._array_ok = not project.contract.predict and all(
            f.type == "float" and f.enum is None and f.minimum is None and f.maximum is None for f in specs)
        #: the features when all are floats: a JSON Lines chunk is then parsed by Arrow into float64 columns
        self.json_floats = self.features if all(f.type == "float" for f in specs) else None
        #: the model runs without the GIL (onnxruntime; scikit-learn's predict in numpy and Cython): threads of one
        #: process score chunks in parallel
        self.releases_gil = self._array_ok and (self.predictor.compiled is not None
                                                or self.predictor.runtime.name == "sklearn")

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

    def _clean_matrix(self, table: pa.Table) -> tuple[Any, Any] | None:
        """(the chunk as one float64 array, a mask of its rows the validator must see, or None when there are
        none) when every feature is an unbounded float and no predict snippet answers; a row whose values are all
        finite float64 is what the validator would pass unchanged. None when no row is clean or a column is not
        float64 (then every row takes the row path). A CSV chunk's text and float32 columns are cast as the row path
        casts them (a text that is not a number anywhere in the chunk: None)."""
        if not self._array_ok or not self.features or not all(name in table.column_names for name in self.features):
            return None
        text = bool((table.schema.metadata or {}).get(TEXT_KEY))
        try:
            columns = [_as_float64(table.column(name), text) for name in self.features]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if any(c.type != pa.float64() for c in columns):
            return None
        matrix = float_matrix(columns)  # a null's slot holds any value: the nulls are added to the dirty rows
        finite = np.isfinite(matrix).all(axis=1)
        dirty = None if finite.all() else ~finite
        for c in columns:
            if c.null_count:
                import pyarrow.compute as pc  # type: ignore[import-untyped]

                nulls = np.asarray(pc.is_null(c))
                dirty = nulls if dirty is None else dirty | nulls
        if dirty is not None and dirty.all():
            return None
        return matrix, dirty

    def score(self, index: int, start: int, table: pa.Table, id_column: str | None) -> Scored:
        """A chunk's predictions (input order) and rejects. Its clean rows go to the model as one array; the rows
        with a missing or non-finite value (or every row, when the chunk is not all floats) take the row path."""
        clean = self._clean_matrix(table)
        if clean is None:
            predictions, keep, bad, ids = self._row_path(table, id_column)
            return Scored(index, predictions, _rejects(start, bad, id_column, ids))
        matrix, dirty = clean
        if dirty is None:  # every value valid: checked column by column, no Python rows
            none = _ids(table, [], id_column, []) if id_column else None
            return Scored(index, self._array_path(table, matrix, id_column), _rejects(start, [], id_column, none))
        clean_at, dirty_at = np.flatnonzero(~dirty), np.flatnonzero(dirty)
        fast = self._array_path(table.take(clean_at), matrix[clean_at], id_column)
        slow, keep, bad, ids = self._row_path(table.take(dirty_at), id_column)
        order = np.concatenate([clean_at, dirty_at[np.asarray(keep, dtype=np.intp)]])
        predictions = pa.concat_tables([fast, slow]).take(np.argsort(order, kind="stable"))
        return Scored(index, predictions, _rejects(start, [(int(dirty_at[i]), why) for i, why in bad], id_column, ids))

    def _array_path(self, table: pa.Table, matrix: Any, id_column: str | None) -> pa.Table:
        native = self.predictor.compiled is None
        # the server hands a runtime its rows as lists of floats; scikit-learn's makes the same float64 array of them
        rows = matrix if not native or self.predictor.runtime.name == "sklearn" else matrix.tolist()
        fast = native_columns(self.predictor, rows) if native else compiled_columns(self.predictor, matrix)
        out = [] if fast is not None or not len(matrix) else self.predictor.predict(rows)
        ids = _ids(table, [], id_column, None) if id_column else None
        return self._predictions(fast if fast is not None else flatten(out), id_column, ids)

    def _row_path(self, table: pa.Table, id_column: str | None) -> tuple[pa.Table, list[int], list[tuple[int, str]],
                                                                           Any]:
        """(predictions, positions of the kept rows, [(position, reason)], the rejected rows' ids)."""
        values, problems = records(table, self.features + ([id_column] if id_column else []), self.types)
        keep, good, bad = self.rows(values, table.num_rows, problems)
        out = self.predictor.predict(good) if good else []
        ids = _ids(table, values[id_column], id_column, keep) if id_column else None
        bad_ids = _ids(table, values[id_column], id_column, [i for i, _ in bad]) if id_column else None
        return self._predictions(flatten(out), id_column, ids), keep, bad, bad_ids

    def _predictions(self, flat: dict[str, Any], id_column: str | None, ids: Any) -> pa.Table:
        columns: dict[str, Any] = {id_column: ids} if id_column else {}
        for field in self.empty.schema:
            value = flat.get(field.name, [])
            columns[field.name] = arrow(value, field.type)
        return pa.table(columns)

def _rejects(start: int, bad: list[tuple[int, str]], id_column: str | None, ids: Any) -> pa.Table:
    """A chunk's rejects: the row number in the file, the id, the reason."""
    columns: dict[str, Any] = {"row": arrow([start + i for i, _ in bad], pa.int64())}
    if id_column is not None:
        columns[id_column] = ids
    columns["reason"] = arrow([why for _, why in bad], pa.string())
    return pa.table(columns)


def _as_float64(column: Any, text: bool) -> Any:
    """float32 widened, and a CSV chunk's text parsed by Arrow's cast (the row path's conversion: the same
    float64); anything else as it is."""
    import pyarrow.compute as pc

    if column.type == pa.float32() or (text and pa.types.is_string(column.type)):
        return pc.cast(column, pa.float64())
    return column


def _ids(table: pa.Table, ids: list[Any], name: str, positions: list[int] | None) -> Any:
    """The id column at ``positions`` (None: every row), in the input's own type."""
    if name in table.column_names and (positions is None or len(positions) == table.num_rows):  # every row
        return table.column(name)  # (positions are increasing)
    if positions is None:
        positions = list(range(table.num_rows))
    if name in table.column_names:
        return table.column(name).take(arrow(positions, pa.int64()))
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
