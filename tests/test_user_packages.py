"""A pickle of your own class, its package next to the contract: `mlship init model.pkl` finds the package,
imports it from there (and leaves sys.path and sys.modules as they were), writes build.include, reports what the
package imports but the model does not need; validate, predict --local and a real image serve it."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.datasets import make_classification
from typer.testing import CliRunner

from conftest import free_port
from mlship.cli import app

WRAPPER = '''
"""A thresholded logistic regression, as a data scientist writes one."""
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

try:  # only plot_scores() draws; the model predicts without it
    import plotly.express as px
except ImportError:
    px = None
{extra_import}

class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, threshold=0.5, C=1.0):
        self.threshold = threshold
        self.C = C

    def fit(self, X, y):
        self.model_ = LogisticRegression(C=self.C, max_iter=1000).fit(X, y)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = self.model_.n_features_in_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(X)

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= self.threshold).astype(int)]

    def plot_scores(self, X):
        if px is None:
            raise RuntimeError("pip install plotly to plot")
        return px.histogram(self.predict_proba(X)[:, 1])

    def report(self, X):
        import seaborn  # lazily, for notebooks

        return seaborn.histplot(self.predict_proba(X)[:, 1])
'''

PREDICT = '''
import pickle


def load(path):
    with open(path, "rb") as fh:
        model = pickle.load(fh)
    model.threshold = 0.9  # the loader may adjust the object
    return model


def predict(model, instances):
    rows = [[i[f"x{k}"] for k in range(4)] for i in instances]
    return [{"label": str(c), "score": float(p)} for c, p in zip(model.predict(rows), model.predict_proba(rows)[:, 1])]
'''


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    return " ".join(text.split())


def make_project(folder: Path, extra_import: str = "", as_module: bool = False) -> tuple[np.ndarray, list[str]]:
    """project/mymodels/{__init__,wrapper}.py (or project/mymodels.py) and model.pkl; the package is imported
    from ``folder`` to fit and pickle the model, then forgotten (sys.modules, sys.path). Returns rows and the
    original's predictions."""
    if as_module:
        (folder / "mymodels.py").write_text(WRAPPER.format(extra_import=extra_import))
    else:
        package = folder / "mymodels"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("from mymodels.wrapper import ThresholdClassifier\n")
        (package / "wrapper.py").write_text(WRAPPER.format(extra_import=extra_import))
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("mymodels")
        model = module.ThresholdClassifier(threshold=0.3).fit(X, y)
        (folder / "model.pkl").write_bytes(pickle.dumps(model))
        rows = X[:10]
        expected = [str(c) for c in model.predict(rows)]
    finally:
        sys.path.remove(str(folder))
        forget()
    return rows, expected


def forget() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] == "mymodels" or n.startswith("mlship_user_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The tests run in the project folder, as a user does; what validate/serve leave importable is undone."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    saved = list(sys.path)
    yield folder
    sys.path[:] = saved
    forget()


def contract(folder: Path) -> dict[str, Any]:
    data = yaml.safe_load((folder / "mlship.yaml").read_text())
    assert isinstance(data, dict)
    return data


def rows_json(rows: np.ndarray) -> str:
    return json.dumps({"instances": [{f"x{k}": float(v) for k, v in enumerate(row)} for row in rows]})


def test_init_finds_the_package_next_to_the_contract(project: Path) -> None:
    make_project(project)
    assert importlib.util.find_spec("mymodels") is None  # mlship has to find it itself
    assert importlib.util.find_spec("plotly") is None  # the optional import this test is about (not a dev dependency)
    path_before = list(sys.path)

    result = invoke("init", "model.pkl")

    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "uses your package mymodels (added to build.include)" in out
    assert "note: mymodels imports plotly (not installed here), which the model does not need to load; " \
           "not added to dependencies." in out
    assert "note: mymodels imports seaborn (not installed here)" in out
    data = contract(project)
    assert data["build"] == {"include": ["mymodels"]}
    assert data["task"] == "classification" and data["output"]["labels"] == ["0", "1"]
    assert list(data["input"]["features"]) == ["x0", "x1", "x2", "x3"]
    reqs = data["dependencies"]["requirements"]
    assert [r.split("==")[0] for r in reqs] == ["scikit-learn"]
    assert "load" not in data and "predict" not in data
    # nothing leaks into later calls
    assert sys.path == path_before and "mymodels" not in sys.modules


def test_validate_and_predict_local_match_the_original(project: Path) -> None:
    rows, expected = make_project(project)
    assert invoke("init", "model.pkl").exit_code == 0
    forget()

    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert "ok examples[0]" in plain(result.stdout)

    result = invoke("predict", "--local", "--json", "-d", rows_json(rows))
    assert result.exit_code == 0, result.output
    got = [p["label"] for p in json.loads(result.stdout)["predictions"]]
    assert got == expected
    assert "0" in got and "1" in got


def test_a_package_that_is_not_next_to_the_contract_is_a_clear_error(project: Path) -> None:
    make_project(project)
    for file in (project / "mymodels").iterdir():
        file.unlink()
    (project / "mymodels").rmdir()

    result = invoke("init", "model.pkl")

    assert result.exit_code == 1
    err = plain(result.stderr)
    assert "error: model.pkl needs the module `mymodels`, which is not importable." in err
    assert "`mymodels` is not installed in this Python environment." in err
    assert "put it next to mlship.yaml (a folder `mymodels/` or a file `mymodels.py`)" in err
    assert "Traceback" not in result.output
    assert sorted(p.name for p in project.iterdir()) == ["model.pkl"]  # a failed init writes nothing


def test_a_module_file_next_to_the_contract_works_too(project: Path) -> None:
    rows, expected = make_project(project, as_module=True)

    result = invoke("init", "model.pkl")

    assert result.exit_code == 0, result.output
    assert "uses your package mymodels (added to build.include)" in plain(result.stdout)
    assert contract(project)["build"] == {"include": ["mymodels.py"]}
    assert invoke("validate").exit_code == 0
    result = invoke("predict", "--local", "--json", "-d", rows_json(rows))
    assert [p["label"] for p in json.loads(result.stdout)["predictions"]] == expected


def test_load_and_predict_flags(project: Path) -> None:
    rows, _ = make_project(project)
    (project / "predict.py").write_text(PREDICT)

    result = invoke("init", "model.pkl", "--load", "predict.py:load", "--predict", "predict.py:predict")

    assert result.exit_code == 0, result.output
    data = contract(project)
    assert data["load"] == "predict.py:load" and data["predict"] == "predict.py:predict"
    assert data["build"] == {"include": ["mymodels"]}
    assert set(data["examples"][0]["output"]) == {"label"}
    assert "mymodels" not in sys.modules and str(project) not in sys.path

    result = invoke("validate")
    assert result.exit_code == 0, result.output
    result = invoke("predict", "--local", "--json", "-d", rows_json(rows))
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)["predictions"]
    assert all((p["score"] >= 0.9) == (p["label"] == "1") for p in preds)  # the loader's threshold is used


