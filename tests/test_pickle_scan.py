"""Pickle / joblib artifacts are read statically: nothing they reference is imported or run."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
import sklearn.base
from sklearn.datasets import load_iris
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlship.errors import ArtifactError
from mlship.init import detect_runtime, init_project
from mlship.pickle_scan import MAX_ARRAY_BYTES, container, scan
from mlship.runtimes.sklearn import SklearnRuntime

COMPRESSIONS = ["gzip", "bz2", "xz", "lzma", "zlib"]
TEXTS = ["good movie", "bad movie", "great film", "awful film", "good fun", "bad day"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"]


class _Payload:
    """Pickles to a call of ``func(*args)``: what a malicious file does."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


@pytest.fixture(scope="module")
def logreg() -> LogisticRegression:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture(scope="module")
def text_pipeline() -> Pipeline:
    return Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())]).fit(TEXTS, LABELS)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "subprocess.call"])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_canary_pickle_runs_nothing(tmp_path: Path, how: str, protocol: int) -> None:
    canary = tmp_path / "CANARY"
    payload = {
        "os.system": _Payload(os.system, f"touch {canary}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(canary)!r}, 'w').close()"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(canary)]),
    }[how]
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": payload}, protocol=protocol))
    result = scan(path)
    assert not canary.exists()
    module = {"os.system": os.system.__module__}.get(how, how.split(".")[0])  # posix.system on Linux
    assert any(m == module for m, _ in result.globals)
    assert any(d.startswith(module + ".") for d in result.dangerous)
    # the runtime refuses it before joblib.load would run it, unless the file is trusted
    with pytest.raises(ArtifactError, match="can run commands or code") as err:
        SklearnRuntime().load(path)
    assert "unsafe_deserialization" in (err.value.fix or "")
    assert not canary.exists()


def test_canary_inside_joblib_object_array(tmp_path: Path) -> None:
    """An object array's own pickle (joblib writes it inline) goes through the same stubbing unpickler."""
    canary = tmp_path / "CANARY"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = "a", _Payload(os.system, f"touch {canary}")
    path = tmp_path / "model.sav"
    joblib.dump({"classes_": arr}, path, compress=("gzip", 3))
    result = scan(path)
    assert not canary.exists()
    assert result.dangerous == [f"{os.system.__module__}.system"]


@pytest.mark.parametrize("compression", [None, *COMPRESSIONS])
@pytest.mark.parametrize("name", ["model.bin", "model.sav"])
def test_every_joblib_compression_by_content(tmp_path: Path, logreg: LogisticRegression, text_pipeline: Pipeline,
                                             compression: str | None, name: str) -> None:
    for model in (logreg, text_pipeline):
        path = tmp_path / name
        joblib.dump(model, path, compress=(compression, 3) if compression else 0)
        result = scan(path)
        assert result.compression == (compression or "none")
        assert result.frameworks["sklearn"] == "scikit-learn"
        assert result.user_modules == [] and result.dangerous == []
        assert result.versions == {"scikit-learn": [sklearn.__version__]}
        est = result.estimator
        assert est is not None
        if model is logreg:
            assert est.class_path == "sklearn.linear_model._logistic.LogisticRegression"
            assert est.n_features_in == 4 and est.classes == [0, 1, 2] and not est.is_pipeline
        else:
            assert est.is_pipeline and est.class_path == "sklearn.pipeline.Pipeline"
            assert est.steps == [("tfidf", "sklearn.feature_extraction.text.TfidfVectorizer"),
                                 ("clf", "sklearn.linear_model._logistic.LogisticRegression")]
            assert est.classes == ["neg", "pos"] and est.n_features_in is None


@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickle_protocols(tmp_path: Path, logreg: LogisticRegression, protocol: int) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(logreg, protocol=protocol))
    result = scan(path)
    assert result.compression == "none" and result.protocol == (protocol if protocol >= 2 else 0)
    assert result.estimator is not None and result.estimator.classes == [0, 1, 2]


def test_feature_names_are_read(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True, as_frame=True)
    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    est = scan(path).estimator
    assert est is not None and est.feature_names_in == [str(c) for c in x.columns]


