"""Adaptive micro-batching: concurrent /predict requests share one model call.

Whenever the model is idle, everything queued at that moment (whole requests, up to ``max_rows`` rows)
becomes one call on the concatenated rows, and the results are split back per request. A lone request is
dispatched at once (after ``max_wait_s``, default 0), so batching costs it nothing; under load, requests
queue while the model runs and the next call takes them all, so the batches grow with the load.

One coalesced call runs at a time: on one core, parallel calls only split the queue into smaller batches
that fight over the GIL. A call that runs much longer than usual (``stall_s``: four times the recent
average, between 10 ms and 1 s) stops counting, so a slow or stuck call cannot hold up the requests behind it:
they start another call on a free thread (at most ``threads`` calls in all). Without coalescing
(``coalesce=False``) every request is its own call and up to ``threads`` run at once, as before batching.

If a coalesced call raises, its requests are retried one at a time, so only a request that fails on its
own gets the error. Everything but ``_run`` and ``_done_threadsafe`` (model threads) runs on the event loop
thread: no locks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: `X | Y` between types needs Python 3.10 at run time (images run 3.9+)
    Outcome = list[Any] | BaseException  # one request's predictions, or what its model call raised
MIN_STALL_S = 0.010
MAX_STALL_S = 1.0


class Job:
    """One request's rows and the future its handler awaits; ``state`` is queued -> running, or cancelled."""

    __slots__ = ("future", "n", "rows", "state")

    def __init__(self, rows: Any, future: asyncio.Future[list[Any]]) -> None:
        self.rows = rows
        self.n = len(rows)
        self.future = future
        self.state = "queued"


class Call:
    """One model call in progress: its requests, when it started, whether it stopped counting (stalled)."""

    __slots__ = ("jobs", "stalled", "started")

    def __init__(self, jobs: list[Job], started: float) -> None:
        self.jobs = jobs
        self.started = started
        self.stalled = False


