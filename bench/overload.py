#!/usr/bin/env python
"""How fast an overloaded server says no: 256-way load on a real `python -m mlship.serving` process.

    python bench/overload.py                       # iris example, 256 clients, 5 s (about 15 s in all)
    python bench/overload.py --model spin          # a model that holds the GIL 20 ms per call
    python bench/overload.py --model sleep         # the same time with the GIL free (the control)
    python bench/overload.py --connect new         # a new connection per request (a connection storm)
    python bench/overload.py --json overload.json

Starts the server on 127.0.0.1 pinned to one CPU, drives it from this process pinned to another with
`--concurrency` asyncio clients (raw HTTP/1.1, keep-alive unless `--connect new`), all started at once,
until `--duration` seconds or `--requests` responses, and prints, for the 503 answers and for the 200
answers separately, the share answered within `--within` ms (default 50) and the worst case. Latency is
what a client sees: from the write of the request (from the connect, when it needed a new connection) to
the last byte of the response. The goal on an otherwise idle machine: >= 99 % of 503s within 50 ms, worst
< 200 ms. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_bench import (
    HOST,
    ProtocolError,
    ServerProcess,
    add_serve_options,
    build_request,
    iris_rows,
    load_average,
    make_project,
    percentile,
    plan_cpus,
    read_response,
    request_body,
    run_loop,
)

SPIN_PREDICT = """
import time

def load(path):
    return 2.0

def predict(model, instances):
    # pure Python: holds the GIL the whole call, like a model whose work is Python code
    end = time.perf_counter() + {seconds!r}
    n = 0
    while time.perf_counter() < end:
        n += 1
    return [i["x"] * model for i in instances]
"""

SLEEP_PREDICT = """
import time

def load(path):
    return 2.0

def predict(model, instances):
    time.sleep({seconds!r})  # the GIL is free meanwhile, like a model in C code that releases it
    return [i["x"] * model for i in instances]
"""

SPIN_CONTRACT = """\
name: spin
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


def make_spin_project(directory: Path, spin_ms: float, hold_gil: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pkl").write_bytes(b"not used: predict.py:load makes the model")
    snippet = SPIN_PREDICT if hold_gil else SLEEP_PREDICT
    (directory / "predict.py").write_text(textwrap.dedent(snippet.format(seconds=spin_ms / 1000)))
    (directory / "mlship.yaml").write_text(SPIN_CONTRACT)


@dataclass
class Tally:
    """Latencies by status; transport failures by kind."""

    latencies: dict[int, list[float]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    connects: list[float] = field(default_factory=list)
    worst: list[tuple[float, float, int, bool]] = field(default_factory=list)  # (latency, sent at, status, new conn)
    responses: int = 0
    t0: float = 0.0

    def add(self, status: int, seconds: float, sent: float, new_connection: bool) -> None:
        self.latencies.setdefault(status, []).append(seconds)
        self.responses += 1
        if len(self.worst) < 5 or seconds > self.worst[-1][0]:
            self.worst.append((seconds, sent - self.t0, status, new_connection))
            self.worst.sort(reverse=True)
            del self.worst[5:]


async def client(port: int, requests: list[bytes], offset: int, new_each_time: bool, end: float, limit: int,
                 tally: Tally, start: asyncio.Event) -> None:
    perf = time.perf_counter
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    k = offset
    await start.wait()
    try:
        while perf() < end and tally.responses < limit:
            t0 = perf()
            new_connection = writer is None or reader is None
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
                except (OSError, TimeoutError) as exc:
                    tally.failures[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.01)
                    continue
                tally.connects.append(perf() - t0)
            writer.write(requests[k % len(requests)])
            k += 1
            try:
                status, _, close = await asyncio.wait_for(read_response(reader), 30)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError,
                    ValueError) as exc:
                tally.failures[type(exc).__name__] += 1
                writer.close()
                reader = writer = None
                continue
            tally.add(status, perf() - t0, t0, new_connection)
            if close or new_each_time:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def lag_probe(end: float, lags: list[float]) -> None:
    """This process's own event-loop lag: how late a 5 ms sleep wakes up (a busy generator inflates latency)."""
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t0 - 0.005)


