"""The `mlship` command line. The only module that prints or exits: it calls the core and renders.

Workflow: ``mlship init MODEL`` -> ``mlship validate`` -> ``mlship serve`` -> ``mlship predict``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlship import __version__
from mlship.errors import ClientError, MlshipError

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


@app.command()
def init(
    artifact: Annotated[Path, typer.Argument(help="The model file, e.g. model/iris.joblib.")],
    runtime: Annotated[str | None, typer.Option(help="Runtime plugin (default: detected from the file).")] = None,
    name: Annotated[str | None, typer.Option(help="Service name (default: from the file name).")] = None,
    sample: Annotated[Path | None, typer.Option(help="CSV/JSON whose first row becomes the example.")] = None,
    directory: Annotated[Path, typer.Option("--dir", help="Where to write mlship.yaml.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing mlship.yaml.")] = False,
) -> None:
    """Inspect a model and write mlship.yaml (input schema, labels, pinned versions, one example)."""
    from mlship.init import init_project

    with _errors():
        result = init_project(artifact, directory=directory, runtime=runtime, name=name, sample=sample,
                              force=force)
    c = result.contract
    for path in result.created:
        out.print(f"[green]wrote[/] {path}", markup=True)
    out.print(f"{c.runtime} {c.task} model, {len(c.input.features)} features"
              + (f", labels: {', '.join(c.output.labels)}" if c.output.labels else ""))
    if result.info.framework_version:
        out.print(f"saved with {c.runtime} {result.info.framework_version} (pinned in dependencies)")
    for note in result.info.notes:
        out.print(f"[yellow]note:[/] {note}", markup=True)
    out.print("next: `mlship validate`, then `mlship serve`")


@app.command()
def validate(
    file: FileOpt = None,
    load: Annotated[bool, typer.Option(help="Load the model and replay the examples.")] = True,
) -> None:
    """Check mlship.yaml, load the model, and replay the contract's examples in-process."""
    from mlship.contract_io import load_project

    with _errors():
        project = load_project(file)
        c = project.contract
        out.print(f"[green]ok[/] {project.contract_path}: {c.name} ({c.runtime}, {c.task}, "
                  f"{len(c.input.features)} features)", markup=True)
        if not load:
            return
        from mlship.examples import check_example
        from mlship.serving.predictor import Predictor

        predictor = Predictor(project)
        predictor.load()
        for warning in predictor.warnings:
            out.print(f"[yellow]warning:[/] {warning}", markup=True)
        predictor.warm_up()
        out.print(f"[green]ok[/] model loads and predicts (version {project.version})", markup=True)
        failed = 0
        for i, example in enumerate(c.examples):
            got = predictor.predict(predictor.validator.validate(example.input).rows)[0]
            result = check_example(i, example, got)
            if result.ok:
                out.print(f"[green]ok[/] examples[{i}]", markup=True)
            else:
                failed += 1
                out.print(f"[red]FAIL[/] examples[{i}]: " + "; ".join(result.problems), markup=True)
        if failed:
            raise MlshipError(f"{failed} of {len(c.examples)} examples did not match.",
                              fix="Fix the model, or update the expected outputs in mlship.yaml.")


@app.command()
def serve(
    file: FileOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 for all.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: $PORT, then serve.port, 8080).")] = None,
) -> None:
    """Serve the model over HTTP (the same server that runs in images). Ctrl-C or SIGTERM drains and stops."""
    from mlship.contract_io import load_project
    from mlship.serving.server import ServeConfig
    from mlship.serving.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _errors():
        code = run_server(load_project(file), ServeConfig(host=host, port=port))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a model thread stuck past the grace period must not keep the process alive


