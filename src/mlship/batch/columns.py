"""Predictions as columns, without a dict per row: for a compiled classifier on a clean float chunk.

``Predictor.predict`` builds one JSON-ready dict per row (what the server answers); a batch of millions of rows
only needs the columns. The values are the same: the compiled model's output, labels through the Predictor's own
label strings, probabilities as float64; anything else (regression, no probabilities, a non-finite probability,
whose error the Predictor words) returns None and takes ``Predictor.predict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from mlship.serving.predictor import Predictor


def compiled_columns(predictor: Predictor, matrix: Any) -> dict[str, Any] | None:
    """``label`` and ``probabilities_<label>`` columns for the rows of ``matrix`` (features in contract order)."""
    model = predictor.compiled
    if (model is None or predictor.project.contract.task != "classification" or not len(matrix)
            or model.classes is None or not model.record.probabilities or model.record.tensor_shape is not None):
        return None
    raw = np.asarray(model.run(matrix))
    if raw.shape != (len(matrix), len(model.classes)) or not np.isfinite(raw).all():
        return None
    best = model.best(raw)  # on the model's own output, as CompiledModel.predict picks the label
    names = [predictor._label_str(c) for c in model.classes]  # the strings Predictor.predict answers
    columns: dict[str, Any] = {"label": arrow(names, pa.string()).take(arrow(np.asarray(best, np.int64), pa.int64()))}
    proba = raw.astype(np.float64, copy=False)
    for j, name in enumerate(names):
        columns[f"probabilities_{name}"] = proba[:, j]
    return columns



def native_columns(predictor: Predictor, rows: Any) -> dict[str, Any] | None:
    """The same columns from the model as it is (no compiled model): the runtime's own predict on the chunk's
    rows, what the server calls for a batch of rows, its output turned into columns as ``Predictor.predict`` turns
    it into dicts (labels through the Predictor's label strings, probabilities as float64; a regression's values as
    float64). None (``Predictor.predict`` then answers, or words the error) when the model fails, or its output is
    not a finite probability per class or a finite float value per row."""
    task = predictor.project.contract.task
    if predictor.compiled is not None or predictor.model is None or not len(rows):
        return None
    try:
        out = predictor.runtime.predict(predictor.model, rows, predictor.features)
    except Exception:  # Predictor.predict calls it again and says why
        return None
    n = len(rows)
    if len(out.values) != n:
        return None
    if task == "regression":
        values = np.asarray(out.values)
        if values.dtype != np.float64 or values.shape != (n,) or not np.isfinite(values).all():
            return None
        return {"value": values}
    proba = names = None
    if out.probabilities is not None and out.classes is not None:
        proba = np.asarray(out.probabilities, dtype=np.float64)
        names = [predictor._label_str(c) for c in out.classes]
        if proba.shape != (n, len(names)) or not np.isfinite(proba).all():
            return None
    label = _labels_by_argmax(predictor, out.values, out.classes, proba) if proba is not None else None
    if label is None:
        try:
            kinds, codes = np.unique(np.asarray(out.values), return_inverse=True)
        except (TypeError, ValueError):  # values numpy cannot sort (mixed types): one at a time
            return None
        label = arrow([predictor._label_str(k) for k in kinds], pa.string()).take(
            arrow(codes.reshape(-1).astype(np.int64), pa.int64()))
    columns: dict[str, Any] = {"label": label}
    if proba is None or names is None:
        return columns
    for j, name in enumerate(names):
        columns[f"probabilities_{name}"] = np.ascontiguousarray(proba[:, j])
    return columns


def _labels_by_argmax(predictor: Predictor, values: Any, classes: Any, proba: Any) -> pa.Array | None:
    """The label column when every label is its row's most probable class (scikit-learn's classifiers): a take of
    the class names by the argmax, checked equal to the model's labels (one list comparison), without sorting a
    million strings (np.unique: 0.1-0.5 s per 1 M rows); None when they differ."""
    best = proba.argmax(axis=1)
    if np.asarray(list(classes), dtype=object)[best].tolist() != list(values):
        return None
    names = arrow([predictor._label_str(c) for c in classes], pa.string())
    return names.take(arrow(best.astype(np.int64), pa.int64()))


_NUMBERS = {pa.int64(): (np.int64, int), pa.float64(): (np.float64, float)}


def arrow(values: Any, kind: pa.DataType) -> pa.Array:
    """``pa.array(values, kind)`` without pyarrow's import of pandas (``pa.array`` and ``pa.scalar`` import it on
    their first call where it is installed: 0.2 s of a batch run that never uses it): 64-bit numbers (a numpy array
    or a list of exact ints / floats) and lists of str as Arrow buffers, an empty list as an empty array; anything
    else (None values, other types) through ``pa.array``."""
    if isinstance(values, pa.Array) and values.type == kind:
        return values
    n = len(values)
    if kind in _NUMBERS:
        dtype, py = _NUMBERS[kind]
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype == dtype:
            return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(np.ascontiguousarray(values))])
        if isinstance(values, list) and set(map(type, values)) <= {py}:
            return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(np.asarray(values, dtype))])
    if kind == pa.string() and isinstance(values, list) and set(map(type, values)) <= {str}:
        data = [v.encode() for v in values]
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(np.fromiter(map(len, data), np.int64, n), out=offsets[1:], dtype=np.int32)
        if n == 0 or offsets[-1] == sum(map(len, data)):  # no int32 overflow (2 GiB of text in one chunk)
            return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
    return pa.array(values, kind)


_INFERRED = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def arrow_table(columns: dict[str, list[Any]]) -> pa.Table:
    """``pa.table(columns)`` for Python lists, typed as ``pa.array`` types them (bool, int64, float64, string, by the
    values' one Python type) without its pandas import; other lists (None values, mixed types) through
    ``pa.array``."""
    arrays = []
    for values in columns.values():
        kinds = set(map(type, values))
        kind = _INFERRED.get(kinds.pop()) if len(kinds) == 1 else None
        arrays.append(arrow(values, kind) if kind is not None else pa.array(values))
    return pa.Table.from_arrays(arrays, names=list(columns))


def float_matrix(columns: list[Any]) -> Any:
    """Float64 Arrow columns (chunked or not) side by side as one ``(rows, columns)`` numpy array, read from their
    value buffers (``to_numpy`` imports pandas on its first call); a null's slot holds whatever its buffer holds."""
    def values(column: Any) -> Any:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        parts = [np.full(len(c), np.nan) if c.buffers()[1] is None else
                 np.frombuffer(c.buffers()[1], np.float64, len(c), c.offset * 8) for c in chunks]
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0)

    return np.column_stack([values(c) for c in columns])
