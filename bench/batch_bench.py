"""Rows/s of `mlship batch` against the in-process ceiling and against a loop posting rows to `mlship serve`, and
peak memory as the input grows; every ratio printed is measured in this one run.

    python bench/batch_bench.py                                   # iris + forest, 1M rows, all the figures
    python bench/batch_bench.py --examples forest --rows 4000000 --memory-rows 1000000 4000000 20000000

- ceilings (bench/batch_ceiling.py), on all cores: in memory, the model's probabilities and labels on float64 rows
  already in memory, for the fitted model (``predict_proba``) and the compiled one (onnxruntime), the higher of the
  two; file to file, a hand-written script per core on its own share of the rows in its own Parquet file (read,
  score as above, write the id, labels and probabilities), with its reading and writing share of the time.
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
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from batch_ceiling import file_to_file, in_memory
from batch_data import EXAMPLES, matrix, not_compiled, project, write_rows


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


def ceilings(name: str, root: Path, rows: int, cores: int, tmp: Path) -> tuple[float, float]:
    """(in memory, file to file) rows/s, printed."""
    fitted = in_memory(name, root, rows, cores, "fitted")
    compiled = in_memory(name, root, rows, cores, "compiled")
    which, ceil = ("compiled", compiled) if compiled >= fitted else ("fitted", fitted)
    files, io_share = file_to_file(name, root, rows, cores, which, tmp)
    print(f"[{name}] ceiling in memory (probabilities + labels, rows in memory, {cores} processes): fitted model's "
          f"predict_proba {fitted:,.0f} rows/s, compiled model {compiled:,.0f} rows/s: {ceil:,.0f} rows/s; file to "
          f"file (a script per core on its own Parquet file, the {which} model, no row checked): {files:,.0f} rows/s "
          f"= {files / ceil:.2f}x; reading and writing are {io_share:.0%} of its time: about {1 - io_share:.2f}x the "
          "in-memory ceiling is what any file-to-file run can reach here")
    return ceil, files


def speed(name: str, root: Path, args: argparse.Namespace, cores: int, tmp: Path) -> float:
    """Rounds of (the ceilings, then each `mlship batch` configuration), so that every ratio is also taken between
    figures measured minutes apart at most; the best of each figure and the median of the rounds' ratios are
    printed. Returns the best scoring rate."""
    data = tmp / f"{name}-{args.rows}.parquet"
    write_rows(name, data, args.rows)
    configs = [(model, where, workers) for model, where in (("compiled", root), ("not compiled", not_compiled(root)))
               for workers in args.workers]
    ceils: list[tuple[float, float]] = []
    runs: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(configs))}
    for round_ in range(args.repeat):
        print(f"[{name}] round {round_ + 1} of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
        ceils.append(ceilings(name, root, args.rows, cores, tmp))
        for i, (_, where, workers) in enumerate(configs):
            runs[i].append(batch(where, data, tmp / "out.parquet", workers or None))
    data.unlink()
    ceil, files = max(c[0] for c in ceils), max(c[1] for c in ceils)
    print(f"[{name}] ceilings, the best of {args.repeat} round(s): in memory {ceil:,.0f} rows/s, file to file "
          f"{files:,.0f} rows/s")
    best = 0.0
    for i, (model, _, workers) in enumerate(configs):
        got = min(runs[i], key=lambda g: g["run"] - g["load"])
        scoring = [g["rows"] / (g["run"] - g["load"]) for g in runs[i]]
        rate, run_rate, cmd_rate = max(scoring), got["rows"] / got["run"], got["rows"] / got["command"]
        best = max(best, rate)
        pairs = list(zip(scoring, ceils, strict=True))
        in_rounds = (f" (each round's own ratios, median: {statistics.median(r / c[0] for r, c in pairs):.2f}x, "
                     f"{statistics.median(r / c[1] for r, c in pairs):.2f}x)" if args.repeat > 1 else "")
        print(f"[{name}] mlship batch {args.rows:,} rows, {model}, workers {workers or f'default ({cores})'}: scoring "
              f"{got['run'] - got['load']:.2f}s = {rate:,.0f} rows/s = {rate / ceil:.2f}x the in-memory ceiling, "
              f"{rate / files:.2f}x the file-to-file one{in_rounds}; run with the load ({got['load']:.2f}s) "
              f"{got['run']:.2f}s = {run_rate:,.0f} rows/s = {run_rate / ceil:.2f}x; process {got['command']:.2f}s = "
              f"{cmd_rate:,.0f} rows/s; peak RSS {got['peak_mb']:,.0f} MB")
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the speed runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="0: the default (all cores)")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[], help="iris inputs for the memory runs")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the ceilings and the batch runs; the best of "
                        "each figure is printed, and the median of the rounds' ratios")
    parser.add_argument("--http-requests", type=int, default=2000)
    parser.add_argument("--http-seconds", type=float, default=10.0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"cores: {cores}, load average: {' '.join(f'{v:.1f}' for v in os.getloadavg())}, "
          f"parallel speedup available now: {parallelism(cores):.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.examples:
            root = project(name, Path(tmp) / name)
            best = speed(name, root, args, cores, Path(tmp))
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
