"""The numpy input path of the sklearn runtime: iris takes it (checked against pandas), it follows the model's
column order, and models that select columns by name, predict differently on arrays or were fitted without
names are told apart.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from conftest import (
    make_iris_project,
    running,
)
from mlship.contract_io import load_project
from mlship.runtimes import sklearn as sklearn_runtime
from mlship.runtimes.sklearn import SklearnRuntime
from mlship.serving.predictor import Predictor

# -- the numpy input path of the sklearn runtime ---------------------------------------------------------
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3], [6.0, 2.2, 4.0, 1.0]]


NATIVE = "serve:\n  compile: 'off'\n"  # the sklearn model itself, not its compiled form (tests/test_compiled.py)


def test_iris_takes_the_numpy_path_checked_against_pandas(
        tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor(load_project(make_iris_project(tmp_path, iris_model, NATIVE)))
    predictor.load()
    assert predictor.input_path == "numpy (checked against pandas)"
    frame = pd.DataFrame(IRIS_ROWS, columns=predictor.features)
    expected = predictor.model.predict_proba(frame)

    def no_frames(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a DataFrame was built on the numpy path")

    monkeypatch.setattr(sklearn_runtime, "_frame", no_frames)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the feature-names warning is filtered, no other warning is raised
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        out = predictor.runtime.predict(predictor.model, IRIS_ROWS, predictor.features)
    np.testing.assert_allclose(out.probabilities, expected, rtol=0, atol=1e-12)
    assert any(f[1] is not None and f[1].pattern.startswith("X does not have valid feature names")
               for f in warnings.filters)


def test_numpy_path_follows_the_models_column_order(tmp_path: Path, iris_model: Path) -> None:
    project = make_iris_project(tmp_path, iris_model, NATIVE)
    contract = project / "mlship.yaml"
    text = contract.read_text()
    reordered = ("    petal_width: float\n    sepal_length: float\n    sepal_width: float\n"
                 "    petal_length: float\n")
    start = text.index("    sepal_length: float\n")
    end = text.index("    petal_width: float\n") + len("    petal_width: float\n")
    contract.write_text(text[:start] + reordered + text[end:])
    predictor = Predictor(load_project(project))
    predictor.load()
    assert predictor.features == ["petal_width", "sepal_length", "sepal_width", "petal_length"]
    assert predictor.input_path == "numpy (checked against pandas)"
    rows = [[r[3], r[0], r[1], r[2]] for r in IRIS_ROWS]  # in the contract's order
    got = predictor.runtime.predict(predictor.model, rows, predictor.features).probabilities
    expected = predictor.model.predict_proba(pd.DataFrame(IRIS_ROWS, columns=predictor.model.feature_names_in_))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def frame_data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    y = np.where(x["a"] + x["b"] > 0, "yes", "no")
    return x, y


def test_a_model_that_selects_columns_by_name_keeps_dataframes(tmp_path: Path) -> None:
    from mlship.init import init_project

    x, y = frame_data()
    model = make_pipeline(ColumnTransformer([("scaled", StandardScaler(), ["b", "a"])]), LogisticRegression())
    model.fit(x, y)
    artifact = tmp_path / "model.joblib"
    joblib.dump(model, artifact)
    init_project(artifact, directory=tmp_path)
    predictor = Predictor(load_project(tmp_path))
    predictor.load()
    assert predictor.input_path == "dataframe"
    rows = x.to_numpy()[:5].tolist()
    got = predictor.predict(rows)
    expected = model.predict_proba(x.iloc[:5])
    assert [g["probabilities"]["yes"] for g in got] == pytest.approx(expected[:, 1].tolist(), abs=1e-12)


def _double_arrays(x: Any) -> Any:
    """Different on arrays than on DataFrames: the numpy path must be refused."""
    return x * 2 if isinstance(x, np.ndarray) else x


def test_a_model_that_predicts_differently_on_arrays_keeps_dataframes() -> None:
    x, y = frame_data()
    model = make_pipeline(FunctionTransformer(_double_arrays), LogisticRegression()).fit(x, y)
    runtime = SklearnRuntime()
    assert runtime.prepare(model, x.to_numpy()[:20].tolist(), ["a", "b", "c"]) == "dataframe"
    out = runtime.predict(model, x.to_numpy()[:3].tolist(), ["a", "b", "c"])
    np.testing.assert_allclose(out.probabilities, model.predict_proba(x.iloc[:3]), rtol=0, atol=1e-12)


def test_a_model_fitted_without_names_takes_arrays() -> None:
    x, y = frame_data()
    model = LogisticRegression().fit(x.to_numpy(), y)
    assert SklearnRuntime().prepare(model, x.to_numpy()[:5].tolist(), ["x0", "x1", "x2"]) == "numpy"


def test_metadata_reports_the_input_path(tmp_path: Path, iris_model: Path) -> None:
    project = make_iris_project(tmp_path, iris_model, NATIVE)
    with running(project) as server:
        meta = httpx.get(server.url + "/metadata").json()
        assert meta["model_input"] == "numpy (checked against pandas)"
        assert meta["compiled"] is False
        assert meta["batching"] is True
        assert "model input: numpy (checked against pandas); batching: on" in server.output()
