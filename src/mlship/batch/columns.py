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
    if model is None or predictor.project.contract.task != "classification" or not len(matrix):
        return None
    out = model.predict(matrix)
    if out.probabilities is None or out.classes is None:
        return None
    proba = np.asarray(out.probabilities, dtype=np.float64)
    if proba.shape != (len(matrix), len(out.classes)) or not np.isfinite(proba).all():
        return None
    text = {c: predictor._label_str(c) for c in out.classes}  # the strings Predictor.predict answers
    columns: dict[str, Any] = {"label": _labels(out.values, out.classes, text)}
    if columns["label"] is None:
        columns["label"] = [text[v] if v in text else predictor._label_str(v) for v in out.values]
    for j, name in enumerate(text[c] for c in out.classes):
        columns[f"probabilities_{name}"] = proba[:, j]
    return columns


def _labels(values: list[Any], classes: list[Any], text: dict[Any, str]) -> Any:
    """The label strings of ``values`` (each one of ``classes``) as one Arrow array, built in C: the values'
    positions among the classes, then a take from the classes' strings. None when a value is not a class."""
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    try:
        positions = pc.index_in(pa.array(values), value_set=pa.array(classes))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if positions.null_count:
        return None
    return pa.array([text[c] for c in classes], pa.string()).take(positions)
