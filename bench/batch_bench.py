"""Rows/s of `mlship batch` against the in-process ceiling and against a loop posting rows to `mlship serve`, and
peak memory as the input grows; every ratio printed is measured in this one run.

    python bench/batch_bench.py                                   # iris + forest, 1M rows, all the figures
    python bench/batch_bench.py --examples forest --rows 4000000 --memory-rows 1000000 4000000 20000000

- ceiling: the fitted model's own ``predict_proba`` (the joblib file the example trains, as fitted: a DataFrame
  with the feature names) on rows already in memory, in 65,536-row slices, on all cores (one process per core,
  started together, each on its share); the compiled model's call on one process is printed too.
- `mlship batch`: ``python -m mlship batch --json``, Parquet in and out, every row validated; ``run`` is the run's
  own time (the report's ``seconds``: reading, checking, scoring, writing), ``command`` adds Python's start and
  the model load.
- HTTP: `mlship serve` on 127.0.0.1, one client posting in a loop (keep-alive), 1 row and 100 rows per request,
  bounded by --http-requests requests and --http-seconds seconds each.
- memory: the peak of the sum of RSS over the batch command's process tree (sampled every 20 ms). The inputs are
  written in 1M-row pieces and deleted after their run.

Say the machine's load next to the figures (printed first and last): they are taken on shared cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"iris": (REPO / "examples" / "iris-sklearn", "iris.joblib"),
            "forest": (REPO / "examples" / "forest-sklearn", "forest.joblib")}
SLICE = 65_536


def train_module(name: str) -> Any:
    folder, _ = EXAMPLES[name]
    spec = importlib.util.spec_from_file_location(f"train_{name}", folder / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project(name: str, root: Path) -> Path:
    """A project folder for the example, as `mlship init` writes it, with its compiled model kept."""
    from mlship.contract_io import load_project
    from mlship.init import init_project
    from mlship.serving.predictor import Predictor

    folder, model = EXAMPLES[name]
    train_module(name).train(root / "model" / model)
    shutil.copy(folder / "rows.csv", root / "rows.csv")
    init_project(root / "model" / model, directory=root, sample=root / "rows.csv")
    Predictor(load_project(root)).load()  # compiles once, as a deploy does
    return root


def ranges(name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The features and a range per feature: the example rows' min..max, widened by half its span each side."""
    import pyarrow.csv as pacsv  # type: ignore[import-untyped]

    table = pacsv.read_csv(EXAMPLES[name][0] / "rows.csv")
    features = list(train_module(name).FEATURES)
    low = np.array([min(table.column(f).to_pylist()) for f in features], dtype=float)
    high = np.array([max(table.column(f).to_pylist()) for f in features], dtype=float)
    span = np.maximum(high - low, 1.0)
    return features, low - span / 2, high + span / 2


def matrix(name: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    features, low, high = ranges(name)
    return features, np.random.default_rng(seed).uniform(low, high, (n, len(features)))


def write_rows(name: str, path: Path, n: int) -> None:
    """``n`` rows (id + features) written in 1M-row pieces: memory stays small for 20M rows."""
    features, _ = matrix(name, 1, 0)
    schema = pa.schema([("id", pa.int64())] + [(f, pa.float64()) for f in features])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, 1_000_000):
            k = min(1_000_000, n - start)
            _, x = matrix(name, k, start)
            writer.write_table(pa.table({"id": np.arange(start, start + k), **{f: x[:, j] for j, f in
                                                                              enumerate(features)}}))


_MODEL: Any = None
_ROWS: Any = None


def _ceiling_init(model_path: str, name: str, n: int, seed: int, barrier: Any) -> None:
    global _MODEL, _ROWS
    import joblib  # type: ignore[import-untyped]
    import pandas as pd

    _MODEL = joblib.load(model_path)  # the example's own freshly trained file
    features, x = matrix(name, n, seed)
    _ROWS = pd.DataFrame(x, columns=features)
    _MODEL.predict_proba(_ROWS.iloc[:100])  # warm
    barrier.wait()


def _ceiling_run(_: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(_ROWS), SLICE):
        _MODEL.predict_proba(_ROWS.iloc[start:start + SLICE])
    return time.perf_counter() - started


