"""`mlship validate` and `mlship build` for a contract whose model this machine cannot load as the image serves it
(``provenance`` names versions other than the ones installed here): the versions to pin, read without loading,
and the examples replayed in a build environment with exactly the versions the image installs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from mlship.contract_io import Project, artifact_sha256
from mlship.errors import BuildError
from mlship.examples import ExampleResult, check_example

_PACKAGE = "scikit-learn"


def installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def provenance_applies(project: Project) -> bool:
    """Whether the contract's provenance decides the versions to pin (a scikit-learn pickle mlship loads)."""
    c = project.contract
    return c.provenance is not None and c.runtime == "sklearn" and not c.load


def host_cannot_load(project: Project) -> str | None:
    """Why this machine cannot load the artifact the way the image serves it, or None when it can (or the
    contract records no provenance and the image runs this machine's Python: the usual path)."""
    prov = project.contract.provenance
    if prov is None:  # written by hand: the image runs another Python (e.g. 3.9) -> loaded there, not here
        from mlship.image.wheelhouse import other_python

        return other_python(project)
    if project.contract.runtime != "sklearn" or project.contract.load:
        return None
    served = prov.served_with.get(_PACKAGE)
    here = installed(_PACKAGE)
    if served is None or served == here:
        return None
    return (f"the image serves it with scikit-learn {served} (Python {project.contract.dependencies.python}), and "
            + (f"scikit-learn {here} is installed here" if here else "scikit-learn is not installed here"))


def provenance_pins(project: Project) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(pins, proven, notes) read without loading the artifact: the version the file records, or the release
    ``provenance`` serves it with when its proof belongs to this very file (by sha256). ``proven`` maps a package
    pinned to a proven release to the version the file records (for the skew guard's message)."""
    from mlship.runtimes.sklearn_load import scan_file

    prov = project.contract.provenance
    found = scan_file(project.artifact_path)
    recorded = found.version(_PACKAGE)
    if recorded is None:
        raise BuildError(f"{project.artifact_path.name} records no scikit-learn version, but mlship.yaml's "
                         "provenance says it was saved with scikit-learn.",
                         fix="Run `mlship init` again for this file (provenance belongs to another file).")
    if prov is None:
        return {_PACKAGE: recorded}, {}, []
    claimed = prov.saved_with.get(_PACKAGE)
    if claimed != recorded:
        raise BuildError(
            f"mlship.yaml's provenance says the artifact was saved with scikit-learn {claimed}, but "
            f"{project.artifact_path.name} records {recorded}.",
            why="provenance was written by `mlship init` for another file (the artifact was replaced since).",
            fix="Run `mlship init` again for this file (`--force` replaces mlship.yaml).")
    served = prov.served_with.get(_PACKAGE, recorded)
    if served == recorded:
        return {_PACKAGE: recorded}, {}, [f"serving scikit-learn {recorded}, the version the artifact records, in "
                                          f"Python {project.contract.dependencies.python}"]
    proof = prov.proof
    sha = artifact_sha256(project.artifact_path)
    if proof is None or proof.artifact_sha256 != sha:
        raise BuildError(
            f"mlship.yaml serves scikit-learn {served}, but {project.artifact_path.name} records scikit-learn "
            f"{recorded}, and the proof that {served} predicts the same was made for another file"
            f" (sha256 {proof.artifact_sha256[:12] if proof else 'none'}, this file {sha[:12]}).",
            why="Another release may serve a model only when it was proven to predict the same as the recorded "
            "one on this very file.",
            fix="Run `mlship init` again for this file (it makes the proof again), or require "
            f"scikit-learn=={recorded} and set dependencies.python to {prov.python}.")
    note = (f"serving scikit-learn {served}, proven to predict the same as {recorded} (the version the artifact "
            f"records) on {proof.rows} probe rows, largest difference {proof.max_abs_diff:.3g} (checked "
            f"{proof.checked})")
    return {_PACKAGE: served}, {_PACKAGE: recorded}, [note]


@dataclass
class Validation:
    where: str  #: the build environment, in words
    results: list[ExampleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def validate(project: Project, progress: Callable[[str], None] | None = None) -> Validation:
    """Replay the examples in a build environment with the contract's Python and requirements (the versions the
    image installs): the trust policy is checked on this machine first, the model never loads here."""
    from mlship.legacy.buildenv import run_probe
    from mlship.runtimes.sklearn_load import check_trust, scan_file
    from mlship.serving.validation import make_validator, sample_body

    c = project.contract
    pins, _proven, notes = provenance_pins(project)
    if not c.unsafe_deserialization:
        check_trust(project.artifact_path, scan_file(project.artifact_path), c.trust)
    validator = make_validator(c.input, max(1, len(c.examples)))
    bodies = [e.input for e in c.examples] or [sample_body(c.input)]
    rows = [[float(v) for v in validator.validate(body).rows[0]] for body in bodies]
    requirements = [r for r in project.requirements() if not r.lower().replace("_", "-").startswith(_PACKAGE)]
    result = run_probe(project.artifact_path, rows, c.dependencies.python,
                       [f"{_PACKAGE}=={pins[_PACKAGE]}", *requirements], progress)
    out = Validation(where=f"a build environment with {result.describe()} (the versions the image installs)",
                     notes=notes + [f"there: {w}" for w in result.warnings[:3]])
    for i, example in enumerate(c.examples):
        out.results.append(check_example(i, example, _format(c.output.labels, result, i)))
    return out


def _format(labels: list[str] | None, result: Any, i: int) -> dict[str, Any]:
    """One prediction as the server answers it: a label (mapped onto output.labels) and probabilities, or a
    value."""
    value = result.predictions[i]
    if result.classes is None:
        return {"value": value[0] if isinstance(value, list) and len(value) == 1 else value}
    names = [str(c) for c in result.classes]
    if labels is not None and len(labels) == len(names):
        names_of = dict(zip(names, labels, strict=True))
    else:
        names_of = {n: n for n in names}
    got: dict[str, Any] = {"label": names_of.get(str(value), str(value))}
    if result.probabilities is not None:
        got["probabilities"] = dict(zip([names_of[n] for n in names], result.probabilities[i], strict=True))
    return got
