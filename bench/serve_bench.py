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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris-sklearn"
HOST = "127.0.0.1"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RF_FEATURES = [f"x{i}" for i in range(20)]
MODELS = ("iris", "rf")
# CPUs this process may use, read before main() pins it to one
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
LOAD_AT_START: float | None = None  # set by main(): other work on the machine makes the numbers noisy


# -- CPUs ------------------------------------------------------------------------------------------
def plan_cpus() -> tuple[int | None, int | None]:
    """(server CPU, load-generator CPU): the first two CPUs this process may use, or None if < 2."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def proc_cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of a process (all its threads), from /proc; None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(cpu: int | None) -> tuple[float, float] | None:
    """(busy, steal) seconds of one CPU since boot, from /proc/stat; None where unavailable."""
    if cpu is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
                tck = os.sysconf("SC_CLK_TCK")
                return busy / tck, (v[7] if len(v) > 7 else 0) / tck
    return None


def memory_mb(pid: int) -> dict[str, float] | None:
    """PSS and RSS of a process in MB (10^6 bytes), from /proc/PID/smaps_rollup; None where unavailable.

    PSS (proportional set size) charges each shared page to the processes sharing it in equal parts, so the
    shared libraries this process maps count only for its share: the number to add up across processes."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if line.endswith(" kB")}
    if "Pss" not in kb:
        return None
    return {"pss_mb": kb["Pss"] * 1024 / 1e6, "rss_mb": kb.get("Rss", 0) * 1024 / 1e6}


def load_average() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return None


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


def pinning(m: dict[str, Any], server: str, ceiling: str) -> str:
    """The report's pinning line from machine(): `server` has a {} for the server's CPU."""
    if m["server_cpu"] is None:
        return "none (fewer than 2 usable CPUs): servers and load generator share cores"
    return (f"{server.format(m['server_cpu'])}, load generator + in-process {ceiling} on CPU {m['generator_cpu']} "
            f"({m['generator_loop']})")


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


# -- HTTP ------------------------------------------------------------------------------------------
def request_body(batch: list[list[float]], features: list[str] | None = None) -> bytes:
    """One bare instance for a single row (the common client call), else {"instances": [...]}."""
    instances = [dict(zip(features or FEATURES, row, strict=True)) for row in batch]
    body: Any = instances[0] if len(instances) == 1 else {"instances": instances}
    return json.dumps(body, separators=(",", ":")).encode()


def build_request(port: int, body: bytes, path: str = "/predict") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one response framed by Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"bad status line {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolError("response without Content-Length")
    end = lower.index(b"\r\n", at + 2)
    length = int(lower[at + 17:end])
    body = await reader.readexactly(length) if length else b""
    return status, body, b"\r\nconnection: close" in lower


