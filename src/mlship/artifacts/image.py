"""What an image carries of a remote artifact: the model layer, the labels and the environment.

Baked (the default): the cached bytes go into the image as the project's own cache
(``/app/.mlship/cache/blobs/<sha256>/<file>`` and its record), so the server finds them by digest and reads no
network; the model stays the image's last big layer, with no instruction before it that a new model changes.
``serve.fetch_at_start``: the image carries no model, only the fetcher's packages; the server fetches it into
``/tmp/mlship-cache`` with the platform's identity, checks the digest and only then reports ready
(``$MLSHIP_ARTIFACT_SHA256`` pins the bytes where the contract does not).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlship.artifacts import fetcher_for
from mlship.artifacts.resolve import PROJECT_CACHE, provenance_labels, resolve_artifact

START_CACHE = "/tmp/mlship-cache"  # noqa: S108 - fetch at start: the one place the image's user may write
PROVENANCE_FILE = ".mlship/provenance.json"  # beside mlship.yaml in the image


@dataclass(frozen=True)
class ModelLayer:
    files: list[tuple[Path, str]]  # (host path, context path)
    generated: dict[str, str] = field(default_factory=dict)  # context path -> text
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)
    note: str | None = None

    def with_provenance(self, contract_sha256: str, commit: str | None) -> dict[str, str]:
        """The generated files plus, in the contract layer, /app/.mlship/provenance.json (what /metadata reads:
        the contract hash and the git revision the labels carry); remote artifacts only."""
        if not self.labels:
            return dict(self.generated)
        record = {"contract_sha256": contract_sha256, "git_revision": commit}
        return {**self.generated, f"contract/{PROVENANCE_FILE}": json.dumps(record, indent=1)}


def write_generated(generated: dict[str, str], directory: Path) -> None:
    """Write the generated context files, and the model/ folder (empty when the model is fetched at start)."""
    for ctx, text in generated.items():
        (directory / ctx).parent.mkdir(parents=True, exist_ok=True)
        (directory / ctx).write_text(text, encoding="utf-8")
    (directory / "model").mkdir(parents=True, exist_ok=True)


def _pin(package: str) -> str:
    try:
        return f"{package}=={version(package)}"
    except PackageNotFoundError:
        return package


def model_layer(project: Any, inside: Callable[[str, str], str]) -> ModelLayer:
    """The model files (and for a remote artifact the labels, env and packages) of a project's image.
    ``inside`` makes the local path a clean relative path (or raises)."""
    c = project.contract
    if not project.remote:
        return ModelLayer(files=[(project.artifact_path, f"model/{inside(c.artifact, 'artifact')}")])
    artifact = resolve_artifact(project)
    sha = artifact.sha256
    labels = provenance_labels(artifact)
    if c.serve.fetch_at_start:
        env = {"MLSHIP_CACHE_DIR": START_CACHE, "MLSHIP_ARTIFACT_SHA256": sha or ""}
        if c.artifact.startswith("models:/"):  # where the registry is (never its token: the target provides that)
            from mlship.artifacts.identity import mlflow_env

            env.update(mlflow_env())
        fetcher = fetcher_for(c.artifact, project.root)
        packages = list(getattr(fetcher, "image_packages", ()))
        return ModelLayer(files=[], labels=labels, env=env,
                          requirements=[_pin(p) for p in packages],
                          note=f"serve.fetch_at_start: the image fetches {c.artifact} when it starts (not baked); "
                          f"it installs {', '.join(packages) or 'no extra package'}")
    resolved = artifact.resolved
    record = asdict(replace(resolved, sha256=sha)) if resolved is not None else {}
    base = f"model/{PROJECT_CACHE}"  # no ENV before the model: a model-only change rebuilds only its layer
    return ModelLayer(files=[(artifact.path, f"{base}/blobs/{sha}/{artifact.path.name}")],
                      generated={f"{base}/meta/{sha}.json": json.dumps(record, indent=1)}, labels=labels)
