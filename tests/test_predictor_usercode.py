"""Predictor with user code (predict.py): what `predict:` and `load:` get and return, and every error they cause.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import predictor_helpers
from mlship.errors import UserCodeError
from mlship.serving.predictor import Predictor
from predictor_helpers import make_project, rows, user_project

clean_user_modules = predictor_helpers.clean_user_modules


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
