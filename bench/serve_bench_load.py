"""serve_bench.py's load generator: keep-alive connections on asyncio sending a workload for a warm-up and a
measured window (bounded in time and count), the latencies, the server's and the generator's CPU, the model calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve_bench_cpus import cpu_ticks
from serve_bench_http import HOST, ProtocolError, ServerProcess, build_request, read_response


# -- load generator --------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    rows: int
    concurrency: int
    bodies: list[bytes]
    model: str = "iris"


@dataclass
class Run:
    """Shared state of one measurement; responses completing in [measure_start, end] count."""

    measure_start: float
    end: float
    max_requests: int
    stop: asyncio.Event
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)  # every response, warm-up included
    failures: Counter[str] = field(default_factory=Counter)  # transport errors, warm-up included
    total: int = 0

    def done(self, status: int, latency: float, at: float) -> None:
        self.total += 1
        self.statuses[status] += 1
        if status == 200 and self.measure_start <= at <= self.end:
            self.latencies.append(latency)
            if len(self.latencies) >= self.max_requests:
                self.end = at
                self.stop.set()


async def worker(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, requests: list[bytes],
                 offset: int, port: int, run: Run) -> None:
    perf = time.perf_counter
    k = offset
    n = len(requests)
    reader, writer = conn if conn else (None, None)
    try:
        while True:
            t0 = perf()
            if t0 >= run.end:
                return
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(HOST, port)
                except OSError as exc:
                    run.failures[f"connect {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.01)
                    continue
                t0 = perf()
            writer.write(requests[k % n])
            k += 1
            try:
                status, _, close = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError,
                    ValueError) as exc:
                run.failures[type(exc).__name__] += 1
                writer.close()
                reader = writer = None
                continue
            t1 = perf()
            run.done(status, t1 - t0, t1)
            if close:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def drive(server: ServerProcess, load: Workload, warmup: float, duration: float,
                max_requests: int, server_cpu: int | None) -> dict[str, Any]:
    port = server.port
    requests = [build_request(port, b) for b in load.bodies]
    # check once that the server answers this workload correctly
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(requests[0])
    status, body, _ = await read_response(reader)
    writer.close()
    payload = json.loads(body)
    got = 1 if load.rows == 1 and "label" in payload else len(payload.get("predictions", []))
    if status != 200 or got != load.rows:
        raise RuntimeError(f"{load.name}: check request got {status}: {body[:300]!r}")
    calls0 = model_calls(port)
    result = await measure(port, requests, load, warmup, duration, max_requests, server_cpu, server.cpu_seconds)
    calls1 = model_calls(port)
    result["model"] = load.model
    result["rows_per_model_call"] = None  # from mlship_model_batch_rows, for servers that export it
    if calls0 is not None and calls1 is not None and calls1[1] > calls0[1]:
        result["rows_per_model_call"] = (calls1[0] - calls0[0]) / (calls1[1] - calls0[1])
    return result


def model_calls(port: int) -> tuple[float, float] | None:
    """(rows, calls) so far from the server's mlship_model_batch_rows histogram; None if it has none."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("mlship_model_batch_rows_sum", "mlship_model_batch_rows_count"):
            values[name] = float(value)
    if len(values) < 2:
        return None
    return values["mlship_model_batch_rows_sum"], values["mlship_model_batch_rows_count"]


async def measure(port: int, requests: list[bytes], load: Workload, warmup: float, duration: float,
                  max_requests: int, server_cpu: int | None,
                  server_cpu_seconds: Callable[[], float | None]) -> dict[str, Any]:
    """Send the prebuilt raw requests over load.concurrency keep-alive connections: warm-up, then a timed
    window. server_cpu_seconds gives the CPU seconds the server (all its processes) has used so far."""
    conns: list[Any] = []
    for _ in range(load.concurrency):
        try:
            conns.append(await asyncio.open_connection(HOST, port))
        except OSError:
            conns.append(None)
    start = time.perf_counter()
    run = Run(measure_start=start + warmup, end=start + warmup + duration, max_requests=max_requests,
              stop=asyncio.Event())
    stride = max(1, len(requests) // load.concurrency)
    tasks = [asyncio.create_task(worker(c, requests, i * stride, port, run)) for i, c in enumerate(conns)]

    await asyncio.sleep(max(0.0, run.measure_start - time.perf_counter()))
    cpu0 = (time.process_time(), server_cpu_seconds(), time.perf_counter(), cpu_ticks(server_cpu))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.stop.wait(), max(0.0, run.end - time.perf_counter()))
    cpu1 = (time.process_time(), server_cpu_seconds(), time.perf_counter(), cpu_ticks(server_cpu))
    _, pending = await asyncio.wait(tasks, timeout=10.0)  # in-flight requests finish, or time out
    for task in pending:
        task.cancel()
    if pending:
        run.failures["unanswered after 10 s"] += len(pending)
    await asyncio.gather(*tasks, return_exceptions=True)

    window = run.end - run.measure_start
    lat = sorted(run.latencies)
    wall = cpu1[2] - cpu0[2]
    srv_cpu = (cpu1[1] - cpu0[1]) / wall if cpu0[1] is not None and cpu1[1] is not None else None
    errors = sum(c for s, c in run.statuses.items() if s != 200) + sum(run.failures.values())
    other = steal = None  # share of the server's CPU used by other processes / stolen by the hypervisor
    if cpu0[3] is not None and cpu1[3] is not None and srv_cpu is not None:
        other = max(0.0, (cpu1[3][0] - cpu0[3][0]) / wall - srv_cpu)
        steal = (cpu1[3][1] - cpu0[3][1]) / wall
    return {
        "workload": load.name, "rows_per_request": load.rows, "concurrency": load.concurrency,
        "warmup_s": warmup, "window_s": window, "requests": len(lat),
        "req_per_s": len(lat) / window, "rows_per_s": len(lat) * load.rows / window,
        "p50_ms": percentile(lat, 50) * 1e3, "p90_ms": percentile(lat, 90) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3, "max_ms": (lat[-1] if lat else math.nan) * 1e3,
        "errors": errors, "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "transport_failures": dict(run.failures), "hit_max_requests": len(lat) >= max_requests,
        "server_cpu": srv_cpu, "generator_cpu": (cpu1[0] - cpu0[0]) / wall,
        "other_on_server_cpu": other, "steal_on_server_cpu": steal,
    }


def run_loop(coro: Any, loop_name: str) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
