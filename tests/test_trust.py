"""The trust policy for pickles (mlship.trust): a file is loaded only when every class and function it names is on
the allow-list, in `trust:`, or the project's own code; otherwise init, validate, serve and build refuse it before
anything in it runs. `unsafe_deserialization: true` loads it anyway. skops files and `mlship convert --to skops`."""

from __future__ import annotations

import builtins
import os
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from mlship.cli import app
from mlship.contract_io import load_project
from mlship.errors import ArtifactError, ContractError
from mlship.pickle_scan import scan
from mlship.runtimes.sklearn import SklearnRuntime
from mlship.serving.predictor import Predictor
from mlship.trust import TrustPolicy, entry_problem, forbidden, library_trusted

ANSI = re.compile(r"\x1b\[[0-9;]*m")

EVILPKG = '''
class Thing:
    """Harmless, except that it leaves a mark when it is unpickled."""
    def __init__(self, canary):
        self.canary = canary

    def __setstate__(self, state):
        open(state["canary"], "w").close()
        self.__dict__.update(state)
'''

MYMODELS = '''
import numpy as np
from sklearn.linear_model import LogisticRegression


class Wrapped:
    def fit(self, X, y):
        self.model_ = LogisticRegression(max_iter=500).fit(X, y)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = self.model_.n_features_in_
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def predict_proba(self, X):
        return self.model_.predict_proba(X)
'''


class _Payload:
    def __init__(self, fn: Any, arg: Any) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, (self.arg,)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    return " ".join(ANSI.sub("", text).split())


def iris_lr() -> LogisticRegression:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture
def evilpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A package installed outside the allow-list (on sys.path, not next to any contract)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "evilpkg.py").write_text(EVILPKG)
    monkeypatch.syspath_prepend(str(site))
    import evilpkg  # type: ignore[import-not-found]

    yield evilpkg
    sys.modules.pop("evilpkg", None)


def evil_model(kind: str, canary: Path, evilpkg: Any = None) -> LogisticRegression:
    """A working iris model carrying a payload that creates ``canary`` when the file is unpickled."""
    model: Any = iris_lr()
    if kind == "evilpkg.Thing":
        model.extra_ = evilpkg.Thing(str(canary))
    elif kind == "os.system":
        model.extra_ = _Payload(os.system, f"touch {canary}")
    else:
        model.extra_ = _Payload(builtins.exec, f"open({str(canary)!r}, 'w').close()")
    return model


def project_with(tmp_path: Path, model: Any, extra: str = "") -> Path:
    """mlship.yaml written by init for a clean model, then pointed at ``model`` (saved as evil.pkl)."""
    project = tmp_path / "project"
    project.mkdir()
    joblib.dump(iris_lr(), project / "clean.joblib")
    result = invoke("init", str(project / "clean.joblib"), "--dir", str(project))
    assert result.exit_code == 0, result.output
    with (project / "evil.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    text = (project / "mlship.yaml").read_text().replace("artifact: clean.joblib", "artifact: evil.pkl")
    (project / "mlship.yaml").write_text(text + extra)
    return project


# --- the allow-list ----------------------------------------------------------------------------------------
def test_the_allow_list_table() -> None:
    assert library_trusted("sklearn.linear_model._logistic", "LogisticRegression")
    assert library_trusted("numpy._core.multiarray", "_reconstruct")
    assert library_trusted("pandas.core.frame", "DataFrame")
    assert library_trusted("collections", "OrderedDict") and library_trusted("_codecs", "encode")
    assert library_trusted("joblib.numpy_pickle", "NumpyArrayWrapper")
    for module, name in [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "getattr"),
                         ("subprocess", "Popen"), ("importlib", "import_module"), ("sys", "modules"),
                         ("pickle", "loads"), ("marshal", "loads"), ("runpy", "run_path")]:
        assert forbidden(module, name) and not library_trusted(module, name), (module, name)
    # the trusted libraries' own I/O, loaders, evaluators and attribute paths are not trusted
    for module, name in [("numpy", "load"), ("numpy", "save"), ("joblib", "load"), ("pandas", "read_pickle"),
                         ("pandas", "eval"), ("numpy.ctypeslib", "load_library"), ("sklearn.datasets", "fetch_openml"),
                         ("statsmodels.formula.api", "ols"), ("sklearn.base", "os.system"),
                         ("numpy.testing._private.utils", "runstring")]:
        assert not library_trusted(module, name), (module, name)
    assert not library_trusted("evilpkg", "Thing") and not library_trusted("__main__", "Model")
    policy = TrustPolicy(("evilpkg.Thing", "other.*"), frozenset({"mymodels"}))
    assert policy.admits("evilpkg", "Thing") and not policy.admits("evilpkg", "Other")
    assert policy.admits("other.sub", "X") and policy.admits("mymodels.wrap", "Wrapped")
    assert not TrustPolicy(("os.*",)).admits("os", "system")


