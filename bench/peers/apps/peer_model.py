"""The model half of the Flask, FastAPI and BentoML peer servers: what a minimal hand-written server does.

Loads the joblib file named by $PEER_MODEL once, builds a DataFrame with the training columns from a
list of records, calls `predict_proba` once and returns a label plus the class probabilities per row,
the same work and the same answer shape as mlship's `{"label": ..., "probabilities": {...}}`.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import pandas as pd


class PeerModel:
    def __init__(self, path: str | None = None) -> None:
        self.model = joblib.load(path or os.environ["PEER_MODEL"])
        self.features = [str(name) for name in self.model.feature_names_in_]  # fitted on a DataFrame
        self.classes = [str(c) for c in self.model.classes_]

    def predict(self, records: list[dict[str, float]]) -> list[dict[str, Any]]:
        frame = pd.DataFrame(records, columns=self.features)
        proba = self.model.predict_proba(frame)
        classes = self.classes
        return [
            {"label": classes[best], "probabilities": dict(zip(classes, row, strict=True))}
            for best, row in zip(proba.argmax(axis=1).tolist(), proba.tolist(), strict=True)
        ]
