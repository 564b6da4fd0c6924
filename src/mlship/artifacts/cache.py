"""The local content-addressed artifact cache: ``<cache>/blobs/<sha256>/<filename>`` plus
``<cache>/meta/<sha256>.json`` (where the bytes came from: uri, pinned form, version).

The cache is ``$MLSHIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlship/artifacts``, else ``~/.cache/mlship/artifacts``.
A fetch writes into ``<cache>/tmp/<random>/`` and the folder is renamed into ``blobs/`` only after its digest
matches the pin (the contract's ``artifact_sha256``) and the digest the source states: a half-written download or
a mismatch never enters the cache, and a cache hit reads nothing from the network (zero bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlship.artifacts.base import Fetcher, Resolved
from mlship.contract_io import artifact_sha256
from mlship.errors import ArtifactError

_counter = threading.Lock()
downloaded_bytes = [0]  # bytes fetched into this cache by this process (a list so it can be updated in place)


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    configured = os.environ.get("MLSHIP_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlship" / "artifacts"


def blob_folder(sha256: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "blobs" / sha256


def lookup(sha256: str, root: Path | None = None) -> tuple[Path, Resolved | None] | None:
    """(the cached artifact, where it came from) for a digest, or None. Reads no network."""
    folder = blob_folder(sha256, root)
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if len(entries) != 1:
        return None
    meta = meta_file(sha256, root)
    resolved = None
    if meta.is_file():
        try:
            resolved = Resolved(**json.loads(meta.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            resolved = None
    return entries[0], resolved


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def mismatch(uri: str, expected: str, got: str, where: str) -> ArtifactError:
    """The error for bytes whose digest is not the one expected; names both digests."""
    return ArtifactError(
        f"{uri}: the downloaded artifact has sha256 {got}, but {where} says {expected}. Nothing was kept.",
        why="The object changed since it was pinned, or the download was corrupted; a build only uses the exact "
        "bytes the contract pins.",
        fix=f"If the new object is the one you want, set `artifact_sha256: {got}` in mlship.yaml (or run `mlship "
        "init` on the URI again); otherwise restore the pinned object, or pin its version in the URI.",
    )


def fetch(fetcher: Fetcher, resolved: Resolved, expected: str | None, root: Path | None = None) -> Path:
    """The artifact for ``resolved`` from the cache, fetching it first when the cache lacks ``expected``.

    The bytes go to a temp folder inside the cache; only when their sha256 equals ``expected`` (and the digest
    the source states, when it states one) is the folder renamed into place. Any failure removes it."""
    base = root or cache_dir()
    for digest in (expected, resolved.sha256):
        hit = lookup(digest, base) if digest else None
        if hit is not None and (expected is None or digest == expected):
            return hit[0]
    (base / "tmp").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fetch-", dir=base / "tmp"))
    try:
        dest = tmp / resolved.filename
        fetcher.fetch(resolved, dest)
        if not dest.exists():
            raise ArtifactError(f"{resolved.uri}: the {fetcher.name} fetcher wrote nothing.",
                                fix="Report this to the fetcher's authors.")
        with _counter:
            downloaded_bytes[0] += _size(dest)
        got = artifact_sha256(dest)
        if resolved.sha256 is not None and got != resolved.sha256:
            raise mismatch(resolved.uri, resolved.sha256, got, f"the source ({fetcher.name})")
        if expected is not None and got != expected:
            raise mismatch(resolved.uri, expected, got, "mlship.yaml (artifact_sha256)")
        return _keep(base, tmp, got, resolved)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keep(base: Path, tmp: Path, sha256: str, resolved: Resolved) -> Path:
    """Move a checked fetch into ``blobs/<sha256>`` (atomically: rename) and record where it came from."""
    meta = base / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = asdict(resolved)
    record["sha256"] = sha256
    meta_tmp = tmp.with_suffix(".json")
    meta_tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(meta_tmp, meta / f"{sha256}.json")
    target = blob_folder(sha256, base)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:  # another process kept the same digest first: same bytes
        if lookup(sha256, base) is None:
            raise
    found = lookup(sha256, base)
    assert found is not None
    return found[0]


def meta_file(sha256: str, root: Path | None = None) -> Path:
    """Where the cache records where a digest's bytes came from."""
    return (root or cache_dir()) / "meta" / f"{sha256}.json"
