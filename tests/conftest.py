"""Shared fixtures: a trained iris model, project folders, images on a real engine; the real server processes
are in server_processes.py (every name re-exported here)."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

import image_cleanup
from server_processes import (
    GATED_PREDICT,
    IRIS_ROW,
    Hammer,
    Server,
    free_port,
    metric,
    running,
    wait_metric,
    write_custom_project,
)

__all__ = ["GATED_PREDICT", "IRIS_ROW", "Hammer", "Server", "free_port", "metric", "running", "wait_metric",
           "write_custom_project"]

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris-sklearn"
sys.path.insert(0, str(IRIS))

import train as iris_train  # noqa: E402

if TYPE_CHECKING:
    from mlship.contract_io import Project

# The wheelhouse cache outlives the per-test HOME, so image builds in tests download wheels once.
WHEEL_CACHE = Path(os.environ.get("MLSHIP_CACHE") or Path.home() / ".cache" / "mlship")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test: no colour, fixed width, a temp HOME, no inherited keys or PORT."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("MLSHIP_CACHE", str(WHEEL_CACHE))
    monkeypatch.setenv("MLSHIP_CONVERT_WORKER", "0")  # builds convert in-process; test_rebuild_fast.py turns it on
    for var in ("MLSHIP_API_KEYS", "MLSHIP_API_KEY", "PORT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model/iris.joblib trained once per session from sklearn's bundled data."""
    return iris_train.train(tmp_path_factory.mktemp("iris") / "model" / "iris.joblib")


def make_iris_project(directory: Path, iris_model: Path, extra_yaml: str = "") -> Path:
    """A copy of the iris example (model, rows.csv, MODEL.md) with an mlship.yaml from `mlship init`."""
    from mlship.init import init_project

    (directory / "model").mkdir(parents=True, exist_ok=True)
    shutil.copy(iris_model, directory / "model" / "iris.joblib")
    for name in ("rows.csv", "MODEL.md"):
        shutil.copy(IRIS / name, directory / name)
    init_project(directory / "model" / "iris.joblib", directory=directory, sample=directory / "rows.csv")
    if extra_yaml:
        with (directory / "mlship.yaml").open("a") as fh:
            fh.write(extra_yaml)
    return directory


@pytest.fixture
def iris_dir(tmp_path: Path, iris_model: Path) -> Path:
    """A fresh copy of the iris example with an mlship.yaml from init."""
    return make_iris_project(tmp_path, iris_model)


@pytest.fixture(scope="module")
def iris_compiled(tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Path:
    """The iris example project, one per test module, with its compiled model kept (as a second start finds it)."""
    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    root = make_iris_project(tmp_path_factory.mktemp("iris-compiled"), iris_model)
    Predictor(load_project(root)).load()
    return root


def copy_project(source: Path, dest: Path, *, name: str | None = None, targets: dict[str, Any] | None = None,
                 **changes: Any) -> Project:
    """A copy of a project folder (without .mlship/) with a new name, ``targets`` and other top-level keys
    of mlship.yaml replaced."""
    from mlship.contract_io import load_project

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".mlship"))
    path = dest / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    if name is not None:
        data["name"] = name
    if targets is not None:
        data["targets"] = targets
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_project(dest)


