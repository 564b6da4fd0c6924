#!/usr/bin/env python
"""mlship against the servers people would otherwise write or deploy, on the same model and the same core.

    python bench/peers/run.py                        # 1 s warm-up + 5 s per point, 3 rounds (~15 min)
    python bench/peers/run.py --quick --repeat 1     # 0.5 s + 2 s, one round (~3 min once venvs exist)
    python bench/peers/run.py --only mlship,fastapi --json peers.json
    python bench/peers/run.py --suite tensor         # torch-digits and keras-digits (~12 min once venvs exist)

Builds one venv per peer tool (cached). The sklearn suite (suite_sklearn.py) trains the iris pipeline and a
100-tree random forest once and serves the same artifact from mlship (compiled to ONNX beforehand as `mlship
build` does, and `mlship-native` with serve.compile: off), Flask under gunicorn, FastAPI under uvicorn, BentoML
(with and without adaptive batching) and MLServer (default and parallel_workers 0). The tensor suite
(suite_tensor.py) trains the torch-digits and keras-digits examples and serves them from mlship (compiled and
native), a FastAPI app calling the framework, BentoML with adaptive batching and LitServe with batching. Each
server is pinned to one CPU and driven from another by serve_bench's keep-alive HTTP/1.1 load generator. Prints
one markdown table: throughput, p50/p99, ratios to the in-process ceiling (the model's own call) and to mlship,
cold start and PSS; then mlship over the best peer at c=32 and the c=1 p50s against the in-process call.
See bench/README.md ("Peers").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # serve_bench: the load generator, CPU pinning and /proc readers

import serve_bench  # noqa: E402
import suite_sklearn  # noqa: E402
import suite_tensor  # noqa: E402
import venvs  # noqa: E402
from report import print_report, summarize  # noqa: E402
from servers import APPS, Answer, Model, Peer, Point, Reference, ServerProcess, Suite  # noqa: E402

# CPUs this process may use, read before main() pins it to one
USABLE_CPUS = serve_bench.USABLE_CPUS
SUITES: dict[str, Suite] = {"sklearn": suite_sklearn.SUITE, "tensor": suite_tensor.SUITE}


MAX_BODIES = 64  # distinct request bodies per point, cycled by the load generator


class RunTimeout(BaseException):  # not Exception: event loops would log and swallow it
    pass


# -- requests --------------------------------------------------------------------------------------
def batches(rows: list[Any], size: int) -> list[list[Any]]:
    if size == 1:
        return [[row] for row in rows[:MAX_BODIES]]
    step = max(1, (len(rows) - size + 1) // MAX_BODIES)
    return [rows[i:i + size] for i in range(0, len(rows) - size + 1, step)][:MAX_BODIES]


PARITY = 1e-5  # the definition of the same prediction: same labels, probabilities within 1e-5


def mismatch(got: Answer, want: Answer) -> str | None:
    if got.labels != want.labels:
        return f"labels {got.labels[:5]} != expected {want.labels[:5]}"
    if got.probabilities is not None and want.probabilities is not None:
        for i, (g, w) in enumerate(zip(got.probabilities, want.probabilities, strict=True)):
            if g.keys() != w.keys() or any(abs(g[k] - w[k]) > PARITY for k in w):
                return f"row {i}: probabilities {g} != expected {w}"
    return None


# -- one server ------------------------------------------------------------------------------------
@dataclass
class Settings:
    warmup: float
    duration: float
    max_requests: int
    start_timeout: float
    loop: str
    server_cpu: int | None


LIVE: list[ServerProcess] = []  # servers to stop on the way out, whatever happens


def run_point(peer: Peer, model: Model, point: Point, srv: ServerProcess, port: int, ref: Reference,
              cfg: Settings) -> dict[str, Any]:
    """Check one answer, then time the point. A wrong or failed answer is reported instead of timed."""
    chunks = batches(model.rows, point.rows)
    bodies = [peer.body(model, b) for b in chunks]
    path = peer.path(model)
    try:
        status, raw = serve_bench.http_post(port, bodies[0], timeout=30.0, path=path)
    except OSError as exc:
        return {"error": f"check request failed: {type(exc).__name__}: {exc}"}
    if status != 200:
        return {"error": f"check request got HTTP {status}: {raw[:200]!r}"}
    try:
        got = peer.parse(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"error": f"unreadable answer ({type(exc).__name__}: {exc}): {raw[:200]!r}"}
    wrong = mismatch(got, ref.expected(model.key, chunks[0]))
    if wrong:
        return {"error": f"wrong answer: {wrong}"}
    requests = [serve_bench.build_request(port, body, path) for body in bodies]
    load = serve_bench.Workload(point.title, point.rows, point.concurrency, bodies)
    coro = serve_bench.measure(port, requests, load, cfg.warmup, cfg.duration, cfg.max_requests, cfg.server_cpu,
                               srv.cpu_seconds)
    result: dict[str, Any] = serve_bench.run_loop(coro, cfg.loop)
    raise_pending()
    result["probabilities_checked"] = got.probabilities is not None
    return result


def run_server(peer: Peer, python: Path, model: Model, points: list[Point], ref: Reference, work: Path,
               cfg: Settings, out: dict[str, Any]) -> None:
    """Start `peer` serving `model`, measure its cold start, its points and its PSS into `out` (as they come,
    so an interrupted run keeps them), stop it."""
    port = serve_bench.free_port()
    launch = peer.launch(python, model, port, work)
    srv = ServerProcess(launch, work / "logs" / f"{peer.name}-{model.key}.log", cfg.server_cpu)
    LIVE.append(srv)
    out["points"] = {}
    try:
        first = peer.body(model, model.rows[:1])
        out["cold_start_s"], _, _ = srv.first_answer(port, peer.path(model), first, cfg.start_timeout)
        for point in points:
            print(f"    {point.title:<16} ...", end="", flush=True)
            res = out["points"][point.key] = run_point(peer, model, point, srv, port, ref, cfg)
            if "error" in res:
                print(f" {res['error']}", flush=True)
            else:
                rate, unit = (res["req_per_s"], "req/s") if point.rows == 1 else (res["rows_per_s"], "rows/s")
                print(f" {serve_bench.fmt_rate(rate)} {unit}, p50 {res['p50_ms']:.2f} ms, "
                      f"p99 {res['p99_ms']:.2f} ms, {res['errors']} errors", flush=True)
            if srv.exited() is not None:
                raise srv.failure(f"exited with {srv.proc.returncode} during the load")
        out["pss_mb"] = srv.pss_mb()
        out["processes"] = len(srv.members())
    except RuntimeError as exc:
        out["error"] = str(exc)
        print(f"    !! {peer.name} on {model.key}: {str(exc).splitlines()[0]}", flush=True)
    finally:
        srv.stop()
        LIVE.remove(srv)


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="sklearn",
                   help="sklearn: iris and a random forest (default); tensor: torch-digits and keras-digits")
    p.add_argument("--models", default=None, metavar="A,B", help="only these models of the suite (default all)")
    p.add_argument("--quick", action="store_true", help="0.5 s warm-up + 2 s measurement per point")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per point (default 1)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per point (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians (default 3)")
    p.add_argument("--only", default=None, metavar="A,B",
                   help="servers to run; " + "; ".join(f"{s.name} suite: default {','.join(s.default)}, all "
                                                      f"{','.join(s.peers)}" for s in SUITES.values()))
    p.add_argument("--max-requests", type=int, default=200_000, help="hard cap per point (default 200000)")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="seconds a server may take to answer its first prediction (default 120)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="give up the whole run after this many seconds, installs included (default 3600)")
    p.add_argument("--cache", type=Path, default=venvs.DEFAULT_CACHE,
                   help=f"where the peer venvs live (default {venvs.DEFAULT_CACHE})")
    p.add_argument("--fresh", action="store_true", help="rebuild the peer venvs")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the raw numbers as JSON")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 0.5 if args.quick else 1.0
    args.duration = args.duration if args.duration is not None else 2.0 if args.quick else 5.0
    suite = SUITES[args.suite]
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(suite.default)
    unknown = [n for n in args.names if n not in suite.peers]
    if unknown or not args.names or args.repeat < 1:
        p.error(f"unknown server(s) {unknown}; the {suite.name} suite has {', '.join(suite.peers)}"
                if unknown or not args.names else "--repeat must be at least 1")
    keys = list(dict.fromkeys(pt.model for pt in suite.points))
    wanted = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else keys
    if not wanted or set(wanted) - set(keys):
        p.error(f"--models: the {suite.name} suite has {', '.join(keys)}")
    args.suite = dataclasses.replace(suite, points=[pt for pt in suite.points if pt.model in wanted])
    return args


PENDING: list[BaseException] = []  # a signal that arrived while the load generator's event loop ran


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM and the --timeout alarm: unwind through the finally blocks that stop the servers. Inside the
    event loop an exception raised here could be swallowed by a callback, so it waits until the loop is done
    (at most warm-up + window + 10 s)."""
    exc = RunTimeout() if signum == signal.SIGALRM else KeyboardInterrupt()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise exc from None
    PENDING.append(exc)