class Batcher:
    """Queue of pending requests in front of the model threads.

    ``predict(rows) -> one result per row`` runs in ``executor`` (``threads`` threads); ``concat(list of
    rows) -> rows`` joins requests; ``release(n)`` is called when ``n`` requests stop being in progress
    (their call returned, or they were cancelled while queued); ``observe(rows)`` sees each call's size.
    """

    def __init__(self, predict: Callable[[Any], list[Any]], executor: concurrent.futures.Executor, *,
                 threads: int, max_rows: int, max_wait_s: float, coalesce: bool,
                 concat: Callable[[list[Any]], Any], release: Callable[[int], None],
                 observe: Callable[[int], None]) -> None:
        self.predict = predict
        self.executor = executor
        self.threads = threads
        self.parallel = 1 if coalesce else threads  # calls that may run at once, stalled ones not counted
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.coalesce = coalesce
        self.concat = concat
        self.release = release
        self.observe = observe
        self.queue: deque[Job] = deque()
        self.queued = 0  # requests in the queue that are not cancelled
        self.queued_rows = 0
        self.calls: set[Call] = set()
        self.stalled = 0
        self.call_seconds = 0.0  # moving average of a call's duration
        self._handle: asyncio.Handle | None = None  # the pending _dispatch
        self._waiting = False  # _handle is a max_wait_s timer, not a call_soon
        self._stall_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, rows: Any) -> asyncio.Future[list[Any]]:
        """Queue one request's rows; the future gets its predictions (or the exception its call raised).

        Completing the future from outside (a timeout sets an exception; cancelling it) drops the request if it
        is still queued; a running one finishes in its thread.
        """
        loop = self._loop or self._bind()
        future: asyncio.Future[list[Any]] = loop.create_future()
        job = Job(rows, future)
        future.add_done_callback(partial(self._abandoned, job))
        self.queue.append(job)
        self.queued += 1
        self.queued_rows += job.n
        if self._waiting and self.queued_rows >= self.max_rows and self._handle is not None:
            self._handle.cancel()  # the batch is full: stop waiting for more
            self._handle = None
        self._schedule()
        return future

    @property
    def stall_s(self) -> float:
        return min(max(MIN_STALL_S, 4 * self.call_seconds), MAX_STALL_S)

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _abandoned(self, job: Job, future: asyncio.Future[list[Any]]) -> None:
        if job.state == "queued":  # only a running job's future is completed here: this one was given up
            job.state = "cancelled"
            self.queued -= 1
            self.queued_rows -= job.n
            self.release(1)

    def _free(self) -> bool:
        return len(self.calls) < self.threads and len(self.calls) - self.stalled < self.parallel

    def _schedule(self) -> None:
        if self._handle is not None or not self.queued:
            return
        loop = self._loop
        assert loop is not None
        if self._free():
            # call_soon, not a direct call: requests whose handlers run in this loop iteration join the batch
            if self.max_wait_s > 0 and self.coalesce and self.queued_rows < self.max_rows:
                self._waiting = True
                self._handle = loop.call_later(self.max_wait_s, self._dispatch)
            else:
                self._waiting = False
                self._handle = loop.call_soon(self._dispatch)
        elif len(self.calls) < self.threads and self._stall_timer is None:
            oldest = min(call.started for call in self.calls if not call.stalled)
            self._stall_timer = loop.call_at(oldest + self.stall_s, self._check_stalls)

    def _check_stalls(self) -> None:
        self._stall_timer = None
        assert self._loop is not None
        now = self._loop.time()
        for call in self.calls:
            if not call.stalled and now - call.started >= self.stall_s:
                call.stalled = True
                self.stalled += 1
        self._schedule()

    def _dispatch(self) -> None:
        self._handle = None
        self._waiting = False
        loop = self._loop
        assert loop is not None
        while self.queued and self._free():
            call = Call(self._take(), loop.time())
            self.calls.add(call)
            self.observe(sum(job.n for job in call.jobs))
            try:
                done = self.executor.submit(self._run, call.jobs)
            except RuntimeError as exc:  # the executor is shut down (the server is stopping)
                self._finish(call, [exc] * len(call.jobs))
                continue
            done.add_done_callback(partial(self._done_threadsafe, loop, call))
        self._schedule()

    def _take(self) -> list[Job]:
        """Whole requests from the head of the queue: at least one, at most max_rows rows (one if not coalescing)."""
        jobs: list[Job] = []
        rows = 0
        queue = self.queue
        while queue:
            job = queue[0]
            if job.state != "queued":
                queue.popleft()
                continue
            if jobs and (not self.coalesce or rows + job.n > self.max_rows):
                break
            queue.popleft()
            job.state = "running"
            jobs.append(job)
            rows += job.n
        self.queued -= len(jobs)
        self.queued_rows -= rows
        return jobs

    def _run(self, jobs: list[Job]) -> tuple[list[Outcome], float]:
        """Model thread: one call for all jobs, split per job; if it raises, one call per job. Also the seconds
        the first call took."""
        started = time.perf_counter()
        if len(jobs) == 1:
            outcome = self._call(jobs[0].rows)
            return [outcome], time.perf_counter() - started
        try:
            out = self.predict(self.concat([job.rows for job in jobs]))
        except Exception:
            seconds = time.perf_counter() - started
            return [self._call(job.rows) for job in jobs], seconds
        seconds = time.perf_counter() - started
        outcomes: list[Outcome] = []
        start = 0
        for job in jobs:
            outcomes.append(out[start:start + job.n])
            start += job.n
        return outcomes, seconds

    def _call(self, rows: Any) -> Outcome:
        try:
            return self.predict(rows)
        except Exception as exc:
            return exc

    def _done_threadsafe(self, loop: asyncio.AbstractEventLoop, call: Call,
                         done: concurrent.futures.Future[tuple[list[Outcome], float]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            loop.call_soon_threadsafe(self._done, call, done)

    def _done(self, call: Call, done: concurrent.futures.Future[tuple[list[Outcome], float]]) -> None:
        try:  # one look at the future (each takes its lock): it is done, so result() does not block
            outcomes, seconds = done.result()
        except concurrent.futures.CancelledError:  # the executor was shut down before the call started
            self._finish(call, [asyncio.CancelledError()] * len(call.jobs))
            return
        except Exception as exc:  # _run catches the model's exceptions: this is a bug, failed per request
            self._finish(call, [exc] * len(call.jobs))
            return
        self.call_seconds += 0.1 * (min(seconds, MAX_STALL_S) - self.call_seconds)
        self._finish(call, outcomes)

    def _finish(self, call: Call, outcomes: list[Outcome]) -> None:
        self.calls.discard(call)
        if call.stalled:
            self.stalled -= 1
        if self._stall_timer is not None:  # it watched the calls as they were; _schedule sets a new one if needed
            self._stall_timer.cancel()
            self._stall_timer = None
        self.release(len(call.jobs))
        for job, outcome in zip(call.jobs, outcomes):  # noqa: B905 - _run gives one per job; 3.9: no strict=
            future = job.future
            if future.done():  # timed out while its call ran
                continue
            if isinstance(outcome, asyncio.CancelledError):
                future.cancel()
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._schedule()


def concat_rows(parts: list[Any]) -> Any:
    """Join the rows of several requests: lists of rows, or numpy arrays (N, *shape) of one dtype."""
    first = parts[0]
    if isinstance(first, list):
        return [row for part in parts for row in part]
    return np.concatenate(parts)