def http_get(port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status of GET path, or None if nothing answers (yet)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def http_post(port: int, body: bytes, timeout: float = 10.0, path: str = "/predict") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- server process --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m mlship.serving` on a free loopback port, pinned to one CPU, logging to a file."""

    def __init__(self, project_dir: Path, cpu: int | None) -> None:
        self.port = free_port()
        self.log_path = project_dir / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in ("MLSHIP_API_KEYS", "PORT")}
        cmd = [sys.executable, "-m", "mlship.serving", str(project_dir / "mlship.yaml"),
               "--host", HOST, "--port", str(self.port)]
        preexec = None
        if cpu is not None:
            def preexec() -> None:
                os.sched_setaffinity(0, {cpu})
        with self.log_path.open("wb") as log:
            self.started = time.perf_counter()
            # own session: a Ctrl-C in the terminal reaches only the bench, which then stops the server
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=preexec, start_new_session=True)
        self.affinity = sorted(os.sched_getaffinity(self.proc.pid)) if cpu is not None else None

    def cold_start(self, body: bytes, timeout: float = 60.0) -> dict[str, float]:
        """Seconds from process start to the first HTTP answer, to /readyz 200, to a 200 prediction."""
        first_http = None
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"/readyz not 200 after {timeout:g}s:\n{self.log_tail()}")
            status = http_get(self.port, "/readyz")
            now = time.perf_counter()
            if status is not None and first_http is None:
                first_http = now - self.started
            if status == 200:
                ready = now - self.started
                break
            time.sleep(0.005)
        status, payload = http_post(self.port, body)
        if status != 200:
            raise RuntimeError(f"first prediction got {status}: {payload[:300]!r}")
        return {"first_http_s": first_http or ready, "readyz_s": ready,
                "first_prediction_s": time.perf_counter() - self.started}

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid)

    def memory(self) -> dict[str, float] | None:
        return memory_mb(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.proc.kill()
            self.proc.wait()


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


# -- report ----------------------------------------------------------------------------------------
def fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    cfg = result["config"]
    print()
    print(f"machine   : {m['cpu_model']}, nproc {m['nproc']} (usable {m['usable_cpus']})")
    print(f"python    : {m['python']} on {m['platform']}")
    if m["load_average_1m_at_start"] is not None:
        print(f"load      : 1-min load average {m['load_average_1m_at_start']:.2f} at start "
              "(well above 0: other work competes for the CPUs)")
    versions = ", ".join(f"{k}\N{NO-BREAK SPACE}{v}" for k, v in m["versions"].items())
    wrapped = textwrap.fill(versions, 110, initial_indent="versions  : ", subsequent_indent=" " * 12)
    print(wrapped.replace("\N{NO-BREAK SPACE}", " "))
    server = "server on CPU {} (affinity " + str(result["server_affinity"]) + ")"
    print(f"pinning   : {pinning(m, server, 'baseline')}")
    print(f"run       : warm-up {cfg['warmup_s']:g} s + measure {cfg['duration_s']:g} s per workload, "
          f"max {cfg['max_requests']:,} requests; in-process {cfg['baseline_s']:g} s per ceiling"
          + (f"; serve: {', '.join(cfg['serve'])}" if cfg.get("serve") else ""))
    labels = {"predict_proba": "model.predict_proba(prebuilt float64 array) <- ceiling",
              "frame_predict_proba": "model.predict_proba(prebuilt DataFrame)",
              "frame_and_predict_proba": "DataFrame build + predict_proba",
              "mlship_hot_path": "orjson parse + validate + Predictor.predict + dump"}
    for name, info in result["models"].items():
        cs, ready, after = info["cold_start"], info["memory_ready"], info["memory_after_load"]
        print()
        print(f"{name}: {info['description']}; model input: {info.get('model_input') or '-'}")
        print(f"  cold start: process start -> first HTTP answer {cs['first_http_s']:.2f} s, "
              f"-> /readyz 200 {cs['readyz_s']:.2f} s, -> first 200 prediction {cs['first_prediction_s']:.2f} s")
        if ready and after:
            print(f"  memory    : PSS {ready['pss_mb']:.0f} MB when ready, {after['pss_mb']:.0f} MB after the "
                  f"workloads (RSS {ready['rss_mb']:.0f} / {after['rss_mb']:.0f} MB)")
        base = info["in_process"]
        sizes = sorted(base, key=int)
        print("  in-process on one core (calls/s; rows/s = calls/s x rows):")
        print(f"    {'':56}" + "".join(f"{f'{s} row' + ('s' if int(s) > 1 else ''):>12}" for s in sizes))
        for key, label in labels.items():
            if key in base[sizes[0]]:
                print(f"    {label:56}" + "".join(f"{fmt_rate(base[s][key]):>12}" for s in sizes))
        if (info["in_process_other_cpu"] or 0) > 0.05:
            print(f"  !! other processes or the hypervisor took {fmt_pct(info['in_process_other_cpu'])} of the "
                  "baseline's CPU: the ceilings read low")
    print()
    cols = (f"{'model':<6}{'workload':<14}{'conc':>5}{'req/s':>9}{'rows/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'errors':>7}{'in-process ceiling':>21}{'ratio':>7}{'srv cpu':>8}{'gen cpu':>8}{'rows/cpu-s':>11}"
            f"{'rows/call':>10}")
    print(cols)
    print("-" * len(cols))
    for w in result["workloads"]:
        ceiling = w["in_process_calls_per_s"]
        if w["rows_per_request"] == 1:
            ceil_text = f"{fmt_rate(ceiling)} calls/s"
        else:
            ceil_text = f"{fmt_rate(ceiling * w['rows_per_request'])} rows/s"
        print(f"{w['model']:<6}{w['workload']:<14}{w['concurrency']:>5}{fmt_rate(w['req_per_s']):>9}"
              f"{fmt_rate(w['rows_per_s']):>10}{w['p50_ms']:>8.2f}{w['p99_ms']:>8.2f}{w['errors']:>7}"
              f"{ceil_text:>21}{w['ratio']:>7.2f}{fmt_pct(w['server_cpu']):>8}"
              f"{fmt_pct(w['generator_cpu']):>8}"
              f"{fmt_rate(w['rows_per_s'] / w['server_cpu']) if w['server_cpu'] else '-':>11}"
              f"{format(w['rows_per_model_call'], '.1f') if w.get('rows_per_model_call') else '-':>10}")
    print()
    print("ratio = server rows/s / in-process predict_proba rows/s on a prebuilt array (same core count: 1); above")
    print("1 when the server coalesces concurrent requests into fewer model calls. srv/gen cpu = share of one core")
    print("used in the measurement window; rows/cpu-s = rows/s / srv cpu (what one whole core would serve: steadier")
    print("than rows/s when other work shares the core); rows/call = mean rows per model call")
    print("(mlship_model_batch_rows). Numbers move +-30% between runs: compare rows of one run.")
    for w in result["workloads"]:
        tag = f"{w['model']} {w['workload']} c={w['concurrency']}"
        if w["errors"]:
            print(f"!! {tag}: {w['errors']} errors: statuses {w['statuses']}, "
                  f"transport {w['transport_failures']}")
        if w["generator_cpu"] > 0.9 and (w["server_cpu"] or 0) < 0.9:
            print(f"!! {tag}: the load generator used {fmt_pct(w['generator_cpu'])} of its core "
                  "and may be the bottleneck")
        noise = (w["other_on_server_cpu"] or 0) + (w["steal_on_server_cpu"] or 0)
        if noise > 0.05:
            print(f"!! {tag}: other processes or the hypervisor took {fmt_pct(noise)} of the "
                  "server's CPU\n   during the measurement: expect lower, noisier numbers")
        if w["hit_max_requests"]:
            print(f"!! {tag}: stopped at --max-requests before the time ran out")


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
