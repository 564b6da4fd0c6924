"""Predictor with scikit-learn models: labels, counts, regression, DataFrame models, model errors, warm-up, version
skew. User code: test_predictor_usercode.py; the input Validator: test_validation.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
import sklearn.base
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeClassifier

import predictor_helpers
from mlship.errors import ArtifactError, PredictionError
from mlship.serving.predictor import Predictor
from predictor_helpers import make_project, rows, user_project

clean_user_modules = predictor_helpers.clean_user_modules


IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


# -- scikit-learn models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int_iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """LogisticRegression on iris as a numpy array with integer classes 0, 1, 2."""
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    path = tmp_path_factory.mktemp("int-iris") / "model.joblib"
    joblib.dump(model, path)
    return path, model


def int_iris_predictor(int_iris: tuple[Path, Any], labels: list[str] | None) -> Predictor:
    path, _ = int_iris
    extra: dict[str, Any] = {"output": {"labels": labels}} if labels is not None else {}
    project = make_project(path.parent, {f"x{i}": "float" for i in range(4)}, **extra)
    predictor = Predictor(project)
    predictor.load()
    return predictor


def iris_rows() -> list[list[float]]:
    iris = load_iris()
    return iris.data[[0, 60, 120]].tolist()  # one of each class


def test_int_classes_are_mapped_to_labels(int_iris: tuple[Path, Any]) -> None:
    predictor = int_iris_predictor(int_iris, ["a", "b", "c"])
    out = predictor.predict(iris_rows())
    assert [o["label"] for o in out] == ["a", "b", "c"]
    for o in out:
        assert list(o["probabilities"]) == ["a", "b", "c"]
        assert math.isclose(sum(o["probabilities"].values()), 1.0)
        assert o["label"] == max(o["probabilities"], key=o["probabilities"].get)
    expected = int_iris[1].predict_proba(np.asarray(iris_rows()))
    np.testing.assert_allclose([list(o["probabilities"].values()) for o in out], expected)


@pytest.mark.parametrize("labels", [["0", "1", "2"], None])
def test_int_classes_without_mapping_are_string_labels(int_iris: tuple[Path, Any],
                                                       labels: list[str] | None) -> None:
    """The label is a string (as OpenAPI and output.labels say) and matches a probabilities key."""
    out = int_iris_predictor(int_iris, labels).predict(iris_rows())
    assert [o["label"] for o in out] == ["0", "1", "2"]
    for o in out:
        assert o["label"] in o["probabilities"]


def test_label_count_mismatch(int_iris: tuple[Path, Any]) -> None:
    with pytest.raises(ArtifactError) as info:
        int_iris_predictor(int_iris, ["a", "b"])
    assert info.value.message == "output.labels has 2 labels but the model has 3 classes (0, 1, 2)."


def test_feature_count_mismatch(int_iris: tuple[Path, Any]) -> None:
    path, _ = int_iris
    predictor = Predictor(make_project(path.parent, {"x0": "float", "x1": "float"}))
    with pytest.raises(ArtifactError, match=r"the model takes 4 features but input\.features lists 2"):
        predictor.load()


def test_regression_model(tmp_path: Path) -> None:
    data = load_diabetes()
    model = LinearRegression().fit(data.data, data.target)
    joblib.dump(model, tmp_path / "model.joblib")
    names = [f"f{i}" for i in range(data.data.shape[1])]
    predictor = Predictor(make_project(tmp_path, dict.fromkeys(names, "float"), task="regression"))
    predictor.load()
    out = predictor.predict(data.data[:3].tolist())
    assert [set(o) for o in out] == [{"value"}] * 3
    assert all(type(o["value"]) is float for o in out)
    assert [o["value"] for o in out] == pytest.approx(model.predict(data.data[:3]).tolist())


def test_classifier_without_probabilities(tmp_path: Path) -> None:
    iris = load_iris()
    model = RidgeClassifier().fit(iris.data, iris.target_names[iris.target])
    joblib.dump(model, tmp_path / "model.joblib")
    predictor = Predictor(make_project(tmp_path, {f"x{i}": "float" for i in range(4)}))
    predictor.load()
    out = predictor.predict(iris_rows())
    assert out == [{"label": str(v)} for v in model.predict(np.asarray(iris_rows()))]
    assert out[0] == {"label": "setosa"}


def test_dataframe_model_gets_columns_in_its_own_order(tmp_path: Path, iris_model: Path) -> None:
    reordered = list(reversed(IRIS_FEATURES))
    project = make_project(iris_model.parent.parent, dict.fromkeys(reordered, "float"),
                           artifact="model/iris.joblib")
    predictor = Predictor(project)
    predictor.load()
    frame = pd.DataFrame(load_iris().data[[0, 60, 120]], columns=IRIS_FEATURES)
    got = predictor.predict(frame[reordered].values.tolist())
    assert [g["label"] for g in got] == ["setosa", "versicolor", "virginica"]
    expected = joblib.load(iris_model).predict_proba(frame)
    np.testing.assert_allclose([list(g["probabilities"].values()) for g in got], expected)


def test_model_raising_is_a_prediction_error(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        class Boom:
            n_features_in_ = 2

            def predict(self, x):
                raise ValueError("boom")

        def load(path):
            return Boom()
    """, predict=None)
    with pytest.raises(PredictionError) as info:
        predictor.predict(rows(1.0))
    assert info.value.message == "The model raised ValueError: boom"
    assert info.value.why is not None and "raise ValueError" in info.value.why


def test_model_returning_wrong_count(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        class Short:
            def predict(self, x):
                return [1.0]

        def load(path):
            return Short()
    """, predict=None)
    with pytest.raises(PredictionError, match=r"^The model returned 1 predictions for 2 rows\.$"):
        predictor.predict(rows(1.0, 2.0))


def test_non_finite_regression_value_becomes_null(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        class Nan:
            def predict(self, x):
                return [float("nan"), 1.5]

        def load(path):
            return Nan()
    """, predict=None)
    assert predictor.predict(rows(1.0, 2.0)) == [{"value": None}, {"value": 1.5}]


def test_warm_up_uses_first_example_or_schema(tmp_path: Path) -> None:
    code = """
        def load(path):
            return None

        def predict(model, instances):
            return [i["x"] for i in instances]
    """
    with_example = user_project(tmp_path, code, examples=[{"input": {"x": 4.5, "n": 1}}])
    assert with_example.warm_up() == [{"value": 4.5}]
    (tmp_path / "b").mkdir()
    schema_only = user_project(tmp_path / "b", code)
    assert schema_only.warm_up() == [{"value": 0.0}]


def test_sklearn_version_mismatch_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    with monkeypatch.context() as m:
        m.setattr(sklearn.base, "__version__", "1.0.0")  # what __getstate__ records in the pickle
        joblib.dump(model, tmp_path / "model.joblib")
    predictor = Predictor(make_project(tmp_path, {f"x{i}": "float" for i in range(4)}))
    predictor.load()
    assert len(predictor.warnings) == 1
    assert "LogisticRegression from version 1.0.0" in predictor.warnings[0]
    assert sklearn.__version__ in predictor.warnings[0]
    info = predictor.runtime.inspect(predictor.model, tmp_path / "model.joblib")
    assert info.framework_version == "1.0.0"
    assert info.requirements == ["scikit-learn==1.0.0"]
    assert predictor.predict(iris_rows())[0]["label"] == "0"