async def drive(port: int, requests: list[bytes], args: argparse.Namespace) -> tuple[Tally, list[float], float]:
    tally = Tally(t0=time.perf_counter())
    lags: list[float] = []
    start = asyncio.Event()
    t_start = time.perf_counter()
    end = t_start + args.duration
    tasks = [asyncio.create_task(client(port, requests, i, args.connect == "new", end, args.requests, tally, start))
             for i in range(args.concurrency)]
    probe = asyncio.create_task(lag_probe(end, lags))
    await asyncio.sleep(0)
    start.set()  # every client at once: the burst is part of what is measured
    _, pending = await asyncio.wait(tasks, timeout=args.duration + 40)
    for task in pending:
        task.cancel()
    if pending:
        tally.failures["client still waiting at the deadline"] += len(pending)
    await asyncio.gather(*tasks, probe, return_exceptions=True)
    return tally, lags, time.perf_counter() - t_start


def summarize(values: list[float], within_s: float) -> dict[str, Any]:
    s = sorted(values)
    return {"count": len(s), "within_share": (sum(v <= within_s for v in s) / len(s)) if s else math.nan,
            "p50_ms": percentile(s, 50) * 1e3, "p99_ms": percentile(s, 99) * 1e3,
            "max_ms": (s[-1] * 1e3) if s else math.nan}


