"""Micro-batching over HTTP: concurrent /predict requests coalesced into one model call, per-request answers,
errors, timeouts and overload. The Batcher on its own: test_batcher.py; the sklearn numpy input path:
test_sklearn_numpy_path.py.

Every server test holds the model on a gate (a file the test creates), so which requests share a call is
decided by the test, never by timing.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    GATED_PREDICT,
    metric,
    running,
    wait_metric,
    write_custom_project,
)


class Calls:
    """The model calls the recording snippet saw, after the ones that happened before ``mark()``."""

    def __init__(self, project: Path) -> None:
        self.path = project / "calls.jsonl"
        self.start = 0

    def all(self) -> list[list[float]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def mark(self) -> None:
        self.start = len(self.all())

    def since(self) -> list[list[float]]:
        return self.all()[self.start:]


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        yield executor


def serve_recording(tmp_path: Path, serve: str) -> tuple[Path, Calls]:
    project = write_custom_project(tmp_path / "p", GATED_PREDICT, serve="serve:\n" + serve)
    return project, Calls(project)


def queue_behind_gate(client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor,
                      bodies: list[dict[str, Any]], gate_x: float = 150.0) -> tuple[Any, list[Any]]:
    """Send a request that holds the model on a gate, then ``bodies`` one after the other, each queued
    (predictions in progress counted) before the next is sent: their order in the queue is the list's."""
    blocker = pool.submit(client.post, "/predict", json={"x": gate_x})
    wait_metric(client, "mlship_predictions_in_progress", 1)
    futures = []
    for i, body in enumerate(bodies):
        futures.append(pool.submit(client.post, "/predict", json=body))
        wait_metric(client, "mlship_predictions_in_progress", 2 + i)
    return blocker, futures


