"""The scikit-learn suite of the peer bench: iris and a 100-tree random forest, both fitted on DataFrames.

The same joblib file is served by mlship (compiled to ONNX beforehand, as `mlship build` does; `mlship-native`
with serve.compile: off), Flask under gunicorn, FastAPI under uvicorn, BentoML (with and without adaptive
batching) and MLServer (default and parallel_workers 0). The in-process ceiling is `predict_proba` on a prebuilt
float64 array.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import serve_bench
from inprocess import Call, median_call_ms, point_ceilings
from servers import ALL_PEERS, DEFAULT_PEERS, Answer, Model, Point, Suite, compile_like_build

POINTS = [Point("iris", 1, 32), Point("iris", 1, 1), Point("iris", 100, 8), Point("rf", 1, 32), Point("rf", 1, 1),
          Point("rf", 100, 8)]


def train_models(tmp: Path) -> dict[str, Model]:
    """The iris example (examples/iris-sklearn/train.py) and a 100-tree random forest, both fitted on
    DataFrames, so each server turns requests into a DataFrame with the training columns."""
    import joblib
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from mlship.init import init_project

    iris = serve_bench.make_project(tmp / "iris")
    x, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    features = [f"f{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=features)
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(frame, y)
    rf = tmp / "rf" / "model" / "rf.joblib"
    rf.parent.mkdir(parents=True)
    joblib.dump(forest, rf, compress=3)  # compressed like the iris example
    frame.head(5).to_csv(tmp / "rf" / "rows.csv", index=False)
    init_project(rf, directory=tmp / "rf", sample=tmp / "rf" / "rows.csv")
    for key in ("iris", "rf"):
        compile_like_build(tmp / key / "mlship.yaml")
    return {
        "iris": Model("iris", "iris: StandardScaler + LogisticRegression", iris, tmp / "iris" / "mlship.yaml",
                      list(serve_bench.FEATURES), serve_bench.iris_rows()),
        "rf": Model("rf", "rf: RandomForestClassifier(100 trees), 20 features", rf, tmp / "rf" / "mlship.yaml",
                    features, [[float(v) for v in row] for row in x]),
    }



class Reference:
    """The models loaded in this process: expected answers and the in-process ceilings."""

    def __init__(self, models: dict[str, Model]) -> None:
        import joblib

        self.models = models
        self.loaded = {key: joblib.load(m.artifact) for key, m in models.items()}

    def frame(self, key: str, batch: list[list[float]]) -> Any:
        import pandas as pd

        return pd.DataFrame(batch, columns=self.models[key].features)

    def expected(self, key: str, batch: list[list[float]]) -> Answer:
        model = self.loaded[key]
        proba = model.predict_proba(self.frame(key, batch))
        classes = [str(c) for c in model.classes_]
        return Answer([classes[i] for i in proba.argmax(axis=1)],
                      [dict(zip(classes, map(float, row), strict=True)) for row in proba])

    def call(self, key: str, rows: int) -> Call:
        """predict_proba on a prebuilt float64 array of `rows` rows (as bench/README.md says: the fastest input
        scikit-learn takes; the servers are sent rows and build their own input)."""
        import numpy as np

        array = np.asarray(self.models[key].rows[:rows], dtype=np.float64)
        return functools.partial(self.loaded[key].predict_proba, array)

    def ceilings(self, seconds: float, windows: int = 1, model: str | None = None) -> dict[str, float]:
        """Rows/s of predict_proba per point, on this core. The models were fitted on DataFrames: scikit-learn's
        warning that an array has no feature names is silenced for the measurement (same model, same numbers)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            points = [p for p in POINTS if p.model in self.models]
            return point_ceilings(points, self.call, seconds, windows, model)

    def latency_ms(self, seconds: float) -> dict[str, float]:
        """Median ms of one predict_proba call on one row, per model."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return {key: median_call_ms(self.call(key, 1), seconds) for key in self.loaded}


def prepare(tmp: Path, keys: list[str]) -> tuple[dict[str, Model], Reference]:
    models = {key: model for key, model in train_models(tmp).items() if key in keys}
    return models, Reference(models)


SUITE = Suite("sklearn", POINTS, ALL_PEERS, DEFAULT_PEERS, "in-process predict_proba (1 core)", prepare)
