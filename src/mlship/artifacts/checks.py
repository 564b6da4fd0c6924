"""Preflight and status for remote artifacts: can this machine read the artifact (before any build), and what
model an image serves (from its labels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlship.artifacts import cache, fetcher_for
from mlship.artifacts.provenance import LABEL_PINNED as LABEL_PINNED  # re-exported: the label names live there
from mlship.artifacts.provenance import LABEL_SHA as LABEL_SHA
from mlship.artifacts.provenance import LABEL_URI as LABEL_URI
from mlship.artifacts.provenance import LABEL_VERSION as LABEL_VERSION
from mlship.artifacts.provenance import serving_text
from mlship.errors import MlshipError
from mlship.reports import Check


def artifact_checks(project: Any) -> list[Check]:
    """A pinned artifact already in the cache needs no network; otherwise the fetcher's checks (credentials found,
    read allowed), so a deploy that cannot read its model fails before anything is built."""
    c = project.contract
    pin = c.artifact_sha256
    found = cache.lookup(pin) if pin else None
    if found is not None and not c.serve.fetch_at_start:
        return [Check(name="artifact", ok=True, detail=f"{c.artifact}: sha256 {pin[:12]}... is in the cache "
                      f"({found[0]}); nothing to download")]
    try:
        fetcher = fetcher_for(c.artifact, project.root)
    except MlshipError as exc:
        return [Check(name="artifact", ok=False, detail=exc.message, fix=exc.fix)]
    if fetcher is None:
        return [Check(name="artifact", ok=False, detail=f"no fetcher reads {c.artifact}",
                      fix="Use s3://, gs://, https://, models:/ or a DVC-tracked path, or install the plugin for it.")]
    checks: list[Check] = fetcher.checks(c.artifact, project.root)
    return checks


def artifact_group(project: Any) -> dict[str, Callable[[], list[Check]]]:
    """The preflight group for a remote artifact (none for a local file)."""
    return {"artifact": lambda: artifact_checks(project)} if project.remote else {}


def serving_of(image: str | None) -> str | None:
    """What ``image`` serves, read from its labels in the local engine (where mlship built it); None when the
    engine does not hold it."""
    if not image:
        return None
    try:
        from mlship.image import engine

        return serving_text(engine.inspect(image).labels)
    except Exception:  # a status must not fail because the engine is away or the image was removed
        return None
