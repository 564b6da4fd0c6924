"""The two ceilings bench/batch_bench.py compares `mlship batch` with, each on all cores (one process per core,
each with its model and its share of the work ready before the clock starts, started together; the best of two):

- in memory: the model's probabilities and each row's label (the argmax's class name, taken from an Arrow array
  of the names, as the output holds it) on float64 rows already in memory, in 65,536-row slices; no file read or
  written. For the fitted model (``predict_proba`` on the array) and the compiled model mlship batch scores with.
- file to file: what a hand-written script does at best: each process reads its own Parquet file (the input
  already split into one file per core), scores it as above, and writes its own Parquet file of the id, the
  label and the probabilities (with mlship's own Parquet options, the faster ones); no row is checked, nothing is
  resumable, no single output is assembled. Each process also times its reading and writing: the share of the
  run no model can shorten.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from batch_data import EXAMPLES, SLICE, matrix, train_module, write_rows

_MODEL: Any = None
_ROWS: Any = None
_FILES: tuple[Path, Path, list[str]] | None = None  # (input, output, features) of a file-to-file process


def _load(root: str, which: str, name: str) -> None:
    """``fitted``: the example's joblib file; ``compiled``: the ONNX model mlship batch serves."""
    global _MODEL
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


def _score(x: Any) -> tuple[Any, Any, list[str]]:
    """(labels, probabilities, class names) of one slice: predict_proba (or the compiled model's probabilities) and
    the argmax's class name from an Arrow array of the names, as the batch output holds it."""
    if hasattr(_MODEL, "predict_proba"):
        proba = _MODEL.predict_proba(x)
        names = [str(c) for c in _MODEL.classes_]
        best = proba.argmax(axis=1)
    else:
        proba = _MODEL.run(x)
        names = [str(c) for c in _MODEL.classes]
        best = _MODEL.best(proba)
    return pa.array(names, pa.string()).take(pa.array(best)), proba, names


def _memory_init(root: str, which: str, name: str, n: int, seed: int, barrier: Any) -> None:
    global _ROWS
    _load(root, which, name)
    _, _ROWS = matrix(name, n, seed)
    _score(_ROWS[:SLICE])
    barrier.wait()


def _memory_run(_: int) -> tuple[float, float]:
    started = time.perf_counter()
    for start in range(0, len(_ROWS), SLICE):
        _score(_ROWS[start:start + SLICE])
    return time.perf_counter() - started, 0.0


def _file_init(root: str, which: str, name: str, source: str, out: str, barrier: Any) -> None:
    global _FILES
    _load(root, which, name)
    _FILES = (Path(source), Path(out), list(train_module(name).FEATURES))
    _file_run(0)  # once before the clock: the input in the page cache, as it is for the batch runs
    barrier.wait()


def _file_run(_: int) -> tuple[float, float]:
    """(seconds, of which reading and writing) for this process's file: read, score in slices, write."""
    from mlship.batch.formats import parquet_options

    assert _FILES is not None
    source, out, features = _FILES
    started = time.perf_counter()
    table = pq.read_table(source)
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    read = time.perf_counter() - started
    labels, probas, names = [], [], []
    for start in range(0, len(x), SLICE):
        label, proba, names = _score(x[start:start + SLICE])
        labels.append(label)
        probas.append(proba)
    proba = np.concatenate(probas)
    scored = time.perf_counter()
    result = pa.table({"id": table.column("id"), "label": pa.chunked_array(labels),
                       **{f"probabilities_{c}": np.ascontiguousarray(proba[:, j]) for j, c in enumerate(names)}})
    pq.write_table(result, out, **parquet_options(result.schema))
    done = time.perf_counter()
    return done - started, read + done - scored


def _best(runs: list[list[tuple[float, float]]]) -> tuple[float, float]:
    """(the slowest process's seconds, the mean share of reading and writing) of the better run."""
    return min((max(r[0] for r in run), sum(r[1] / r[0] for r in run) / len(run)) for run in runs)


def in_memory(name: str, root: Path, n: int, cores: int, which: str) -> float:
    """Rows/s of probabilities + labels on in-memory float64 rows, one process per core."""
    ctx = get_context("spawn")
    runs = []
    for _ in range(2):  # the better of two
        barrier = ctx.Barrier(cores)
        with ProcessPoolExecutor(cores, mp_context=ctx, initializer=_memory_init,
                                 initargs=(str(root), which, name, n // cores, 7, barrier)) as pool:
            runs.append(list(pool.map(_memory_run, range(cores))))
    return n // cores * cores / _best(runs)[0]


def file_to_file(name: str, root: Path, n: int, cores: int, which: str, tmp: Path) -> tuple[float, float]:
    """(rows/s, the share of reading and writing) of a hand-written script per core on its own Parquet file."""
    share = n // cores
    files = [(tmp / f"ceiling-{name}-{i}.parquet", tmp / f"ceiling-{name}-{i}.out.parquet") for i in range(cores)]
    for source, _ in files:
        write_rows(name, source, share)
    try:
        seconds, io_share = _together_files(cores, files, root, which, name)
    finally:
        for pair in files:
            for path in pair:
                path.unlink(missing_ok=True)
    return share * cores / seconds, io_share


def _together_files(cores: int, files: list[tuple[Path, Path]], root: Path, which: str,
                    name: str) -> tuple[float, float]:
    """One single-process pool per file, started together (after each read its file once); the better of two."""
    ctx = get_context("spawn")
    runs = []
    for _ in range(2):
        barrier = ctx.Barrier(cores)
        pools = [ProcessPoolExecutor(1, mp_context=ctx, initializer=_file_init,
                                     initargs=(str(root), which, name, str(source), str(out), barrier))
                 for source, out in files]
        try:
            futures = [pool.submit(_file_run, 0) for pool in pools]
            results = [f.result() for f in futures]
        finally:
            for pool in pools:
                pool.shutdown()
        runs.append(results)
    return _best(runs)
