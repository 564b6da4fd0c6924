"""Target commands: deploy, status, logs, rollback, destroy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from mlship.cli._app import FileOpt, _errors, app, err, out
from mlship.cli.images import BaseOpt, _build_image

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Deploy target plugin (built in: local, cloudrun).")]


@contextmanager
def _target(file: Path | None, name: str) -> Iterator[Any]:
    """The project's target plugin (options validated); its engine connection closed afterwards."""
    from mlship.contract_io import load_project
    from mlship.targets import get_target

    with get_target(name, load_project(file)) as target:
        yield target


def _progress(line: str) -> None:
    err.print(f"[dim]-[/] {line}", markup=True)


@app.command()
def deploy(
    file: FileOpt = None,
    target: TargetOpt = "local",
    base_image: BaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the build and deploy plans; do nothing.")] = False,
    skip_test: Annotated[bool, typer.Option("--skip-test", help="Deploy without running `mlship test`.")] = False,
) -> None:
    """Build the image, test it (`mlship test`), and deploy it to a target; prints the service URL."""
    from mlship.gate import require_ok, run_gate

    with _errors(), _target(file, target) as tgt:
        project, result = _build_image(file, base_image, dry_run)
        if dry_run:
            plan = result
            out.print(f"image: {plan.tag} (base {plan.base_image}; requirements: {', '.join(plan.requirements)})")
            for note in plan.notes:
                out.print(f"note: {note}")
            out.print(f"1. build {plan.tag} (`mlship build --dry-run` shows the Dockerfile)")
            n_examples = len(project.contract.examples)
            out.print("2. " + ("skip `mlship test` (--skip-test)" if skip_test else
                               f"test {plan.tag}: /readyz, replay {n_examples} example(s), check budgets"))
            for i, step in enumerate(tgt.plan(plan.tag), start=3):
                out.print(f"{i}. {step}", markup=False)
            out.print("dry run: nothing was built or deployed")
            return
        plan, image = result
        for note in plan.notes:
            out.print(f"[yellow]note:[/] {note}", markup=True)
        out.print(f"[green]built[/] {image.tag} in {image.seconds:.1f}s", markup=True)
        if skip_test:
            out.print("[yellow]skipped[/] mlship test (--skip-test)", markup=True)
        else:
            with err.status(f"testing {image.tag}"):
                report = run_gate(project, image.tag)
            require_ok(report)
            out.print(f"[green]tested[/] {image.tag}: ready in {report.ready_s:.2f}s, "
                      f"{len(report.examples)} example(s) ok", markup=True)
        deployment = tgt.deploy(image.tag, _progress)
    verb = "deployed" if deployment.changed else "unchanged"
    out.print(f"[green]{verb}[/] {deployment.image} (version {deployment.version}) on {target}"
              + (f", previous: {deployment.previous}" if deployment.previous else ""), markup=True)
    if deployment.url:
        out.print(deployment.url)


@app.command()
def status(file: FileOpt = None, target: TargetOpt = "local") -> None:
    """What the target runs for this service: URL, image, version, state and history."""
    with _errors(), _target(file, target) as tgt:
        st = tgt.status()
    if st.image is None:
        out.print(f"nothing deployed on {target} for {tgt.project.contract.name}")
        return
    ready = "" if st.ready is None else (", ready" if st.ready else ", not ready")
    out.print(f"state: {st.state}{ready}\nurl: {st.url or '-'}\nimage: {st.image}\nversion: {st.version}")
    out.print("history: " + " <- ".join(st.history))


@app.command()
def logs(
    file: FileOpt = None,
    target: TargetOpt = "local",
    tail: Annotated[int, typer.Option(min=1, help="Number of lines from the end.")] = 100,
) -> None:
    """Print the service's most recent log lines."""
    with _errors(), _target(file, target) as tgt:
        text = tgt.logs(tail=tail)
    out.print(text.rstrip("\n"), markup=False)


@app.command()
def rollback(file: FileOpt = None, target: TargetOpt = "local") -> None:
    """Redeploy the previous image (a second rollback undoes the first)."""
    with _errors(), _target(file, target) as tgt:
        deployment = tgt.rollback(_progress)
    out.print(f"[green]rolled back[/] to {deployment.image} (version {deployment.version})"
              + (f" from {deployment.previous}" if deployment.previous else ""), markup=True)
    if deployment.url:
        out.print(deployment.url)


@app.command()
def destroy(file: FileOpt = None, target: TargetOpt = "local") -> None:
    """Remove everything the target runs for this service (the images stay)."""
    with _errors(), _target(file, target) as tgt:
        removed = tgt.destroy()
    if not removed:
        out.print(f"nothing deployed on {target} for {tgt.project.contract.name}; nothing removed")
    for item in removed:
        out.print(f"[green]removed[/] {item}", markup=True)