def test_the_files_own_sklearn_version(tmp_path: Path, logreg: LogisticRegression,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # sklearn's __getstate__ writes sklearn.base.__version__ over any _sklearn_version attribute, so the
    # version the file records is set by patching that module-level value while dumping
    monkeypatch.setattr(sklearn.base, "__version__", "0.24.1")
    path = tmp_path / "model.bin"
    joblib.dump(logreg, path, compress=("xz", 3))
    monkeypatch.undo()
    assert sklearn.__version__ != "0.24.1"
    result = scan(path)
    assert result.versions == {"scikit-learn": ["0.24.1"]} and result.version("scikit-learn") == "0.24.1"
    runtime = SklearnRuntime()
    runtime.load(path)
    assert runtime.saved_versions(None) == {"scikit-learn": "0.24.1"}


def test_several_versions_are_all_reported(tmp_path: Path) -> None:
    inner = LogisticRegression()
    # this one estimator's state records another version than the pipeline around it
    inner.__getstate__ = lambda: {  # type: ignore[method-assign]
        **{k: v for k, v in LogisticRegression.__getstate__(inner).items() if k != "__getstate__"},
        "_sklearn_version": "1.0.2",
    }
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Pipeline([("clf", inner)])))
    result = scan(path)
    assert result.versions == {"scikit-learn": ["1.0.2", sklearn.__version__]}
    assert result.version("scikit-learn") == sklearn.__version__  # the top-level object's


def test_user_module_is_named_not_imported(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("class Model:\n    def __init__(self):\n        self.coef = [1.0, 2.0]\n")
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        from mypkg.model import Model  # type: ignore[import-not-found]

        data = pickle.dumps(Model())
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
            del sys.modules[name]
    path = tmp_path / "model.pkl"
    path.write_bytes(data)
    result = scan(path)
    assert result.user_modules == ["mypkg"] and ("mypkg.model", "Model") in result.globals
    assert result.root_class == "mypkg.model.Model" and result.estimator is None
    assert "mypkg" not in sys.modules


def test_large_joblib_arrays_are_skipped_not_built(tmp_path: Path) -> None:
    path = tmp_path / "big.joblib"
    big = np.zeros(MAX_ARRAY_BYTES // 8 + 1)
    joblib.dump({"big": big, "after": np.arange(3)}, path, compress=("zlib", 1))
    result = scan(path)
    assert result.skipped_arrays == 1 and result.root_class is None


def test_not_a_pickle_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_text("sepal_length,sepal_width\n1,2\n")
    with pytest.raises(ArtifactError, match="not a pickle or joblib file") as err:
        scan(path)
    assert err.value.why and err.value.fix
    zipped = tmp_path / "model.pt"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ArtifactError, match="zip archive"):
        scan(zipped)
    gz = tmp_path / "data.gz"
    import gzip

    gz.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    with pytest.raises(ArtifactError, match="gzip-compressed file, but not of a pickle"):
        scan(gz)
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps(list(range(1000)))[:50])
    with pytest.raises(ArtifactError, match="not a readable pickle"):
        scan(truncated)
    assert container(b"\x80\x05") == "none" and container(b"hello") is None


def test_init_detects_a_compressed_joblib_by_content(tmp_path: Path, logreg: LogisticRegression) -> None:
    path = tmp_path / "model.joblib.gz"
    joblib.dump(logreg, path, compress=("gzip", 3))
    assert detect_runtime(path) == "sklearn"
    result = init_project(path, directory=tmp_path / "svc")
    assert result.contract.runtime == "sklearn"
    assert f"scikit-learn=={sklearn.__version__}" in result.info.requirements
    odd = tmp_path / "model.weights"
    odd.write_text("not a model")
    with pytest.raises(ArtifactError, match="No runtime recognises"):
        detect_runtime(odd)


def test_init_sends_a_pickled_torch_module_to_pytorch(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"  # GLOBAL torch.nn.modules.linear.Linear, NEWOBJ(()), STOP: torch is not imported
    path.write_bytes(b"\x80\x02ctorch.nn.modules.linear\nLinear\n)\x81.")
    result = scan(path)
    assert result.frameworks == {"torch": "torch"} and result.root_class == "torch.nn.modules.linear.Linear"
    assert detect_runtime(path) == "pytorch"