@pytest.mark.parametrize(("flags", "message", "code"), [
    (["--predict", "predict.py:nope"], "mlship.yaml -> predict: predict.py has no function `nope`.", 1),
    (["--load", "loader.py:load"], "mlship.yaml -> load: loader.py not found next to mlship.yaml.", 1),
    (["--load", "predict.py"], "--load 'predict.py' is not a `file.py:function` reference.", 2),
])
def test_bad_function_references_write_nothing(project: Path, flags: list[str], message: str, code: int) -> None:
    make_project(project)
    (project / "predict.py").write_text(PREDICT)
    before = sorted(p.name for p in project.iterdir())

    result = invoke("init", "model.pkl", *flags)

    assert result.exit_code == code, result.output
    assert message in plain(result.stderr)
    assert sorted(p.name for p in project.iterdir()) == before


def test_an_import_the_model_needs_is_pinned(project: Path) -> None:
    make_project(project, extra_import="import mpmath  # used at import time\nONE = mpmath.mpf(1)")

    result = invoke("init", "model.pkl")

    assert result.exit_code == 0, result.output
    pin = f"mpmath=={importlib.metadata.version('mpmath')}"
    assert pin in contract(project)["dependencies"]["requirements"]
    assert f"mymodels imports mpmath, which the model needs when it loads: added {pin} to dependencies." \
           in plain(result.stdout)
    assert "mymodels imports plotly (not installed here)" in plain(result.stdout)


def test_deploy_local_serves_the_users_class(project: Path, base_image_env: str, docker_engine: Any) -> None:
    rows, expected = make_project(project)
    name = f"up-{uuid.uuid4().hex[:8]}"
    try:
        assert invoke("init", "model.pkl", "--name", name).exit_code == 0
        data = contract(project)
        data["targets"] = {"local": {"port": free_port()}}
        (project / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

        result = invoke("deploy", "--target", "local", "--json")
        assert result.exit_code == 0, result.output
        url = json.loads(result.stdout)["url"]
        result = invoke("predict", "--url", url, "--json", "-d", rows_json(rows))
        assert result.exit_code == 0, result.output
        assert [p["label"] for p in json.loads(result.stdout)["predictions"]] == expected

        result = invoke("destroy", "--target", "local", "--json")
        assert result.exit_code == 0, result.output
    finally:
        for container in docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}):
            container.remove(force=True)
        for image in docker_engine.images.list(name=name):
            for tag in image.tags:
                docker_engine.images.remove(tag, force=True)


PLAIN = '''
from sklearn.linear_model import LogisticRegression


class Plain:  # no scikit-learn base class: sklearn's is_classifier() cannot tell what it is
    def fit(self, X, y):
        self.model_ = LogisticRegression(max_iter=1000).fit(X, y)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = 4
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def predict_proba(self, X):
        return self.model_.predict_proba(X)
'''


def test_init_reads_a_plain_class_of_your_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels.py").write_text(PLAIN)
    X, y = make_classification(n_samples=100, n_features=4, random_state=1)
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "model.pkl").write_bytes(pickle.dumps(importlib.import_module("mymodels").Plain().fit(X, y)))
    finally:
        sys.path.remove(str(tmp_path))
        forget()
    monkeypatch.chdir(tmp_path)
    result = invoke("init", "model.pkl")
    assert result.exit_code == 0, result.output
    data = contract(tmp_path)
    assert data["task"] == "classification" and data["output"]["labels"] == ["0", "1"]
    assert data["build"]["include"] == ["mymodels.py"]
