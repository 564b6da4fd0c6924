"""Real servers for the tests: a `python -m mlship.serving` process on a free loopback port (``Server``,
``running``), a load thread (``Hammer``), /metrics readers, and a project whose user code can be held or made to fail
(``write_custom_project`` with ``GATED_PREDICT``). conftest.py re-exports every name (``from conftest import running``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


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


def post(client: httpx.Client, body: Any) -> httpx.Response:
    """POST ``body`` as JSON to /predict (serialised here, so a test can send any value, even a bare array)."""
    return client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
