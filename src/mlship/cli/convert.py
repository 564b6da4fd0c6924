"""`mlship convert --to skops`: save a trusted pickle again in skops' format, which loads without running a pickle."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mlship.cli._app import FileOpt, _errors, app, out
from mlship.errors import ArtifactError, ContractError

SKOPS_FILE = "model.skops"
_ARTIFACT_LINE = re.compile(r"^artifact:[ \t]*[^\n]*$", re.MULTILINE)


@app.command()
def convert(
    to: Annotated[str, typer.Option("--to", help="The format to write: skops.")],
    file: FileOpt = None,
    force: Annotated[bool, typer.Option(help=f"Overwrite an existing {SKOPS_FILE}.")] = False,
) -> None:
    """Save the model again as model.skops next to the artifact (a pickle that the trust policy admits) and point
    `artifact:` at it; the old file is kept."""
    with _errors():
        for line in convert_to_skops(to, file, force):
            out.print(escape(line))


def convert_to_skops(to: str, file: Path | None, force: bool) -> list[str]:
    """Do the conversion; returns what was done, one line each."""
    from mlship.contract_io import load_project, parse_contract
    from mlship.runtimes.sklearn import SklearnRuntime
    from mlship.userpkg import make_importable

    if to != "skops":
        raise ContractError(f"--to {to!r} is not a format mlship converts to.", fix="Use --to skops.")
    project = load_project(file)
    c = project.contract
    source = project.artifact_path
    if c.runtime != "sklearn" or c.load:
        raise ContractError("mlship convert --to skops converts scikit-learn models that the sklearn runtime loads "
                            f"itself; this contract has runtime: {c.runtime}" + (" and a `load:` function."
                                                                                 if c.load else "."),
                            fix="Save the model with `skops.io.dump(model, 'model.skops')` in your own code.")
    if source.suffix.lower() == ".skops":
        raise ContractError(f"{source.name} is a skops file already.", fix="Nothing to do.")
    target = source.parent / SKOPS_FILE
    if target.exists() and not force:
        raise ContractError(f"{target} already exists.", why="mlship convert never overwrites a file.",
                            fix="Pass --force to replace it, or move it away.")
    try:
        import skops.io as sio  # type: ignore[import-untyped]
    except ImportError:
        raise ArtifactError("mlship convert --to skops needs skops, which is not installed.",
                            fix="pip install skops (`pip install 'mlship[sklearn]'` includes it).") from None
    runtime = SklearnRuntime()
    runtime.configure(c)
    runtime.unsafe_deserialization = False  # only a pickle that the trust policy admits is converted
    make_importable(project.root)
    model = runtime.load(source)
    sio.dump(model, target)
    again = SklearnRuntime()
    again.configure(c)
    again.unsafe_deserialization = False
    try:
        _same_predictions(runtime, model, again.load(target), c)
    except Exception:
        target.unlink(missing_ok=True)
        raise
    artifact = Path(os.path.relpath(target, project.root.resolve())).as_posix()
    text = project.contract_path.read_text(encoding="utf-8")
    new_text, count = _ARTIFACT_LINE.subn(f"artifact: {artifact}", text, count=1)
    if count != 1:
        raise ContractError(f"{project.contract_path} has no top-level `artifact:` line to change.",
                            fix=f"Set `artifact: {artifact}` by hand.")
    parse_contract(new_text, project.contract_path.name)
    project.contract_path.write_text(new_text, encoding="utf-8")
    return [f"wrote {target} ({target.stat().st_size} bytes) from {source.name}",
            f"{project.contract_path.name}: artifact: {c.artifact} -> {artifact}",
            f"kept {source.name}; the image's default tag changes with the artifact (version: its sha256)",
            "next: `mlship validate`"]


def _same_predictions(runtime: Any, before: Any, after: Any, contract: Any) -> None:
    """The examples' predictions of the converted model must be those of the pickle."""
    features = contract.feature_names
    rows = [[example.input[f] for f in features] for example in contract.examples]
    if not rows or contract.input.tensor is not None:
        return
    a, b = runtime.predict(before, rows, features), runtime.predict(after, rows, features)
    if [str(v) for v in a.values] != [str(v) for v in b.values]:
        raise ArtifactError("The skops file predicts differently from the pickle on the contract's examples.",
                            fix="Report this; keep the pickle as the artifact.")
