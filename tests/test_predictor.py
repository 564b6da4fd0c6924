"""Predictor (model + user code -> JSON-ready predictions) and the input Validator."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
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

from mlship.contract import Contract, Feature
from mlship.contract_io import Project
from mlship.errors import ArtifactError, PredictionError, UserCodeError
from mlship.serving.predictor import Predictor
from mlship.serving.validation import MAX_ERRORS, InvalidInput, Validator, sample_instance

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(autouse=True)
def _clean_user_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """User code is imported as mlship_user_<stem> and its folder put on sys.path: undo both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m.startswith("mlship_user_")]:
        del sys.modules[name]


def make_project(root: Path, features: dict[str, Any], task: str = "classification", **extra: Any) -> Project:
    data = {"name": "test", "runtime": "sklearn", "artifact": extra.pop("artifact", "model.joblib"),
            "task": task, "input": {"features": features}, **extra}
    return Project(Contract.model_validate(data), root, root / "mlship.yaml")


def user_project(root: Path, code: str, task: str = "regression", **extra: Any) -> Predictor:
    """A project whose model comes from predict.py:load and is called through predict.py:predict."""
    (root / "predict.py").write_text(textwrap.dedent(code))
    extra.setdefault("load", "predict.py:load")
    extra.setdefault("predict", "predict.py:predict")
    predictor = Predictor(make_project(root, {"x": "float", "n": "int"}, task, **extra))
    predictor.load()
    return predictor


def rows(*xs: float) -> list[list[Any]]:
    return [[x, 1] for x in xs]


# -- user code (predict.py) ------------------------------------------------------------------------------------


def test_user_predict_scalars_become_values(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        def load(path):
            return 2.0

        def predict(model, instances):
            return [model * i["x"] + i["n"] for i in instances]
    """)
    assert predictor.predict(rows(1.0, 2.5)) == [{"value": 3.0}, {"value": 6.0}]


def test_user_predict_scalars_become_labels_for_classification(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        def load(path):
            return None

        def predict(model, instances):
            return ["spam" if i["x"] > 0.5 else "ham" for i in instances]
    """, task="classification")
    assert predictor.predict(rows(0.9, 0.1)) == [{"label": "spam"}, {"label": "ham"}]


def test_user_predict_gets_instances_in_feature_order(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        def load(path):
            return None

        def predict(model, instances):
            return [{"keys": list(i), "n_type": type(i["n"]).__name__} for i in instances]
    """)
    batch = predictor.validator.validate({"n": 3.0, "x": 1})
    assert predictor.predict(batch.rows) == [{"keys": ["x", "n"], "n_type": "int"}]


def test_user_predict_dicts_are_made_json_ready(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        import numpy as np

        def load(path):
            return None

        def predict(model, instances):
            return [{"label": np.str_("a"), "score": np.float32(0.5), "ids": np.array([1, 2]),
                     "bad": float("nan"), "nested": {3: (np.int64(4), float("inf"))}} for i in instances]
    """, task="classification")
    [out] = predictor.predict(rows(1.0))
    assert out == {"label": "a", "score": 0.5, "ids": [1, 2], "bad": None, "nested": {"3": [4, None]}}
    assert type(out["score"]) is float
    assert type(out["ids"][0]) is int


def test_user_predict_numpy_array_result(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        import numpy as np

        def load(path):
            return None

        def predict(model, instances):
            return np.array([i["x"] * 10 for i in instances])
    """)
    out = predictor.predict(rows(1.0, 2.0))
    assert out == [{"value": 10.0}, {"value": 20.0}]
    assert all(type(o["value"]) is float for o in out)


def test_user_predict_wrong_length(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        def load(path):
            return None

        def predict(model, instances):
            return [1.0]
    """)
    with pytest.raises(UserCodeError) as info:
        predictor.predict(rows(1.0, 2.0, 3.0))
    assert info.value.message == "predict.py:predict returned 1 outputs for 3 instances."
    assert info.value.fix == "Return one output (a value or a dict) per instance, in order."


def test_user_predict_raising(tmp_path: Path) -> None:
    predictor = user_project(tmp_path, """
        def load(path):
            return 0

        def predict(model, instances):
            return [i["x"] / model for i in instances]
    """)
    with pytest.raises(UserCodeError) as info:
        predictor.predict(rows(1.0))
    assert info.value.message == "predict.py:predict raised ZeroDivisionError: float division by zero"
    assert info.value.why is not None
    assert "predict.py" in info.value.why and "return [i[\"x\"] / model" in info.value.why


