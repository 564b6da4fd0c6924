"""Scenarios of the serving contract, black-box: each starts a real `python -m mlship.serving` process and
asserts only what a client observes on the wire (status, headers, FIN or reset, refused connections).

One scenario per clause that no other file covers; docs/scenarios-serving.md maps every clause to its test.
Timing bounds here are deliberately loose (the machine is shared): speed targets live in bench/overload.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import select
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import GATED_PREDICT, Server, metric, running, wait_metric, write_custom_project

# every call sleeps 20 ms (the GIL is free meanwhile): requests are in flight whenever SIGTERM arrives
SLOW_PREDICT = """
import time

def load(path):
    return 2.0

def predict(model, instances):
    time.sleep(0.02)
    return [i["x"] * model for i in instances]
"""


# -- a raw HTTP/1.1 client: what exactly arrives on one connection -----------------------------------------
@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Raw client sockets a test opens with connect(); closed at teardown, also when the test fails."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def connect(server: Server, sockets: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sockets.append(sock)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response framed by Content-Length: (status, lower-cased headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF before a complete response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("EOF inside a response body")
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def closed_cleanly(sock: socket.socket, timeout: float) -> bool:
    """True when the server's FIN arrives (recv -> b''); a reset raises ConnectionResetError."""
    sock.settimeout(timeout)
    return sock.recv(1) == b""


# -- keep-alive clients during a SIGTERM drain --------------------------------------------------------------
def _drain_under_load(server: Server, threads: int, keep_alive: bool) -> tuple[Counter[str], list[str]]:
    """`threads` clients post without pause until their connection is refused; SIGTERM after 0.5 s. Returns the
    outcomes (status codes and exception names) and the responses' Connection headers after the signal."""
    outcomes: Counter[str] = Counter()
    after: list[str] = []
    lock = threading.Lock()
    signalled = threading.Event()
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads if keep_alive else 0)
    with httpx.Client(base_url=server.url, timeout=15, limits=limits) as client:
        def post_until_refused(i: int) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    r = client.post("/predict", json={"x": float(i)})
                except httpx.ConnectError:
                    with lock:
                        outcomes["refused"] += 1
                    return
                except httpx.TransportError as exc:  # reset, or closed after the request was sent
                    with lock:
                        outcomes[type(exc).__name__] += 1
                    continue
                with lock:
                    outcomes[str(r.status_code)] += 1
                    if signalled.is_set():
                        after.append(r.headers.get("connection", "keep-alive"))
                assert r.status_code != 200 or r.json() == {"value": 2.0 * i}
            with lock:
                outcomes["still answered after 30 s"] += 1

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(post_until_refused, i) for i in range(threads)]
            time.sleep(0.5)
            signalled.set()
            server.terminate()
            for f in futures:
                f.result()
    return outcomes, after


def test_keepalive_clients_see_no_reset_during_sigterm_drain(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", SLOW_PREDICT, serve="serve:\n  threads: 4\n")
    server = Server(project)
    try:
        server.wait_ready()
        outcomes, after = _drain_under_load(server, threads=32, keep_alive=True)
        code = server.proc.wait(20)
    finally:
        log = server.stop()
    # every request got its answer (in flight or arriving on an open connection after the signal: the model is
    # still loaded), or its new connection was refused: a clean error any client retries elsewhere
    assert set(outcomes) <= {"200", "refused"}, (outcomes, log)
    assert outcomes["refused"] == 32
    assert outcomes["200"] > 32
    assert "close" in after  # responses written after the signal say so (test below: exactly which)
    assert code == 0, log


def test_new_connection_per_request_during_drain_is_answered_or_refused(tmp_path: Path) -> None:
    # `docker stop` under load used to accept connections and then close them unanswered
    project = write_custom_project(tmp_path / "p", SLOW_PREDICT, serve="serve:\n  threads: 4\n")
    server = Server(project)
    try:
        server.wait_ready()
        outcomes, _ = _drain_under_load(server, threads=32, keep_alive=False)
        code = server.proc.wait(20)
    finally:
        log = server.stop()
    assert set(outcomes) <= {"200", "refused"}, (outcomes, log)
    assert outcomes["refused"] == 32
    assert code == 0, log


# -- Connection: close, idle connections, the listener ------------------------------------------------------
def test_after_sigterm_responses_say_connection_close_and_idle_connections_get_a_fin(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT, serve="serve:\n  shutdown_grace_s: 10\n")
    with running(project) as server:
        idle = connect(server, sockets)
        idle.sendall(request("GET", "/healthz"))
        status, headers, _ = read_response(idle)
        assert status == 200 and headers.get("connection") != "close"  # keep-alive before the signal

        busy = connect(server, sockets)  # a prediction in flight: holds the drain open until the test releases it
        busy.sendall(request("POST", "/predict", b'{"x": 150.0}'))
        with httpx.Client(base_url=server.url, timeout=5) as probe:
            wait_metric(probe, "mlship_predictions_in_progress", 1)

        halfway = connect(server, sockets)  # a request whose headers are still arriving when the signal comes
        halfway.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\n")
        time.sleep(0.1)

        server.terminate()
        assert closed_cleanly(idle, timeout=5)  # the idle keep-alive connection: FIN, while the drain goes on
        with pytest.raises(ConnectionRefusedError):  # the listener refuses; it does not accept and drop
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()

        halfway.sendall(b"\r\n")
        status, headers, body = read_response(halfway)
        assert (status, headers["connection"]) == (503, "close")
        assert body == b'{"status":"stopping"}'
        assert closed_cleanly(halfway, timeout=5)

        assert server.proc.poll() is None  # still draining: the prediction is in flight
        (project / "gate-150").touch()
        status, headers, body = read_response(busy)
        assert (status, body) == (200, b'{"value":300.0}')
        assert headers["connection"] == "close"
        assert closed_cleanly(busy, timeout=5)
        assert server.proc.wait(10) == 0


def test_idle_keepalive_connection_is_closed_with_a_fin_after_5_s(tmp_path: Path,
                                                                  sockets: list[socket.socket]) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT)
    with running(project) as server:
        sock = connect(server, sockets)
        sock.sendall(request("POST", "/predict", b'{"x": 1.0}'))
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert closed_cleanly(sock, timeout=15)  # FIN (a reset would raise ConnectionResetError)
        assert 4 < time.monotonic() - started < 10


