"""`mlship batch`: score a Parquet / CSV / JSON Lines file (or a folder of them) with the contract's model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mlship.cli._app import FileOpt, _errors, app, err, out
from mlship.cli.images import BaseOpt, JsonOpt
from mlship.cli.render import emit_json, events, json_errors
from mlship.errors import ContractError
from mlship.reports import BatchRunReport

if TYPE_CHECKING:  # pyarrow is imported by mlship.batch.run: not at `mlship build`'s start
    from mlship.batch.run import Progress


@app.command()
def batch(
    input: Annotated[str, typer.Option("--input", "-i", help="A .parquet, .csv or .jsonl file, or a folder of them; "
                                       "s3://bucket/prefix/ and gs://bucket/prefix/ too.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The predictions file (format by extension), or a "
                                        "folder for a folder of inputs. Rejected rows go to <name>.rejects.<ext>. "
                                        "With s3:// / gs:// or --target: a folder / prefix of parts.")],
    file: FileOpt = None,
    workers: Annotated[int | None, typer.Option(help="Scorers: threads sharing a compiled model, else processes "
                                                "with a model each (default: all cores; 1: in this process).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The input column carried into the output "
                                                  "(default: `id` when the input has one).")] = None,
    max_rejects: Annotated[int | None, typer.Option("--max-rejects", help="Stop with exit 1 when more rows than "
                                                    "this are rejected (default: never stop).")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows per chunk (memory and resume unit).")]
    = 65_536,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Run a job of --tasks tasks on a target's job "
                                               "engine (local, cloudrun, ecs), in the batch image.")] = None,
    tasks: Annotated[int, typer.Option(help="With --target: shards, one task each.")] = 1,
    parallelism: Annotated[int | None, typer.Option(help="With --target: tasks at once (default: all).")] = None,
    max_retries: Annotated[int, typer.Option("--max-retries", help="With --target: retries per task.")] = 3,
    cpu: Annotated[float, typer.Option(help="With --target: CPUs per task.")] = 1.0,
    memory: Annotated[int, typer.Option(help="With --target: MiB per task.")] = 2048,
    task_timeout: Annotated[int, typer.Option("--task-timeout", help="With --target: seconds a task may run.")]
    = 3600,
    fmt: Annotated[str, typer.Option("--format", help="The parts' format with --target or object storage: parquet, "
                                     "csv, jsonl.")] = "parquet",
    job_queue: Annotated[str | None, typer.Option("--job-queue", help="With --target ecs: run the job as an AWS "
                                                  "Batch array job on this job queue (name or ARN; its compute "
                                                  "environments FARGATE or FARGATE_SPOT), for this run in place of "
                                                  "targets.ecs.batch.job_queue.")] = None,
    base_image: BaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --target: print the job's resources and calls; "
                                          "build and start nothing, no credentials needed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Score a file of rows (Parquet, CSV, JSON Lines) with the model, in chunks on all cores; resumable. With
    --target, as a job of --tasks tasks running the batch image (docs/batch.md)."""
    from mlship.batch.remote import JobFlags, run_in_process, run_on_target

    with _errors(), json_errors("batch", as_json):
        flags = JobFlags(input, output, tasks=tasks, parallelism=parallelism, max_retries=max_retries, cpu=cpu,
                         memory_mib=memory, timeout_s=task_timeout, id_column=id_column, fmt=fmt,
                         chunk_rows=chunk_rows, job_queue=job_queue)
        if job_queue is not None and target is None:
            raise ContractError("--job-queue needs --target ecs.",
                                why="--job-queue picks the AWS Batch job queue that `--target ecs` runs an array job "
                                "on; without --target the rows are scored in this process.",
                                fix=f"Pass --target ecs --job-queue {job_queue}, or leave --job-queue out.")
        if target is not None:
            report = run_on_target(file, target, flags, dry_run=dry_run, base_image=base_image, events=events())
        elif "://" in input or "://" in output:
            report = run_in_process(file, flags, workers)
        else:
            report = _local(file, Path(input), Path(output), workers, id_column, max_rejects, chunk_rows)
    if as_json:
        emit_json(report)
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _local(file: Path | None, input: Path, output: Path, workers: int | None, id_column: str | None,
           max_rejects: int | None, chunk_rows: int) -> BatchRunReport:
    from mlship.batch import BatchOptions, run_batch

    progress, stop = _progress()
    options = BatchOptions(workers=workers, chunk_rows=chunk_rows, id_column=id_column, max_rejects=max_rejects,
                           progress=progress)
    try:
        done = run_batch(file, input, output, options)
    finally:
        stop()
    return BatchRunReport(input=str(input), output=str(output), rows=done.rows, rejects=done.rejects,
                          seconds=round(done.seconds, 3), rows_per_s=round(done.rows_per_s, 1),
                          outputs=[str(p) for p in done.outputs], rejects_files=[str(p) for p in done.rejects_files],
                          resumed_chunks=done.resumed_chunks)


def _print(report: BatchRunReport) -> None:
    if report.dry_run:
        out.print(escape(f"image: {report.image}"))
        for line in report.plan:
            out.print(escape(f"- {line}"))
        return
    resumed = f", {report.resumed_chunks} chunks kept from an earlier run" if report.resumed_chunks else ""
    where = f" by {report.tasks} task(s) on {report.target}" if report.target else ""
    out.print(escape(f"scored {report.rows:,} rows{where} in {report.seconds:.1f}s ({report.rows_per_s:,.0f} rows/s)"
                     f"{resumed}: {', '.join(report.outputs) if len(report.outputs) < 4 else report.output}"))
    if report.target:
        cost = "n/a" if report.cost_usd is None else f"~${report.cost_usd:.4f} (list prices)"
        out.print(escape(f"tasks: {report.succeeded}/{report.tasks} done, {report.failed} failed, "
                         f"{report.retries} retries; cost: {cost}" + (f"; {report.console}" if report.console else "")))
    if report.rejects:
        out.print(escape(f"{report.rejects:,} rows rejected (with the reason): {', '.join(report.rejects_files)}"))
    for index, lines in report.failed_logs.items():
        err.print(escape(f"task {index} failed; its last lines:\n  " + "\n  ".join(lines[-10:])))


def _progress() -> tuple[Progress, Callable[[], None]]:
    """A rich progress bar with rows/s and ETA on a terminal; a line every few seconds otherwise."""
    last = [0.0]

    def line(done: int, total: int | None, seconds: float) -> None:
        if seconds - last[0] < 5 and (total is None or done < total):
            return
        last[0] = seconds
        rate = done / seconds if seconds else 0.0
        eta = f", ETA {(total - done) / rate:.0f}s" if total and rate else ""
        of = f"/{total:,}" if total else ""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        err.print(f"{stamp} [batch] {done:,}{of} rows, {rate:,.0f} rows/s{eta}", markup=False, highlight=False)

    if not err.is_terminal:
        return line, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("batch"), BarColumn(), TextColumn("{task.completed:,} rows, {task.fields[rate]} rows/s"),
                   TimeRemainingColumn(), console=err, transient=True)
    task = bar.add_task("batch", total=None, rate="0")

    def update(done: int, total: int | None, seconds: float) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total, rate=f"{done / seconds:,.0f}" if seconds else "0")

    return update, bar.stop
