#!/usr/bin/env python
"""Throughput and latency of a real `python -m mlship.serving` process, against in-process ceilings.

    python bench/serve_bench.py            # 1 s warm-up + 5 s measurement per workload (about 1 min)
    python bench/serve_bench.py --quick    # 1 s each, about 30 s
    python bench/serve_bench.py --duration 10 --json results.json
    python bench/serve_bench.py --models rf --serve threads=1 --serve batching=false

Trains two models into a temp dir (the iris example pipeline, and a 100-tree RandomForestClassifier on 20
features), writes their mlship.yaml with `mlship.init.init_project`, starts a server for each on 127.0.0.1
pinned to one CPU and drives it from this process pinned to another CPU with a minimal keep-alive
HTTP/1.1 client on asyncio. Prints req/s, rows/s, p50/p99 latency, errors, the ratio to `predict_proba`
called in-process on one core, cold start and the server's memory (PSS). See bench/README.md.

This module makes the projects, measures the in-process ceilings and runs the workloads; serve_bench_cpus.py
(CPU plan, process CPU and memory), serve_bench_http.py (client, server process), serve_bench_load.py (the load
loop) and serve_bench_report.py (the table) hold the rest, every name re-exported here.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_bench_cpus import (
    USABLE_CPUS,
    cpu_model,
    cpu_ticks,
    load_average,
    memory_mb,
    pinning,
    plan_cpus,
    proc_cpu_seconds,
)
from serve_bench_http import (
    FEATURES,
    HOST,
    ProtocolError,
    ServerProcess,
    build_request,
    free_port,
    http_get,
    http_post,
    read_response,
    request_body,
)
from serve_bench_load import Run, Workload, drive, measure, model_calls, percentile, run_loop, worker
from serve_bench_report import fmt_pct, fmt_rate, print_report

# the names the other benchmarks (overload.py, asgi_floor.py, tensor_bench.py, peers/) import from here
__all__ = ["FEATURES", "HOST", "USABLE_CPUS", "ProtocolError", "Run", "ServerProcess", "Workload", "build_request",
           "cpu_model", "cpu_ticks", "drive", "fmt_pct", "fmt_rate", "free_port", "http_get", "http_post",
           "load_average", "measure", "memory_mb", "model_calls", "percentile", "pinning", "plan_cpus",
           "print_report", "proc_cpu_seconds", "read_response", "request_body", "run_loop", "worker"]


REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris-sklearn"


RF_FEATURES = [f"x{i}" for i in range(20)]
MODELS = ("iris", "rf")


LOAD_AT_START: float | None = None  # set by main(): other work on the machine makes the numbers noisy


def machine(server_cpu: int | None, gen_cpu: int | None, loop_name: str) -> dict[str, Any]:
    versions = {}
    for mod in ("mlship", "sklearn", "numpy", "pandas", "uvicorn", "uvloop", "httptools"):
        with contextlib.suppress(ImportError):
            versions[mod] = getattr(__import__(mod), "__version__", "?")
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": USABLE_CPUS,
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "server_cpu": server_cpu,
        "generator_cpu": gen_cpu,
        "generator_loop": loop_name,
        "load_average_1m_at_start": LOAD_AT_START,
        "versions": versions,
    }


# -- project ---------------------------------------------------------------------------------------
def make_project(directory: Path) -> Path:
    """Train the iris example into directory/model and write directory/mlship.yaml; returns the artifact."""
    sys.path.insert(0, str(IRIS))
    try:
        import train as iris_train  # examples/iris-sklearn/train.py
    finally:
        sys.path.remove(str(IRIS))
    from mlship.init import init_project

    artifact = iris_train.train(directory / "model" / "iris.joblib")
    init_project(artifact, directory=directory, sample=IRIS / "rows.csv")
    return artifact


def iris_rows() -> list[list[float]]:
    from sklearn.datasets import load_iris

    return [[float(v) for v in row] for row in load_iris().data]


def _rf_data() -> tuple[Any, Any]:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=2000, n_features=20, random_state=0)


def make_rf_project(directory: Path) -> Path:
    """A RandomForestClassifier (100 trees) fitted on make_classification's 20 features (a numpy array, so the
    features are x0..x19) into directory/model, and directory/mlship.yaml; returns the artifact."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    from mlship.init import init_project

    x, y = _rf_data()
    artifact = directory / "model" / "rf.joblib"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y), artifact)
    init_project(artifact, directory=directory)
    return artifact


