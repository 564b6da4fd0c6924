"""Rows/s of `mlship batch` against the in-process ceiling and against a loop posting rows to `mlship serve`, and
peak memory as the input grows; every ratio printed is measured in this one run.

    python bench/batch_bench.py                                   # iris + forest, 1M rows, all the figures
    python bench/batch_bench.py --examples forest --rows 4000000 --memory-rows 1000000 4000000 20000000

- ceiling: the model's probabilities and each row's label (the argmax's class name, taken from an Arrow array of
  the names, as the output holds it) on float64 rows already in memory, in 65,536-row slices, on all cores (one
  process per core, each with its model and its share of the rows loaded before the clock starts), for the fitted
  model (the joblib file the example trains: ``predict_proba`` on the array) and for the compiled model `mlship
  batch` scores with (onnxruntime); the ceiling is the higher of the two.
- `mlship batch`: ``run_batch`` (what the command calls) in a fresh Python, Parquet in and out, every row checked;
  with the compiled model, and with the fitted one as it is (``serve.compile: 'off'``).
  ``scoring`` is the report's seconds less the model load (reading, checking, scoring, writing: what the ceiling
  is compared with, as the ceiling leaves out its model load too); ``run`` adds the model load, ``process`` adds
  Python's start and imports.
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


def not_compiled(root: Path) -> Path:
    """A copy of the project with ``serve.compile: 'off'``: the fitted model as it is (as for a model whose conversion
    fails), scored through the runtime's own predict."""
    off = root.with_name(f"{root.name}-off")
    shutil.copytree(root, off, ignore=shutil.ignore_patterns(".mlship"))
    with (off / "mlship.yaml").open("a") as fh:
        fh.write("serve:\n  compile: 'off'\n")
    return off


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


def _ceiling_init(root: str, which: str, name: str, n: int, seed: int, barrier: Any) -> None:
    """One ceiling process: the model (``fitted``: the example's joblib file; ``compiled``: the ONNX model mlship
    batch serves), its rows as a float64 array in memory, warmed up."""
    global _MODEL, _ROWS
    import warnings

    warnings.simplefilter("ignore")  # a model fitted on a DataFrame warns once about an array's missing names
    if which == "fitted":
        import joblib  # type: ignore[import-untyped]

        _MODEL = joblib.load(Path(root) / "model" / EXAMPLES[name][1])
    else:
        from mlship.contract_io import load_project
        from mlship.serving.predictor import Predictor

        predictor = Predictor(load_project(Path(root)))
        predictor.load()
        _MODEL = predictor.compiled
    _, _ROWS = matrix(name, n, seed)
    _ceiling_slice(0)
    barrier.wait()


def _ceiling_slice(start: int) -> Any:
    """predict_proba (or the compiled model's probabilities) on one slice, and the label of each row: the argmax's
    class name, taken from an Arrow array of the names, as the batch output holds it."""
    x = _ROWS[start:start + SLICE]
    if hasattr(_MODEL, "predict_proba"):
        proba = _MODEL.predict_proba(x)
        names = [str(c) for c in _MODEL.classes_]
        best = proba.argmax(axis=1)
    else:
        proba = _MODEL.run(x)
        names = [str(c) for c in _MODEL.classes]
        best = _MODEL.best(proba)
    return pa.array(names, pa.string()).take(pa.array(best)), proba


def _ceiling_run(_: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(_ROWS), SLICE):
        _ceiling_slice(start)
    return time.perf_counter() - started


def ceiling(name: str, root: Path, n: int, cores: int, which: str) -> float:
    """Rows/s of the model's probabilities + labels on in-memory float64 rows, one process per core, started
    together (after each loaded its model and rows), in 65,536-row slices."""
    ctx = get_context("spawn")
    rates = []
    for _ in range(2):  # the best of two
        barrier = ctx.Barrier(cores)
        with ProcessPoolExecutor(cores, mp_context=ctx, initializer=_ceiling_init,
                                 initargs=(str(root), which, name, n // cores, 7, barrier)) as pool:
            rates.append(n // cores * cores / max(pool.map(_ceiling_run, range(cores))))
    return max(rates)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
    except psutil.Error:
        return 0


#: `mlship batch`'s own function in a fresh Python: the report's seconds and the model load within them
RUN = ("import json, sys; from pathlib import Path; from mlship.batch import BatchOptions, run_batch; "
       "r = run_batch(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "
       "BatchOptions(workers=int(sys.argv[4]) or None)); "
       "print(json.dumps({'rows': r.rows, 'seconds': r.seconds, 'load_seconds': r.load_seconds}))")


def batch(root: Path, data: Path, out: Path, workers: int | None) -> dict[str, float]:
    """One run of `mlship batch` (run_batch, what the command calls, in a fresh Python): the run's seconds, the
    model load within them, the process's (Python start and imports too), the tree's peak RSS (MB)."""
    args = [sys.executable, "-c", RUN, str(root), str(data), str(out), str(workers or 0)]
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
    return {"run": report["seconds"], "load": report["load_seconds"], "command": command, "rows": report["rows"],
            "peak_mb": peak / 2**20}


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
            fitted = ceiling(name, root, args.rows, cores, "fitted")
            compiled = ceiling(name, root, args.rows, cores, "compiled")
            ceil = max(fitted, compiled)
            print(f"[{name}] ceiling (probabilities + labels, rows in memory, {cores} processes): fitted model's "
                  f"predict_proba {fitted:,.0f} rows/s, compiled model {compiled:,.0f} rows/s; the ceiling is the "
                  f"higher, {ceil:,.0f} rows/s")
            data = Path(tmp) / f"{name}-{args.rows}.parquet"
            write_rows(name, data, args.rows)
            best = 0.0
            for model, where in (("compiled", root), ("not compiled", not_compiled(root))):
                for workers in args.workers:
                    got = min((batch(where, data, Path(tmp) / "out.parquet", workers or None)
                               for _ in range(args.repeat)), key=lambda g: g["run"])
                    rate, run_rate = got["rows"] / (got["run"] - got["load"]), got["rows"] / got["run"]
                    cmd_rate = got["rows"] / got["command"]
                    best = max(best, rate)
                    print(f"[{name}] mlship batch {args.rows:,} rows, {model}, workers "
                          f"{workers or f'default ({cores})'}: scoring {got['run'] - got['load']:.2f}s = "
                          f"{rate:,.0f} rows/s = {rate / ceil:.2f}x the ceiling; run with the model load "
                          f"({got['load']:.2f}s) {got['run']:.2f}s = {run_rate:,.0f} rows/s = {run_rate / ceil:.2f}x; "
                          f"process {got['command']:.2f}s = {cmd_rate:,.0f} rows/s; peak RSS {got['peak_mb']:,.0f} MB")
            data.unlink()
            if args.http_requests:
                for per, rate in http_loop(name, root, args.http_requests, args.http_seconds).items():
                    print(f"[{name}] HTTP loop, {per} row(s) per request: {rate:,.0f} rows/s; mlship batch's best "
                          f"scoring rate is {best / rate:,.1f}x that")
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