def test_trust_entries_are_checked_by_the_contract() -> None:
    assert entry_problem("evilpkg.Thing") is None and entry_problem("evilpkg.sub.*") is None
    assert "expected `module.Name`" in (entry_problem("Thing") or "")
    assert "unsafe_deserialization" in (entry_problem("os.system") or "")
    assert "unsafe_deserialization" in (entry_problem("builtins.eval") or "")


@pytest.mark.parametrize("kind", ["sklearn-lr", "pipeline", "forest", "dataframe"])
def test_the_allow_list_admits_common_models(tmp_path: Path, kind: str) -> None:
    x, y = load_iris(return_X_y=True, as_frame=kind == "dataframe")
    model = {"sklearn-lr": lambda: LogisticRegression(max_iter=500),
             "pipeline": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
             "forest": lambda: RandomForestClassifier(n_estimators=5, random_state=0),
             "dataframe": lambda: LogisticRegression(max_iter=500)}[kind]().fit(x, y)
    assert isinstance(x, pd.DataFrame) == (kind == "dataframe")
    joblib.dump(model, tmp_path / "model.joblib")
    assert TrustPolicy().check(scan(tmp_path / "model.joblib").globals).refused == []
    result = invoke("init", str(tmp_path / "model.joblib"), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "the model file refers to (read without loading it):" in out
    assert "scikit-learn: " in out and "numpy: " in out
    assert "trust" not in yaml.safe_load((tmp_path / "mlship.yaml").read_text())


# --- refused before loading, everywhere ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "evilpkg.Thing"])
def test_a_canary_pickle_is_refused_by_every_command(tmp_path: Path, kind: str, evilpkg: Any) -> None:
    canary = tmp_path / "CANARY"
    project = project_with(tmp_path, evil_model(kind, canary, evilpkg))
    shown = {"os.system": f"{os.system.__module__}.system"}.get(kind, kind)

    def refused(result: Any) -> None:
        assert result.exit_code == 1, result.output
        err = plain(result.stderr)
        assert f"evil.pkl refers to {shown}" in err
        assert "unsafe_deserialization: true" in err
        assert ("trust: [evilpkg.Thing]" in err) == (kind == "evilpkg.Thing")
        assert not canary.exists()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    refused(invoke("init", str(project / "evil.pkl"), "--dir", str(fresh)))
    assert list(fresh.iterdir()) == []  # a refused init writes nothing
    refused(invoke("validate", "--file", str(project)))
    refused(invoke("build", "--dry-run", "--file", str(project)))
    with pytest.raises(ArtifactError, match=r"evil\.pkl refers to"):  # what `mlship serve` loads with
        Predictor(load_project(project)).load()
    assert not canary.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "evilpkg.Thing"])
def test_unsafe_deserialization_loads_the_file(tmp_path: Path, kind: str, evilpkg: Any) -> None:
    canary = tmp_path / "CANARY"
    project = project_with(tmp_path, evil_model(kind, canary, evilpkg), "unsafe_deserialization: true\n")
    result = invoke("validate", "--file", str(project))
    assert result.exit_code == 0, result.output
    assert canary.exists()  # the point of the opt-in: the file's own code ran


def test_init_with_the_flag_loads_a_dangerous_file(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(evil_model("os.system", canary)))
    result = invoke("init", str(tmp_path / "evil.pkl"), "--dir", str(tmp_path), "--unsafe-deserialization")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "mlship.yaml").read_text())
    assert data["unsafe_deserialization"] is True and "trust" not in data  # never a dangerous name
    assert canary.exists()


def test_trust_admits_a_named_class_outside_the_allow_list(tmp_path: Path, evilpkg: Any) -> None:
    canary = tmp_path / "CANARY"
    project = project_with(tmp_path, evil_model("evilpkg.Thing", canary, evilpkg), "trust: [evilpkg.Thing]\n")
    result = invoke("validate", "--file", str(project))
    assert result.exit_code == 0, result.output
    assert canary.exists()
    runtime = SklearnRuntime()
    runtime.configure(load_project(project).contract)
    assert isinstance(runtime.load(project / "evil.pkl").extra_, evilpkg.Thing)


