"""`mlship-batch` (also `python -m mlship.batch.worker`): one task of a batch job, in the batch image.

The task finds its index and the task count (:func:`task_slot`), its shard of ``$MLSHIP_BATCH_INPUT``
(batch/shards.py), scores it chunk by chunk with the contract's model (batch/run.py's pool and batch/score.py's
chunk scoring, as `mlship batch` does) and writes, each all at once (batch/storage.py):

    <output>/part-<index:05d>-of-<count:05d>.<fmt>     the predictions, in input order, the id column first
    <output>/_mlship/rejects-<index:05d>.<fmt>         file, row (Parquet) or offset (CSV / JSON Lines), id, reason
    <output>/_mlship/task-<index:05d>.json             last: rows, rejects, seconds, the input's fingerprint

A retried task whose manifest names the same input, shard and settings, and whose part is there at the size the
manifest says, exits 0 at once. Exit 0: done; 1: failed (the reason on stderr, what / why / fix).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlship.batch import jobs
from mlship.errors import ContractError, MlshipError

DEFAULT_CHUNK_ROWS = 65_536


def task_slot(env: Mapping[str, str]) -> tuple[int, int]:
    """(index, count) from, in order: Cloud Run's CLOUD_RUN_TASK_INDEX/COUNT, AWS Batch's
    AWS_BATCH_JOB_ARRAY_INDEX + MLSHIP_BATCH_TASK_COUNT, MLSHIP_BATCH_TASK_INDEX/COUNT; one task when none is set."""
    pairs = [("CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT"), ("AWS_BATCH_JOB_ARRAY_INDEX", jobs.ENV_TASK_COUNT),
             (jobs.ENV_TASK_INDEX, jobs.ENV_TASK_COUNT)]
    for index_var, count_var in pairs:
        if env.get(index_var, "") != "":
            index, count = _int(env, index_var), _int(env, count_var, 1)
            if not 0 <= index < count:
                raise ContractError(f"{index_var}={index} is not a task of {count_var}={count}.",
                                    fix=f"Set {index_var} to 0..{count - 1}.")
            return index, count
    count = _int(env, jobs.ENV_TASK_COUNT, 1)
    if count != 1:
        raise ContractError(f"{jobs.ENV_TASK_COUNT}={count}, but no task index is set.",
                            why="Each task scores its own shard; the platform or the target sets its index.",
                            fix=f"Set {jobs.ENV_TASK_INDEX} (0..{count - 1}) for each task, or run it as a Cloud "
                            "Run Job or an AWS Batch array job.")
    return 0, 1


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name, "")
    if raw == "" and default is not None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ContractError(f"{name}={raw!r} is not a whole number.", fix=f"Set {name} to a number.") from None


def cpus() -> int:
    """The CPUs this process may use: the affinity mask, capped by a cgroup v2 quota (a container's --cpus)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def run_task(env: Mapping[str, str], contract: Path | None = None, workers: int | None = None,
             say: Any = None) -> dict[str, Any]:
    """Run one task; returns its manifest (``"skipped": true`` when an earlier try had finished it)."""
    from mlship.batch import shards
    from mlship.batch.storage import info, locate, put_bytes, put_file, read_bytes
    from mlship.contract_io import find_contract

    log = say or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    for name in (jobs.ENV_INPUT, jobs.ENV_OUTPUT):
        if not env.get(name):
            raise ContractError(f"{name} is not set.", why="The batch worker reads its input and output from the "
                                "environment the job gives every task.",
                                fix=f"Run it with `mlship batch --target ...`, or set {jobs.ENV_INPUT} and "
                                f"{jobs.ENV_OUTPUT}.")
    index, count = task_slot(env)
    fmt = env.get(jobs.ENV_FORMAT) or "parquet"
    if fmt not in jobs.PART_FORMATS:
        raise ContractError(f"{jobs.ENV_FORMAT}={fmt!r} is not one of {', '.join(jobs.PART_FORMATS)}.",
                            fix=f"Set {jobs.ENV_FORMAT}=parquet.")
    chunk_rows = _int(env, jobs.ENV_CHUNK_ROWS, DEFAULT_CHUNK_ROWS)
    contract_path = find_contract(contract or (Path(env["MLSHIP_CONTRACT"]) if env.get("MLSHIP_CONTRACT") else None))
    source, out = locate(env[jobs.ENV_INPUT]), locate(env[jobs.ENV_OUTPUT])
    files = shards.input_files(source)
    pieces = shards.shard(files, index, count)
    id_column = env.get(jobs.ENV_ID_COLUMN) or None
    settings = {"contract": hashlib.sha256(contract_path.read_bytes()).hexdigest(), "format": fmt, "id": id_column}
    print_ = shards.fingerprint(files, index, count, settings)
    part, manifest_at = out.child(jobs.part_name(index, count, fmt)), out.child(jobs.manifest_name(index))
    earlier = read_bytes(manifest_at)
    if earlier is not None:
        try:
            old = json.loads(earlier)
        except ValueError:
            old = {}
        if old.get("fingerprint") == print_ and info(part).size == old.get("part_bytes"):
            log(f"task {index}/{count}: already done by an earlier try ({old.get('rows', 0):,} rows); nothing to do")
            return {**old, "skipped": True}
    log(f"task {index}/{count}: {sum(p.end - p.start for p in pieces):,} bytes of {len(files)} file(s) "
        f"in {len(pieces)} piece(s)")
    with tempfile.TemporaryDirectory(prefix="mlship-task-") as tmp:
        counts = _score(source, pieces, Path(tmp), fmt, chunk_rows, id_column, contract_path,
                        workers or int(env.get("MLSHIP_BATCH_WORKERS") or cpus()), log, f"task {index}/{count}")
        part_bytes = put_file(Path(tmp) / "part", part)
        rejects_bytes = put_file(Path(tmp) / "rejects", out.child(jobs.rejects_name(index, fmt)))
    manifest = {"task": index, "count": count, "job": env.get(jobs.ENV_JOB, ""), "fingerprint": print_,
                "rows": counts[0], "rejects": counts[1], "seconds": round(time.perf_counter() - started, 3),
                "part": jobs.part_name(index, count, fmt), "part_bytes": part_bytes,
                "rejects_file": jobs.rejects_name(index, fmt), "rejects_bytes": rejects_bytes, "format": fmt,
                "pieces": [{"file": p.file.name, "start": p.start, "end": p.end} for p in pieces]}
    put_bytes(json.dumps(manifest, indent=1).encode(), manifest_at)  # last: the task is finished
    log(f"task {index}/{count}: done, {counts[0]:,} rows ({counts[1]:,} rejected) in {manifest['seconds']:.1f}s")
    return manifest


