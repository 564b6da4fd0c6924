"""`mlship batch`: score a file (or a folder of files) with the contract's model, chunk by chunk.

Each chunk's predictions and rejects are written as part files (write a temporary file, fsync, rename) in
``.<output name>.parts/`` next to the output, with a manifest naming the input (size, mtime), the chunk size and
the contract; a re-run with the same manifest skips the chunks whose part exists, so a killed run resumed gives
the same result. The output and the rejects file are then assembled from the parts atomically, and the parts
folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from mlship.batch import formats, score
from mlship.batch.writer import ChunkWriter, part_path
from mlship.errors import ContractError, PredictionError

DEFAULT_CHUNK_ROWS = 65_536
PART = formats.PART_SUFFIX  # parts are Arrow IPC files: the output's format is encoded once, on assembly
Progress = Callable[[int, int | None, float], None]  # rows done, rows in all (if known), seconds so far


@dataclass
class BatchReport:
    """What a run did, per input file and in all."""

    outputs: list[Path] = field(default_factory=list)
    rejects_files: list[Path] = field(default_factory=list)
    rows: int = 0
    rejects: int = 0
    chunks: int = 0
    resumed_chunks: int = 0  # chunks found complete from an earlier run
    seconds: float = 0.0
    load_seconds: float = 0.0  # of ``seconds``: loading the model (in this process) and pyarrow's readers/writers

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass
class BatchOptions:
    workers: int | None = None  # scorers (threads or processes); None: all cores; 1: in this process
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    id_column: str | None = None  # None: `id` when the input has it
    max_rejects: int | None = None
    progress: Progress | None = None


def rejects_path(output: Path) -> Path:
    """The rejects file next to an output: preds.parquet -> preds.rejects.parquet."""
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def run_batch(contract_path: Path | None, input_path: Path, output_path: Path,
              options: BatchOptions | None = None) -> BatchReport:
    """Score ``input_path`` (a file, or a folder of files) into ``output_path`` (a file, or a folder)."""
    from mlship.contract_io import find_contract

    opts = options or BatchOptions()
    if opts.chunk_rows < 1:
        raise ContractError(f"--chunk-rows must be at least 1, not {opts.chunk_rows}.", fix="Pass --chunk-rows 65536.")
    if opts.workers is not None and opts.workers < 1:
        raise ContractError(f"--workers must be at least 1, not {opts.workers}.",
                            fix="Leave --workers out to use every core, or pass --workers 1 to run in-process.")
    contract = find_contract(contract_path)
    pairs = _pairs(input_path, output_path)
    report = BatchReport()
    started = time.perf_counter()
    workers = opts.workers or os.cpu_count() or 1
    before = time.perf_counter()
    formats.prepare({formats.file_format(path) for pair in pairs for path in pair})
    prepared = time.perf_counter() - before
    with _Pool(contract, opts.chunk_rows, workers) as pool:
        for source, target in pairs:
            _one_file(pool, contract, source, target, opts, report, started)
    report.load_seconds = prepared + pool.load_seconds
    report.seconds = time.perf_counter() - started
    return report


def _pairs(input_path: Path, output_path: Path) -> list[tuple[Path, Path]]:
    if not input_path.exists():
        raise ContractError(f"{input_path} does not exist.", fix="Pass --input a Parquet, CSV or JSON Lines file, "
                            "or a folder of them.")
    if input_path.is_dir():
        files = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in formats.FORMATS)
        if not files:
            raise ContractError(f"{input_path} holds no batch files.",
                                why=f"A folder's files are read by extension: {formats.EXTENSIONS}.",
                                fix="Put the input files in the folder, with their format's extension.")
        if output_path.suffix.lower() in formats.FORMATS:
            raise ContractError(f"--input {input_path} is a folder, so --output must be a folder, not a file.",
                                fix=f"Pass --output {output_path.with_suffix('')}/ (one output per input file).")
        output_path.mkdir(parents=True, exist_ok=True)
        return [(p, output_path / p.name) for p in files]
    formats.file_format(input_path)
    formats.file_format(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ContractError(f"--output {output_path} is the input file.", fix="Write the predictions elsewhere.")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    return [(input_path, output_path)]


class _Pool:
    """``workers`` scorers. When the chunks go to the model as one array and the model runs without the GIL (the
    compiled one in onnxruntime; a scikit-learn model in numpy and Cython), they are ``workers`` threads of this
    process sharing its one loaded model: no process to start, no chunk to pickle. Otherwise ``workers``
    processes, one loaded model each: this one and ``workers - 1`` spawned ones; a chunk goes to a spawned worker
    when one is ready and has fewer than two chunks queued, else this process scores it itself (while the workers
    start, a Python and a model load each, and whenever they are all busy), so no core waits and no more processes
    score than ``workers``."""

    def __init__(self, contract: Path, chunk_rows: int, workers: int) -> None:
        self.contract, self.chunk_rows, self.workers = contract, chunk_rows, workers
        self.executor: ProcessPoolExecutor | None = None
        self.threads: ThreadPoolExecutor | None = None
        self.starting: list[Future[bool]] = []
        self.queued: list[Future[score.Scored]] = []
        self.load_seconds = 0.0

    def __enter__(self) -> _Pool:
        started = time.perf_counter()
        self.first = score.Scorer(self.contract, self.chunk_rows)  # a model that does not load fails before any worker
        self.load_seconds = time.perf_counter() - started
        self.features = self.first.features
        if self.workers > 1 and self.first.releases_gil:
            self.threads = ThreadPoolExecutor(self.workers, thread_name_prefix="mlship-batch")
        elif self.workers > 1:
            self.executor = ProcessPoolExecutor(self.workers - 1, mp_context=get_context("spawn"),
                                                initializer=score.init_worker,
                                                initargs=(self.contract, self.chunk_rows))
            self.starting = [self.executor.submit(score.worker_ready) for _ in range(self.workers - 1)]
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in (self.executor, self.threads):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, index: int, start: int, table: pa.Table, id_column: str | None,
               keep: Callable[[score.Scored], None] | None = None) -> Future[score.Scored]:
        """A chunk to score. On threads, ``keep`` (writing the chunk's part files) runs on the scoring thread right
        after it, so that parts are written in parallel (``Scored.kept`` says so); elsewhere the caller writes them
        (a process's chunk comes back pickled; this process's own is better written by the writer's thread)."""
        if self.threads is not None:
            return self.threads.submit(self._score_and_keep, index, start, table, id_column, keep)
        if self.executor is not None and all(f.done() for f in self.starting):
            self.queued = [f for f in self.queued if not f.done()]
            if len(self.queued) < 2 * (self.workers - 1):
                self.queued.append(self.executor.submit(score.score_in_worker, index, start, table, id_column))
                return self.queued[-1]
        done: Future[score.Scored] = Future()
        done.set_result(self.first.score(index, start, table, id_column))
        return done

    def _score_and_keep(self, index: int, start: int, table: pa.Table, id_column: str | None,
                        keep: Callable[[score.Scored], None] | None) -> score.Scored:
        scored = self.first.score(index, start, table, id_column)
        if keep is not None:
            keep(scored)
            scored.kept = True
        return scored


def _manifest(contract: Path, source: Path, chunk_rows: int, id_column: str | None) -> dict[str, Any]:
    stat = source.stat()
    return {"input": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "chunk_rows": chunk_rows, "id_column": id_column,
            "contract_sha256": hashlib.sha256(contract.read_bytes()).hexdigest()}


def _parts_dir(target: Path, manifest: dict[str, Any]) -> Path:
    parts = target.with_name(f".{target.name}.parts")
    path = parts / "manifest.json"
    if parts.exists():
        try:
            same = json.loads(path.read_text()) == manifest
        except (OSError, ValueError):
            same = False
        if not same:  # another input, chunk size or contract: start over
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = parts / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)
    return parts


def _id_column(source: Path, wanted: str | None, features: list[str]) -> str | None:
    names = _column_names(source)
    if wanted is not None:
        if names is not None and wanted not in names:
            raise ContractError(f"--id-column {wanted!r} is not a column of {source.name}.",
                                fix=f"Pick one of: {', '.join(names)}." if names else "Check the column name.")
        return wanted
    return "id" if names is not None and "id" in names and "id" not in features else None


def _column_names(source: Path) -> list[str] | None:
    fmt = formats.file_format(source)
    if fmt == "parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        return list(pq.ParquetFile(source).schema_arrow.names)
    with source.open(encoding="utf-8") as fh:
        first = fh.readline()
    if fmt == "csv":
        return [c.strip().strip('"') for c in first.rstrip("\r\n").split(",")]
    try:
        obj = json.loads(first)
    except ValueError:
        return None
    return list(obj) if isinstance(obj, dict) else None


def _one_file(pool: _Pool, contract: Path, source: Path, target: Path, opts: BatchOptions, report: BatchReport,
              started: float) -> None:
    features = pool.features
    id_column = _id_column(source, opts.id_column, features)
    fmt = formats.file_format(target)
    parts = _parts_dir(target, _manifest(contract, source, opts.chunk_rows, id_column))
    total = formats.count_rows(source)
    done_rows = report.rows
    rejected = 0
    pending: deque[Future[score.Scored]] = deque()
    index = -1
    writer = ChunkWriter(parts, target, rejects_path(target), fmt, depth=2 * pool.workers)

    def finish(future: Future[score.Scored]) -> None:
        scored = future.result()
        writer.put(scored.index, scored.predictions, scored.rejects, written=scored.kept)
        _count(scored.predictions.num_rows + scored.rejects.num_rows, scored.rejects.num_rows)

    def _count(rows: int, bad: int) -> None:
        nonlocal done_rows, rejected
        done_rows += rows
        rejected += bad
        report.chunks += 1
        if opts.max_rejects is not None and report.rejects + rejected > opts.max_rejects:
            writer.abort()  # the parts of the chunks given so far are written
            so_far = sorted(parts.glob(f"rejects-*{PART}"))
            formats.concat_files(so_far, rejects_path(target), fmt)
            raise PredictionError(
                f"{report.rejects + rejected} rows were rejected, more than --max-rejects {opts.max_rejects}; "
                f"stopped after {done_rows:,} rows.",
                why="Rows that do not fit the contract's input are written to the rejects file with the reason.",
                fix=f"Read {rejects_path(target)} (the rejects so far) for the reasons, fix the input, and run "
                "again: finished chunks are kept; or raise --max-rejects.")
        if opts.progress is not None:
            opts.progress(done_rows, None if total is None else report.rows + total, time.perf_counter() - started)

    try:
        for index, table in enumerate(formats.read_chunks(source, opts.chunk_rows, features, pool.first.json_floats)):
            bad = formats.part_rows(part_path(parts, "rejects", index))
            kept = formats.part_rows(part_path(parts, "part", index)) if bad is not None else None
            if bad is not None and kept is not None and kept + bad == table.num_rows:
                report.resumed_chunks += 1
                writer.kept(index)
                _count(table.num_rows, bad)
                continue
            pending.append(pool.submit(index, index * opts.chunk_rows, table, id_column, writer.write_parts))
            for future in [f for f in pending if f.done()]:  # in any order: the writer puts them in order
                pending.remove(future)
                finish(future)
            while len(pending) > 2 * pool.workers:  # never while this process can score: its chunks are done at once
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
        writer.close(index + 1)
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(parts)
    report.outputs.append(target)
    report.rejects_files.append(rejects_path(target))
    report.rows = done_rows
    report.rejects += rejected