def rf_rows() -> list[list[float]]:
    return [[float(v) for v in row] for row in _rf_data()[0][:300]]


def add_serve_options(contract: Path, options: list[str]) -> None:
    """Append `serve:` settings (KEY=VALUE, YAML values) to a contract written by init (which has none)."""
    if options:
        lines = "".join(f"  {key}: {value}\n" for key, _, value in (o.partition("=") for o in options))
        with contract.open("a") as fh:
            fh.write("serve:\n" + lines)


# -- in-process ceilings ---------------------------------------------------------------------------
def calls_per_second(fn: Callable[[], Any], seconds: float) -> float:
    for _ in range(20):  # warm caches and lazy imports
        fn()
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        fn()
        calls += 1
        now = time.perf_counter()
    return calls / (now - started)


def in_process(artifact: Path, contract: Path, rows: list[list[float]], sizes: tuple[int, ...],
               seconds: float, features: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Calls/s on this core for each batch size: the model alone on a prebuilt float64 array (the ceiling);
    for a model fitted on a DataFrame also on a prebuilt DataFrame and DataFrame build + predict; and the
    whole mlship hot path without HTTP."""
    import warnings

    import joblib
    import numpy as np
    import orjson

    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    features = features or FEATURES
    model = joblib.load(artifact)
    names = getattr(model, "feature_names_in_", None)
    predictor = Predictor(load_project(contract))
    predictor.load()
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        batch = rows[:size]
        array = np.asarray(batch, dtype=np.float64)
        raw = request_body(batch, features)

        def hot_path(raw: bytes = raw, single: bool = size == 1) -> bytes:
            result = predictor.predict(predictor.validator.validate(orjson.loads(raw)).rows)
            return orjson.dumps(result[0] if single else {"predictions": result})

        out[size] = {"predict_proba": calls_per_second(lambda a=array: model.predict_proba(a), seconds)}
        if names is not None:
            import pandas as pd

            columns = [str(n) for n in names]
            frame = pd.DataFrame(batch, columns=features)[columns]

            def with_frame(batch: list[list[float]] = batch, columns: list[str] = columns) -> Any:
                return model.predict_proba(pd.DataFrame(batch, columns=features)[columns])

            out[size]["frame_predict_proba"] = calls_per_second(lambda f=frame: model.predict_proba(f), seconds / 2)
            out[size]["frame_and_predict_proba"] = calls_per_second(with_frame, seconds / 2)
        out[size]["mlship_hot_path"] = calls_per_second(hot_path, seconds / 2)
    return out


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per workload (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per workload (default 1)")
    p.add_argument("--quick", action="store_true", help="1 s warm-up and 1 s measurement; shorter baseline")
    p.add_argument("--max-requests", type=int, default=500_000,
                   help="hard cap on measured requests per workload (default 500000)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None,
                   help="event loop of the load generator (default: uvloop when installed)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated models to serve (default {','.join(MODELS)})")
    p.add_argument("--serve", action="append", default=[], metavar="KEY=VALUE",
                   help="a serve: setting for the contracts, e.g. --serve threads=1 (repeatable)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        p.error(f"--models: choose from {', '.join(MODELS)}")
    if any("=" not in o for o in args.serve):
        p.error("--serve takes KEY=VALUE")
    if args.quick:
        args.duration, args.warmup = 1.0, 1.0
    if args.loop is None:
        args.loop = "uvloop" if _has_uvloop() else "asyncio"
    return args


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind through the finally blocks that stop the server


@dataclass
class BenchModel:
    """One served model: how to make it, its request rows and feature names, and its workloads."""

    name: str
    description: str
    make: Callable[[Path], Path]
    rows: Callable[[], list[list[float]]]
    features: list[str]
    workloads: list[tuple[str, int, int]]  # (name, rows per request, concurrency)


BENCH_MODELS = {
    "iris": BenchModel("iris", "examples/iris-sklearn (StandardScaler + LogisticRegression, fitted on a DataFrame)",
                       make_project, iris_rows, FEATURES, [("1 row/req", 1, 32), ("100 rows/req", 100, 8)]),
    "rf": BenchModel("rf", "RandomForestClassifier(n_estimators=100), 20 features, make_classification(2000)",
                     make_rf_project, rf_rows, RF_FEATURES,
                     [("1 row/req", 1, 32), ("1 row/req", 1, 1), ("100 rows/req", 100, 8)]),
}


def model_input(port: int) -> str | None:
    """The input path the server reports in /metadata (`model_input`), if it reports one."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/metadata")
        value = json.loads(conn.getresponse().read()).get("model_input")
        return str(value) if value is not None else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def bench_model(spec: BenchModel, directory: Path, args: argparse.Namespace, baseline_s: float,
                server_cpu: int | None, gen_cpu: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train, measure the in-process ceilings, start the server, drive the workloads; (model info, workloads)."""
    print(f"{spec.name}: training into {directory} ...", flush=True)
    directory.mkdir(parents=True)
    artifact = spec.make(directory)
    add_serve_options(directory / "mlship.yaml", args.serve)
    rows = spec.rows()
    print(f"{spec.name}: in-process baseline ({baseline_s:g} s per ceiling) ...", flush=True)
    before = (time.process_time(), time.perf_counter(), cpu_ticks(gen_cpu))
    base = in_process(artifact, directory / "mlship.yaml", rows, (1, 100), baseline_s, spec.features)
    after = (time.process_time(), time.perf_counter(), cpu_ticks(gen_cpu))
    base_noise = None  # share of the baseline's CPU used by other processes or stolen
    if before[2] is not None and after[2] is not None:
        wall = after[1] - before[1]
        base_noise = max(0.0, (after[2][0] - before[2][0]) / wall - (after[0] - before[0]) / wall)
        base_noise += (after[2][1] - before[2][1]) / wall
    loads = [Workload(name, n, conc, [request_body(rows[i:i + n], spec.features) for i in range(len(rows) - n + 1)],
                      spec.name) for name, n, conc in spec.workloads]
    print(f"{spec.name}: starting the server ...", flush=True)
    server = ServerProcess(directory, server_cpu)
    try:
        cold = server.cold_start(loads[0].bodies[0])
        ready_memory = server.memory()
        measured = []
        for load in loads:
            print(f"{spec.name}: driving {load.name} at concurrency {load.concurrency} "
                  f"({args.warmup:g} s + {args.duration:g} s) ...", flush=True)
            coro = drive(server, load, args.warmup, args.duration, args.max_requests, server_cpu)
            measured.append(run_loop(coro, args.loop))
        after_memory = server.memory()
        path = model_input(server.port)
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        affinity = server.affinity
    finally:
        server.stop()
    for w in measured:
        w["in_process_calls_per_s"] = base[w["rows_per_request"]]["predict_proba"]
        w["ratio"] = w["req_per_s"] / w["in_process_calls_per_s"]
    info = {"description": spec.description, "cold_start": cold, "memory_ready": ready_memory,
            "memory_after_load": after_memory, "model_input": path, "server_affinity": affinity,
            "in_process": {str(k): v for k, v in base.items()}, "in_process_other_cpu": base_noise}
    return info, measured


def main(argv: list[str] | None = None) -> int:
    global LOAD_AT_START
    args = parse_args(argv)
    LOAD_AT_START = load_average()
    signal.signal(signal.SIGTERM, _terminate)
    server_cpu, gen_cpu = plan_cpus()
    if gen_cpu is not None:
        # before numpy/sklearn start any thread pools, so every thread of this process stays on gen_cpu
        os.sched_setaffinity(0, {gen_cpu})
    baseline_s = 1.0 if args.quick else 2.0
    tmp = Path(tempfile.mkdtemp(prefix="mlship-bench-"))
    try:
        models: dict[str, Any] = {}
        measured: list[dict[str, Any]] = []
        for name in args.models:
            info, workloads = bench_model(BENCH_MODELS[name], tmp / name, args, baseline_s, server_cpu, gen_cpu)
            models[name] = info
            measured.extend(workloads)
        result = {
            "machine": machine(server_cpu, gen_cpu, args.loop),
            "server_affinity": next(iter(models.values()))["server_affinity"],
            "config": {"duration_s": args.duration, "warmup_s": args.warmup, "max_requests": args.max_requests,
                       "baseline_s": baseline_s, "quick": args.quick, "models": args.models, "serve": args.serve},
            "models": models,
            "workloads": measured,
        }
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
