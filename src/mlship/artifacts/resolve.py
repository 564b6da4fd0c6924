"""``resolve_artifact(project)``: the one way everything that reads the artifact finds it on disk.

A local path is the file or folder next to mlship.yaml. A remote one (``s3://``, ``gs://``, ``https://``,
``models:/``, a DVC-tracked path that is absent) is looked up in the cache by the contract's ``artifact_sha256``
first (no network at all on a hit: a rebuild downloads zero bytes), else resolved by its fetcher and fetched
into the cache, the digest checked on the way in.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship.artifacts import cache, fetcher_for, looks_remote
from mlship.artifacts.base import Resolved
from mlship.artifacts.provenance import LABEL_PINNED, LABEL_SHA, LABEL_URI, LABEL_VERSION
from mlship.contract_io import artifact_sha256
from mlship.errors import ArtifactError


@dataclass(frozen=True)
class Artifact:
    """The artifact on disk and, for a remote one, where it came from."""

    path: Path
    resolved: Resolved | None  # None: a local file or folder
    sha256: str | None  # the pin (remote) or None (local: computed when needed)

    @property
    def remote(self) -> bool:
        return self.resolved is not None


PROJECT_CACHE = ".mlship/cache"  # a project's own cache, beside mlship.yaml: where an image carries its model
# one resolution per artifact and pipeline call (see one_resolution); the serving process keeps its one
_memo: dict[tuple[str, str, str | None], Artifact] = {}
_lock = threading.Lock()
_depth = [0]  # pipeline calls in progress in this process


@contextmanager
def one_resolution() -> Iterator[None]:
    """The scope of one pipeline call (``mlship.deploy``, ``build``, ``test``, ``preflight``; also a decorator):
    within it each artifact is resolved once (the build, the gate and the registry round trip see the same
    version); the outermost call starts afresh, so the next call in the same process sees where a
    ``models:/name@alias`` (or an unpinned ``latest``) points then. Nested calls share the outer one's."""
    with _lock:
        if _depth[0] == 0:
            _memo.clear()
        _depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1


def is_remote(uri: str, root: Path) -> bool:
    """Whether ``artifact:`` names something a fetcher reads (no network): a URI, or an absent path that is
    DVC-tracked (``<path>.dvc`` beside it) or that the project's own cache holds (a DVC-tracked model in an image,
    which carries no .dvc file)."""
    if looks_remote(uri):
        return True
    return not (root / uri).exists() and ((root / f"{uri}.dvc").is_file() or _project_cached(uri, root) is not None)


def resolve_artifact(project: object, *, refresh: bool = False) -> Artifact:
    """The artifact of a :class:`mlship.contract_io.Project` on disk (fetched into the cache when remote)."""
    contract = project.contract  # type: ignore[attr-defined]
    root: Path = project.root  # type: ignore[attr-defined]
    uri: str = contract.artifact
    pin = _pin(contract, root)
    if not is_remote(uri, root):
        return Artifact(path=(root / uri).resolve(), resolved=None, sha256=pin)
    key = (str(root), uri, pin)
    with _lock:
        if not refresh and key in _memo and _memo[key].path.exists():
            return _memo[key]
        found = None if refresh or not pin else cache.lookup(pin, root / PROJECT_CACHE) or cache.lookup(pin)
        if found is not None:
            path, resolved = found
            resolved = resolved if resolved is not None and resolved.uri == uri else Resolved(
                uri=uri, pinned=uri, version=None, sha256=pin, size=None, filename=path.name)
            artifact = Artifact(path=path, resolved=resolved, sha256=pin)
        else:
            artifact = _fetch(uri, root, pin)
        _memo[key] = artifact
        return artifact


def fetch_uri(uri: str, root: Path, pin: str | None = None) -> Artifact:
    """Resolve and fetch ``uri`` into the cache (checked against ``pin`` when given): `mlship init URI`."""
    return _fetch(uri, root, pin)


def pin_contract(data: dict[str, Any], artifact: Artifact) -> dict[str, Any]:
    """Contract data (as `mlship init` writes it) with ``artifact:`` the URI and ``artifact_sha256:`` its pin."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "artifact" and artifact.resolved is not None:
            out["artifact"] = artifact.resolved.uri
            uri = artifact.resolved.uri  # an MLflow alias / latest follows the registry (each build resolves it);
            # a DVC-tracked path is pinned by its .dvc file's md5, committed with the code
            if looks_remote(uri) and not (uri.startswith("models:/") and ("@" in uri or uri.endswith("/latest"))):
                out["artifact_sha256"] = artifact.sha256
        else:
            out[key] = value
    return out


def _fetch(uri: str, root: Path, pin: str | None) -> Artifact:
    fetcher = fetcher_for(uri, root)
    if fetcher is None:
        raise ArtifactError(f"No fetcher reads artifact: {uri}.",
                            why="artifact: is a path relative to mlship.yaml, or a URI: s3://, gs://, https://, "
                            "models:/, or a DVC-tracked path.",
                            fix="Fix the path or URI, or install the plugin that reads that scheme.")
    resolved = fetcher.resolve(uri, root)
    path = cache.fetch(fetcher, resolved, pin)
    sha = pin or artifact_sha256(path)
    found = cache.lookup(sha)
    kept = found[1] if found is not None and found[1] is not None else resolved
    return Artifact(path=path, resolved=kept, sha256=sha)


def _pin(contract: Any, root: Path) -> str | None:
    """The digest the artifact must have: the contract's, else the one an image was built with (its environment,
    or the record of the one model its own cache holds for this URI)."""
    pin: str | None = contract.artifact_sha256 or os.environ.get("MLSHIP_ARTIFACT_SHA256") or None
    return pin or _project_cached(contract.artifact, root)


def _project_cached(uri: str, root: Path) -> str | None:
    """The digest of the model the project's own cache (an image's) holds for ``uri``, or None."""
    for meta in sorted((root / PROJECT_CACHE / "meta").glob("*.json")):
        found = cache.lookup(meta.stem, root / PROJECT_CACHE)
        if found is not None and found[1] is not None and found[1].uri == uri:
            return meta.stem
    return None


def describe(project: object) -> dict[str, str | None]:
    """What /metadata says of a remote artifact: uri, pinned form, version, sha256 (resolved ones only, else the
    contract's), and the image's contract hash and git revision. Reads no network."""
    contract = project.contract  # type: ignore[attr-defined]
    root: Path = project.root  # type: ignore[attr-defined]
    pin = _pin(contract, root)
    known = _memo.get((str(root), contract.artifact, pin))
    r = known.resolved if known is not None else None
    out: dict[str, str | None] = {"uri": contract.artifact, "pinned": r.pinned if r else None,
                                  "version": r.version if r else None,
                                  "sha256": known.sha256 if known is not None else pin}
    try:
        record = json.loads((root / ".mlship" / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    out["contract_sha256"] = record.get("contract_sha256")
    out["git_revision"] = record.get("git_revision")
    return out


def provenance_labels(artifact: Artifact) -> dict[str, str]:
    """The OCI labels (and /metadata fields) that say which model a build carries."""
    if artifact.resolved is None:
        return {}
    r = artifact.resolved
    labels = {LABEL_URI: r.uri, LABEL_PINNED: r.pinned, LABEL_SHA: artifact.sha256 or r.sha256 or ""}
    if r.version:
        labels[LABEL_VERSION] = r.version
    return labels