@app.command()
def predict(
    input: Annotated[str | None, typer.Option("--input", "-i",
                                              help="A .csv or .json file of instances; - for stdin.")] = None,
    url: Annotated[str | None, typer.Option(help="Server URL, e.g. http://127.0.0.1:8080.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Load the model in-process instead of a URL.")] = False,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Instances as inline JSON.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    api_key: Annotated[str | None, typer.Option(envvar="MLSHIP_API_KEY", help="Bearer key for the server.",
                                                show_envvar=True)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Instances per request.")] = 100,
    file: FileOpt = None,
) -> None:
    """Predict rows from CSV/JSON with a running server (--url) or the local model (--local)."""
    with _errors():
        if (url is None) == (not local):
            raise ClientError("Give exactly one of --url URL or --local.",
                              fix="e.g. `mlship predict --input rows.csv --url http://127.0.0.1:8080`.")
        source: str | Path
        if data is not None:
            source = data
        elif input in (None, "-"):
            source = sys.stdin.read()
        else:
            source = Path(input)
            if not source.is_file():
                raise ClientError(f"Input file not found: {source}.")
        if local:
            preds, labels = _predict_local(source, file)
        else:
            assert url is not None
            preds, labels = _predict_url(source, url.rstrip("/"), api_key, batch_size)
    if as_json:
        out.print_json(json.dumps({"predictions": preds}))
    else:
        out.print(_table(preds, labels))


def _predict_local(source: str | Path, file: Path | None) -> tuple[list[Any], list[str] | None]:
    from mlship import client
    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor
    from mlship.serving.validation import InvalidInput

    project = load_project(file)
    rows = client.read_rows(source, project.contract.input.features)
    predictor = Predictor(project)
    predictor.load()
    try:
        batch = predictor.validator.validate({"instances": rows})
    except InvalidInput as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']} (expected {e['expected']}, got {e['got']})"
                 for e in exc.errors]
        raise ClientError("Invalid input:\n" + "\n".join(lines),
                          fix="Fix the listed fields; `mlship info` shows the input schema.") from None
    return predictor.predict(batch.rows), project.contract.output.labels


def _predict_url(source: str | Path, url: str, key: str | None, batch_size: int) -> tuple[list[Any], list[str] | None]:
    from mlship import client
    from mlship.contract import Feature

    meta = client.get_json(f"{url}/metadata", key)
    props = meta.get("input", {}).get("properties", {})
    kinds = {"number": "float", "integer": "int", "string": "str", "boolean": "bool"}
    features = {n: Feature(type=kinds.get(p.get("type"), "str")) for n, p in props.items()}  # type: ignore[arg-type]
    rows = client.read_rows(source, features)
    preds: list[Any] = []
    for start in range(0, len(rows), batch_size):
        reply = client.post_json(f"{url}/predict", {"instances": rows[start:start + batch_size]}, key)
        preds.extend(reply["predictions"])
    return preds, meta.get("labels")


def _table(preds: list[dict[str, Any]], labels: list[str] | None) -> Table:
    table = Table(show_edge=False)
    table.add_column("#", justify="right")
    first = preds[0] if preds else {}
    classes = list(first.get("probabilities", {})) if isinstance(first, dict) else []
    keys = [k for k in first if k != "probabilities"] if isinstance(first, dict) else ["prediction"]
    for key in keys:
        table.add_column(key)
    show = classes if len(classes) <= 6 else []
    for name in show:
        table.add_column(f"p({name})", justify="right")
    for i, pred in enumerate(preds):
        cells = [str(i)] + [_cell(pred.get(k)) for k in keys]
        cells += [f"{pred['probabilities'].get(n, 0.0):.3f}" for n in show]
        table.add_row(*cells)
    return table


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@app.command()
def info(file: FileOpt = None) -> None:
    """Show the model's metadata: name, version, runtime, input schema, labels and docs."""
    from mlship.contract_io import load_project

    with _errors():
        project = load_project(file)
    c = project.contract
    out.print(f"[bold]{c.name}[/] {project.version} · {c.runtime} · {c.task}", markup=True)
    table = Table("feature", "type", "description", show_edge=False)
    for name, feature in c.input.features.items():
        table.add_row(name, feature.type, feature.description or "")
    out.print(table)
    if c.output.labels:
        out.print("labels: " + ", ".join(c.output.labels))
    reqs = project.requirements()
    if reqs:
        out.print("requirements: " + ", ".join(reqs))
    if project.docs_text:
        out.print()
        out.print(project.docs_text.rstrip(), markup=False)


BaseOpt = Annotated[str | None, typer.Option("--base-image", envvar="MLSHIP_BASE_IMAGE", show_envvar=True,
                                             help="Base image (default: build.base_image, python:X.Y-slim).")]


def _build_image(file: Path | None, base: str | None, dry_run: bool) -> tuple[Any, Any]:
    from mlship.build import engine
    from mlship.build.context import build_pins, plan_build, write_context
    from mlship.contract_io import load_project

    project = load_project(file)
    plan = plan_build(project, base=base, pins=build_pins(project))
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
    from mlship.build import engine
    from mlship.contract_io import load_project

    with _errors():
        project = load_project(file)
        ref = image or f"{project.contract.name}:{project.version}"
        with err.status(f"pushing {ref}") as status:
            pushed = engine.push(ref, registry, progress=lambda line: status.update(f"pushing {ref}: {line}"))
    out.print(f"[green]pushed[/] {pushed}", markup=True)


TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Deploy target plugin (built in: local).")]


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


def main() -> None:
    app()