# -- read timeouts ------------------------------------------------------------------------------------------
def test_slow_header_client_is_cut_off_and_others_are_served(tmp_path: Path, sockets: list[socket.socket]) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT)
    with running(project, env={"MLSHIP_HEADER_TIMEOUT_S": "1"}) as server, \
            httpx.Client(base_url=server.url, timeout=5) as client:
        silent = connect(server, sockets)  # connects and sends nothing
        slow = connect(server, sockets)
        started = time.monotonic()
        slow.sendall(b"POST /predict HTTP/1.1\r\n")
        for i in range(40):  # one header byte every 0.1 s: would hold the connection for ever
            if _readable(slow):
                break
            slow.sendall(b"X-Slow: " if i == 0 else b"a")
            r = client.post("/predict", json={"x": 2.0})  # meanwhile other clients are served at once
            assert (r.status_code, r.json()) == (200, {"value": 4.0})
            time.sleep(0.1)
        status, headers, body = read_response(slow)
        took = time.monotonic() - started
        assert status == 408, body
        assert headers["connection"] == "close"
        assert body == (b'{"error":"request_timeout",'
                        b'"message":"the request headers did not arrive in time; send it at once"}')
        assert 0.9 < took < 4, took
        assert closed_cleanly(slow, timeout=5)
        assert closed_cleanly(silent, timeout=5)  # nothing asked, nothing answered: just closed
        assert metric(client, 'mlship_requests_total{path="other",code="408"}') == 1


def test_slow_body_is_cut_off_with_408(tmp_path: Path, sockets: list[socket.socket]) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT)
    with running(project, env={"MLSHIP_BODY_TIMEOUT_S": "1"}) as server, \
            httpx.Client(base_url=server.url, timeout=5) as client:
        slow = connect(server, sockets)
        started = time.monotonic()
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"x\": ")
        status, headers, body = read_response(slow)
        took = time.monotonic() - started
        assert status == 408, body
        assert headers["connection"] == "close"
        assert b"the request body did not arrive in time" in body
        assert 0.9 < took < 4, took
        assert closed_cleanly(slow, timeout=5)
        r = client.post("/predict", json={"x": 3.0})
        assert (r.status_code, r.json()) == (200, {"value": 6.0})
        assert metric(client, "mlship_predictions_in_progress") == 0  # the cut-off request never reached the model


