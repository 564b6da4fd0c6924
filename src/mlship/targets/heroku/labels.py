"""Which code+model pair each Heroku release serves, read from the image's own labels in the app's registry.

Heroku keeps no metadata of mlship's on a release: a docker release's description is Heroku's own "Deployed web
(<12 hex of the image id>)", the formation update that makes it takes no description, and config vars belong to the
app (setting one restarts the serving release with it). What a release does keep is the image id; the image's
labels (docs/artifacts.md: artifact URI, version, sha256, contract hash, git commit) are its provenance. The
registry finds a manifest by tag or digest, not by image id, so a deploy also tags the manifest it pushed
``mlship-<12 hex of the image id>`` (the same manifest: nothing is uploaded again); ``status`` and ``rollback``
read that tag's manifest, then its config blob, and render the labels with :mod:`mlship.artifacts.provenance`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from mlship.artifacts.provenance import remote
from mlship.errors import TargetError
from mlship.targets.heroku.api import REGISTRY_ENV
from mlship.targets.heroku.registry import SCHEMA2, _base, _get

TAG_PREFIX = "mlship-"


def tag_of(image_id: str) -> str:
    """``mlship-<12 hex>`` for ``sha256:<64 hex>`` (or the 12 hex a release description names)."""
    return TAG_PREFIX + image_id.removeprefix("sha256:")[:12]


def remember(host: str, app: str, key: str, tag: str, image_id: str) -> None:
    """Tag the manifest pushed as ``<app>/web:<tag>`` ``mlship-<12 hex of image_id>`` too (TargetError when the
    registry refuses: the release would have no readable provenance)."""
    name, base = f"{app}/web", _base(host)
    fix = f"Check the registry (${REGISTRY_ENV}, if set) and deploy again."
    try:
        with httpx.Client(timeout=30.0) as http:
            got = _get(http, f"{base}/v2/{name}/manifests/{tag}", key, SCHEMA2)
            if got.status_code != 200:
                raise TargetError(f"Reading the pushed manifest of {host}/{name}:{tag} failed: HTTP "
                                  f"{got.status_code}.", fix=fix)
            put = _get(http, f"{base}/v2/{name}/manifests/{tag_of(image_id)}", key, SCHEMA2, method="PUT",
                       content=got.content)
    except httpx.HTTPError as exc:
        raise TargetError(f"Tagging {host}/{name}:{tag} as {tag_of(image_id)} failed: {type(exc).__name__}.",
                          fix=fix) from None
    if put.status_code not in (200, 201):
        raise TargetError(f"Tagging {host}/{name}:{tag} as {tag_of(image_id)} failed: HTTP {put.status_code} "
                          f"{put.text[:200]}", why="The tag is how `mlship status` finds the model a release serves.",
                          fix=fix)


def serving_of(host: str, app: str, key: str, short_ids: list[str]) -> dict[str, str]:
    """The code+model pair of each image of a remote artifact (12 hex ids, as releases name them): read from the
    registry, one client for all; an image without the tag (pushed before mlship tagged it), of a model file next
    to mlship.yaml, or an unreachable registry is left out (a status never fails for want of it)."""
    found: dict[str, str] = {}
    name, base = f"{app}/web", _base(host)
    try:
        with httpx.Client(timeout=10.0) as http:
            for short in dict.fromkeys(short_ids):
                labels = _labels(http, f"{base}/v2/{name}", key, tag_of(short))
                prov = remote(labels) if labels is not None else None
                if prov is not None:
                    found[short] = prov.text()
    except httpx.HTTPError:
        pass
    return found


def _labels(http: httpx.Client, repo: str, key: str, tag: str) -> dict[str, str] | None:
    manifest = _get(http, f"{repo}/manifests/{tag}", key, SCHEMA2)
    if manifest.status_code != 200:
        return None
    try:
        digest = str(json.loads(manifest.content)["config"]["digest"])
        blob = _get(http, f"{repo}/blobs/{digest}", key, "application/json")
        config: dict[str, Any] = json.loads(blob.content) if blob.status_code == 200 else {}
    except (ValueError, KeyError, TypeError):
        return None
    labels = (config.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}