def test_user_predict_import_error(tmp_path: Path) -> None:
    (tmp_path / "predict.py").write_text("import mlship_not_installed_xyz\n\ndef predict(m, i):\n    return i\n")
    predictor = Predictor(make_project(tmp_path, {"x": "float"}, load="predict.py:predict",
                                       predict="predict.py:predict"))
    with pytest.raises(UserCodeError) as info:
        predictor.load()
    err = info.value
    assert err.message == ("predict.py failed to import: ModuleNotFoundError: "
                           "No module named 'mlship_not_installed_xyz'")
    assert err.fix is not None and "`python predict.py` shows the same error" in err.fix


def test_user_predict_syntax_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "hooks.py").write_text("def predict(model, instances)\n    return []\n")
    predictor = Predictor(make_project(tmp_path, {"x": "float"}, load="code/hooks.py:predict",
                                       predict="code/hooks.py:predict"))
    with pytest.raises(UserCodeError, match=r"^code/hooks\.py failed to import: SyntaxError"):
        predictor.load()


def test_user_predict_missing_function_lists_defined_ones(tmp_path: Path) -> None:
    with pytest.raises(UserCodeError) as info:
        user_project(tmp_path, """
            import json

            def load(path):
                return None

            def helper(x):
                return x

            def _private():
                pass

            def predict_batch(model, instances):
                return instances
        """)
    err = info.value
    assert err.message == "mlship.yaml -> predict: predict.py has no function `predict`."
    assert err.why == "Functions defined there: helper, load, predict_batch."
    assert err.fix is not None and "def predict(...)" in err.fix


def test_user_code_file_missing(tmp_path: Path) -> None:
    predictor = Predictor(make_project(tmp_path, {"x": "float"}, load="nowhere.py:load"))
    with pytest.raises(UserCodeError, match=r"mlship.yaml -> load: nowhere\.py not found next to mlship\.yaml"):
        predictor.load()


def test_user_load_raising(tmp_path: Path) -> None:
    with pytest.raises(UserCodeError) as info:
        user_project(tmp_path, """
            def load(path):
                raise RuntimeError(f"cannot open {path.name}")

            def predict(model, instances):
                return instances
        """)
    assert info.value.message == "predict.py:load raised RuntimeError: cannot open model.joblib"
    assert info.value.fix is not None and "receives the artifact path" in info.value.fix


def test_user_code_can_import_sibling_modules(tmp_path: Path) -> None:
    (tmp_path / "mlship_test_helpers_sibling.py").write_text("FACTOR = 7\n")
    try:
        predictor = user_project(tmp_path, """
            from mlship_test_helpers_sibling import FACTOR

            def load(path):
                return FACTOR

            def predict(model, instances):
                return [model for _ in instances]
        """)
        assert predictor.predict(rows(1.0)) == [{"value": 7}]
    finally:
        sys.modules.pop("mlship_test_helpers_sibling", None)


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


# -- Validator -----------------------------------------------------------------------------------------------------


def validator(max_instances: int = 1000, **features: Feature) -> Validator:
    return Validator(features, max_instances)


