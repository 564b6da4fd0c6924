"""`mlship models`: what each target of the contract serves (from its status and the image's labels) and, for a
registry source (``models:/``), what the registry holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlship.errors import MlshipError


@dataclass(frozen=True)
class TargetModel:
    target: str
    deployed: bool
    serving: str | None = None  # "<uri> (<version>, sha256 ...), git ..." from the image's labels
    image: str | None = None
    version: str | None = None
    error: str | None = None  # the target could not be asked (credentials, options): why


@dataclass(frozen=True)
class ModelsOverview:
    artifact: str
    targets: list[TargetModel]
    registry: list[Any] = field(default_factory=list)  # mlflow_registry.RegistryVersion, newest first
    registry_error: str | None = None


def targets_of(project: Any) -> list[str]:
    """The targets the contract configures (targets: keys), local first when none is configured."""
    return list(project.contract.targets) or ["local"]


def models_overview(project: Any, targets: list[str] | None = None) -> ModelsOverview:
    """Ask each target what it serves (one failing target is reported, not raised) and the registry what it holds."""
    from mlship import pipeline

    rows: list[TargetModel] = []
    for name in targets or targets_of(project):
        try:
            st = pipeline.status(project, name)
        except MlshipError as exc:
            rows.append(TargetModel(target=name, deployed=False, error=exc.message))
            continue
        rows.append(TargetModel(target=name, deployed=st.deployed, serving=st.serving, image=st.image,
                                version=st.version))
    uri = project.contract.artifact
    if not uri.startswith("models:/"):
        return ModelsOverview(artifact=uri, targets=rows)
    try:
        from mlship.artifacts.mlflow_registry import list_versions

        return ModelsOverview(artifact=uri, targets=rows, registry=list_versions(uri))
    except (MlshipError, ImportError) as exc:
        return ModelsOverview(artifact=uri, targets=rows, registry_error=getattr(exc, "message", str(exc)))
