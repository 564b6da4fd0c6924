"""Commands around the model: init, validate, serve, predict, info."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mlship.cli._app import FileOpt, _errors, app, out
from mlship.errors import ClientError, MlshipError

if TYPE_CHECKING:
    from mlship.contract import Contract


@app.command()
def init(
    artifact: Annotated[str, typer.Argument(help="The model file, e.g. model/iris.joblib, or a URI: s3://..., "
                                            "gs://..., https://..., models:/NAME/VERSION (docs/artifacts.md).")],
    runtime: Annotated[str | None, typer.Option(help="Runtime plugin (default: detected from the file).")] = None,
    name: Annotated[str | None, typer.Option(help="Service name (default: from the file name).")] = None,
    sample: Annotated[Path | None, typer.Option(help="CSV/JSON whose first row becomes the example.")] = None,
    directory: Annotated[Path, typer.Option("--dir", help="Where to write mlship.yaml.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing mlship.yaml.")] = False,
    unsafe_deserialization: Annotated[bool, typer.Option(
        "--unsafe-deserialization",
        help="Load a model that runs its own code when deserialized (e.g. a Keras Lambda layer) and write "
        "`unsafe_deserialization: true`. Only for files you trust.")] = False,
    load: Annotated[str | None, typer.Option(
        "--load", help="Your file.py:function(path) -> model, next to mlship.yaml; written as `load:`.")] = None,
    predict: Annotated[str | None, typer.Option(
        "--predict", help="Your file.py:function(model, instances) -> outputs; written as `predict:`.")] = None,
    keep_versions: Annotated[bool, typer.Option(
        "--keep-versions", help="A model saved with releases of another era: serve those releases in the Python "
        "of their time, without trying a newer release proven to predict the same.")] = False,
    python: Annotated[str | None, typer.Option(
        "--python", help="dependencies.python (default: this Python; for a model of another era, the newest "
        "Python its releases have wheels for).")] = None,
) -> None:
    """Inspect a model and write mlship.yaml (input schema, labels, pinned versions, one example)."""
    from mlship.init import init_project

    with _errors():
        result = init_project(artifact, directory=directory, runtime=runtime, name=name, sample=sample,
                              force=force, unsafe_deserialization=unsafe_deserialization, load=load,
                              predict=predict, keep_versions=keep_versions, python=python)
    c = result.contract
    for path in result.created:
        out.print(f"[green]wrote[/] {path}", markup=True)
    for package in result.packages:
        out.print(f"uses your package {escape(package)} (added to build.include)")
    if result.globals:
        out.print("the model file refers to (read without loading it):")
        for library, names in result.globals.items():
            short = [n.rsplit(".", 1)[-1] for n in names]
            out.print(f"  {escape(library)}: {escape(', '.join(short[:8]))}"
                      + (f" and {len(short) - 8} more" if len(short) > 8 else ""))
    for entry in c.trust:
        out.print(f"trusts your class {escape(entry)} (written to trust:)")
    out.print(f"{c.runtime} {c.task} model, {escape(_input_text(c))}"
              + (f", labels: {', '.join(c.output.labels)}" if c.output.labels else ""))
    if c.provenance is not None:
        served = ", ".join(f"{k} {v}" for k, v in c.provenance.served_with.items())
        out.print(f"saved with {escape(', '.join(f'{k} {v}' for k, v in c.provenance.saved_with.items()))} (Python "
                  f"{c.provenance.python} era); the image serves with {escape(served)} in Python "
                  f"{c.dependencies.python}" + (" (proven equal: provenance.proof)" if c.provenance.proof else ""))
    elif result.info.framework_version:
        out.print(f"saved with {c.runtime} {result.info.framework_version} (pinned in dependencies)")
    for note in result.info.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", markup=True)
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
                  f"{escape(_input_text(c))})", markup=True)
        if not load:
            return
        from mlship.legacy.check import host_cannot_load

        if host_cannot_load(project) is not None:
            _validate_elsewhere(project)
            return
        from mlship.examples import check_example
        from mlship.serving.predictor import Predictor

        predictor = Predictor(project)
        predictor.load()
        for warning in predictor.warnings:
            out.print(f"[yellow]warning:[/] {warning}", markup=True)
        predictor.warm_up()
        out.print(f"[green]ok[/] model loads and predicts (version {project.version})", markup=True)
        if predictor.compiled is not None:
            out.print(f"[green]ok[/] compiled: {escape(predictor.input_path or '')}", markup=True)
        elif predictor.compile_note:
            out.print(f"[yellow]note:[/] {escape(predictor.compile_note)}", markup=True)
        failed = 0
        for i, example in enumerate(c.examples):
            got = predictor.predict(predictor.example_rows(example.input, i))[0]
            result = check_example(i, example, got)
            if result.ok:
                out.print(f"[green]ok[/] examples[{i}]", markup=True)
            else:
                failed += 1
                out.print(f"[red]FAIL[/] examples[{i}]: " + "; ".join(result.problems), markup=True)
        if failed:
            raise MlshipError(f"{failed} of {len(c.examples)} examples did not match.",
                              fix="Fix the model, or update the expected outputs in mlship.yaml.")


def _validate_elsewhere(project: Any) -> None:
    """validate for a model this machine cannot load as the image serves it: in a build environment."""
    from mlship.legacy.check import host_cannot_load, validate

    out.print(f"[yellow]note:[/] {escape(host_cannot_load(project) or '')}: validating in a build environment",
              markup=True)
    report = validate(project)
    for note in report.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", markup=True)
    out.print(f"[green]ok[/] model loads and predicts in {escape(report.where)}", markup=True)
    for r in report.results:
        out.print(f"[green]ok[/] examples[{r.index}]" if r.ok else
                  f"[red]FAIL[/] examples[{r.index}]: " + escape("; ".join(r.problems)), markup=True)
    failed = sum(not r.ok for r in report.results)
    if failed:
        raise MlshipError(f"{failed} of {len(report.results)} examples did not match.",
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
                                              help="A .csv or .json file; - for stdin (JSON or CSV).")] = None,
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
    rows: list[Any]
    if project.contract.input.tensor is not None:
        rows = client.read_tensors(source)
    else:
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
    rows: list[Any]
    if meta.get("tensor"):
        rows = client.read_tensors(source)
    else:
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


def _input_text(c: Contract) -> str:
    """ "4 features", or "tensor float32 [null, 8, 8] (+ PNG)"."""
    from mlship.contract import shape_text

    spec = c.input.tensor
    if spec is None:
        return f"{len(c.input.features)} features"
    return f"tensor {spec.dtype} {shape_text(spec.shape)}" + (" (+ PNG)" if spec.image else "")


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
    if c.input.tensor is not None:
        out.print("input: " + _input_text(c), markup=False)
    else:
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

