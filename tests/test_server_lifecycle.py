"""Server life cycle against real processes: readiness while loading, load failures, draining on
SIGTERM/SIGINT, refusing to start without API keys, plus unit tests of port and key resolution."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conftest import Server, write_custom_project
from mlship.contract_io import Project, load_project
from mlship.errors import ServeError
from mlship.serving.listener import BACKLOG, SOMAXCONN, accept_queue, backlog_warning, listen_backlog
from mlship.serving.protocol import ReadTimeouts, read_timeouts
from mlship.serving.server import api_keys_for, resolve_port

# load() blocks until the test creates `loaded` (a deliberately slow loader, but deterministic);
# predict() sleeps `sleep` seconds when the input says so.
GATED_LOAD = """
import time
from pathlib import Path

HERE = Path(__file__).parent

def load(path):
    deadline = time.monotonic() + 15
    while not (HERE / "loaded").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never created `loaded`")
        time.sleep(0.01)
    return 2.0

def predict(model, instances):
    return [i["x"] * model for i in instances]
"""

# requests with x >= 1000 wait in the model until the test creates `open` (at most 10 s): they stay in flight
# for as long as the test needs, however slowly they arrive on a busy machine
GATED_ALL = """
import time
from pathlib import Path

HERE = Path(__file__).parent

def load(path):
    return 2.0

