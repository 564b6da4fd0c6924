"""The Heroku container registry: the image's platform checked before the push, the push (``docker login`` as ``_``
with the API key, through :func:`mlship.targets.common.push_with_credentials`), and the pushed manifest checked after
it: Heroku releases only a Docker v2 schema-2 manifest for linux/amd64, never an OCI index or a manifest list (what
Docker's containerd image store, or buildx with attestations, pushes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from mlship.errors import TargetError
from mlship.targets.base import Progress
from mlship.targets.common import push_progress, push_with_credentials
from mlship.targets.heroku.api import REGISTRY_ENV

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
LISTS = ("application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join((SCHEMA2, *LISTS, OCI_MANIFEST))
PLATFORM_FIX = ("Build on a linux/amd64 machine (a CI runner), or with `export DOCKER_DEFAULT_PLATFORM=linux/amd64` "
                "before `mlship deploy`.")
MANIFEST_FIX = ("Push with the classic image store: turn off Docker's containerd image store (Docker Desktop: Settings "
                "> General > 'Use containerd for pulling and storing images'; dockerd: \"features\": "
                "{\"containerd-snapshotter\": false}), then deploy again.")


@dataclass(frozen=True)
class Pushed:
    ref: str  # <registry>/<app>/web@sha256:<manifest digest>
    image_id: str  # sha256:<config digest>: what a release names


def local_image(image: str) -> str:
    """The image id of ``image`` (TargetError when it is not linux/amd64: Heroku runs nothing else)."""
    from docker.errors import ImageNotFound

    from mlship.image import engine

    cli = engine.client()
    try:
        attrs = cli.images.get(image).attrs
    except ImageNotFound:
        raise TargetError(f"No image {image} in the local engine.", fix="Run `mlship build` first.") from None
    finally:
        cli.close()
    platform = f"{attrs.get('Os')}/{attrs.get('Architecture')}"
    if platform != "linux/amd64":
        raise TargetError(f"{image} is a {platform} image; Heroku runs linux/amd64 only.", fix=PLATFORM_FIX)
    return str(attrs["Id"])


def push(image: str, app: str, key: str, host: str, progress: Progress) -> Pushed:
    image_id = local_image(image)
    repository = f"{host}/{app}/web"
    ref = push_with_credentials(image, repository, username="_", password=key, registry=host,
                                progress=push_progress(progress))
    check_manifest(host, f"{app}/web", image.rpartition(":")[2], key, image_id)
    progress(f"pushed {ref} (Docker v2 schema-2, linux/amd64, image id {image_id[7:19]})")
    return Pushed(ref=ref, image_id=image_id)


def _base(host: str) -> str:
    """The registry's URL: plain http for a loopback host (an emulator, as Docker treats 127.0.0.0/8), else https."""
    loopback = host.startswith(("127.", "localhost", "[::1]"))
    return f"{'http' if loopback else 'https'}://{host}"


def _get(http: httpx.Client, url: str, key: str, accept: str, *, method: str = "GET",
         content: bytes | None = None) -> httpx.Response:
    """GET (or ``method`` with ``content``, as ``accept``'s type) with Basic ``_:key``; a Bearer challenge (a token
    service) is answered with a token fetched with it."""
    headers = {"Accept": accept} if content is None else {"Content-Type": accept}
    resp = http.request(method, url, headers=headers, content=content, auth=("_", key))
    challenge = resp.headers.get("WWW-Authenticate", "")
    if resp.status_code == 401 and challenge.lower().startswith("bearer "):
        params = dict(part.split("=", 1) for part in challenge[7:].replace('"', "").split(",") if "=" in part)
        realm = params.pop("realm", "")
        token = http.get(realm, params=params, auth=("_", key))
        if token.status_code == 200:
            body = token.json()
            bearer = body.get("token") or body.get("access_token")
            resp = http.request(method, url, headers={**headers, "Authorization": f"Bearer {bearer}"}, content=content)
    return resp


def check_manifest(host: str, name: str, tag: str, key: str, image_id: str) -> None:
    """The pushed ``name:tag`` is a schema-2 manifest of ``image_id`` for linux/amd64 (TargetError otherwise)."""
    base, where = _base(host), f"{host}/{name}:{tag}"
    try:
        with httpx.Client(timeout=30.0) as http:
            resp = _get(http, f"{base}/v2/{name}/manifests/{tag}", key, ACCEPT)
            if resp.status_code != 200:
                raise TargetError(f"Reading the pushed manifest of {where} failed: HTTP {resp.status_code}.",
                                  fix=f"Check the registry (${REGISTRY_ENV}, if set) and deploy again.")
            kind = resp.headers.get("Content-Type", "").split(";")[0].strip()
            manifest: dict[str, Any] = json.loads(resp.content)
            kind = kind or str(manifest.get("mediaType", ""))
            if kind != SCHEMA2:
                what = "an OCI index or manifest list" if kind in LISTS else f"a {kind or 'manifest of no type'}"
                raise TargetError(f"The push of {where} made {what}; Heroku releases only a Docker v2 schema-2 "
                                  "manifest for linux/amd64.", fix=MANIFEST_FIX)
            config = manifest.get("config") or {}
            if config.get("digest") != image_id:
                raise TargetError(f"The manifest pushed to {where} names image {str(config.get('digest'))[:19]}, not "
                                  f"the image built ({image_id[:19]}).", why="Another push to the same tag raced "
                                  "this one.", fix="Deploy again.")
            blob = _get(http, f"{base}/v2/{name}/blobs/{image_id}", key, "application/json")
            platform = (f"{blob.json().get('os')}/{blob.json().get('architecture')}" if blob.status_code == 200
                        else "unknown")
    except httpx.HTTPError as exc:
        raise TargetError(f"Reading the pushed manifest of {where} failed: {type(exc).__name__}.",
                          fix=f"Check the registry (${REGISTRY_ENV}, if set) and deploy again.") from None
    if platform != "linux/amd64":
        raise TargetError(f"The image pushed to {where} is for {platform}; Heroku runs linux/amd64 only.",
                          fix=PLATFORM_FIX)