def errors_of(v: Validator, body: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as info:
        v.validate(body)
    return info.value.errors


def test_int_feature_accepts_whole_floats_only() -> None:
    v = validator(n=Feature(type="int"))
    batch = v.validate({"n": 3.0})
    assert batch.rows == [[3]] and type(batch.rows[0][0]) is int
    assert batch.single is True
    for bad in (3.5, True, "3", None):
        [err] = errors_of(v, {"n": bad})
        assert err["loc"] == ["body", "n"]
        assert err["msg"] == "expected an integer"
        assert err["expected"] == "int"


def test_float_feature() -> None:
    v = validator(x=Feature(type="float"))
    batch = v.validate({"x": 2})
    assert batch.rows == [[2.0]] and type(batch.rows[0][0]) is float
    assert errors_of(v, {"x": True})[0]["msg"] == "expected a number"
    assert errors_of(v, {"x": "1.5"})[0]["got"] == "string '1.5'"
    assert errors_of(v, {"x": math.inf})[0]["msg"] == "expected a finite number"
    assert errors_of(v, {"x": math.nan})[0]["msg"] == "expected a finite number"


def test_bool_feature() -> None:
    v = validator(flag=Feature(type="bool"))
    assert v.validate({"flag": False}).rows == [[False]]
    for bad in (1, 0, "true", None):
        assert errors_of(v, {"flag": bad})[0]["msg"] == "expected true or false"


def test_str_enum_feature() -> None:
    v = validator(colour=Feature(type="str", enum=["red", "green"]))
    assert v.validate({"colour": "green"}).rows == [["green"]]
    [err] = errors_of(v, {"colour": "blue"})
    assert err == {"loc": ["body", "colour"], "msg": "not one of the allowed values", "type": "value_error",
                   "expected": "str in red, green", "got": "string 'blue'"}
    assert errors_of(v, {"colour": 1})[0]["msg"] == "expected a string"


def test_minimum_and_maximum() -> None:
    v = validator(x=Feature(type="float", minimum=0, maximum=10), n=Feature(type="int", minimum=1))
    assert v.validate({"x": 0, "n": 1}).rows == [[0.0, 1]]
    assert v.validate({"x": 10.0, "n": 99}).rows == [[10.0, 99]]
    [low] = errors_of(v, {"x": -0.1, "n": 1})
    assert low["msg"] == "must be >= 0"
    assert low["expected"] == "float >= 0 <= 10"
    [high] = errors_of(v, {"x": 10.5, "n": 1})
    assert high["msg"] == "must be <= 10"
    assert errors_of(v, {"x": 1, "n": 0})[0]["loc"] == ["body", "n"]


def test_instances_are_rows_in_feature_order() -> None:
    v = validator(a=Feature(type="float"), b=Feature(type="str"))
    batch = v.validate({"instances": [{"b": "x", "a": 1.0}, {"a": 2.0, "b": "y"}]})
    assert batch.rows == [[1.0, "x"], [2.0, "y"]]
    assert batch.single is False


def test_missing_and_unknown_features_have_paths() -> None:
    v = validator(a=Feature(type="float"), b=Feature(type="float"))
    errs = errors_of(v, {"instances": [{"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 3}]})
    assert [(e["loc"], e["msg"]) for e in errs] == [
        (["body", "instances", 1, "b"], "field required"),
        (["body", "instances", 1, "c"], "unknown feature"),
    ]
    assert errs[0]["got"] == "nothing"
    assert errs[1]["expected"] == "one of a, b"


def test_max_instances() -> None:
    v = validator(max_instances=2, a=Feature(type="float"))
    assert len(v.validate({"instances": [{"a": 1.0}] * 2}).rows) == 2
    [err] = errors_of(v, {"instances": [{"a": 1.0}] * 3})
    assert err["loc"] == ["body", "instances"]
    assert err["msg"] == "too many instances (limit 2)"
    assert err["got"] == "3"


@pytest.mark.parametrize(
    ("body", "loc", "msg"),
    [
        ({"instances": []}, ["body", "instances"], "`instances` is empty"),
        ({"instances": {"a": 1}}, ["body", "instances"], "`instances` must be an array of objects or arrays"),
        ({"instances": [1.0]}, ["body", "instances", 0],
         "each instance must be an object of features or an array of values"),
        ({"instances": [{"a": 1.0}], "extra": 1}, ["body", "extra"], "unknown key next to `instances`"),
        ([], ["body"], "the array of instances is empty"),
        ("a", ["body"],
         'expected one instance as an object of features, {"instances": [...]} or an array of instances'),
    ],
)
def test_body_shape_errors(body: Any, loc: list[Any], msg: str) -> None:
    [err] = errors_of(validator(a=Feature(type="float")), body)
    assert err["loc"] == loc
    assert err["msg"] == msg


def test_errors_are_capped() -> None:
    v = validator(a=Feature(type="float"))
    errs = errors_of(v, {"instances": [{"a": "bad"}] * 50})
    assert len(errs) == MAX_ERRORS
    assert errs[-1]["loc"] == ["body", "instances", MAX_ERRORS - 1, "a"]


def test_feature_named_instances_is_a_plain_feature() -> None:
    v = validator(instances=Feature(type="int"))
    batch = v.validate({"instances": 3})
    assert batch.rows == [[3]] and batch.single is True


def test_long_values_are_shortened_in_errors() -> None:
    [err] = errors_of(validator(a=Feature(type="float")), {"a": "x" * 100})
    assert len(err["got"]) < 60
    assert err["got"].endswith("...")


# -- sample_instance ---------------------------------------------------------------------------------------------


def test_sample_instance_values() -> None:
    features = {
        "f": Feature(type="float"),
        "i": Feature(type="int"),
        "s": Feature(type="str"),
        "b": Feature(type="bool"),
        "e": Feature(type="str", enum=["red", "green"]),
        "low": Feature(type="int", minimum=2.5),
        "neg": Feature(type="float", maximum=-3),
        "pos_max": Feature(type="float", maximum=5),
    }
    assert sample_instance(features) == {"f": 0.0, "i": 0, "s": "", "b": False, "e": "red", "low": 3,
                                         "neg": -3.0, "pos_max": 0.0}


@pytest.mark.parametrize(
    "feature",
    [
        Feature(type="float"),
        Feature(type="int", minimum=2.5, maximum=9),
        Feature(type="int", maximum=-2.5),
        Feature(type="int", minimum=-7.5),
        Feature(type="float", minimum=1, maximum=1),
        Feature(type="int", enum=[4, 5]),
        Feature(type="bool"),
        Feature(type="str", enum=["only"]),
    ],
)
def test_sample_instance_is_valid(feature: Feature) -> None:
    features = {"v": feature}
    instance = sample_instance(features)
    assert Validator(features, 1).validate(instance).rows == [[instance["v"]]]