def ceiling(name: str, root: Path, n: int, cores: int) -> float:
    """Rows/s of the fitted model's predict_proba on in-memory rows, one process per core, started together."""
    ctx = get_context("spawn")
    rates = []
    for _ in range(2):  # the best of two
        barrier = ctx.Barrier(cores)
        model = str(root / "model" / EXAMPLES[name][1])
        with ProcessPoolExecutor(cores, mp_context=ctx, initializer=_ceiling_init,
                                 initargs=(model, name, n // cores, 7, barrier)) as pool:
            rates.append(n // cores * cores / max(pool.map(_ceiling_run, range(cores))))
    return max(rates)


def compiled_rate(name: str, root: Path, n: int) -> float | None:
    """Rows/s of the compiled model's call (onnxruntime, one process) on one in-memory array."""
    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    predictor = Predictor(load_project(root))
    predictor.load()
    if predictor.compiled is None:
        return None
    _, x = matrix(name, n, 1)
    started = time.perf_counter()
    for start in range(0, n, SLICE):
        predictor.compiled.predict(x[start:start + SLICE])
    return n / (time.perf_counter() - started)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
    except psutil.Error:
        return 0


def batch(root: Path, data: Path, out: Path, workers: int | None) -> dict[str, float]:
    """One `mlship batch` command: the run's seconds (its report), the command's, the tree's peak RSS (MB)."""
    args = [sys.executable, "-m", "mlship", "batch", "-f", str(root), "-i", str(data), "-o", str(out), "--json"]
    args += ["--workers", str(workers)] if workers else []
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate(timeout=1800)
    command = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"mlship batch failed: {stderr.decode()[-2000:]}")
    report = json.loads(stdout)
    out.unlink()
    out.with_name(f"{out.stem}.rejects{out.suffix}").unlink()
    return {"run": report["seconds"], "command": command, "rows": report["rows"], "peak_mb": peak / 2**20}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_loop(name: str, root: Path, requests: int, seconds: float) -> dict[int, float]:
    """Rows/s of one client posting rows to `mlship serve` in a loop, at 1 and 100 rows per request."""
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlship", "serve", "-f", str(root), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates: dict[int, float] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit("mlship serve did not get ready in 120 s")
            features, x = matrix(name, 100 * requests, 3)
            for per in (1, 100):
                bodies = [{"instances": [dict(zip(features, row, strict=True)) for row in x[i * per:(i + 1) * per]]}
                          for i in range(requests)]
                sent, started = 0, time.perf_counter()
                for body in bodies:
                    client.post("/predict", json=body).raise_for_status()
                    sent += per
                    if time.perf_counter() - started > seconds:
                        break
                rates[per] = sent / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rates


def _spin(_: int) -> float:
    started, x = time.perf_counter(), 0
    for i in range(10_000_000):
        x += i
    return time.perf_counter() - started


def parallelism(cores: int) -> float:
    """How many cores this run really gets now: a CPU loop alone vs one per core at once (2.0 on 2 idle cores)."""
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        list(pool.map(_spin, range(cores)))  # started
        alone = min(pool.submit(_spin, 0).result() for _ in range(2))
        started = time.perf_counter()
        list(pool.map(_spin, range(cores)))
        return cores * alone / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the speed runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="0: the default (all cores)")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[], help="iris inputs for the memory runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per speed figure; the fastest is printed")
    parser.add_argument("--http-requests", type=int, default=2000)
    parser.add_argument("--http-seconds", type=float, default=10.0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"cores: {cores}, load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())}, "
          f"parallel speedup available now: {parallelism(cores):.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.examples:
            root = project(name, Path(tmp) / name)
            ceil = ceiling(name, root, args.rows, cores)
            onnx = compiled_rate(name, root, min(args.rows, 1_000_000))
            print(f"[{name}] ceiling (fitted model's predict_proba, rows in memory, {cores} processes): "
                  f"{ceil:,.0f} rows/s" + (f"; compiled model, 1 process: {onnx:,.0f} rows/s" if onnx else ""))
            data = Path(tmp) / f"{name}-{args.rows}.parquet"
            write_rows(name, data, args.rows)
            best = 0.0
            for workers in args.workers:
                got = min((batch(root, data, Path(tmp) / "out.parquet", workers or None) for _ in range(args.repeat)),
                          key=lambda g: g["run"])
                run_rate, cmd_rate = got["rows"] / got["run"], got["rows"] / got["command"]
                best = max(best, run_rate)
                print(f"[{name}] mlship batch {args.rows:,} rows, workers {workers or f'default ({cores})'}: "
                      f"run {got['run']:.2f}s = {run_rate:,.0f} rows/s = {run_rate / ceil:.2f}x the ceiling; "
                      f"command {got['command']:.2f}s = {cmd_rate:,.0f} rows/s = {cmd_rate / ceil:.2f}x; "
                      f"peak RSS {got['peak_mb']:,.0f} MB")
            data.unlink()
            if args.http_requests:
                for per, rate in http_loop(name, root, args.http_requests, args.http_seconds).items():
                    print(f"[{name}] HTTP loop, {per} row(s) per request: {rate:,.0f} rows/s; mlship batch's best "
                          f"run is {best / rate:,.1f}x that")
        if args.memory_rows:
            root = Path(tmp) / "iris" if "iris" in args.examples else project("iris", Path(tmp) / "iris")
            for n in args.memory_rows:
                data = Path(tmp) / f"mem-{n}.parquet"
                write_rows("iris", data, n)
                got = batch(root, data, Path(tmp) / "out.parquet", None)
                data.unlink()
                print(f"[memory] iris {n:>11,} rows, default workers: peak RSS of the process tree "
                      f"{got['peak_mb']:,.0f} MB, run {got['run']:.1f}s ({got['rows'] / got['run']:,.0f} rows/s)")
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}, "
          f"parallel speedup available now: {parallelism(cores):.2f}x")


if __name__ == "__main__":
    main()
