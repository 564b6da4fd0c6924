"""How the CLI shows the pipeline: progress events on stderr (a live spinner on a terminal, one timestamped
line per event elsewhere, e.g. a CI log), and ``--json``: exactly one JSON document on stdout, the command's
report or, when it fails, an ErrorReport (the exit code is the same either way)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.markup import escape

from mlship.cli._app import EXIT_INTERRUPTED, INTERRUPTED, err
from mlship.errors import GateError, MlshipError, PreflightError
from mlship.events import Event, Events
from mlship.reports import ErrorDetail, ErrorReport, PreflightReport, Report


def events() -> Events:
    """Events rendered for this stderr: live on a terminal, line by line otherwise."""
    return Events(TerminalProgress() if err.is_terminal else LineProgress())


class LineProgress:
    """One timestamped line per event (UTC), so a CI log moves while an image builds."""

    def __call__(self, event: Event) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.at))
        text = {
            "start": f"{event.message} ...",
            "step": f"  {event.message}",
            "note": f"note: {event.message}",
            "done": f"done in {event.seconds or 0:.1f}s: {event.message}",
            "fail": f"FAILED after {event.seconds or 0:.1f}s: {event.message}",
            "skip": f"skipped: {event.message}",
        }[event.kind]
        err.print(f"{stamp} [{event.stage}] {text}", markup=False, highlight=False)


class TerminalProgress:
    """A spinner with the current step; a line for each finished stage and each note."""

    def __init__(self) -> None:
        self.status: Any = None

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __call__(self, event: Event) -> None:
        message = escape(event.message)
        if event.kind == "start":
            self._stop()
            self.status = err.status(f"{event.stage}: {message}")
            self.status.start()
        elif event.kind == "step" and self.status is not None:
            self.status.update(f"{event.stage}: {escape(event.message[:110])}")
        elif event.kind == "note":
            err.print(f"[yellow]note:[/] {message}", markup=True)
        elif event.kind in ("done", "fail", "skip"):
            self._stop()
            mark = {"done": "[green]ok[/]", "fail": "[red]failed[/]", "skip": "[yellow]skipped[/]"}[event.kind]
            took = f" [dim]({event.seconds:.1f}s)[/]" if event.seconds is not None else ""
            err.print(f"{mark} {event.stage}: {message}{took}", markup=True)


def emit_json(report: Report) -> None:
    typer.echo(report.as_json())


@contextmanager
def json_errors(command: str, as_json: bool) -> Iterator[None]:
    """With ``--json``, a failure still prints one JSON document (an ErrorReport) on stdout; the error is then
    re-raised for the usual what / why / fix on stderr and the exit code."""
    try:
        yield
    except MlshipError as exc:
        if as_json:
            detail = ErrorDetail(type=type(exc).__name__, message=exc.message, why=exc.why, fix=exc.fix)
            emit_json(ErrorReport(command=command, exit_code=exc.exit_code, error=detail,
                                  preflight=exc.report if isinstance(exc, PreflightError) else None,
                                  gate=exc.report if isinstance(exc, GateError) else None))
        raise
    except KeyboardInterrupt:
        if as_json:
            detail = ErrorDetail(type="Interrupted", message=f"{command} was interrupted: {INTERRUPTED}")
            emit_json(ErrorReport(command=command, exit_code=EXIT_INTERRUPTED, error=detail))
        raise


def print_preflight(report: PreflightReport, out: Any) -> None:
    for check in report.checks:
        mark = "[green]ok[/]" if check.ok else "[red]FAILED[/]"
        out.print(f"  {mark} {escape(check.name)}: {escape(check.detail)}", markup=True)
        if check.fix and not check.ok:
            out.print(f"     [green]fix:[/] {escape(check.fix)}", markup=True)