def test_trust_cannot_name_a_dangerous_callable(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    project = project_with(tmp_path, evil_model("os.system", canary), f"trust: [{os.system.__module__}.system]\n")
    with pytest.raises(ContractError, match="cannot be trusted by name"):
        load_project(project)
    result = invoke("validate", "--file", str(project))
    assert result.exit_code != 0 and not canary.exists()


def test_your_own_class_next_to_the_contract(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodels  # type: ignore[import-not-found]

        x, y = load_iris(return_X_y=True)
        (tmp_path / "model.pkl").write_bytes(pickle.dumps(mymodels.Wrapped().fit(x, y)))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodels", None)
    result = invoke("init", str(tmp_path / "model.pkl"), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "trusts your class mymodels.Wrapped (written to trust:)" in plain(result.stdout)
    assert "mymodels: Wrapped" in plain(result.stdout)
    data = yaml.safe_load((tmp_path / "mlship.yaml").read_text())
    assert data["trust"] == ["mymodels.Wrapped"]
    try:
        result = invoke("validate", "--file", str(tmp_path))
        assert result.exit_code == 0, result.output
        # the modules next to the contract are the project's own: trusted without the entry too
        sys.modules.pop("mymodels", None)
        text = (tmp_path / "mlship.yaml").read_text().replace("trust:\n- mymodels.Wrapped\n", "")
        (tmp_path / "mlship.yaml").write_text(text)
        assert "trust" not in yaml.safe_load(text)
        result = invoke("validate", "--file", str(tmp_path))
        assert result.exit_code == 0, result.output
    finally:
        sys.modules.pop("mymodels", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


# --- skops ----------------------------------------------------------------------------------------------------
def test_convert_to_skops_and_back(tmp_path: Path) -> None:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(*load_iris(return_X_y=True))
    joblib.dump(model, tmp_path / "model.joblib")
    assert invoke("init", str(tmp_path / "model.joblib"), "--dir", str(tmp_path)).exit_code == 0

    result = invoke("convert", "--to", "skops", "--file", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert f"wrote {tmp_path / 'model.skops'}" in out and "artifact: model.joblib -> model.skops" in out
    assert yaml.safe_load((tmp_path / "mlship.yaml").read_text())["artifact"] == "model.skops"
    assert (tmp_path / "mlship.yaml").read_text().startswith("# mlship contract")  # comments kept
    result = invoke("validate", "--file", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "ok examples[0]" in plain(result.stdout)

    # the artifact is skops now; converting again refuses, as does overwriting without --force
    result = invoke("convert", "--to", "skops", "--file", str(tmp_path))
    assert result.exit_code != 0 and "is a skops file already" in plain(result.stderr)
    (tmp_path / "mlship.yaml").write_text((tmp_path / "mlship.yaml").read_text().replace(
        "artifact: model.skops", "artifact: model.joblib"))
    result = invoke("convert", "--to", "skops", "--file", str(tmp_path))
    assert result.exit_code != 0 and "already exists" in plain(result.stderr)
    assert invoke("convert", "--to", "skops", "--file", str(tmp_path), "--force").exit_code == 0

    # init reads a skops file directly
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = invoke("init", str(tmp_path / "model.skops"), "--dir", str(fresh))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((fresh / "mlship.yaml").read_text())["runtime"] == "sklearn"


def test_convert_refuses_an_untrusted_pickle_and_skops_refuses_untrusted_types(tmp_path: Path,
                                                                               evilpkg: Any) -> None:
    import skops.io as sio
    canary = tmp_path / "CANARY"
    project = project_with(tmp_path, evil_model("os.system", canary), "unsafe_deserialization: true\n")
    result = invoke("convert", "--to", "skops", "--file", str(project))
    assert result.exit_code == 1 and "can run commands or code" in plain(result.stderr)
    assert not canary.exists() and not (project / "model.skops").exists()

    # a skops file with a type outside the allow-list: refused unless trusted
    model: Any = iris_lr()
    model.extra_ = evilpkg.Thing(str(canary))
    sio.dump(model, project / "model.skops")
    canary.unlink(missing_ok=True)
    text = (project / "mlship.yaml").read_text().replace("artifact: evil.pkl", "artifact: model.skops")
    (project / "mlship.yaml").write_text(text.replace("unsafe_deserialization: true\n", ""))
    result = invoke("validate", "--file", str(project))
    assert result.exit_code == 1, result.output
    assert "model.skops refers to evilpkg.Thing" in plain(result.stderr)
    assert not canary.exists()
    (project / "mlship.yaml").write_text((project / "mlship.yaml").read_text() + "trust: [evilpkg.Thing]\n")
    result = invoke("validate", "--file", str(project))
    assert result.exit_code == 0, result.output
