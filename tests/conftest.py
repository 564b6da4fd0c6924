"""Shared fixtures: a trained iris model, project folders, and real server processes."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

import image_cleanup

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


def metric(client: httpx.Client, name: str) -> float:
    """A sample's value in /metrics; 0 when the series does not exist yet."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_metric(client: httpx.Client, name: str, value: float, timeout: float = 10.0) -> None:
    """Poll /metrics until ``name`` has ``value`` (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while metric(client, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}: {metric(client, name)}"
        time.sleep(0.01)


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


IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Hammer:
    """POSTs ``body`` to ``url``/predict every 50 ms in a thread until stopped (at most 100 000 times); keeps the
    status and X-Model-Version of every answer in ``answers`` ((0, error name) when there was none). For checking
    that a deploy keeps every request answered."""

    def __init__(self, url: str, body: Any = None) -> None:
        self.url, self.body = url.rstrip("/"), IRIS_ROW if body is None else body
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(100_000):
                if self._stop.wait(0.05):
                    return
                try:
                    reply = client.post(f"{self.url}/predict", json=self.body)
                    self.answers.append((reply.status_code, reply.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.answers.append((0, type(exc).__name__))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A `predict:` snippet for server tests: records the x values of every model call in calls.jsonl; x > 100 blocks
# in the model until the test creates gate-<x> (at most 10 s); x == 13 raises.
GATED_PREDICT = """
import json
import time
from pathlib import Path

HERE = Path(__file__).parent

def load(path):
    return 2.0

def predict(model, instances):
    xs = [inst["x"] for inst in instances]
    with open(HERE / "calls.jsonl", "a") as fh:
        fh.write(json.dumps(xs) + "\\n")
    out = []
    for x in xs:
        if x == 13:
            raise ValueError("unlucky thirteen")
        if x > 100:
            gate = HERE / f"gate-{int(x)}"
            deadline = time.monotonic() + 10
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        out.append(x * model)
    return out
"""


def write_custom_project(directory: Path, predict_py: str, serve: str = "", extra: str = "") -> Path:
    """A project with user code (predict.py) around a trivial artifact; for slow/failing models."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pkl").write_bytes(b"not used")
    (directory / "predict.py").write_text(textwrap.dedent(predict_py))
    (directory / "mlship.yaml").write_text(
        textwrap.dedent(
            """\
            name: custom
            runtime: sklearn
            artifact: model.pkl
            task: regression
            load: predict.py:load
            predict: predict.py:predict
            input:
              features: {x: float}
            examples:
              - input: {x: 1.0}
            """
        )
        + textwrap.dedent(serve)
        + textwrap.dedent(extra)
    )
    return directory


class Server:
    """A real `python -m mlship.serving` process on a free loopback port."""

    def __init__(self, project_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **(env or {})}
        self.log = project_dir / f"server-{self.port}.log"
        self._log_fh = self.log.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlship.serving", str(project_dir / "mlship.yaml"),
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=full_env, stdout=self._log_fh, stderr=subprocess.STDOUT, text=True,
        )

    def wait_http(self, timeout: float = 20.0) -> float:
        """Seconds from process start until /healthz answers."""
        return self._wait("/healthz", timeout)

    def wait_ready(self, timeout: float = 30.0) -> float:
        return self._wait("/readyz", timeout)

    def _wait(self, path: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"{path} not 200 after {timeout}s:\n{self.stop()}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()
        return self.log.read_text()

    def output(self) -> str:
        """Everything the server logged so far."""
        self._log_fh.flush()
        return self.log.read_text()


@contextmanager
def running(project_dir: Path, env: dict[str, str] | None = None, ready: bool = True) -> Iterator[Server]:
    server = Server(project_dir, env)
    try:
        server.wait_ready() if ready else server.wait_http()
        yield server
    finally:
        server.stop()


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
