"""Micro-batching: concurrent /predict requests coalesced into one model call, per-request answers, errors,
timeouts and overload; and the sklearn runtime's numpy input path, checked against pandas.

Every server test holds the model on a gate (a file the test creates), so which requests share a call is
decided by the test, never by timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from conftest import (
    GATED_PREDICT,
    make_iris_project,
    metric,
    outcome,
    running,
    slow_validator,
    wait_metric,
    write_custom_project,
)
from mlship.contract import Feature
from mlship.contract_io import load_project
from mlship.runtimes import sklearn as sklearn_runtime
from mlship.runtimes.pytorch import PytorchRuntime
from mlship.runtimes.sklearn import SklearnRuntime
from mlship.runtimes.tensorflow import TensorflowRuntime
from mlship.serving.batcher import Batcher, concat_rows
from mlship.serving.predictor import Predictor
from mlship.serving.validation import Validator


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


# -- the Batcher on its own ------------------------------------------------------------------------------
class Model:
    """predict() for the Batcher: records each call's rows; rows holding "block" wait for ``release``."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def predict(self, rows: list[Any]) -> list[Any]:
        self.calls.append(list(rows))
        if "block" in rows:
            self.started.set()
            assert self.release.wait(10)
        if "bad" in rows:
            raise ValueError("bad row")
        return [f"out:{r}" for r in rows]


def run_batcher(body: Any, *, threads: int = 1, max_rows: int = 256, coalesce: bool = True,
                model: Model | None = None) -> Any:
    """Run ``await body(batcher)`` on a fresh loop: (model, its result, requests released, call sizes)."""
    model = model or Model()

    async def main() -> Any:
        released: list[int] = []
        sizes: list[int] = []
        with concurrent.futures.ThreadPoolExecutor(threads) as executor:
            batcher = Batcher(model.predict, executor, threads=threads, max_rows=max_rows, max_wait_s=0.0,
                              coalesce=coalesce, concat=concat_rows, release=released.append,
                              observe=sizes.append)
            result = await body(batcher)
        return result, sum(released), sizes

    result, released, sizes = asyncio.run(main())
    return model, result, released, sizes


def test_batcher_coalesces_what_queued_while_the_model_ran() -> None:
    async def body(batcher: Batcher) -> Any:
        first = batcher.submit(["a"])
        await asyncio.sleep(0)  # dispatched alone: nothing else was queued
        rest = [batcher.submit([x]) for x in ("b", "c")] + [batcher.submit(["d", "e"])]
        return [await first] + [await f for f in rest]

    model, result, released, sizes = run_batcher(body)
    assert result == [["out:a"], ["out:b"], ["out:c"], ["out:d", "out:e"]]
    assert model.calls == [["a"], ["b", "c", "d", "e"]]
    assert sizes == [1, 4] and released == 4


def test_batcher_retries_a_failed_call_request_by_request() -> None:
    async def body(batcher: Batcher) -> Any:
        futures = [batcher.submit(rows) for rows in (["a"], ["bad", "b"], ["c"])]
        return await asyncio.gather(*futures, return_exceptions=True)

    model, (a, bad, c), released, _ = run_batcher(body)
    assert (a, c) == (["out:a"], ["out:c"])
    assert isinstance(bad, ValueError)
    assert model.calls == [["a", "bad", "b", "c"], ["a"], ["bad", "b"], ["c"]]
    assert released == 3


def test_batcher_without_coalescing_runs_each_request_alone() -> None:
    async def body(batcher: Batcher) -> Any:
        return await asyncio.gather(*(batcher.submit([x]) for x in "abc"))

    model, result, _, sizes = run_batcher(body, coalesce=False)
    assert result == [["out:a"], ["out:b"], ["out:c"]]
    assert sorted(map(tuple, model.calls)) == [("a",), ("b",), ("c",)]
    assert sizes == [1, 1, 1]


def test_batcher_drops_an_abandoned_queued_request() -> None:
    model = Model()

    async def body(batcher: Batcher) -> Any:
        blocker = batcher.submit(["block"])
        assert await asyncio.to_thread(model.started.wait, 10)
        gone = batcher.submit(["gone"])
        kept = batcher.submit(["kept"])
        gone.cancel()  # what a timeout does to a request that is still queued
        model.release.set()
        return await blocker, await kept

    _, result, released, _ = run_batcher(body, model=model)
    assert result == (["out:block"], ["out:kept"])
    assert model.calls == [["block"], ["kept"]]
    assert released == 3  # the dropped request's slot too