# -- coalescing over HTTP ----------------------------------------------------------------------------------
def test_queued_requests_share_one_model_call_and_get_their_own_answers(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, calls = serve_recording(tmp_path, "  threads: 1\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        calls.mark()
        rows_before = metric(client, "mlship_model_batch_rows_sum")
        calls_before = metric(client, "mlship_model_batch_rows_count")
        bodies = [{"x": 1.0}, {"instances": [{"x": 2.0}, {"x": 3.0}]}, {"x": 4.0}, {"instances": [{"x": 5.0}]}]
        try:
            blocker, futures = queue_behind_gate(client, pool, bodies)
        finally:
            (project / "gate-150").touch()
        assert blocker.result().json() == {"value": 300.0}
        assert [f.result().json() for f in futures] == [
            {"value": 2.0}, {"predictions": [{"value": 4.0}, {"value": 6.0}]}, {"value": 8.0},
            {"predictions": [{"value": 10.0}]}]
        assert calls.since() == [[150.0], [1.0, 2.0, 3.0, 4.0, 5.0]]
        assert metric(client, "mlship_model_batch_rows_count") == calls_before + 2
        assert metric(client, "mlship_model_batch_rows_sum") == rows_before + 6
        # requests are still counted one by one
        assert metric(client, 'mlship_requests_total{path="/predict",code="200"}') >= 5
        assert client.get("/metadata").json()["batching"] is True


def test_one_bad_request_in_a_batch_fails_alone(tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, calls = serve_recording(tmp_path, "  threads: 1\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        calls.mark()
        bodies = [{"x": 1.0}, {"instances": [{"x": 2.0}, {"x": 13.0}]}, {"x": 3.0}]
        try:
            _, futures = queue_behind_gate(client, pool, bodies)
        finally:
            (project / "gate-150").touch()
        good1, bad, good2 = (f.result() for f in futures)
        assert (good1.status_code, good1.json()) == (200, {"value": 2.0})
        assert (good2.status_code, good2.json()) == (200, {"value": 6.0})
        assert bad.status_code == 500
        assert bad.json()["error"] == "prediction_failed"
        assert "ValueError: unlucky thirteen" in bad.json()["message"]
        # the shared call failed, then each request ran on its own
        assert calls.since() == [[150.0], [1.0, 2.0, 13.0, 3.0], [1.0], [2.0, 13.0], [3.0]]
        assert metric(client, 'mlship_prediction_errors_total{kind="model"}') == 1
        wait_metric(client, "mlship_predictions_in_progress", 0)


def test_batching_off_runs_one_request_per_call(tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, calls = serve_recording(tmp_path, "  threads: 1\n  batching: false\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        calls.mark()
        bodies = [{"x": 1.0}, {"instances": [{"x": 2.0}, {"x": 3.0}]}, {"x": 4.0}]
        try:
            _, futures = queue_behind_gate(client, pool, bodies)
        finally:
            (project / "gate-150").touch()
        assert [f.result().json() for f in futures] == [
            {"value": 2.0}, {"predictions": [{"value": 4.0}, {"value": 6.0}]}, {"value": 8.0}]
        assert calls.since() == [[150.0], [1.0], [2.0, 3.0], [4.0]]
        assert client.get("/metadata").json()["batching"] is False


def test_max_batch_size_keeps_requests_whole(tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, calls = serve_recording(tmp_path, "  threads: 1\n  max_batch_size: 3\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        calls.mark()
        big = {"instances": [{"x": float(x)} for x in (5, 6, 7, 8)]}  # more rows than max_batch_size: alone
        bodies = [{"x": 1.0}, {"instances": [{"x": 2.0}, {"x": 3.0}]}, {"x": 4.0}, big, {"x": 9.0}]
        try:
            _, futures = queue_behind_gate(client, pool, bodies)
        finally:
            (project / "gate-150").touch()
        assert [f.result().status_code for f in futures] == [200] * 5
        assert futures[3].result().json() == {"predictions": [{"value": 2.0 * x} for x in (5, 6, 7, 8)]}
        assert calls.since() == [[150.0], [1.0, 2.0, 3.0], [4.0], [5.0, 6.0, 7.0, 8.0], [9.0]]


def test_a_queued_request_that_times_out_is_504_and_never_runs(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, calls = serve_recording(tmp_path, "  threads: 1\n  timeout_s: 0.5\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        calls.mark()
        try:
            blocker, (queued,) = queue_behind_gate(client, pool, [{"x": 7.0}])
            assert queued.result().status_code == 504
            assert queued.result().json() == {"error": "timeout", "message": "the prediction took longer than 0.5s"}
            assert blocker.result().status_code == 504
            # the queued request gave its slot back at once; the running call still holds one
            assert metric(client, "mlship_predictions_in_progress") == 1
        finally:
            (project / "gate-150").touch()
        wait_metric(client, "mlship_predictions_in_progress", 0)
        assert client.post("/predict", json={"x": 8.0}).json() == {"value": 16.0}
        assert calls.since() == [[150.0], [8.0]]
        assert metric(client, 'mlship_prediction_errors_total{kind="timeout"}') == 2


def test_queued_requests_count_towards_max_concurrency(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, _ = serve_recording(tmp_path, "  threads: 1\n  max_concurrency: 3\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        try:
            _, futures = queue_behind_gate(client, pool, [{"x": 1.0}, {"x": 2.0}])
            over = client.post("/predict", json={"x": 3.0})
            assert over.status_code == 503
            assert over.headers["retry-after"] == "1"
            assert over.json() == {"error": "overloaded", "message": "3 predictions in progress; retry shortly"}
        finally:
            (project / "gate-150").touch()
        assert [f.result().json() for f in futures] == [{"value": 2.0}, {"value": 4.0}]
        wait_metric(client, "mlship_predictions_in_progress", 0)
        assert client.post("/predict", json={"x": 3.0}).json() == {"value": 6.0}


def test_a_stuck_call_does_not_hold_up_the_others(tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    project, calls = serve_recording(tmp_path, "  threads: 2\n")
    with running(project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        calls.mark()
        try:
            blocker = pool.submit(client.post, "/predict", json={"x": 150.0})
            wait_metric(client, "mlship_predictions_in_progress", 1)
            # answered on the second thread while the first call is still stuck
            assert client.post("/predict", json={"x": 1.0}).json() == {"value": 2.0}
            assert client.post("/predict", json={"x": 2.0}).json() == {"value": 4.0}
            assert not blocker.done()
        finally:
            (project / "gate-150").touch()
        assert blocker.result().json() == {"value": 300.0}
        assert calls.since() == [[150.0], [1.0], [2.0]]