def _score(source: Any, pieces: list[Any], tmp: Path, fmt: str, chunk_rows: int, id_column: str | None,
           contract: Path, workers: int, log: Any, who: str) -> tuple[int, int]:
    """Score the pieces into tmp/part and tmp/rejects (local files); returns (rows, rejects)."""
    from mlship.batch import formats, shards
    from mlship.batch.run import _Pool  # the pool `mlship batch` scores with: one model per process
    from mlship.batch.sinks import REJECTS_SCHEMA, rejects_table

    rows = bad = 0
    last = time.monotonic()
    chunks = tmp / "chunks"
    chunks.mkdir()
    parts: list[Path] = []
    rejected: list[Path] = []
    with _Pool(contract, chunk_rows, workers) as pool:
        pending: deque[tuple[Any, str, list[int] | None]] = deque()

        def finish() -> None:
            nonlocal rows, bad, last
            future, name, offsets = pending.popleft()
            scored = future.result()
            parts.append(chunks / f"part-{scored.index:06d}{formats.PART_SUFFIX}")
            rejected.append(chunks / f"rejects-{scored.index:06d}{formats.PART_SUFFIX}")
            _scratch(scored.predictions, parts[-1])
            _scratch(rejects_table(scored.rejects, name, offsets), rejected[-1])
            rows += scored.predictions.num_rows + scored.rejects.num_rows
            bad += scored.rejects.num_rows
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"{who}: {rows:,} rows, {bad:,} rejected")

        n = 0
        for piece in pieces:
            column = _id_column(source, piece.file, id_column, pool.features)
            for chunk in shards.read_piece(source, piece, chunk_rows, pool.features, pool.first.json_floats):
                pending.append((pool.submit(n, chunk.start, chunk.table, column), piece.file.name, chunk.offsets))
                n += 1
                while len(pending) > 2 * workers or (pending and pending[0][0].done()):
                    finish()
        while pending:
            finish()
        if not parts:  # a task without rows still writes its files, with the prediction columns
            parts.append(chunks / f"part-empty{formats.PART_SUFFIX}")
            rejected.append(chunks / f"rejects-empty{formats.PART_SUFFIX}")
            _scratch(pool.first.empty, parts[-1])
            _scratch(REJECTS_SCHEMA.empty_table(), rejected[-1])
    # one file each, encoded once, as `mlship batch` assembles its parts (an id column typed differently per file
    # is promoted)
    formats.concat_files(parts, tmp / "part", fmt)
    formats.concat_files(rejected, tmp / "rejects", fmt)
    return rows, bad


def _scratch(table: Any, path: Path) -> None:
    """A chunk's table in the task's scratch folder, in batch/formats.py's part format (encoded once, at the end)."""
    from mlship.batch import formats

    formats.write_table(table, path, formats.PART_FORMAT, durable=False)


def _id_column(source: Any, f: Any, wanted: str | None, features: list[str]) -> str | None:
    from mlship.batch import shards

    names = shards.column_names(source, f)
    if wanted is not None:
        if names is not None and wanted not in names:
            raise ContractError(f"{jobs.ENV_ID_COLUMN}={wanted!r} is not a column of {f.name}.",
                                fix=f"Pick one of: {', '.join(names)}." if names else "Check the column name.")
        return wanted
    return "id" if names is not None and "id" in names and "id" not in features else None


def main(argv: list[str] | None = None) -> int:
    """The console script: run the task this process's environment names."""
    del argv
    try:
        import pyarrow  # type: ignore[import-untyped]  # noqa: F401
    except ModuleNotFoundError:
        print("mlship-batch: this image has no pyarrow.\nWhy: the serving image stays small; batch tasks run the "
              "batch image (the serving image + one pyarrow layer).\nFix: run the job with `mlship batch --target "
              "...`, which builds and runs the batch image.", file=sys.stderr)
        return 1
    try:
        run_task(os.environ)
    except MlshipError as exc:
        print(f"mlship-batch: {exc.render()}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
