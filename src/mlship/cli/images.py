"""Image commands: build, test, push."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mlship.cli._app import FileOpt, _errors, app, err, out

BaseOpt = Annotated[str | None, typer.Option("--base-image", envvar="MLSHIP_BASE_IMAGE", show_envvar=True,
                                             help="Base image (default: build.base_image, python:X.Y-slim).")]


def _build_image(file: Path | None, base: str | None, dry_run: bool) -> tuple[Any, Any]:
    from mlship.contract_io import load_project
    from mlship.image import engine
    from mlship.image.context import plan_project, write_context

    project = load_project(file)
    plan = plan_project(project, base, dry_run=dry_run)
    if dry_run:
        return project, plan
    ctx = write_context(plan, project.root / ".mlship" / "build")
    with err.status(f"building {plan.tag}") as status:
        image = engine.build(ctx, plan.tag, progress=lambda line: status.update(f"building {plan.tag}: {line}"),
                             log_path=project.root / ".mlship" / "build.log")
    return project, (plan, image)


@app.command()
def build(
    file: FileOpt = None,
    base_image: BaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the Dockerfile and plan; build nothing.")] = False,
) -> None:
    """Build the image NAME:VERSION with a locked wheelhouse (no network inside the build)."""
    with _errors():
        _project, result = _build_image(file, base_image, dry_run)
    if dry_run:
        plan = result
        out.print(f"image: {plan.tag}\nbase: {plan.base_image}\nrequirements: {', '.join(plan.requirements)}")
        for note in plan.notes:
            out.print(f"note: {note}")
        out.print("files: " + ", ".join(ctx for _src, ctx in plan.files))
        out.print("--- Dockerfile")
        out.print(plan.dockerfile, markup=False)
        return
    plan, image = result
    for note in plan.notes:
        out.print(f"[yellow]note:[/] {note}", markup=True)
    out.print(f"[green]built[/] {image.tag} {image.id[:19]} {image.size / 1e6:.1f} MB in {image.seconds:.1f}s",
              markup=True)


@app.command("test")
def test_image(
    file: FileOpt = None,
    image: Annotated[str | None, typer.Option(help="Image to test (default: NAME:VERSION of mlship.yaml).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Start the built image, wait for /readyz, replay the examples, check cold start and size budgets."""
    from mlship.contract_io import load_project
    from mlship.gate import require_ok, run_gate

    with _errors():
        project = load_project(file)
        report = run_gate(project, image or f"{project.contract.name}:{project.version}")
        if as_json:
            out.print_json(json.dumps(report.as_dict()))
        else:
            ready = f"ready in {report.ready_s:.2f}s" if report.ready_s >= 0 else "never ready"
            first = (f", first prediction at {report.first_prediction_s:.2f}s"
                     if report.first_prediction_s > 0 else "")
            out.print(f"{report.image}: {report.size_mb:g} MB, {ready}{first}")
            for ex in report.examples:
                mark = "[green]ok[/]" if ex["ok"] else "[red]FAIL[/]"
                out.print(f"{mark} examples[{ex['index']}] " + "; ".join(ex["problems"]), markup=True)
        require_ok(report)


@app.command()
def push(
    registry: Annotated[str, typer.Option(help="Registry host[:port][/path], e.g. 127.0.0.1:5000.")],
    file: FileOpt = None,
    image: Annotated[str | None, typer.Option(help="Local image (default: NAME:VERSION).")] = None,
) -> None:
    """Push the built image to a registry (credentials from your Docker config)."""
    from mlship.contract_io import load_project
    from mlship.image import engine

    with _errors():
        project = load_project(file)
        ref = image or f"{project.contract.name}:{project.version}"
        with err.status(f"pushing {ref}") as status:
            pushed = engine.push(ref, registry, progress=lambda line: status.update(f"pushing {ref}: {line}"))
    out.print(f"[green]pushed[/] {pushed}", markup=True)

