"""Request limits against real server processes: 413 body size, 504 timeout, 500 model errors and
503 overload (max_concurrency)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import GATED_PREDICT, Server, metric, running, wait_metric, write_custom_project

BODY_LIMIT = 1024


def padded(obj: object, size: int) -> bytes:
    """JSON for obj, padded with trailing whitespace to exactly size bytes (still valid JSON)."""
    raw = json.dumps(obj).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    project = write_custom_project(tmp_path_factory.mktemp("limited"), GATED_PREDICT,
                                   serve=f"serve:\n  timeout_s: 0.5\n  max_body_bytes: {BODY_LIMIT}\n")
    with running(project, env={"MLSHIP_API_KEYS": ""}) as server:
        yield server, project


@pytest.fixture(scope="module")
def client(limited: tuple[Server, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited[0].url, timeout=10) as c:
        yield c


# -- 413 -----------------------------------------------------------------------------------------------
def test_body_at_the_limit_is_accepted(client: httpx.Client) -> None:
    r = client.post("/predict", content=padded({"x": 1.5}, BODY_LIMIT))
    assert r.status_code == 200, r.text
    assert r.json() == {"value": 3.0}


def test_body_over_the_limit_with_content_length_is_413(client: httpx.Client) -> None:
    before = metric(client, 'mlship_requests_total{path="/predict",code="413"}')
    r = client.post("/predict", content=padded({"x": 1.5}, BODY_LIMIT + 1))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "body_too_large",
                        "message": f"request body exceeds {BODY_LIMIT} bytes; send fewer instances"}
    assert metric(client, 'mlship_requests_total{path="/predict",code="413"}') == before + 1


def test_huge_body_is_413(client: httpx.Client) -> None:
    r = client.post("/predict", content=padded({"x": 1.5}, 5_000_000))
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


def chunks(body: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_chunked_body_under_the_limit_is_accepted(client: httpx.Client) -> None:
    r = client.post("/predict", content=chunks(padded({"x": 2.0}, BODY_LIMIT)))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 200, r.text
    assert r.json() == {"value": 4.0}


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    r = client.post("/predict", content=chunks(padded({"x": 2.0}, BODY_LIMIT + 1)))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"
    assert client.post("/predict", json={"x": 1.0}).status_code == 200  # the server is fine afterwards


def test_large_chunked_body_is_cut_off_with_413(client: httpx.Client) -> None:
    r = client.post("/predict", content=chunks(padded({"x": 2.0}, 2_000_000), 16_384))
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


# -- 504 and model errors ---------------------------------------------------------------------------
def test_slow_prediction_is_504_and_the_server_keeps_serving(
        client: httpx.Client, limited: tuple[Server, Path]) -> None:
    project = limited[1]
    started = time.monotonic()
    r = client.post("/predict", json={"x": 150.0})
    took = time.monotonic() - started
    assert r.status_code == 504
    assert r.json() == {"error": "timeout", "message": "the prediction took longer than 0.5s"}
    assert 0.45 < took < 3.0
    # the stuck call still holds its model thread; the others keep answering
    assert metric(client, "mlship_predictions_in_progress") == 1
    for x in (1.0, 2.0, 3.0):
        r = client.post("/predict", json={"x": x})
        assert r.status_code == 200, r.text
        assert r.json() == {"value": 2 * x}
    assert metric(client, 'mlship_prediction_errors_total{kind="timeout"}') == 1
    (project / "gate-150").touch()
    wait_metric(client, "mlship_predictions_in_progress", 0)
    assert client.get("/readyz").status_code == 200


def test_model_exception_is_500_json_and_logged(client: httpx.Client, limited: tuple[Server, Path]) -> None:
    r = client.post("/predict", json={"instances": [{"x": 1.0}, {"x": 13.0}]})
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "prediction_failed"
    assert "ValueError: unlucky thirteen" in body["message"]
    assert "Traceback" not in body["message"]  # the traceback goes to the log, not to the client
    assert metric(client, 'mlship_prediction_errors_total{kind="model"}') == 1
    assert metric(client, "mlship_predictions_in_progress") == 0
    assert client.post("/predict", json={"x": 1.0}).json() == {"value": 2.0}
    assert "prediction failed" in limited[0].output()
    assert "unlucky thirteen" in limited[0].output()


# -- 503 overload ---------------------------------------------------------------------------------------
def test_overload_is_503_with_retry_after(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT, serve="serve:\n  max_concurrency: 2\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        try:
            slow = [pool.submit(client.post, "/predict", json={"x": 150.0 + i}) for i in range(2)]
            wait_metric(client, "mlship_predictions_in_progress", 2)
            rest = [pool.submit(client.post, "/predict", json={"x": 1.0}) for _ in range(6)]
            rejected = [f.result() for f in rest]
            # health endpoints do not count against max_concurrency
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            assert metric(client, "mlship_predictions_in_progress") == 2
        finally:
            for i in range(2):
                (project / f"gate-{150 + i}").touch()
        for r in rejected:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json() == {"error": "overloaded", "message": "2 predictions in progress; retry shortly"}
        assert [f.result().json() for f in slow] == [{"value": 300.0}, {"value": 302.0}]
        assert metric(client, 'mlship_prediction_errors_total{kind="overload"}') == 6
        wait_metric(client, "mlship_predictions_in_progress", 0)
        # capacity is back: two at a time succeed again
        again = [pool.submit(client.post, "/predict", json={"x": 4.0}) for _ in range(2)]
        assert [f.result().json() for f in again] == [{"value": 8.0}] * 2


def test_burst_of_8_against_max_concurrency_2(tmp_path: Path) -> None:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT, serve="serve:\n  max_concurrency: 2\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        try:
            futures = [pool.submit(client.post, "/predict", json={"x": 200.0}) for _ in range(8)]
            deadline = time.monotonic() + 10
            while sum(f.done() for f in futures) < 6:
                assert time.monotonic() < deadline, "the overflow was not rejected at once"
                time.sleep(0.01)
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").json()["status"] == "ready"
        finally:
            (project / "gate-200").touch()
        codes = sorted(f.result().status_code for f in futures)
    assert codes == [200, 200] + [503] * 6