def build_from_files(engine: Any, files: dict[str, bytes], tag: str) -> str:
    """Build ``tag`` from a context of in-memory ``files`` (a "Dockerfile" among them); returns the tag."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    engine.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False)
    return tag


def build_broken_image(engine: Any, base: str, prefix: str) -> str:
    """``base`` (an iris image) with a model file that cannot be loaded: the server exits 1 at start-up.
    Returns the new tag ``iris:<prefix>-broken-<random>``; the caller removes it."""
    files = {"Dockerfile": f"FROM {base}\nCOPY iris.joblib /app/model/iris.joblib\n".encode(),
             "iris.joblib": b"this is not a pickle"}
    return build_from_files(engine, files, f"iris:{prefix}-broken-{uuid.uuid4().hex[:6]}")


# --- Docker: a real engine, a locally made base image, real builds -------------------------------
TEST_BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test-base:bookworm")


@pytest.fixture(scope="session")
def docker_engine() -> object:
    """The real Docker engine (scripts/test starts dockerd and makes the base image)."""
    from mlship.image import engine

    cli = engine.client()
    cli.images.get(TEST_BASE_IMAGE)  # made by scripts/make-base-image; fails loudly if missing
    return cli


_IMAGE_REPORT: list[str] = []  # one line about the images removed at session end


@pytest.fixture(scope="session", autouse=True)
def _remove_session_images() -> Iterator[None]:
    """At session end, remove the images this session built that carry an mlship label (dev.mlship.*,
    org.opencontainers.image.*), were tagged for the test registry, or have no tag left (dangling). Never the base
    image, an image from before the session, one a running container uses, nor one with a tag this session did
    not set (another session on the engine uses it). See tests/image_cleanup.py; one line is printed at the end."""
    cli = image_cleanup.engine_or_none()
    try:
        before = {img.id for img in cli.images.list(all=True)} if cli is not None else None
    except Exception:
        before = None
    if cli is None or before is None:
        yield
    else:
        made = image_cleanup.Made()
        with pytest.MonkeyPatch.context() as patch:
            made.record(patch)
            yield
        _IMAGE_REPORT.append(image_cleanup.remove_images(cli, before, made, TEST_BASE_IMAGE))
    if cli is not None:
        cli.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _IMAGE_REPORT:
        terminalreporter.write_line(line)


@pytest.fixture
def base_image_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLSHIP_BASE_IMAGE", TEST_BASE_IMAGE)
    return TEST_BASE_IMAGE


def build_image(project: Project) -> str:
    """Build ``project`` on the test base image the way `mlship build` does; returns the tag."""
    from mlship.image import engine
    from mlship.image.context import plan_project, write_context

    plan = plan_project(project, TEST_BASE_IMAGE)
    return engine.build(write_context(plan, project.root / ".mlship" / "build"), plan.tag).tag


def load_example_module(path: Path, name: str) -> Any:
    """Import an example's script (e.g. examples/torch-digits/train.py) under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry() -> str:
    """The loopback registry that stands in for Artifact Registry and ECR ($MLSHIP_TEST_REGISTRY)."""
    import urllib.error
    import urllib.request

    address = image_cleanup.TEST_REGISTRY
    try:
        urllib.request.urlopen(f"http://{address}/v2/", timeout=5).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"no registry answers on http://{address}/v2/ ({exc}): run `bash scripts/docker-up`, "
                    "or set MLSHIP_TEST_REGISTRY to one")
    return address


@pytest.fixture(scope="session")
def iris_image(docker_engine: object, tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> tuple[Path, str]:
    """The iris example built once per session: (project dir, image tag)."""
    from mlship.contract_io import load_project

    root = make_iris_project(tmp_path_factory.mktemp("iris-image"), iris_model)
    return root, build_image(load_project(root))


def slow_validator(features: dict[str, Any]) -> Any:
    """A Validator with its fast paths off (uniform batches, exact-type rows and value lists): the reference
    that property tests compare the fast paths with."""
    from mlship.serving.validation import Validator

    v = Validator(features, 50)
    v._uniform = None
    v._fast_row = lambda inst: None
    v._fast_values = lambda row: None
    return v


def outcome(validator: Any, body: Any) -> Any:
    """What a validator makes of ``body``: ("rows", typed values) or ("422", the errors)."""
    from mlship.serving.validation import InvalidInput

    try:
        rows = validator.validate(body).rows
    except InvalidInput as exc:
        return "422", exc.errors
    return "rows", [[(type(v), v) for v in row] for row in rows]
