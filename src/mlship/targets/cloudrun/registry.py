"""Artifact Registry for the ``cloudrun`` target: the Docker repository (created when missing, through the
REST API v1) and the image push (by digest).

Pushing to ``*.pkg.dev`` logs the Docker engine in as ``oauth2accesstoken`` with the access token of your
Application Default Credentials; the token goes to the engine only and is never printed. Other registries
(a proxy, the test suite's loopback registry) use whatever your Docker config holds, like ``mlship push``.
"""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions as gexc

from mlship.errors import EngineError, TargetError
from mlship.image import engine
from mlship.targets.base import Progress
from mlship.targets.cloudrun.api import TRANSIENT_HTTP, Gcp, api_error, short_error
from mlship.targets.common import poll, push_progress, push_with_credentials

ARTIFACT_REGISTRY = "https://artifactregistry.googleapis.com"
ALREADY_EXISTS = 6  # google.rpc.Code


def rest(gcp: Gcp, what: str, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One REST call with the target's retry policy for 429/5xx; (status, JSON body)."""
    for attempt in range(gcp.tries):
        try:
            resp = gcp.session.request(method, url, json=body, timeout=60)
        except OSError as exc:
            raise TargetError(f"{what}: cannot reach {url.split('/v1/')[0]}: {short_error(exc)}",
                              fix="Check targets.cloudrun.artifact_registry_endpoint and your network.") from None
        if resp.status_code in TRANSIENT_HTTP and attempt < gcp.tries - 1:
            time.sleep(gcp.retry_delay_s * 2 ** attempt)
            continue
        try:
            data = resp.json() if resp.content else {}
        except ValueError:
            data = {"error": {"message": resp.text[:300]}}
        return int(resp.status_code), data
    raise AssertionError("unreachable")  # pragma: no cover


def _error(gcp: Gcp, what: str, status: int, data: Any) -> TargetError:
    error = data.get("error", {}) if isinstance(data, dict) else {}
    return api_error(gexc.from_http_status(status, str(error.get("message") or data)), what, gcp.opts, "repository")


def ensure_repository(gcp: Gcp, progress: Progress) -> None:
    """Create the Docker repository ``opts.repository`` when it does not exist (waits for the operation)."""
    o = gcp.opts
    root = o.artifact_registry_endpoint or ARTIFACT_REGISTRY
    base = f"{root}/v1/projects/{o.project}/locations/{o.region}"
    what = f"Artifact Registry repository {o.repository}"
    status, data = rest(gcp, f"get {what}", "GET", f"{base}/repositories/{o.repository}")
    if status == 200:
        return
    if status != 404:
        raise _error(gcp, f"get {what}", status, data)
    progress(f"creating {what} in {o.region}")
    body = {"format": "DOCKER", "description": "Images pushed by mlship", "labels": {"managed-by": "mlship"}}
    status, op = rest(gcp, f"create {what}", "POST", f"{base}/repositories?repositoryId={o.repository}", body)
    if status == 409:  # created meanwhile (another deploy): fine
        return
    if status != 200:
        raise _error(gcp, f"create {what}", status, op)
    def done() -> dict[str, Any] | None:
        nonlocal op
        if not op.get("done"):
            status, op = rest(gcp, f"create {what}", "GET", f"{root}/v1/{op['name']}")
            if status != 200:
                raise _error(gcp, f"create {what}", status, op)
        return op if op.get("done") else None

    op = poll(f"create {what}", done, timeout_s=gcp.op_timeout_s, first_delay_s=gcp.poll_s)
    if op.get("error") and op["error"].get("code") != ALREADY_EXISTS:
        raise _error(gcp, f"create {what}", 400, op)


def push(gcp: Gcp, image: str, progress: Progress) -> str:
    """Push ``image`` (NAME:VERSION) to REGISTRY/PROJECT/REPOSITORY; returns the reference by digest."""
    path = gcp.opts.registry_path
    quiet = push_progress(progress)
    try:
        if gcp.anonymous or not gcp.opts.registry_host.endswith(".pkg.dev"):
            return engine.push(image, path, quiet)  # credentials, if any, from your Docker config
        return _push_with_token(gcp, image, path, quiet)
    except EngineError as exc:
        raise TargetError(exc.message, why=exc.why,
                          fix=f"Check that {gcp.opts.registry_host} is reachable and that your account has "
                          f"roles/artifactregistry.writer on {path}.") from None


def _push_with_token(gcp: Gcp, image: str, path: str, progress: Progress) -> str:
    """Push with the engine logged in to Artifact Registry as oauth2accesstoken (ADC access token)."""
    return push_with_credentials(image, f"{path}/{image.rpartition(':')[0]}", username="oauth2accesstoken",
                                 password=gcp.access_token(), registry=gcp.opts.registry_host, progress=progress)
