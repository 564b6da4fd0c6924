"""The MLflow Model Registry beyond fetching: what it holds (:func:`list_versions`, for ``mlship models``), where
each version runs (:func:`record_deployment`: a ``mlship.deploy.<target>`` tag on the model version, JSON
``{url, image_digest, time}``), and an alias that moved since the last deploy (:func:`moved_note`).
:func:`deployed_notes` is what the deploy pipeline calls after a target deployed a ``models:/`` artifact.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mlship.artifacts.base import Resolved
from mlship.artifacts.mlflow import ModelRef, client, parse, registry_error
from mlship.errors import ArtifactError

TAG_PREFIX = "mlship.deploy."


@dataclass(frozen=True)
class RegistryVersion:
    """One version of a registered model, as ``mlship models`` lists it."""

    name: str
    version: str
    aliases: list[str]
    stage: str | None
    status: str
    run_id: str | None
    created: float  # seconds since the epoch
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> {url, image_digest, time}


def moved_note(resolved: Resolved, previous_pinned: str | None) -> str | None:
    """'models:/iris@champion now resolves to version 3 (models:/iris/3); the last deploy had version 2' when an
    alias (or ``latest``) resolves to another version than ``previous_pinned``; else None."""
    if previous_pinned is None or previous_pinned == resolved.pinned or parse(resolved.uri).alias is None:
        return None
    before = previous_pinned.rsplit("/", 1)[-1]
    return (f"{resolved.uri} now resolves to version {resolved.version} ({resolved.pinned}); the last deploy had "
            f"version {before}.")


def list_versions(uri: str) -> list[RegistryVersion]:
    """Every version of the registered model ``uri`` names (``models:/iris``, ``models:/iris@champion``...),
    newest first, with its aliases, stage and the deployments mlship recorded on it."""
    rest = uri[len("models:/"):].strip("/") if uri.startswith("models:/") else uri
    name = rest.split("@")[0]
    name = name.rsplit("/", 1)[0] if "/" in name and name.rsplit("/", 1)[1].isdigit() else name
    mlflow = client()
    try:
        aliases = mlflow.get_registered_model(name).aliases
        versions = mlflow.search_model_versions(f"name='{name}'")
    except Exception as exc:
        raise registry_error(f"models:/{name}", exc, ModelRef(name=name), mlflow) from None
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    out = [RegistryVersion(name=name, version=str(v.version), aliases=sorted(by_version.get(str(v.version), [])),
                           stage=None if v.current_stage in (None, "None") else v.current_stage,
                           status=str(v.status), run_id=v.run_id, created=(v.creation_timestamp or 0) / 1000,
                           deployments=_deployments(v.tags or {}))
           for v in versions]
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def _deployments(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():
        if key.startswith(TAG_PREFIX):
            try:
                out[key[len(TAG_PREFIX):]] = json.loads(value)
            except ValueError:
                out[key[len(TAG_PREFIX):]] = {"raw": value}
    return out


def record_deployment(resolved: Resolved, target: str, url: str | None, digest: str | None) -> str:
    """Tag the model version a deploy serves: ``mlship.deploy.<target>`` = {url, image_digest, time}; returns the
    tag's name. The registry then shows where each version runs."""
    pinned = parse(resolved.pinned)
    if pinned.version is None:
        raise ArtifactError(f"{resolved.uri}: no version was resolved, so no deployment can be recorded.",
                            fix="Resolve the artifact (mlship build) before recording a deployment.")
    key = f"{TAG_PREFIX}{target}"
    value = json.dumps({"url": url, "image_digest": digest,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, sort_keys=True)
    mlflow = client()
    try:
        mlflow.set_model_version_tag(pinned.name, pinned.version, key, value)
    except Exception as exc:
        raise registry_error(resolved.pinned, exc, pinned) from None
    return key


def deployed_notes(resolved: Resolved | None, previous_labels: dict[str, str], target: str, url: str | None,
                   digest: str | None) -> list[str]:
    """After a deploy of a ``models:/`` artifact: whether its alias moved since the image deployed before
    (``previous_labels``, that image's labels), and the deployment recorded on the model version (or why not:
    a registry that refuses the tag does not undo a deploy that worked)."""
    from mlship.artifacts.checks import LABEL_PINNED, LABEL_URI

    if resolved is None or not resolved.uri.startswith("models:/"):
        return []
    notes: list[str] = []
    if previous_labels.get(LABEL_URI) == resolved.uri:
        moved = moved_note(resolved, previous_labels.get(LABEL_PINNED))
        notes += [moved] if moved else []
    try:
        key = record_deployment(resolved, target, url, digest)
        notes.append(f"recorded in the MLflow Model Registry: {resolved.pinned} tag {key}")
    except ArtifactError as exc:
        notes.append(f"not recorded in the MLflow Model Registry: {exc.message} {exc.fix or ''}".strip())
    return notes


def after_deploy(project: Any, target: str, previous_image: str | None, url: str | None,
                 digest: str | None) -> list[str]:
    """:func:`deployed_notes` for a project just deployed, the image deployed before read from the local engine
    (where mlship built it; no labels when it is gone)."""
    from mlship.artifacts.resolve import resolve_artifact

    labels: dict[str, str] = {}
    if previous_image:
        try:
            from mlship.image import engine

            labels = dict(engine.inspect(previous_image).labels or {})
        except Exception:  # noqa: S110 - an image removed meanwhile only loses the "moved" note
            pass
    return deployed_notes(resolve_artifact(project).resolved, labels, target, url, digest)
