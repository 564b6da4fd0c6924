"""The contract as a batch function for cluster engines: Spark's ``pyspark.ml.functions.predict_batch_udf`` and
Ray Data's ``map_batches``. The model loads lazily, once per process (the function pickles as its contract path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlship.errors import PredictionError


class BatchPredictFn:
    """``fn(batch)``: a pandas DataFrame -> a DataFrame of predictions; a dict of numpy columns (Ray's numpy
    format) -> a dict of numpy columns; one 2-D array (features in the contract's order) or one 1-D array per
    feature (Spark's ``predict_batch_udf`` with several input columns) -> an array of labels (or values)."""

    def __init__(self, contract_path: str | Path) -> None:
        self.contract_path = Path(contract_path)
        self._scorer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"contract_path": self.contract_path, "_scorer": None}

    def _load(self) -> Any:
        if self._scorer is None:
            from mlship.batch.score import Scorer

            self._scorer = Scorer(self.contract_path, 1 << 20)
        return self._scorer

    def predictions(self, columns: dict[str, Any], n: int) -> dict[str, list[Any]]:
        """Predictions of ``n`` rows given as columns (feature name -> sequence), as columns."""
        from mlship.batch.score import flatten

        scorer = self._load()
        missing = [f for f in scorer.features if f not in columns]
        if missing:
            raise PredictionError(f"The batch has no column {missing[0]!r} (the contract's features: "
                                  f"{', '.join(scorer.features)}).", fix="Select the contract's feature columns.")
        values = {f: np.asarray(columns[f]).tolist() for f in scorer.features}
        _, rows, bad = scorer.rows(values, n, [None] * n)
        if bad:
            raise PredictionError(f"Row {bad[0][0]} of the batch does not fit the contract: {bad[0][1]}"
                                  + (f" ({len(bad) - 1} more rows do not either)." if len(bad) > 1 else "."),
                                  fix="Filter or fix those rows before scoring (`mlship batch` writes such rows "
                                  "to a rejects file instead).")
        return flatten(scorer.predictor.predict(rows) if rows else [])

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) == 1 and hasattr(inputs[0], "columns") and hasattr(inputs[0], "to_dict"):
            import pandas as pd

            frame = inputs[0]
            return pd.DataFrame(self.predictions({c: frame[c].to_numpy() for c in frame.columns}, len(frame)),
                                index=frame.index)
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            batch = inputs[0]
            n = len(next(iter(batch.values()))) if batch else 0
            return {k: np.asarray(v) for k, v in self.predictions(batch, n).items()}
        features = self._load().features
        if len(inputs) == 1 and np.ndim(inputs[0]) == 2:
            matrix = np.asarray(inputs[0])
            columns = {f: matrix[:, j] for j, f in enumerate(features)} if matrix.shape[1] == len(features) else {}
        elif len(inputs) == len(features):
            columns = dict(zip(features, inputs, strict=True))
        else:
            columns = {}
        if not columns:
            raise PredictionError(f"predict_fn got {len(inputs)} input(s) of shapes "
                                  f"{[np.shape(i) for i in inputs]}; the contract has {len(features)} features.",
                                  fix="Pass one 2-D array with the features in the contract's order, one array per "
                                  "feature, a pandas DataFrame or a dict of columns.")
        n = len(next(iter(columns.values())))
        out = self.predictions(columns, n)
        key = "label" if "label" in out else "value" if "value" in out else next(iter(out), None)
        return np.asarray(out[key] if key is not None else [])


def predict_fn(contract_path: str | Path = "mlship.yaml") -> BatchPredictFn:
    """The contract's model as a batch function (see :class:`BatchPredictFn`); every row is validated against the
    contract first. Spark: ``predict_batch_udf(lambda: predict_fn(path), return_type=StringType(), batch_size=4096)``;
    Ray: ``ds.map_batches(predict_fn(path), batch_format="pandas")``."""
    return BatchPredictFn(contract_path)