def test_batcher_starts_another_call_when_one_is_stuck() -> None:
    model = Model()

    async def body(batcher: Batcher) -> Any:
        blocker = batcher.submit(["block"])
        assert await asyncio.to_thread(model.started.wait, 10)
        answered = await asyncio.wait_for(batcher.submit(["next"]), 10)  # on the second thread
        assert not blocker.done()
        model.release.set()
        return answered, await blocker

    _, result, released, _ = run_batcher(body, threads=2, model=model)
    assert result == (["out:next"], ["out:block"])
    assert released == 2


def test_batcher_max_rows_keeps_requests_whole() -> None:
    model = Model()

    async def body(batcher: Batcher) -> Any:
        blocker = batcher.submit(["block"])
        assert await asyncio.to_thread(model.started.wait, 10)
        futures = [batcher.submit(rows) for rows in (["a", "b"], ["c"], ["d", "e", "f", "g"], ["h"])]
        model.release.set()
        return [await blocker] + [await f for f in futures]

    _, result, _, sizes = run_batcher(body, max_rows=3, model=model)
    assert result[3] == ["out:d", "out:e", "out:f", "out:g"]
    assert model.calls == [["block"], ["a", "b", "c"], ["d", "e", "f", "g"], ["h"]]
    assert sizes == [1, 3, 4, 1]


def test_concat_rows_joins_lists_and_arrays() -> None:
    assert concat_rows([[[1, 2]], [[3, 4], [5, 6]]]) == [[1, 2], [3, 4], [5, 6]]
    joined = concat_rows([np.zeros((1, 2, 2)), np.ones((2, 2, 2))])
    assert joined.shape == (3, 2, 2) and joined[1:].all()


@pytest.mark.parametrize("runtime_class", [TensorflowRuntime, PytorchRuntime])
def test_tensor_runtimes_batch_and_settle_softmax_once(runtime_class: Any) -> None:
    # whether outputs are probabilities or logits is decided once (the first batch: the probe rows), so another
    # request's rows in the same call never change an answer
    assert SklearnRuntime.batchable is True and runtime_class.batchable is True
    rt = runtime_class()
    rt.task = "classification"
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    first = rt.scores_output(logits)
    assert rt.scores_kind == "logits"
    looks_like_probabilities = np.array([[0.2, 0.3, 0.5]])  # alone, a batch-wide guess would keep these as they are
    alone = rt.scores_output(looks_like_probabilities).probabilities
    mixed = rt.scores_output(np.concatenate([logits, looks_like_probabilities])).probabilities
    np.testing.assert_allclose(alone[0], mixed[2])
    np.testing.assert_allclose(first.probabilities, mixed[:2])
    assert not np.allclose(alone[0], [0.2, 0.3, 0.5])  # softmax applied: the model's outputs are logits


# -- the numpy input path of the sklearn runtime ---------------------------------------------------------
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3], [6.0, 2.2, 4.0, 1.0]]


NATIVE = "serve:\n  compile: 'off'\n"  # the sklearn model itself, not its compiled form (tests/test_compiled.py)


