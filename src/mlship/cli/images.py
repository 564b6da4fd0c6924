"""Image commands: build, test, push. They parse flags, call :mod:`mlship.pipeline` and render."""

from __future__ import annotations

from typing import Annotated

import typer

from mlship.cli._app import FileOpt, _errors, app, err, out
from mlship.cli.render import emit_json, events, json_errors

BaseOpt = Annotated[str | None, typer.Option("--base-image", envvar="MLSHIP_BASE_IMAGE", show_envvar=True,
                                             help="Base image (default: build.base_image, python:X.Y-slim).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (progress stays on "
                                                      "stderr); see docs/json-output.md.")]


@app.command()
def build(
    file: FileOpt = None,
    base_image: BaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the Dockerfile and plan; build nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the image NAME:VERSION-<digest of its inputs> (and NAME:VERSION) with a locked wheelhouse (no network
    inside the build)."""
    from mlship import pipeline

    with _errors(), json_errors("build", as_json):
        report = pipeline.build(file or ".", base_image=base_image, dry_run=dry_run, events=events())
    if as_json:
        emit_json(report)
        return
    if dry_run:
        out.print(f"image: {report.image}\nbase: {report.base_image}\nrequirements: {', '.join(report.requirements)}")
        for note in report.notes:
            out.print(f"note: {note}", markup=False)
        out.print("files: " + ", ".join(report.files), markup=False)
        out.print("--- Dockerfile")
        out.print(report.dockerfile or "", markup=False)
        return
    out.print(f"[green]built[/] {report.image} {(report.image_id or '')[:19]} {report.size_mb} MB in "
              f"{report.seconds:.1f}s", markup=True)
    out.print(f"tagged {report.image.rpartition('-')[0]} too (`mlship test` and `mlship push` use it)", markup=False)


@app.command("test")
def test_image(
    file: FileOpt = None,
    image: Annotated[str | None, typer.Option(help="Image to test (default: NAME:VERSION of mlship.yaml).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the built image, wait for /readyz, replay the examples, check cold start and size budgets."""
    from mlship import pipeline
    from mlship.errors import GateError

    with _errors(), json_errors("test", as_json):
        try:
            report = pipeline.test(file or ".", image, events=events())
        except GateError as exc:
            if not as_json and exc.report is not None:
                for ex in exc.report.examples:
                    mark = "[green]ok[/]" if ex.ok else "[red]FAIL[/]"
                    err.print(f"{mark} examples[{ex.index}] " + "; ".join(ex.problems), markup=True)
            raise
    if as_json:
        emit_json(report)
        return
    ready = f"ready in {report.ready_s:.2f}s" if report.ready_s >= 0 else "never ready"
    first = f", first prediction at {report.first_prediction_s:.2f}s" if report.first_prediction_s > 0 else ""
    memory = f", peak memory {report.memory_mb:g} MB" if report.memory_mb else ""
    out.print(f"{report.image}: {report.size_mb:g} MB, {ready}{first}{memory}")
    for ex in report.examples:
        out.print(f"[green]ok[/] examples[{ex.index}] " + "; ".join(ex.problems), markup=True)


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