def predict(model, instances):
    if any(i["x"] >= 1000 for i in instances):
        deadline = time.monotonic() + 10
        while not (HERE / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
    return [i["x"] * model for i in instances]
"""

FAILING_LOAD = """
def load(path):
    raise RuntimeError("weights are corrupt: checksum 0xdeadbeef")

def predict(model, instances):
    return [0.0 for _ in instances]
"""

TRIVIAL = """
def load(path):
    return 2.0

def predict(model, instances):
    return [i["x"] * model for i in instances]
"""


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_exit(server: Server, timeout: float) -> int:
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server still running after {timeout}s:\n{server.stop()}") from None


# -- readiness --------------------------------------------------------------------------------------
def test_alive_at_once_ready_only_after_loading(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", GATED_LOAD)
    server = Server(project)
    try:
        server.wait_http(timeout=10)  # the port answers while the model is still gated (it loads on the touch below)
        with httpx.Client(base_url=server.url, timeout=5) as client:
            r = client.get("/readyz")
            assert r.status_code == 503
            assert r.json() == {"status": "loading"}
            assert r.headers["retry-after"] == "1"
            r = client.post("/predict", json={"x": 1.0})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "not_ready"
            assert "loading" in r.json()["message"]
            assert client.get("/metadata").status_code == 200  # static endpoints work while loading
            assert metric(client, "mlship_model_ready") == 0
            time.sleep(0.3)
            assert client.get("/readyz").status_code == 503  # still loading: nothing is ready by accident

            (project / "loaded").touch()
            server.wait_ready(timeout=10)
            r = client.get("/readyz")
            assert r.status_code == 200
            assert r.json()["status"] == "ready"
            assert r.json()["version"] == client.get("/metadata").json()["version"]
            r = client.post("/predict", json={"x": 3.0})
            assert r.status_code == 200
            assert r.json() == {"value": 6.0}
            assert metric(client, "mlship_model_ready") == 1
    finally:
        log = server.stop()
    assert "model custom" in log and "ready in" in log


def test_failing_load_exits_1_and_logs_the_error(tmp_path: Path) -> None:
    server = Server(write_custom_project(tmp_path / "p", FAILING_LOAD))
    try:
        code = wait_exit(server, 20)
    finally:
        log = server.stop()
    assert code == 1, log
    assert "model failed to load" in log
    assert "RuntimeError: weights are corrupt: checksum 0xdeadbeef" in log
    assert "predict.py:load" in log


def test_predict_py_that_does_not_import_exits_1(tmp_path: Path) -> None:
    server = Server(write_custom_project(tmp_path / "p", "def load(path:\n"))
    try:
        code = wait_exit(server, 20)
    finally:
        log = server.stop()
    assert code == 1, log
    assert "predict.py failed to import: SyntaxError" in log


# -- shutdown ---------------------------------------------------------------------------------------
def test_sigterm_drains_32_in_flight_requests(tmp_path: Path) -> None:
    # 8 model threads: 8 requests run and 24 wait in the queue when SIGTERM arrives; none may be lost
    project = write_custom_project(tmp_path / "p", GATED_ALL,
                                   serve="serve:\n  threads: 8\n  shutdown_grace_s: 10\n")
    server = Server(project)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=15) as client, \
                httpx.Client(base_url=server.url, timeout=5) as probe, \
                concurrent.futures.ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(client.post, "/predict", json={"x": 1000.0 + i}) for i in range(32)]
            deadline = time.monotonic() + 8
            while metric(probe, "mlship_predictions_in_progress") < 32:
                assert time.monotonic() < deadline, "the 32 requests never were all in flight"
                time.sleep(0.01)
            server.terminate()
            sent = time.monotonic()
            time.sleep(0.15)  # uvicorn notices the signal on its next tick (0.1 s)
            try:  # a new connection: refused, or told the server is not ready
                r = httpx.get(server.url + "/readyz", timeout=2)
                assert r.status_code == 503
                assert r.json()["status"] == "stopping"
            except httpx.ConnectError:
                pass
            (project / "open").touch()
            responses = [f.result() for f in futures]
            code = wait_exit(server, 10)
            took = time.monotonic() - sent
    finally:
        log = server.stop()
    assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses]
    assert [r.json() for r in responses] == [{"value": 2.0 * (1000 + i)} for i in range(32)]
    assert code == 0, log
    assert took < 10  # within shutdown_grace_s
    assert "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_sigint_exits_0_without_traceback(tmp_path: Path) -> None:
    server = Server(write_custom_project(tmp_path / "p", TRIVIAL))
    try:
        server.wait_ready()
        server.proc.send_signal(signal.SIGINT)
        code = wait_exit(server, 10)
    finally:
        log = server.stop()
    assert code == 0, log
    assert "KeyboardInterrupt" not in log
    assert "Traceback" not in log


# -- refusing to start ------------------------------------------------------------------------------
@pytest.mark.parametrize("env_name", ["MLSHIP_API_KEYS", "MY_SERVICE_KEYS"])
def test_api_key_auth_without_keys_refuses_to_start(tmp_path: Path, env_name: str) -> None:
    serve = "serve:\n  auth: api_key\n"
    if env_name != "MLSHIP_API_KEYS":
        serve += f"  api_keys_env: {env_name}\n"
    server = Server(write_custom_project(tmp_path / "p", TRIVIAL, serve=serve), env={env_name: " , "})
    try:
        code = wait_exit(server, 20)
    finally:
        log = server.stop()
    assert code == 1, log
    assert f"serve.auth is api_key but ${env_name} holds no keys" in log
    assert f"export {env_name}=" in log
    assert "Started server process" not in log


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", TRIVIAL)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "mlship.serving", str(project / "mlship.yaml"), "--host", "127.0.0.1",
             "--port", str(port)], capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert f"--port {port + 1}" in proc.stderr


# -- unit: port and key resolution ------------------------------------------------------------------
ProjectFactory = Callable[..., Project]


@pytest.fixture
def project_factory(tmp_path: Path) -> ProjectFactory:
    def make(serve: str = "") -> Project:
        directory = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
        return load_project(write_custom_project(directory, TRIVIAL, serve=serve) / "mlship.yaml")
    return make


def test_resolve_port(project_factory: ProjectFactory) -> None:
    project = project_factory("serve:\n  port: 9123\n")
    assert resolve_port(project, 7000, {"PORT": "8000"}) == 7000  # --port wins
    assert resolve_port(project, None, {"PORT": "8000"}) == 8000  # then $PORT
    assert resolve_port(project, None, {}) == 9123  # then serve.port
    assert resolve_port(project, None, {"PORT": ""}) == 9123  # an empty $PORT is unset
    assert resolve_port(project_factory(), None, {}) == 8080  # the default
    with pytest.raises(ServeError, match=r"\$PORT is not a number: 'http'"):
        resolve_port(project, None, {"PORT": "http"})


def test_resolve_port_reads_os_environ(project_factory: ProjectFactory,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    project = project_factory()
    monkeypatch.setenv("PORT", "9555")
    assert resolve_port(project, None) == 9555


def test_api_keys_for(project_factory: ProjectFactory) -> None:
    open_ = project_factory()
    assert api_keys_for(open_, {}) == []
    assert api_keys_for(open_, {"MLSHIP_API_KEYS": " , "}) == []
    # keys in the environment turn auth on even when serve.auth is none
    assert api_keys_for(open_, {"MLSHIP_API_KEYS": " k1 ,,k2 "}) == ["k1", "k2"]

    locked = project_factory("serve:\n  auth: api_key\n")
    assert api_keys_for(locked, {"MLSHIP_API_KEYS": "k1,k2"}) == ["k1", "k2"]
    for env in ({}, {"MLSHIP_API_KEYS": ""}, {"MLSHIP_API_KEYS": " ,, "}):
        no_keys = r"serve.auth is api_key but \$MLSHIP_API_KEYS holds no keys"
        with pytest.raises(ServeError, match=no_keys) as err:
            api_keys_for(locked, env)
        assert "MLSHIP_API_KEYS=key1,key2" in (err.value.fix or "")

    custom = project_factory("serve:\n  auth: api_key\n  api_keys_env: TEAM_KEYS\n")
    assert api_keys_for(custom, {"TEAM_KEYS": "t1"}) == ["t1"]
    with pytest.raises(ServeError, match=r"\$TEAM_KEYS"):
        api_keys_for(custom, {"MLSHIP_API_KEYS": "k1"})  # the default variable is not read


def test_api_keys_for_reads_os_environ(project_factory: ProjectFactory,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSHIP_API_KEYS", "from-env")
    assert api_keys_for(project_factory()) == ["from-env"]


# -- unit: read timeouts, the listening socket ---------------------------------------------------------------
def test_read_timeouts_from_the_environment() -> None:
    assert read_timeouts({}) == ReadTimeouts(10.0, 30.0)
    assert read_timeouts({"MLSHIP_HEADER_TIMEOUT_S": " 2.5 ", "MLSHIP_BODY_TIMEOUT_S": ""}) == ReadTimeouts(2.5, 30.0)
    for bad in ("0", "-1", "ten", "nan", "1e9"):
        with pytest.raises(ServeError, match=r"\$MLSHIP_BODY_TIMEOUT_S is not a number of seconds") as err:
            read_timeouts({"MLSHIP_BODY_TIMEOUT_S": bad})
        assert err.value.fix == "export MLSHIP_BODY_TIMEOUT_S=30 (the default), or unset it."


def test_bad_header_timeout_refuses_to_start(tmp_path: Path) -> None:
    server = Server(write_custom_project(tmp_path / "p", TRIVIAL), env={"MLSHIP_HEADER_TIMEOUT_S": "forever"})
    try:
        code = wait_exit(server, 20)
    finally:
        log = server.stop()
    assert code == 1, log
    assert "$MLSHIP_HEADER_TIMEOUT_S is not a number of seconds from 0 to 3600: 'forever'" in log
    assert "export MLSHIP_HEADER_TIMEOUT_S=10 (the default)" in log


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the listen backlog is read through TCP_INFO, which only Linux reports for a listening "
                    "socket; elsewhere the server skips that check and its warning")
def test_listen_backlog_and_accept_queue_as_the_kernel_reports_them() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(BACKLOG)
        assert listen_backlog(sock) == min(BACKLOG, int(SOMAXCONN.read_text()))
        sock.listen(7)
        assert listen_backlog(sock) == 7
        clients = [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(3)]
        try:
            assert accept_queue(sock) == 3  # completed by the kernel, not accepted yet
            accepted = [sock.accept()[0] for _ in range(3)]
            assert accept_queue(sock) == 0
            for conn in accepted:
                conn.close()
        finally:
            for client in clients:
                client.close()
    assert listen_backlog(sock) is None  # closed


def test_backlog_warning() -> None:
    assert backlog_warning(None) is None
    assert backlog_warning(4096) is None
    warning = backlog_warning(128)
    assert warning is not None
    assert "caps the listen backlog at 128 (net.core.somaxconn)" in warning
    assert "--sysctl net.core.somaxconn=4096" in warning
