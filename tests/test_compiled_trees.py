"""Trees, forests and gradient boosting compiled with a float32 input: the branches scikit-learn takes (it casts
their input to float32), for every row, not only for the rows the compile proof checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlship.runtimes.sklearn_onnx import compares_float32
from test_compiled import loaded, project_for


def rows(x: Any, n: int) -> Any:
    """``n`` random rows within the data's range widened by half its span each side (as batch inputs are)."""
    low, high = x.min(axis=0), x.max(axis=0)
    span = high - low
    return np.random.default_rng(0).uniform(low - span / 2, high + span / 2, (n, x.shape[1]))


def at_thresholds(model: Any, x: Any) -> Any:
    """A random row per tree whose root feature is a float64 just above the root's threshold that float32 rounds to
    at most the threshold: scikit-learn (float32) goes left there, a float64 comparison right."""
    trees = np.asarray(model.estimators_).reshape(-1)
    out = rows(x, len(trees))
    for row, tree in zip(out, trees, strict=True):
        feature, threshold = tree.tree_.feature[0], tree.tree_.threshold[0]
        value = np.nextafter(threshold, np.inf)
        if float(np.float32(value)) <= threshold:
            row[feature] = value
    return out


@pytest.mark.parametrize("kind", ["forest", "boosting"])
def test_tree_models_agree_on_every_row(tmp_path: Path, kind: str) -> None:
    wine = load_wine()
    model: Any = (RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0) if kind == "forest" else
                  GradientBoostingClassifier(n_estimators=30, random_state=0)).fit(wine.data, wine.target)
    predictor = loaded(project_for(tmp_path, model, [f"x{i}" for i in range(13)]))
    assert predictor.compiled is not None, predictor.compile_note
    x = np.concatenate([rows(wine.data, 20_000), at_thresholds(model, wine.data)])
    got, want = predictor.compiled.run(x), model.predict_proba(x)
    # with a float64 input, the rows at a threshold were up to 0.01 (forest) away
    assert np.abs(got - want).max() < 1e-5
    assert (predictor.compiled.best(got) == want.argmax(axis=1)).all()
    assert predictor.compiled.dtype is np.float32


def test_which_models_are_converted_with_float32_first() -> None:
    wine = load_wine()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(wine.data, wine.target)
    assert compares_float32(forest)
    assert not compares_float32(LogisticRegression())
    assert not compares_float32(make_pipeline(StandardScaler(), forest))  # the scaler computes in float64
