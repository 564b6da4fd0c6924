"""`mlship batch`: score a Parquet / CSV / JSON Lines file (or a folder of them) with the contract's model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mlship.batch.run import Progress
from mlship.cli._app import FileOpt, _errors, app, err, out


@app.command()
def batch(
    input: Annotated[Path, typer.Option("--input", "-i", help="A .parquet, .csv or .jsonl file, or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The predictions file (format by extension), or a "
                                         "folder for a folder of inputs. Rejected rows go to <name>.rejects.<ext>.")],
    file: FileOpt = None,
    workers: Annotated[int | None, typer.Option(help="Processes, one model each (default: all cores; 1: in this "
                                                "process).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The input column carried into the output "
                                                  "(default: `id` when the input has one).")] = None,
    max_rejects: Annotated[int | None, typer.Option("--max-rejects", help="Stop with exit 1 when more rows than "
                                                    "this are rejected (default: never stop).")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows per chunk (memory and resume unit).")]
    = 65_536,
) -> None:
    """Score a file of rows (Parquet, CSV, JSON Lines) with the model, in chunks on all cores; resumable."""
    from mlship.batch import BatchOptions, run_batch

    with _errors():
        progress, stop = _progress()
        options = BatchOptions(workers=workers, chunk_rows=chunk_rows, id_column=id_column, max_rejects=max_rejects,
                               progress=progress)
        try:
            report = run_batch(file, input, output, options)
        finally:
            stop()
        resumed = f", {report.resumed_chunks} chunks kept from an earlier run" if report.resumed_chunks else ""
        out.print(escape(f"scored {report.rows:,} rows in {report.seconds:.1f}s ({report.rows_per_s:,.0f} rows/s)"
                         f"{resumed}: {', '.join(map(str, report.outputs))}"))
        if report.rejects:
            out.print(escape(f"{report.rejects:,} rows rejected (row number and reason): "
                             f"{', '.join(map(str, report.rejects_files))}"))


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
