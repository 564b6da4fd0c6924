"""Rows/s of `mlship batch` on the iris example against the in-process ceiling (the compiled model's
``predict`` on one float64 array, no validation, no files), and peak memory as the input grows.

    python bench/batch_bench.py --rows 1000000 --workers 1 2

Each batch run is a separate `python -m mlship batch` process, so its peak RSS (ru_maxrss of the children) is
its own. Say the machine's load next to the figures: they are taken on shared cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris-sklearn"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def project(root: Path) -> Path:
    sys.path.insert(0, str(IRIS))
    import train  # type: ignore[import-not-found]

    from mlship.init import init_project

    (root / "model").mkdir(parents=True)
    train.train(root / "model" / "iris.joblib")
    shutil.copy(IRIS / "rows.csv", root / "rows.csv")
    init_project(root / "model" / "iris.joblib", directory=root, sample=root / "rows.csv")
    return root


def write_rows(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64())] + [(f, pa.float64()) for f in FEATURES])) as w:
        for start in range(0, n, 1_000_000):
            k = min(1_000_000, n - start)
            w.write_table(pa.table({"id": np.arange(start, start + k), **{f: rng.uniform(0, 8, k) for f in FEATURES}}))


def ceiling(root: Path, n: int) -> float:
    """Rows/s of the loaded (compiled) model on one array: what no file, validation or formatting costs."""
    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    predictor = Predictor(load_project(root))
    predictor.load()
    x = np.random.default_rng(1).uniform(0, 8, (n, 4))
    started = time.perf_counter()
    for start in range(0, n, 65_536):
        part = x[start:start + 65_536]
        if predictor.compiled is not None:
            predictor.compiled.predict(part)
        else:
            predictor.model.predict_proba(part)
    return n / (time.perf_counter() - started)


def batch(root: Path, data: Path, out: Path, workers: int) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlship", "batch", "-f", str(root), "-i", str(data), "-o", str(out),
                    "--workers", str(workers)], check=True, capture_output=True, timeout=1800)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = project(Path(tmp) / "iris")
        ceil = ceiling(root, max(args.rows))
        print(f"ceiling (compiled model, one process, arrays in): {ceil:,.0f} rows/s")
        for n in args.rows:
            data = Path(tmp) / f"rows-{n}.parquet"
            write_rows(data, n)
            for workers in args.workers:
                seconds, peak = batch(root, data, Path(tmp) / f"out-{n}-{workers}.parquet", workers)
                print(f"{n:>11,} rows, workers {workers}: {seconds:6.1f}s, {n / seconds:>9,.0f} rows/s "
                      f"({n / seconds / ceil:.2f}x the one-process ceiling), peak RSS of any run so far {peak:,.0f} MB")


if __name__ == "__main__":
    main()
