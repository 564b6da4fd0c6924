"""`mlship batch --target X --tasks N`: the job on a target's own job engine, and `mlship batch` with s3:// / gs://
input or output in this process.

    resolve the BatchJob (flags + project) -> the target's BatchTarget or a clear refusal ->
    preflight (target.batch_preflight, input readable, output writable; before any build) ->
    --dry-run: the target's batch_plan, no credentials, nothing built ->
    build the serving image as `mlship build` does + the batch layer (batch/image.py) ->
    target.run_batch -> the tasks' manifests read from the output -> BatchRunReport

In-process with object storage, the same worker runs here as one task on all cores: the output is a folder /
prefix of the job layout (``part-00000-of-00001.<fmt>``, ``_mlship/``), the same a job writes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship.batch.jobs import BatchJob, BatchTarget, JobRun, batch_job
from mlship.errors import MlshipError, PluginError
from mlship.events import Events
from mlship.reports import BatchRunReport, Check


@dataclass
class JobFlags:
    """The CLI's flags of a batch job (defaults as `mlship batch --help` says)."""

    input_uri: str
    output_uri: str
    tasks: int = 1
    parallelism: int | None = None
    max_retries: int = 3
    cpu: float = 1.0
    memory_mib: int = 2048
    timeout_s: int = 3600
    id_column: str | None = None
    fmt: str = "parquet"
    chunk_rows: int | None = None
    job_queue: str | None = None  # --job-queue (targets whose job engine has queues: BatchTarget.check_job)


def batch_targets() -> list[str]:
    """The registered targets that run batch jobs (those whose class is a BatchTarget)."""
    from mlship import plugins

    names = []
    for name in sorted(plugins.available("target")):
        try:
            cls = plugins.get("target", name)
        except MlshipError:
            continue
        if isinstance(cls, type) and issubclass(cls, BatchTarget):
            names.append(name)
    return names


def _batch_class(name: str) -> None:
    from mlship import plugins

    cls = plugins.get("target", name)
    if not (isinstance(cls, type) and issubclass(cls, BatchTarget)):
        able = batch_targets()
        raise PluginError(f"The `{name}` target does not run batch jobs.",
                          why="A target runs batch jobs when it implements mlship.batch.jobs.BatchTarget.",
                          fix=f"Use --target {' or --target '.join(able)}, or leave --target out to score in this "
                          "process." if able else "Leave --target out to score in this process.")


def storage_checks(job: BatchJob) -> list[Check]:
    """The input lists batch files; the output takes a write (a probe object, deleted again)."""
    from mlship.batch.shards import input_files
    from mlship.batch.storage import delete, locate, put_bytes

    checks = []
    try:
        files = input_files(locate(job.input_uri))
        size = sum(f.size for f in files)
        checks.append(Check(name="input", ok=True, detail=f"{job.input_uri}: {len(files)} file(s), "
                            f"{size / 1e6:,.1f} MB"))
    except MlshipError as exc:
        checks.append(Check(name="input", ok=False, detail=exc.message, fix=exc.fix))
    try:
        probe = locate(job.output_uri).child(f"_mlship/.probe-{uuid.uuid4().hex[:8]}")
        put_bytes(b"", probe)
        delete(probe)
        checks.append(Check(name="output", ok=True, detail=f"{job.output_uri} is writable"))
    except MlshipError as exc:
        checks.append(Check(name="output", ok=False, detail=exc.message, fix=exc.fix))
    return checks


def run_on_target(contract: Path | None, target_name: str, flags: JobFlags, *, dry_run: bool = False,
                  base_image: str | None = None, events: Events | None = None) -> BatchRunReport:
    """The job on ``target_name`` (see the module docstring); the report's ``ok`` is False when a task failed."""
    from mlship import pipeline
    from mlship.batch.image import batch_tag, build_batch_image
    from mlship.contract_io import find_contract, load_project
    from mlship.preflight import require, run_checks
    from mlship.targets import get_target

    ev = events or Events()
    project = load_project(find_contract(contract))
    _batch_class(target_name)
    job = _job(project, flags)
    report = BatchRunReport(target=target_name, input=job.input_uri, output=job.output_uri, tasks=job.tasks,
                            succeeded=0, job_id=job.job_id, dry_run=dry_run)
    with get_target(target_name, project) as target:
        assert isinstance(target, BatchTarget)
        target.check_job(job)
        if dry_run:
            from mlship.image.context import plan_project

            image = batch_tag(plan_project(project, base_image, dry_run=True).tag)
            report.image = image
            report.plan = [f"build the serving image as `mlship build` does, then {image} (+ pyarrow)",
                           *target.batch_plan(job, image)]
            return report
        require(run_checks(target_name, {f"{target_name} batch": lambda: target.batch_preflight(job),
                                         "storage": lambda: storage_checks(job)}, ev))
        built = pipeline.build(project, base_image=base_image, events=ev)
        image = build_batch_image(project, built.image, ev)
        report.image = image
        with ev.stage("batch", f"{job.tasks} task(s) of {image} on {target_name}") as stage:
            run = target.run_batch(job, image, stage.step)
            stage.summary = f"{run.succeeded}/{run.tasks} tasks done, {run.failed} failed, {run.retries} retries"
    return _finish(report, job, run)


def _job(project: Any, flags: JobFlags) -> BatchJob:
    return batch_job(project, input_uri=flags.input_uri, output_uri=flags.output_uri, tasks=flags.tasks,
                     parallelism=flags.parallelism, max_retries=flags.max_retries, cpu=flags.cpu,
                     memory_mib=flags.memory_mib, timeout_s=flags.timeout_s, id_column=flags.id_column,
                     fmt=flags.fmt, chunk_rows=flags.chunk_rows, job_queue=flags.job_queue)


def _finish(report: BatchRunReport, job: BatchJob, run: JobRun) -> BatchRunReport:
    """The report from the JobRun and the manifests the tasks left in the output."""
    from mlship.batch.report import collect

    got = collect(job)
    report.rows, report.rejects = got.rows, got.rejects
    report.outputs, report.rejects_files = got.parts, got.rejects_files
    report.succeeded, report.failed, report.retries = len(got.finished), job.tasks - len(got.finished), run.retries
    report.failed_logs = {str(i): lines for i, lines in run.failed_logs.items()}
    for index in got.missing:
        report.failed_logs.setdefault(str(index), ["(no manifest: the task did not finish)"])
    report.seconds = round(run.seconds, 3)
    report.rows_per_s = round(got.rows / run.seconds, 1) if run.seconds else 0.0
    report.cost_usd, report.console = run.cost_usd, run.console
    report.ok = not got.missing
    return report


def run_in_process(contract: Path | None, flags: JobFlags, workers: int | None = None) -> BatchRunReport:
    """`mlship batch` with object storage in or out: the worker as one task, here, on ``workers`` processes."""
    from mlship.batch.worker import run_task
    from mlship.contract_io import find_contract, load_project

    path = find_contract(contract)
    job = _job(load_project(path), flags)
    started = time.monotonic()
    run_task(job.env, contract=path, workers=workers)
    run = JobRun(job_id=job.job_id, tasks=1, succeeded=1, failed=0, retries=0, failed_logs={},
                 seconds=time.monotonic() - started, cost_usd=None)
    return _finish(BatchRunReport(input=job.input_uri, output=job.output_uri, job_id=job.job_id), job, run)