# -- overload -----------------------------------------------------------------------------------------------
def test_overload_is_answered_503_at_once_and_keeps_the_connection(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT, serve="serve:\n  max_concurrency: 2\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client, \
            concurrent.futures.ThreadPoolExecutor(66) as pool:
        try:
            slow = [pool.submit(client.post, "/predict", json={"x": 150.0 + i}) for i in range(2)]
            wait_metric(client, "mlship_predictions_in_progress", 2)

            def timed_post(i: int) -> tuple[httpx.Response, float]:
                t0 = time.monotonic()
                r = client.post("/predict", json={"x": float(i)})
                return r, time.monotonic() - t0

            rejected = [f.result() for f in [pool.submit(timed_post, i) for i in range(64)]]
            # one connection, several requests: each 503 leaves the connection usable (its body was read)
            sock = connect(server, sockets)
            for _ in range(3):
                sock.sendall(request("POST", "/predict", b'{"x": 1.0}'))
                status, headers, _ = read_response(sock)
                assert (status, headers["retry-after"]) == (503, "1")
                assert "connection" not in headers
            # two requests in one packet, the first asking to close: one answer, then a FIN (not a reset)
            sock.sendall(request("POST", "/predict", b'{"x": 1.0}', "Connection: close\r\n")
                         + request("POST", "/predict", b'{"x": 2.0}'))
            status, headers, _ = read_response(sock)
            assert (status, headers["connection"]) == (503, "close")
            assert closed_cleanly(sock, timeout=5)
        finally:
            for i in range(2):
                (project / f"gate-{150 + i}").touch()
        for r, took in rejected:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json() == {"error": "overloaded", "message": "2 predictions in progress; retry shortly"}
            assert took < 5  # at once, not after the gated predictions (10 s): speed targets are in the bench
        assert [f.result().json() for f in slow] == [{"value": 300.0}, {"value": 302.0}]
        assert metric(client, 'mlship_prediction_errors_total{kind="overload"}') == 68
        assert metric(client, 'mlship_requests_total{path="/predict",code="503"}') == 68


def test_overload_still_asks_for_the_api_key_first(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT,
                                   serve="serve:\n  max_concurrency: 1\n  auth: api_key\n")
    auth = {"Authorization": "Bearer k1"}
    with running(project, env={"MLSHIP_API_KEYS": "k1"}) as server, \
            httpx.Client(base_url=server.url, timeout=15, headers=auth) as client, \
            httpx.Client(base_url=server.url, timeout=15) as anonymous, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            slow = pool.submit(client.post, "/predict", json={"x": 150.0})
            wait_metric(client, "mlship_predictions_in_progress", 1)
            assert anonymous.post("/predict", json={"x": 1.0}).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert anonymous.post("/predict", json={"x": 1.0}, headers=wrong).status_code == 401
            assert client.post("/predict", json={"x": 1.0}).status_code == 503
        finally:
            (project / "gate-150").touch()
        assert slow.result().json() == {"value": 300.0}


# -- in the image: `docker stop` under load -----------------------------------------------------------------
def test_docker_stop_under_load_answers_or_refuses_every_request(docker_engine: Any,
                                                                 iris_image: tuple[Path, str]) -> None:
    # reviewers saw `docker stop` under load accept 377 connections and close them unanswered. Clients connect to
    # the container's own address: the published port goes through docker-proxy, which accepts every connection
    # itself, whatever the server does (the local target's clients see that; this test is about the server)
    project, image = iris_image
    example = yaml.safe_load((project / "mlship.yaml").read_text())["examples"][0]["input"]
    # a network of its own: once the container is gone, its address cannot go to another engine user's container
    network = docker_engine.networks.create(f"mlship-scenario-{uuid.uuid4().hex[:8]}", driver="bridge")
    container = docker_engine.containers.run(image, detach=True, labels={"dev.mlship.role": "scenario-test"},
                                             environment={"MLSHIP_API_KEYS": ""}, network=network.name)
    try:
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        url = f"http://{address}:8080"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            time.sleep(0.1)
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def post_until_gone() -> None:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:  # a new connection per request: what a load balancer's health-checked pool does under churn
                    r = httpx.post(url + "/predict", json=example, timeout=15)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    with lock:
                        outcomes["refused"] += 1  # refused, or the container's address is gone: never sent
                    return
                except httpx.TransportError as exc:
                    with lock:
                        outcomes[type(exc).__name__] += 1
                    continue
                with lock:
                    outcomes[str(r.status_code)] += 1
                assert r.status_code != 200 or r.json()["label"] in ("setosa", "versicolor", "virginica"), r.text

        with concurrent.futures.ThreadPoolExecutor(17) as pool:
            clients = [pool.submit(post_until_gone) for _ in range(16)]
            until = time.monotonic() + 15
            while outcomes["200"] < 32 and time.monotonic() < until:  # load going on: answers are coming
                time.sleep(0.05)
            stopping = pool.submit(container.stop, timeout=10)
            for f in clients:
                f.result()
            stopping.result()
        container.reload()
        logs = container.logs().decode()
        assert set(outcomes) <= {"200", "refused"}, (outcomes, logs[-2000:])
        assert outcomes["refused"] == 16 and outcomes["200"] >= 16, outcomes
        assert container.attrs["State"]["ExitCode"] == 0, logs[-2000:]
    finally:
        container.remove(force=True)
        network.remove()