def switch_interval_in_server(directory: Path, ms: float) -> None:
    """An experiment: the server process (it inherits this environment) sets sys.setswitchinterval(ms / 1000)
    at start, from a sitecustomize.py put first on its PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(f"import sys\nsys.setswitchinterval({ms / 1000!r})\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)


def somaxconn() -> int | None:
    """net.core.somaxconn: the kernel caps every listen backlog at it (the server's own is 2048)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("iris", "spin", "sleep"), default="iris",
                   help="iris: the example; spin: a model call of --spin-ms holding the GIL; sleep: the same time "
                        "with the GIL free")
    p.add_argument("--spin-ms", type=float, default=20.0, help="--model spin/sleep: milliseconds per model call")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load (a hard bound)")
    p.add_argument("--requests", type=int, default=100_000, help="stop after this many responses")
    p.add_argument("--connect", choices=("keepalive", "new"), default="keepalive")
    p.add_argument("--within", type=float, default=50.0, help="the latency bound to report the share for, ms")
    p.add_argument("--serve", action="append", default=[], metavar="KEY=VALUE",
                   help="a serve: setting for the contract, e.g. max_concurrency=32 (repeatable)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    p.add_argument("--switch-interval", type=float, default=None, metavar="MS",
                   help="an experiment: the server's sys.setswitchinterval, in ms (Python's default: 5)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwind through the finally that stops the server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    load_at_start = load_average()
    server_cpu, gen_cpu = plan_cpus()
    tmp = Path(tempfile.mkdtemp(prefix="mlship-overload-"))
    server: ServerProcess | None = None
    try:
        if args.model == "iris":
            make_project(tmp)
            rows = iris_rows()
            bodies = [request_body([row]) for row in rows]
        else:
            make_spin_project(tmp, args.spin_ms, hold_gil=args.model == "spin")
            bodies = [json.dumps({"x": float(i)}).encode() for i in range(64)]
        add_serve_options(tmp / "mlship.yaml", args.serve)
        if args.switch_interval is not None:
            switch_interval_in_server(tmp / "site", args.switch_interval)
        server = ServerProcess(tmp, server_cpu)
        server.cold_start(bodies[0])
        if gen_cpu is not None:
            os.sched_setaffinity(0, {gen_cpu})
        requests = [build_request(server.port, b) for b in bodies]
        cpu0 = server.cpu_seconds()
        tally, lags, wall = run_loop(drive(server.port, requests, args), args.loop)
        cpu1 = server.cpu_seconds()
        within = args.within / 1000
        result = {
            "model": {"iris": "iris", "spin": f"spin {args.spin_ms:g} ms/call (GIL held)",
                      "sleep": f"sleep {args.spin_ms:g} ms/call (GIL free)"}[args.model],
            "concurrency": args.concurrency, "connect_mode": args.connect, "serve": args.serve,
            "seconds": wall, "responses": tally.responses,
            "by_status": {str(k): summarize(v, within) for k, v in sorted(tally.latencies.items())},
            "transport_failures": dict(tally.failures),
            "worst": [{"ms": w[0] * 1e3, "sent_at_s": w[1], "status": w[2], "new_connection": w[3]}
                      for w in tally.worst],
            "connect": summarize(tally.connects, within) if tally.connects else None,
            "generator_lag_max_ms": max(lags, default=math.nan) * 1e3,
            "server_cpu": ((cpu1 - cpu0) / wall) if cpu0 is not None and cpu1 is not None else None,
            "load_average_1m_at_start": load_at_start, "cpus": os.cpu_count(),
            "pinned": server_cpu is not None, "within_ms": args.within, "somaxconn": somaxconn(),
            "switch_interval_ms": args.switch_interval,
        }
        measured = cpu0 is not None and cpu1 is not None and tally.responses
        result["server_cpu_ms_per_response"] = (cpu1 - cpu0) * 1e3 / tally.responses if measured else None
        print_report(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_report(r: dict[str, Any]) -> None:
    print(f"overload: {r['model']}, {r['concurrency']} clients ({r['connect_mode']}), {r['seconds']:.1f} s, "
          f"{r['responses']} responses; serve: {' '.join(r['serve']) or 'defaults'}"
          + (f"; server switch interval {r['switch_interval_ms']:g} ms" if r["switch_interval_ms"] else ""))
    print(f"machine: {r['cpus']} CPUs, load average {r['load_average_1m_at_start']} at start, "
          f"{'server and generator pinned to separate CPUs' if r['pinned'] else 'not pinned'}, "
          f"net.core.somaxconn {r['somaxconn']}")
    print(f"{'status':>6} {'count':>8} {'<= ' + format(r['within_ms'], 'g') + ' ms':>10} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'worst ms':>9}")
    for status, s in r["by_status"].items():
        print(f"{status:>6} {s['count']:>8} {s['within_share'] * 100:>9.2f}% {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} "
              f"{s['max_ms']:>9.1f}")
    if r["connect"]:
        c = r["connect"]
        print(f"connect {c['count']:>7} {c['within_share'] * 100:>9.2f}% {c['p50_ms']:>8.1f} {c['p99_ms']:>8.1f} "
              f"{c['max_ms']:>9.1f}")
    print(f"transport failures: {r['transport_failures'] or 'none'}")
    print("worst: " + ", ".join(f"{w['status']} {w['ms']:.0f} ms (sent at {w['sent_at_s']:.2f} s"
                                f"{', new connection' if w['new_connection'] else ''})" for w in r["worst"][:3]))
    srv = r["server_cpu"]
    if srv is not None:
        print(f"server CPU {srv * 100:.0f}% of one core, {r['server_cpu_ms_per_response']:.3f} ms per response")
    print(f"generator loop lag max {r['generator_lag_max_ms']:.1f} ms")
    if r["connect"] and r["connect"]["max_ms"] >= 1000:
        print("!! a connect took 1 s or more: SYNs were dropped because the accept queue was full (a listen backlog "
              "capped by net.core.somaxconn, or a stalled server), and the client retried after 1 s")
    if r["generator_lag_max_ms"] > r["within_ms"] / 2:
        print("!! the load generator itself fell behind: latencies include its own lag")
    if (r["load_average_1m_at_start"] or 0) > 0.5:
        print("!! other work on the machine (load average above 0.5): a noisy run; rerun on an idle machine")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