def test_iris_takes_the_numpy_path_checked_against_pandas(
        tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor(load_project(make_iris_project(tmp_path, iris_model, NATIVE)))
    predictor.load()
    assert predictor.input_path == "numpy (checked against pandas)"
    frame = pd.DataFrame(IRIS_ROWS, columns=predictor.features)
    expected = predictor.model.predict_proba(frame)

    def no_frames(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a DataFrame was built on the numpy path")

    monkeypatch.setattr(sklearn_runtime, "_frame", no_frames)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the feature-names warning is filtered, no other warning is raised
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        out = predictor.runtime.predict(predictor.model, IRIS_ROWS, predictor.features)
    np.testing.assert_allclose(out.probabilities, expected, rtol=0, atol=1e-12)
    assert any(f[1] is not None and f[1].pattern.startswith("X does not have valid feature names")
               for f in warnings.filters)


def test_numpy_path_follows_the_models_column_order(tmp_path: Path, iris_model: Path) -> None:
    project = make_iris_project(tmp_path, iris_model, NATIVE)
    contract = project / "mlship.yaml"
    text = contract.read_text()
    reordered = ("    petal_width: float\n    sepal_length: float\n    sepal_width: float\n"
                 "    petal_length: float\n")
    start = text.index("    sepal_length: float\n")
    end = text.index("    petal_width: float\n") + len("    petal_width: float\n")
    contract.write_text(text[:start] + reordered + text[end:])
    predictor = Predictor(load_project(project))
    predictor.load()
    assert predictor.features == ["petal_width", "sepal_length", "sepal_width", "petal_length"]
    assert predictor.input_path == "numpy (checked against pandas)"
    rows = [[r[3], r[0], r[1], r[2]] for r in IRIS_ROWS]  # in the contract's order
    got = predictor.runtime.predict(predictor.model, rows, predictor.features).probabilities
    expected = predictor.model.predict_proba(pd.DataFrame(IRIS_ROWS, columns=predictor.model.feature_names_in_))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def frame_data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    y = np.where(x["a"] + x["b"] > 0, "yes", "no")
    return x, y


def test_a_model_that_selects_columns_by_name_keeps_dataframes(tmp_path: Path) -> None:
    from mlship.init import init_project

    x, y = frame_data()
    model = make_pipeline(ColumnTransformer([("scaled", StandardScaler(), ["b", "a"])]), LogisticRegression())
    model.fit(x, y)
    artifact = tmp_path / "model.joblib"
    joblib.dump(model, artifact)
    init_project(artifact, directory=tmp_path)
    predictor = Predictor(load_project(tmp_path))
    predictor.load()
    assert predictor.input_path == "dataframe"
    rows = x.to_numpy()[:5].tolist()
    got = predictor.predict(rows)
    expected = model.predict_proba(x.iloc[:5])
    assert [g["probabilities"]["yes"] for g in got] == pytest.approx(expected[:, 1].tolist(), abs=1e-12)


def _double_arrays(x: Any) -> Any:
    """Different on arrays than on DataFrames: the numpy path must be refused."""
    return x * 2 if isinstance(x, np.ndarray) else x


def test_a_model_that_predicts_differently_on_arrays_keeps_dataframes() -> None:
    x, y = frame_data()
    model = make_pipeline(FunctionTransformer(_double_arrays), LogisticRegression()).fit(x, y)
    runtime = SklearnRuntime()
    assert runtime.prepare(model, x.to_numpy()[:20].tolist(), ["a", "b", "c"]) == "dataframe"
    out = runtime.predict(model, x.to_numpy()[:3].tolist(), ["a", "b", "c"])
    np.testing.assert_allclose(out.probabilities, model.predict_proba(x.iloc[:3]), rtol=0, atol=1e-12)


def test_a_model_fitted_without_names_takes_arrays() -> None:
    x, y = frame_data()
    model = LogisticRegression().fit(x.to_numpy(), y)
    assert SklearnRuntime().prepare(model, x.to_numpy()[:5].tolist(), ["x0", "x1", "x2"]) == "numpy"


def test_metadata_reports_the_input_path(tmp_path: Path, iris_model: Path) -> None:
    project = make_iris_project(tmp_path, iris_model, NATIVE)
    with running(project) as server:
        meta = httpx.get(server.url + "/metadata").json()
        assert meta["model_input"] == "numpy (checked against pandas)"
        assert meta["compiled"] is False
        assert meta["batching"] is True
        assert "model input: numpy (checked against pandas); batching: on" in server.output()


# -- the validator's fast paths agree with the path that lists every problem ---------------------------------
UNIFORM = {"a": Feature(type="float"), "b": Feature(type="float"), "c": Feature(type="float")}
MIXED = {"x": Feature(type="float", minimum=0, maximum=10), "n": Feature(type="int", enum=[1, 2, 3]),
         "s": Feature(type="str"), "f": Feature(type="bool")}
field_values = (st.none() | st.booleans() | st.integers(-5, 15) | st.text(max_size=2)
                | st.floats(allow_nan=True, allow_infinity=True) | st.lists(st.integers(), max_size=2))


@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@settings(max_examples=400, deadline=None)
@given(data=st.data(), mixed=st.booleans())
def test_fast_validation_agrees_with_the_slow_path(data: st.DataObject, mixed: bool) -> None:
    features = MIXED if mixed else UNIFORM
    names = [*features, "other"]
    # mostly valid instances (the fast paths' case), with values of other types or out of range mixed in
    valid = (st.fixed_dictionaries({"x": st.floats(-1, 11), "n": st.sampled_from([1, 2, 3, 4]),
                                    "s": st.text(max_size=2), "f": st.booleans()}) if mixed
             else st.fixed_dictionaries({name: st.floats(allow_nan=False) for name in features}))
    instance = (valid | valid | st.dictionaries(st.sampled_from(names), field_values, max_size=5)
                | st.fixed_dictionaries({name: field_values for name in features}))
    instances = data.draw(st.lists(instance | field_values, min_size=1, max_size=4))
    body = {"instances": instances}
    fast, slow = outcome(Validator(features, 50), body), outcome(slow_validator(features), body)
    assert repr(fast) == repr(slow)  # repr: NaN == NaN, and int 1 differs from float 1.0
