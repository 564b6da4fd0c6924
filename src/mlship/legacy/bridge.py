"""`mlship init` for a scikit-learn pickle this Python cannot serve as it is (saved by a release with no wheel for
it): run the file in a build environment with the versions it records, then prove that a newer release predicts
the same on probe rows; the contract then serves with that release and records both, and the proof.

    recorded = needs_build_env(scan)          # "0.24.2", or None: the usual init
    outcome = run(artifact, scan, [example row], python=None, keep_versions=False)
    outcome.info / .python / .requirements / .provenance / .outputs
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlship.contract_io import artifact_sha256
from mlship.errors import ArtifactError, BuildError, EngineError
from mlship.legacy import pyversions
from mlship.legacy.buildenv import ProbeResult, run_probe
from mlship.runtimes.base import ArtifactInfo

TOLERANCE = 1e-9  #: the largest difference of a probability (or a regression value) a proof accepts
PROBE_ROWS = 256
_PACKAGE = "scikit-learn"


@dataclass
class Outcome:
    info: ArtifactInfo
    python: str  #: dependencies.python
    requirements: list[str]  #: dependencies.requirements: the exact versions the image serves with
    provenance: dict[str, Any]
    outputs: list[dict[str, Any]]  #: the recorded environment's outputs for the given rows, JSON-ready
    timings: dict[str, float] = field(default_factory=dict)


def host_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def needs_build_env(recorded: str | None, installed: str | None) -> bool:
    """Whether a pickle recording scikit-learn ``recorded`` needs the build environment: another release than the
    one installed here, with no wheel for this Python (so an image on this Python cannot install it)."""
    if not recorded or recorded == installed:
        return False
    try:
        pythons, _source = pyversions.pythons_for(_PACKAGE, recorded)
    except BuildError:  # unknown here and the index unreachable: the usual init says what loading finds
        return False
    return host_python() not in pythons


def features_of(found: Any, path: Path) -> dict[str, str]:
    """input.features from what the pickle records (read without loading it): its feature names, else x0..xN."""
    est = found.estimator
    if est is not None and est.feature_names_in:
        return {str(n): "float" for n in est.feature_names_in}
    if est is not None and est.n_features_in:
        return {f"x{i}": "float" for i in range(int(est.n_features_in))}
    raise ArtifactError(
        f"{path.name} does not record how many input features it takes (no n_features_in_ in the file).",
        why="mlship reads the input size from the pickle without loading it, before it makes a build environment.",
        fix="Load it with the scikit-learn it was saved with, check it, and save it again with "
        "`joblib.dump(model, 'model.joblib')`; or run mlship in that environment.")


def probe_rows(n_features: int, first: list[list[float]], n: int = PROBE_ROWS) -> list[list[float]]:
    """``first`` (the example rows), then ``n`` deterministic rows: a grid of values from -100 to 100 (every
    column walks it at its own pace) and seeded normal noise at scales 0.5, 2, 8 and 50."""
    values = [-100.0, -10.0, -3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 10.0, 100.0]
    grid = [[values[(i * (j + 1) + 3 * j) % len(values)] for j in range(n_features)] for i in range(n // 4)]
    rng = np.random.default_rng(20210427)
    scales = np.array([0.5, 2.0, 8.0, 50.0])[np.arange(n - len(grid)) % 4][:, None]
    noise = np.round(rng.normal(1.0, 1.0, size=(n - len(grid), n_features)) * scales, 6)
    return [list(map(float, r)) for r in first] + grid + [list(map(float, r)) for r in noise]


def compare(old: ProbeResult, new: ProbeResult) -> tuple[bool, float]:
    """(labels or predicted values equal, largest absolute difference of probabilities / values)."""
    if old.classes != new.classes:
        return False, float("inf")
    if old.probabilities is not None or new.probabilities is not None:
        if old.probabilities is None or new.probabilities is None:
            return False, float("inf")
        a, b = np.asarray(old.probabilities, dtype=np.float64), np.asarray(new.probabilities, dtype=np.float64)
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else float("inf")
        return old.predictions == new.predictions, diff
    try:
        a, b = np.asarray(old.predictions, dtype=np.float64), np.asarray(new.predictions, dtype=np.float64)
    except (TypeError, ValueError):
        return old.predictions == new.predictions, 0.0
    diff = float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else float("inf")
    return diff <= TOLERANCE, diff


def run(artifact: Path, found: Any, first: list[list[float]], *, python: str | None = None,
        keep_versions: bool = False) -> Outcome:
    """Run ``artifact`` with the versions it records (``python``: the build environment's Python, default the
    newest the release has wheels for), then the bridge release on this Python; ``first`` are the example rows."""
    recorded = found.version(_PACKAGE)
    assert recorded is not None
    _require_engine(artifact, recorded)
    old_python, how = pyversions.choose_python(_PACKAGE, recorded, python)
    features = features_of(found, artifact)
    rows = probe_rows(len(features), first)
    timings: dict[str, float] = {}
    old = run_probe(artifact, rows, old_python, pyversions.era_requirements(_PACKAGE, recorded))
    timings["recorded_env_s"] = old.seconds
    notes = [f"saved with scikit-learn {recorded} (Python {old_python} era: " + (
        f"Python {old_python} given" if how == "given" else how) + "); "
             f"ran it in a build environment ({old.describe()}, no network) in {old.seconds:.1f}s"]
    notes += [f"there: {w}" for w in old.warnings[:3]]
    bridge = None if keep_versions else pyversions.bridge_for(_PACKAGE, recorded)
    served, serve_python, proof = old, old_python, None
    if bridge is not None:
        new = run_probe(artifact, rows, pyversions.BRIDGE_PYTHON, list(bridge))
        timings["bridge_env_s"] = new.seconds
        equal, diff = compare(old, new)
        release = new.versions.get(_PACKAGE, pyversions.BRIDGE_RELEASE)
        what = "probabilities" if old.probabilities is not None else "values"
        if equal and diff <= TOLERANCE:
            served, serve_python = new, pyversions.BRIDGE_PYTHON
            proof = {"artifact_sha256": artifact_sha256(artifact), "rows": len(rows), "labels_equal": True,
                     "max_abs_diff": diff, "tolerance": TOLERANCE, "reference": dict(old.versions),
                     "checked": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            notes.append(f"scikit-learn {release} (Python {serve_python}) predicts the same on {len(rows)} probe "
                         f"rows: labels equal, largest difference of {what} {diff:.3g} (at most {TOLERANCE:g}); "
                         "the image serves with it (provenance.proof in mlship.yaml)")
        else:
            notes.append(f"scikit-learn {release} does not predict the same on {len(rows)} probe rows ("
                         + ("labels differ" if not equal else f"{what} differ by up to {diff:.3g}")
                         + f"): the image runs scikit-learn {recorded} in Python {old_python}, as saved")
    elif keep_versions:
        notes.append(f"--keep-versions: the image runs scikit-learn {recorded} in Python {old_python}, as saved")
    requirements = [f"{name}=={served.versions[name]}" for name in
                    ("scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl") if name in served.versions]
    provenance: dict[str, Any] = {"saved_with": {_PACKAGE: recorded}, "python": old_python,
                                  "served_with": dict(served.versions)}
    if proof is not None:
        provenance["proof"] = proof
    return Outcome(info=_info(old, features, requirements, recorded, notes), python=serve_python,
                   requirements=requirements, provenance=provenance,
                   outputs=[_output(old, i) for i in range(len(first))], timings=timings)


def _require_engine(artifact: Path, recorded: str) -> None:
    """The Docker engine, or an error that says why init needs it here and what else can be done."""
    from mlship.image import engine

    try:
        engine.client().close()
    except EngineError as exc:
        raise EngineError(
            f"{artifact.name} was saved with scikit-learn {recorded}, which has no wheel for Python {host_python()}: "
            f"mlship runs it in a build environment (a Docker container), and {exc.message[0].lower()}"
            f"{exc.message[1:]}",
            why="The file is read without loading it here; loading it needs the versions it records, in the "
            "Python of their time.",
            fix=(exc.fix or "Start Docker.") + " Or by hand: `python3.11 -m venv sk && sk/bin/pip install "
            f"'mlship[sklearn]' 'scikit-learn=={pyversions.BRIDGE_RELEASE}' 'numpy<2'`, then "
            f"`sk/bin/mlship init {artifact.name}`.") from None


def _info(old: ProbeResult, features: dict[str, str], requirements: list[str], recorded: str,
          notes: list[str]) -> ArtifactInfo:
    classifier = old.estimator_type == "classifier" or (old.classes is not None and old.estimator_type is None)
    labels = [str(c) for c in old.classes] if classifier and old.classes is not None else None
    return ArtifactInfo(task="classification" if classifier else "regression", features=features, labels=labels,
                        requirements=requirements, framework_version=recorded, notes=notes)


def _output(result: ProbeResult, i: int) -> dict[str, Any]:
    value = result.predictions[i]
    if result.classes is not None:
        return {"label": str(value)}
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return {"value": value}
