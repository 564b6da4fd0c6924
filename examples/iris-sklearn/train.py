"""Train the iris example from scikit-learn's bundled data (no download) into model/iris.joblib.

    python examples/iris-sklearn/train.py [--out model/iris.joblib]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def train(out: Path) -> Path:
    iris = load_iris()
    x = pd.DataFrame(iris.data, columns=FEATURES)
    y = iris.target_names[iris.target]  # string labels, so classes_ are setosa/versicolor/virginica
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x, y)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out, compress=3)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / "model" / "iris.joblib")
    print(f"wrote {train(parser.parse_args().out)}")
