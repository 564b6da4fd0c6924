"""`mlship models`: which model each target serves, and what a model registry holds."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from mlship.cli._app import FileOpt, _errors, app, out


@app.command()
def models(
    file: FileOpt = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="Ask only these targets (default: those in mlship.yaml's targets:, else local).",
    )] = None,
) -> None:
    """What each target serves (artifact URI, version, sha256, git commit); for models:/ the registry too."""
    from mlship.artifacts.overview import models_overview
    from mlship.contract_io import load_project

    with _errors():
        project = load_project(file)
        overview = models_overview(project, target or None)
    out.print(f"artifact: {escape(overview.artifact)}")
    for row in overview.targets:
        if row.error:
            out.print(f"{row.target}: [red]cannot ask[/]: {escape(row.error)}", markup=True)
        elif not row.deployed:
            out.print(f"{row.target}: nothing deployed")
        else:
            image = escape(row.image or "-")
            out.print(f"{row.target}: serving {escape(row.serving or row.image or '?')} (image {image})")
    if overview.registry_error:
        out.print(f"registry: [red]cannot list[/]: {escape(overview.registry_error)}", markup=True)
    for v in overview.registry:
        where = ", ".join(sorted(v.deployments)) or "-"
        aliases = f" @{', @'.join(v.aliases)}" if v.aliases else ""
        out.print(f"  {v.name} version {v.version}{aliases} ({v.status}); deployed on: {where}")