def raise_pending() -> None:
    if PENDING:
        raise PENDING.pop(0)


def machine_info(server_cpu: int | None, gen_cpu: int | None, loop: str, load: tuple[float, ...]) -> dict[str, Any]:
    info = serve_bench.machine(server_cpu, gen_cpu, loop)
    info.pop("load_average_1m_at_start", None)
    info["usable_cpus"] = USABLE_CPUS
    info["load_average_at_start"] = load
    info["load_average_at_end"] = os.getloadavg()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite: Suite = args.suite
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    server_cpu, gen_cpu = serve_bench.plan_cpus()
    if gen_cpu is not None:
        # before numpy/sklearn start any thread pools, so every thread of this process stays on gen_cpu
        os.sched_setaffinity(0, {gen_cpu})
    loop = "uvloop" if serve_bench._has_uvloop() else "asyncio"
    cfg = Settings(args.warmup, args.duration, args.max_requests, args.start_timeout, loop, server_cpu)
    ceiling_s = 0.3 if args.quick else 0.5  # x 3 windows, the best counts
    tmp = Path(tempfile.mkdtemp(prefix="mlship-peers-"))
    envs: dict[str, venvs.Venv] = {}
    rounds: list[dict[str, Any]] = []
    models: dict[str, Model] = {}
    incomplete = None
    code = 0
    try:
        for name in dict.fromkeys(v for n in args.names if (v := suite.peers[n].venv)):
            print(f"venv {name}: ", end="", flush=True)
            env = envs[name] = venvs.ensure(name, args.cache, fresh=args.fresh)
            print("reused" if env.reused else f"built in {env.install_s:.0f} s" if env.python
                  else f"NOT INSTALLED ({env.install_s:.0f} s): {env.error}", flush=True)
        print(f"training the models into {tmp} ...", flush=True)
        keys = list(dict.fromkeys(pt.model for pt in suite.points))
        models, ref = suite.prepare(tmp, keys)
        shutil.copytree(APPS, tmp / "apps", ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "logs").mkdir()
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}: in-process ceilings (best of 3 x {ceiling_s:g} s) ...", flush=True)
            this: dict[str, Any] = {"ceiling_samples": [ref.ceilings(ceiling_s, windows=3)],
                                    "latency_ms": ref.latency_ms(ceiling_s * 3), "servers": {}}
            rounds.append(this)
            for name in args.names:
                peer = suite.peers[name]
                venv = envs.get(peer.venv) if peer.venv else None
                if venv is not None and venv.python is None:
                    continue
                python = venv.python if venv is not None and venv.python else Path(sys.executable)
                this["servers"][name] = {}
                for key, model in models.items():
                    this["ceiling_samples"].append(ref.ceilings(ceiling_s, model=key))  # more samples, same core
                    print(f"  {name} serving {key}", flush=True)
                    points = [p for p in suite.points if p.model == key]
                    out: dict[str, Any] = {}
                    this["servers"][name][key] = out
                    run_server(peer, python, model, points, ref, tmp, cfg, out)
    except KeyboardInterrupt:
        incomplete, code = "interrupted", 130
        print("\ninterrupted", file=sys.stderr)
    except RunTimeout:
        incomplete, code = f"--timeout {args.timeout:g} s reached", 1
        print(f"\n--timeout {args.timeout:g} s reached", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for srv in list(LIVE):
            with contextlib.suppress(Exception):
                srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    not_installed = {n: f"{envs[v].error}" for n in args.names
                     if (v := suite.peers[n].venv) and v in envs and envs[v].python is None}
    if not rounds:
        return code or 1
    result = {
        "suite": suite.name,
        "machine": machine_info(server_cpu, gen_cpu, loop, load_at_start),
        "config": {"warmup_s": args.warmup, "duration_s": args.duration, "rounds": len(rounds),
                   "max_requests": args.max_requests, "quick": args.quick,
                   "ceiling_window_s": ceiling_s,
                   "start_timeout_s": args.start_timeout},
        "models": [m.title for m in models.values()],
        "venvs": {k: {"python": str(v.python) if v.python else None, "error": v.error, "reused": v.reused,
                      "install_s": v.install_s, "versions": v.versions} for k, v in envs.items()},
        "servers_run": args.names,
        "points": {p.key: {"model": p.model, "rows": p.rows, "concurrency": p.concurrency} for p in suite.points},
        "rounds": rounds,
        "summary": summarize(suite, rounds, args.names, not_installed),
        "incomplete": incomplete,
        "wall_s": time.perf_counter() - started,
    }
    print_report(suite, result)
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"saved {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
