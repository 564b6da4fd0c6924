"""A PyTorch module inside a scikit-learn-style wrapper saved with joblib ("bring the model you have").

The wrapper class lives in the user's package next to the contract (``netwrap/__init__.py``); the test fits
it on iris, dumps it with joblib and drops the package from ``sys.modules``/``sys.path``, so mlship has to
import it from the project folder. Covers: `mlship init` reads features and labels from the fitted wrapper
(and a wrapper without ``n_features_in_`` gets the real cause, never "fit the model"); the image of a
``runtime: sklearn`` contract follows torch's CPU rules; compileall tolerates files for another Python; a
failed build quotes its failing lines; one real build + `mlship test` with the in-process probabilities.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
import yaml
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from typer.testing import CliRunner

import image_cleanup
from conftest import TEST_BASE_IMAGE
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.errors import ArtifactError, BuildError
from mlship.image import engine
from mlship.image.context import plan_project, write_context
from mlship.runtimes.pytorch import CPU_INDEX_ENV
from mlship.runtimes.sklearn import SklearnRuntime

TORCH = torch.__version__.split("+")[0]
NETWRAP = '''\
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin


class NetClassifier(BaseEstimator, ClassifierMixin):
    """A small torch MLP with the scikit-learn interface; predicts on CPU."""

    def __init__(self, hidden=16, epochs=40, seed=0):
        self.hidden = hidden
        self.epochs = epochs
        self.seed = seed

    def fit(self, X, y):
        torch.manual_seed(self.seed)
        X = np.asarray(X, dtype=np.float32)
        self.classes_, index = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        self.net_ = torch.nn.Sequential(torch.nn.Linear(X.shape[1], self.hidden), torch.nn.ReLU(),
                                        torch.nn.Linear(self.hidden, len(self.classes_)))
        optimizer = torch.optim.Adam(self.net_.parameters(), lr=0.05)
        xt, yt = torch.from_numpy(X), torch.from_numpy(index.astype(np.int64))
        for _ in range(self.epochs):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(self.net_(xt), yt).backward()
            optimizer.step()
        self.net_.eval()
        return self

    def predict_proba(self, X):
        with torch.no_grad():
            return torch.softmax(self.net_(torch.from_numpy(np.asarray(X, dtype=np.float32))), dim=1).numpy()

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
'''
# the documented route for code next to mlship.yaml: a load: function (usercode puts the folder on sys.path)
PREDICT_PY = '''\
import joblib
import netwrap  # noqa: F401  (the pickle refers to netwrap.NetClassifier)


def load(path):
    return joblib.load(path)
'''
ROWS = [0, 60, 120]  # one iris row per class


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    return " ".join(text.split())


def _forget_netwrap() -> None:
    for name in [m for m in sys.modules if m == "netwrap" or m.startswith("netwrap.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    return make_wrapped(tmp_path_factory.mktemp("wrapped") / "project")


def make_wrapped(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """(``root`` with netwrap/ and estimator.joblib, the sample rows, their in-process probabilities)."""
    (root / "netwrap").mkdir(parents=True)
    (root / "netwrap" / "__init__.py").write_text(NETWRAP)
    iris = load_iris()
    sys.path.insert(0, str(root))
    try:
        import netwrap  # type: ignore[import-not-found]  # written above, into the project folder

        model = netwrap.NetClassifier().fit(iris.data, iris.target_names[iris.target])
        joblib.dump(model, root / "estimator.joblib")
        rows = iris.data[ROWS]
        proba = model.predict_proba(rows)
    finally:
        sys.path.remove(str(root))
        _forget_netwrap()
    assert list(model.predict(rows)) == ["setosa", "versicolor", "virginica"]
    return root, rows, proba


@pytest.fixture
def no_netwrap() -> Iterator[None]:
    """Whatever a test imports from netwrap is forgotten afterwards (each project folder has its own)."""
    _forget_netwrap()
    yield
    _forget_netwrap()


def contract_for(root: Path, rows: np.ndarray, proba: np.ndarray, name: str) -> Path:
    """The contract `mlship init` wrote, with the load: route, the package in build.include and examples that
    carry the in-process probabilities (checked within 1e-5)."""
    (root / "predict.py").write_text(PREDICT_PY)
    data = yaml.safe_load((root / "mlship.yaml").read_text())
    data["name"] = name
    data["load"] = "predict.py:load"
    build = data.setdefault("build", {})
    if "netwrap" not in build.get("include", []):
        build["include"] = [*build.get("include", []), "netwrap"]
    labels = data["output"]["labels"]
    features = list(data["input"]["features"])
    data["examples"] = [{"input": dict(zip(features, map(float, row), strict=True)),
                         "output": {"label": labels[int(p.argmax())],
                                    "probabilities": {k: float(v) for k, v in zip(labels, p, strict=True)}},
                         "tolerance": 1e-5} for row, p in zip(rows, proba, strict=True)]
    (root / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def initialised(wrapped: tuple[Path, np.ndarray, np.ndarray]) -> Path:
    """`mlship init estimator.joblib` in the project folder (on sys.path, as `python -m` in the image has it)."""
    root = wrapped[0]
    sys.path.insert(0, str(root))
    try:
        refused = invoke("init", str(root / "estimator.joblib"), "--dir", str(root))
        # torch pickles its tensors through torch.storage._load_from_bytes, a nested unrestricted torch.load:
        # a joblib file holding a torch module loads only when you say you trust it
        result = invoke("init", str(root / "estimator.joblib"), "--dir", str(root), "--unsafe-deserialization")
    finally:
        sys.path.remove(str(root))
        _forget_netwrap()
    assert refused.exit_code == 1 and "torch.storage._load_from_bytes" in plain(refused.output)
    assert result.exit_code == 0, result.output
    assert "fit the model" not in result.output.lower()
    return root


# --- init: features and labels from the fitted wrapper ---------------------------------------------
def test_init_reads_features_and_labels_from_the_wrapper(initialised: Path) -> None:
    data = yaml.safe_load((initialised / "mlship.yaml").read_text())
    assert data["runtime"] == "sklearn" and data["task"] == "classification"
    assert data["input"]["features"] == {"x0": "float", "x1": "float", "x2": "float", "x3": "float"}
    assert data["output"]["labels"] == ["setosa", "versicolor", "virginica"]


def test_init_without_the_package_on_the_path_names_it(wrapped: tuple[Path, np.ndarray, np.ndarray],
                                                        tmp_path: Path, no_netwrap: None) -> None:
    # a process of its own: in this one, an earlier in-process build of a wrapper project left its folder (with a
    # netwrap package) on sys.path, as a build or server process does for the project it works on
    result = subprocess.run([sys.executable, "-m", "mlship", "init", str(wrapped[0] / "estimator.joblib"), "--dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert result.returncode != 0
    assert "needs the module `netwrap`, which is not importable" in plain(result.stderr + result.stdout)
    assert "fit the model" not in (result.stderr + result.stdout).lower()


class _Wrapper(BaseEstimator, ClassifierMixin):  # type: ignore[misc]
    """A wrapper that keeps a torch net and classes_ but never sets n_features_in_."""

    def fit(self, x: Any, y: Any) -> _Wrapper:
        self.classes_ = np.unique(y)
        self.net_ = torch.nn.Sequential(torch.nn.Linear(4, 3))
        return self

    def predict(self, x: Any) -> Any:
        return self.classes_[np.zeros(len(x), dtype=int)]


def test_fitted_wrapper_without_n_features_in_names_the_attribute(tmp_path: Path) -> None:
    model = _Wrapper().fit(np.zeros((3, 4)), ["a", "b", "c"])
    with pytest.raises(ArtifactError) as info:
        SklearnRuntime().inspect(model, tmp_path / "m.joblib")
    err = info.value
    text = f"{err.message} {err.why} {err.fix}"
    assert err.message == ("_Wrapper is fitted but does not record how many input features it takes: it has no "
                           "`n_features_in_`.")
    assert "classes_, net_" in text and "Linear(in_features=4)" in text
    assert "self.n_features_in_ = X.shape[1]" in text and "input.features" in text
    assert "fit the model" not in text.lower()


def test_unfitted_wrapper_is_told_it_looks_unfitted(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        SklearnRuntime().inspect(_Wrapper(), tmp_path / "m.joblib")
    assert "looks unfitted" in str(info.value.why) and "Fit the model before saving it" in str(info.value.fix)


# --- the image plan: torch's CPU rules for a runtime: sklearn contract ------------------------------
@pytest.fixture(scope="module")
def project(initialised: Path, wrapped: tuple[Path, np.ndarray, np.ndarray]) -> Path:
    return contract_for(initialised, wrapped[1], wrapped[2], "netwrap-iris")


def test_dry_run_follows_torchs_cpu_rules(project: Path, monkeypatch: pytest.MonkeyPatch,
                                          no_netwrap: None) -> None:
    monkeypatch.setenv(CPU_INDEX_ENV, "https://cpu-index.invalid/whl/cpu")
    result = invoke("build", "--dry-run", "-f", str(project), "--base-image", TEST_BASE_IMAGE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "runtime: sklearn" in (project / "mlship.yaml").read_text()
    assert f"torch=={TORCH}+cpu" in out and "nvidia" not in out.lower()
    assert "the artifact references torch (read from the file): the image follows the pytorch runtime's rules" in out
    assert "else from https://cpu-index.invalid/whl/cpu" in out
    assert "site-packages/torch/include" in out and "py312_intrinsics.py" in out  # the same prune as pytorch's
    assert re.search(r"files: .*contract/netwrap", out), out  # the user's package goes into the image
    plan = plan_project(load_project(project), TEST_BASE_IMAGE, dry_run=True)
    assert plan.index_urls == ["https://cpu-index.invalid/whl/cpu"]


def test_a_plain_sklearn_model_gets_no_torch(iris_dir: Path) -> None:
    plan = plan_project(load_project(iris_dir), TEST_BASE_IMAGE, dry_run=True)
    assert not [r for r in plan.requirements if r.startswith("torch")]
    assert "torch/include" not in plan.dockerfile


# --- compileall: files for another Python are reported, not fatal -------------------------------------
def test_compileall_reports_files_for_another_python_without_failing(iris_dir: Path, tmp_path: Path,
                                                                     docker_engine: Any) -> None:
    """The plan's own compileall command, run on a folder with a Python-3.12-only file (the test base image
    has Python 3.11): the build goes on, the good file is compiled and the bad one is reported."""
    dockerfile = plan_project(load_project(iris_dir), TEST_BASE_IMAGE, dry_run=True).dockerfile
    step = re.search(r"\{ python3 -m compileall .*?; \}", dockerfile, re.S)
    assert step is not None, dockerfile
    command = step.group(0).replace("/opt/venv/lib", "/tmp/lib")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {TEST_BASE_IMAGE}\nRUN mkdir /tmp/lib && echo 'x = 1' > /tmp/lib/good.py "
        f"&& echo 'def f[T](x): return x' > /tmp/lib/py312.py\n"
        f"RUN {command}\n"
        "RUN ls /tmp/lib/__pycache__/ | grep -q '^good\\.' && ! ls /tmp/lib/__pycache__/ | grep -q py312\n")
    log = tmp_path / "build.log"
    tag = "mlship-test-compileall:1"
    try:
        engine.build(tmp_path, tag, log_path=log)
    finally:
        for image in docker_engine.images.list(name="mlship-test-compileall"):
            docker_engine.images.remove(image.id, force=True)
    text = log.read_text()
    assert "*** Error compiling '/tmp/lib/py312.py'" in text and "they stay uncompiled" in text


# --- a failed build quotes its failing lines ------------------------------------------------------------
def test_failed_build_quotes_the_failing_step_and_its_output(tmp_path: Path, docker_engine: Any) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {TEST_BASE_IMAGE}\nRUN echo preparing && echo 'def f[T](x): return x' > /tmp/bad.py "
        "&& python3 -m compileall -q /tmp/bad.py\n")
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as info:
        engine.build(tmp_path, "mlship-test-fails:1", log_path=log)
    err = info.value
    assert err.message.startswith("docker build of mlship-test-fails:1 failed: The command")
    assert err.why is not None and err.why.startswith("It failed at Step 2/2 : RUN echo preparing")
    assert "The last lines of its output:\n  preparing\n" in err.why
    assert "*** Error compiling '/tmp/bad.py'" in err.why and "SyntaxError" in err.why
    assert "Removing intermediate container" not in err.why and "--->" not in err.why
    assert err.fix is not None and "not valid Python for the image's Python" in err.fix
    assert err.fix.endswith(f"Full log: {log}")


@pytest.mark.parametrize(("output", "fix"), [
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.", "delete the wheel cache"),
    ("ERROR: No matching distribution found for torch==2.13.0+cpu", "dependencies.python"),
    ("ERROR: torch-2.13.0+cpu-cp312-cp312-linux_x86_64.whl is not a supported wheel on this platform.",
     "dependencies.python"),
    ("OSError: [Errno 28] No space left on device", "docker system prune"),
    ("/bin/sh: 1: python3: not found", "python3 on its PATH"),
    ("Collecting nothing useful", None),
])
def test_failure_hints_say_what_to_do(output: str, fix: str | None) -> None:
    hint = engine.failure_hint(output)
    assert (hint is None) if fix is None else (hint is not None and fix in hint)


# --- one real build and `mlship test`: the in-process probabilities within 1e-5 --------------------
def test_image_builds_and_mlship_test_passes(project: Path, docker_engine: Any, base_image_env: str,
                                             no_netwrap: None) -> None:
    import json
    import time

    tag = None
    try:
        started = time.perf_counter()
        plan = plan_project(load_project(project), TEST_BASE_IMAGE)
        built = engine.build(write_context(plan, project / ".mlship" / "build"), plan.tag,
                             log_path=project / ".mlship" / "build.log")
        tag, seconds = built.tag, time.perf_counter() - started
        lock = (project / ".mlship" / "build" / "requirements.lock").read_text()
        assert f"torch=={TORCH}+cpu --hash=sha256:" in lock
        assert not [n for n in lock.splitlines() if n.startswith(("nvidia", "triton"))]
        result = invoke("test", "-f", str(project), "--image", tag, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] and [e["ok"] for e in report["examples"]] == [True, True, True], report
        print(f"\nnetwrap image: {built.size / 1e6:.0f} MB, built in {seconds:.0f}s, "
              f"first prediction {report['first_prediction_s']}s")
    finally:
        image_cleanup.remove_service(docker_engine, "netwrap-iris")
