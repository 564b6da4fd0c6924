"""The Typer app, the consoles and the one place where MlshipError is rendered (what / why / fix)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mlship import __version__
from mlship.errors import MlshipError

app = typer.Typer(
    name="mlship",
    help="Ship a trained model as a tested prediction service.\n\n"
    "Workflow: `mlship init model.joblib` writes mlship.yaml; `mlship validate` checks it and replays "
    "its examples; `mlship serve` starts the HTTP server; `mlship predict` sends rows to it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
INTERRUPTED = ("stopped by Ctrl-C (SIGINT); what this run had started was cleaned up. "
               "Run the command again to finish: a re-run picks up where this one stopped.")

FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="mlship.yaml, or its folder (default: .).")]


@contextmanager
def _errors() -> Iterator[None]:
    """Render every MlshipError in one place: what, why, fix; exit with its code."""
    try:
        yield
    except MlshipError as exc:  # messages may quote logs or user text: escape it, never parse it as markup
        err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
        if exc.why:
            err.print(f"[dim]why:[/] {escape(exc.why)}", markup=True)
        if exc.fix:
            err.print(f"[green]fix:[/] {escape(exc.fix)}", markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C (SIGINT): the core cleaned up on the way out; say so, no traceback
        err.print(f"[bold red]interrupted:[/] {INTERRUPTED}", markup=True, highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"mlship {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Ship a trained model as a tested prediction service."""



def complete_short_help(typer_app: typer.Typer) -> None:
    """Show each command's whole summary in `mlship --help`, not its first 45 characters and "...".

    Click cuts a command's docstring to fit one line of the command list; a ``short_help`` is shown whole
    (wrapped). Commands that set ``short_help`` themselves keep it; the rest get their docstring's first
    paragraph. Called once all command modules are imported, so commands added later are covered too.
    """
    for command in typer_app.registered_commands:
        if command.short_help is not None:
            continue
        doc = command.help or (inspect.getdoc(command.callback) if command.callback else None)
        if doc:
            command.short_help = " ".join(doc.strip().split("\n\n")[0].split())
