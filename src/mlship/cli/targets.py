"""Target commands: deploy, status, logs, rollback, destroy. They parse flags, call :mod:`mlship.pipeline`
(the one pipeline) and render its reports: text on stdout, progress on stderr, or ``--json``."""

from __future__ import annotations

from typing import Annotated

import typer

from mlship.cli._app import FileOpt, _errors, app, out
from mlship.cli.images import BaseOpt, JsonOpt
from mlship.cli.render import emit_json, events, json_errors, print_preflight
from mlship.errors import EXIT_PREFLIGHT_FAILED

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Deploy target plugin (built in: local, cloudrun).")]


@app.command()
def deploy(
    file: FileOpt = None,
    target: TargetOpt = "local",
    base_image: BaseOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Run the preflight, print the build and deploy plans; "
                                                            "build and change nothing.")] = False,
    skip_test: Annotated[bool, typer.Option("--skip-test", help="Deploy without running `mlship test`.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Preflight, build the image, test it (`mlship test`) and deploy it to a target; prints the service URL."""
    from mlship import pipeline

    with _errors(), json_errors("deploy", as_json):
        report = pipeline.deploy(file or ".", target, base_image=base_image, skip_test=skip_test, dry_run=dry_run,
                                 events=events())
    if as_json:
        emit_json(report)
    elif dry_run:
        out.print(f"preflight for {report.target}: " + ("ok" if report.preflight.ok else "FAILED"))
        print_preflight(report.preflight, out)
        if report.build is not None:
            out.print(f"image: {report.build.image} (base {report.build.base_image}; requirements: "
                      f"{', '.join(report.build.requirements)})", markup=False)
            for note in report.build.notes:
                out.print(f"note: {note}", markup=False)
        for i, step in enumerate(report.plan, start=1):
            out.print(f"{i}. {step}", markup=False)
        out.print("dry run: nothing was built or deployed")
    else:
        verb = "deployed" if report.changed else "unchanged"
        out.print(f"[green]{verb}[/] {report.image} (version {report.version}) on {report.target}"
                  + (f", previous: {report.previous}" if report.previous else ""), markup=True)
        if report.url:
            out.print(report.url)
    if not report.ok:
        raise typer.Exit(EXIT_PREFLIGHT_FAILED)


@app.command()
def status(file: FileOpt = None, target: TargetOpt = "local", as_json: JsonOpt = False) -> None:
    """What the target runs for this service: URL, image, version, state and history."""
    from mlship import pipeline

    with _errors(), json_errors("status", as_json):
        st = pipeline.status(file or ".", target)
    if as_json:
        emit_json(st)
    elif not st.deployed:
        out.print(f"nothing deployed on {target} for {st.service}")
    else:
        ready = "" if st.ready is None else (", ready" if st.ready else ", not ready")
        out.print(f"state: {st.state}{ready}\nurl: {st.url or '-'}\nimage: {st.image}\nversion: {st.version}")
        out.print("history: " + " <- ".join(st.history))
        if st.serving:
            out.print(f"serving {st.serving}")
        if st.failed_deployment:
            out.print(f"failed deployment: {st.failed_deployment}")
        if st.events:
            out.print("events:\n" + "\n".join(f"  {e}" for e in st.events))


@app.command()
def logs(
    file: FileOpt = None,
    target: TargetOpt = "local",
    tail: Annotated[int, typer.Option(min=1, help="Number of lines from the end.")] = 100,
) -> None:
    """Print the service's most recent log lines."""
    from mlship import pipeline

    with _errors():
        text = pipeline.logs(file or ".", target, tail=tail)
    out.print(text.rstrip("\n"), markup=False)


@app.command()
def rollback(file: FileOpt = None, target: TargetOpt = "local", as_json: JsonOpt = False) -> None:
    """Redeploy the previous image (a second rollback undoes the first)."""
    from mlship import pipeline

    with _errors(), json_errors("rollback", as_json):
        report = pipeline.rollback(file or ".", target, events=events())
    if as_json:
        emit_json(report)
        return
    out.print(f"[green]rolled back[/] to {report.image} (version {report.version})"
              + (f" from {report.previous}" if report.previous else ""), markup=True)
    if report.serving:
        out.print(f"now serving {report.serving}")
    if report.url:
        out.print(report.url)


@app.command()
def destroy(file: FileOpt = None, target: TargetOpt = "local", as_json: JsonOpt = False) -> None:
    """Remove everything the target runs for this service (the images stay)."""
    from mlship import pipeline

    with _errors(), json_errors("destroy", as_json):
        report = pipeline.destroy(file or ".", target)
    if as_json:
        emit_json(report)
        return
    if not report.removed:
        out.print(f"nothing deployed on {target} for {report.service}; nothing removed")
    for item in report.removed:
        out.print(f"[green]removed[/] {item}", markup=True)
