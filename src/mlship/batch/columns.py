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
    columns: dict[str, Any] = {"label": pa.array(names, pa.string()).take(pa.array(best))}
    proba = raw.astype(np.float64, copy=False)
    for j, name in enumerate(names):
        columns[f"probabilities_{name}"] = proba[:, j]
    return columns
