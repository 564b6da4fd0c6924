"""The Batcher on its own (no server): coalescing what queued while the model ran, retrying a failed call request
by request, abandoned and stuck calls, max rows, concat_rows, and the tensor runtimes' batched softmax.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import numpy as np
import pytest

from mlship.runtimes.pytorch import PytorchRuntime
from mlship.runtimes.sklearn import SklearnRuntime
from mlship.runtimes.tensorflow import TensorflowRuntime
from mlship.serving.batcher import Batcher, concat_rows


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
