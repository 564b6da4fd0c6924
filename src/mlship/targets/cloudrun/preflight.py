"""Cloud Run preflight: read-only checks before anything is built (credentials, options, the service's API and
permissions, the Artifact Registry repository and host). One try per call, no retries: a check that fails
says what to fix; the pipeline runs them under its own deadline."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.cloudrun.api import Gcp
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.cloudrun.registry import ARTIFACT_REGISTRY, rest
from mlship.targets.cloudrun.service import ServiceApi

#: What a deploy does to an existing service, as Cloud Run IAM permissions (checked with testIamPermissions).
DEPLOY_PERMISSIONS = ["run.services.get", "run.services.update", "run.services.getIamPolicy",
                      "run.services.setIamPolicy", "run.revisions.list"]
CONNECT_TIMEOUT_S = 2.0


def checks(opts: CloudRunOptions, service: str, api_key_check: Check | None) -> list[Check]:
    found = [Check(name="options", ok=True, detail=f"project {opts.project}, region {opts.region}")]
    if api_key_check is not None:
        found.append(api_key_check)
    gcp = Gcp(opts, tries=1, retry_delay_s=0.0, poll_s=1.0, op_timeout_s=5.0)
    try:
        credentials = _credentials(gcp)
        found.append(credentials)
        if not credentials.ok:
            return found
        found += _service(gcp, service)
        found.append(_repository(gcp))
        found.append(_registry_host(opts))
    finally:
        gcp.close()
    return found


def _credentials(gcp: Gcp) -> Check:
    if gcp.anonymous:
        return Check(name="credentials", ok=True, detail="none used (emulator endpoint or MLSHIP_GCP_ANONYMOUS=1)")
    try:
        creds = gcp.credentials
    except TargetError as exc:
        return Check(name="credentials", ok=False, detail=exc.message, fix=exc.fix)
    who = getattr(creds, "service_account_email", None) or type(creds).__name__
    return Check(name="credentials", ok=True, detail=f"Application Default Credentials found ({who})")


def _service(gcp: Gcp, name: str) -> list[Check]:
    api = ServiceApi(gcp, name, revision_wait_s=0)
    try:
        service = api.get()
    except TargetError as exc:
        return [Check(name="cloud run api", ok=False, detail=exc.message, fix=exc.fix)]
    if service is None:
        return [Check(name="cloud run api", ok=True,
                      detail=f"{api.name} does not exist yet: the deploy creates it (roles/run.developer, and "
                      "roles/run.admin for `public`, are checked by Cloud Run then)")]
    try:
        api.check_owned(service)
    except TargetError as exc:
        return [Check(name="cloud run api", ok=False, detail=exc.message, fix=exc.fix)]
    found = [Check(name="cloud run api", ok=True, detail=f"{api.name} exists and is managed by mlship")]
    return [*found, _permissions(gcp, api.name)]


def _permissions(gcp: Gcp, resource: str) -> Check:
    try:
        granted = gcp.call("test permissions", "get", gcp.services.test_iam_permissions,
                           request={"resource": resource, "permissions": DEPLOY_PERMISSIONS}, retry=None)
    except TargetError as exc:
        return Check(name="permissions", ok=False, detail=exc.message, fix=exc.fix)
    missing = sorted(set(DEPLOY_PERMISSIONS) - set(_permission_list(granted)))
    if missing:
        return Check(name="permissions", ok=False, detail=f"your account lacks {', '.join(missing)} on {resource}",
                     fix=f"gcloud run services add-iam-policy-binding {resource.rpartition('/')[2]} "
                     f"--region {gcp.opts.region} --project {gcp.opts.project} --member=user:YOU@example.com "
                     "--role=roles/run.admin (or roles/run.developer when `public` does not change)")
    return Check(name="permissions", ok=True, detail=f"{len(DEPLOY_PERMISSIONS)} permissions the deploy needs")


def _permission_list(response: Any) -> list[str]:
    return [str(p) for p in getattr(response, "permissions", [])]


def _repository(gcp: Gcp) -> Check:
    o = gcp.opts
    root = o.artifact_registry_endpoint or ARTIFACT_REGISTRY
    url = f"{root}/v1/projects/{o.project}/locations/{o.region}/repositories/{o.repository}"
    try:
        status, data = rest(gcp, f"get Artifact Registry repository {o.repository}", "GET", url)
    except TargetError as exc:
        return Check(name="repository", ok=False, detail=exc.message, fix=exc.fix)
    if status == 200:
        return Check(name="repository", ok=True, detail=f"{o.registry_path} exists")
    if status == 404:
        return Check(name="repository", ok=True, detail=f"{o.repository} does not exist yet: the deploy creates it "
                     "(roles/artifactregistry.admin)")
    message = (data.get("error", {}) if isinstance(data, dict) else {}).get("message") or status
    return Check(name="repository", ok=False, detail=f"Artifact Registry answered {status}: {message}",
                 fix="roles/artifactregistry.writer on the repository (roles/artifactregistry.admin to create it), "
                 f"and `gcloud services enable artifactregistry.googleapis.com --project {o.project}`")


def _registry_host(opts: CloudRunOptions) -> Check:
    host = opts.registry_host
    parts = urlsplit(f"//{host}")
    address, port = parts.hostname or host, parts.port or 443
    try:
        with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        return Check(name="registry", ok=False, detail=f"cannot connect to {address}:{port}: {exc.strerror or exc}",
                     fix="Check your network (a proxy or firewall), or targets.cloudrun.registry in mlship.yaml.")
    return Check(name="registry", ok=True, detail=f"{address}:{port} accepts connections")
