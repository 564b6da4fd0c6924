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


def checks(opts: CloudRunOptions, service: str, api_key_check: Check | None,
           artifact: str | None = None) -> list[Check]:
    """``artifact``: the URI serve.fetch_at_start reads in the container (None: the image carries the model)."""
    found = [Check(name="options", ok=True, detail=f"project {opts.project}, region {opts.region}")]
    if api_key_check is not None:
        found.append(api_key_check)
    if artifact:
        found.append(artifact_access(opts, artifact))
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


def artifact_access(opts: CloudRunOptions, artifact: str) -> Check:
    """Whether the service can read ``artifact`` at start: gs:// through its service account (the bucket's IAM
    policy read; granted by the deploy with grant_artifact_access), s3:// / models:/ with their secrets."""
    from mlship.artifacts import identity

    if identity.scheme(artifact) != "gs":
        return identity.variable_check(artifact, "cloudrun", set(opts.secrets))
    member = identity.gcs_member(opts.service_account, opts.project)
    command = identity.gcs_grant_command(artifact, member)
    if not opts.service_account:
        if opts.grant_artifact_access:
            return Check(name=identity.CHECK, ok=False, detail="grant_artifact_access needs targets.cloudrun."
                         "service_account: the default compute account's email holds the project number, which "
                         "mlship does not look up", fix="Set targets.cloudrun.service_account (e.g. PROJECT_NUMBER-"
                         f"compute@developer.gserviceaccount.com), or grant it yourself: {command}")
        return Check(name=identity.CHECK, ok=True, detail="not checked: the service runs as the default compute "
                     f"account; it needs {identity.GCS_READER} on gs://{identity.gcs_bucket(artifact)}: {command}")
    try:
        reads = identity.gcs_can_read(artifact, member)
    except Exception as exc:  # the bucket's policy could not be read (network, no such bucket): say what to grant
        return Check(name=identity.CHECK, ok=False, detail=f"cannot read the IAM policy of "
                     f"gs://{identity.gcs_bucket(artifact)}: {str(exc).splitlines()[0][:200]}",
                     fix=f"Check the bucket name; the service account needs: {command}")
    if reads:
        return Check(name=identity.CHECK, ok=True, detail=f"{opts.service_account} reads "
                     f"gs://{identity.gcs_bucket(artifact)} (a role with storage.objects.get)")
    if opts.grant_artifact_access and reads is False:
        return Check(name=identity.CHECK, ok=True, detail=f"the deploy grants {identity.GCS_READER} on "
                     f"gs://{identity.gcs_bucket(artifact)} to {opts.service_account} (grant_artifact_access)")
    return Check(name=identity.CHECK, ok=False,
                 detail=f"serve.fetch_at_start: {opts.service_account} has no role that reads "
                 f"gs://{identity.gcs_bucket(artifact)}" + (" (its IAM policy is not readable to you)"
                                                            if reads is None else ""),
                 fix=f"{command}" + ("" if reads is None else
                                     " (or set targets.cloudrun.grant_artifact_access: true)"))


def grant_artifact_access(opts: CloudRunOptions, artifact: str | None, progress: Any) -> None:
    """The deploy's grant (grant_artifact_access, a gs:// artifact fetched at start), before any revision starts."""
    from mlship.artifacts import identity

    if not (opts.grant_artifact_access and opts.service_account and artifact and artifact.startswith("gs://")):
        return
    member = identity.gcs_member(opts.service_account, opts.project)
    if identity.gcs_grant(artifact, member):
        progress(f"granted {identity.GCS_READER} on gs://{identity.gcs_bucket(artifact)} to {member}")


def access_plan(opts: CloudRunOptions, artifact: str | None) -> list[str]:
    """The plan's line for the artifact's access (none without serve.fetch_at_start)."""
    from mlship.artifacts import identity

    if not artifact:
        return []
    if identity.scheme(artifact) != "gs":
        need = identity.NEEDS.get(identity.scheme(artifact), {}).get("cloudrun")
        return [identity.plan_line(artifact, "cloudrun", need.text if need else "(no fetcher for it)")]
    member = identity.gcs_member(opts.service_account, opts.project)
    if opts.grant_artifact_access:
        return [identity.plan_line(artifact, "cloudrun", f"grant {identity.GCS_READER} on "
                                   f"gs://{identity.gcs_bucket(artifact)} to {member} (bucket IAM policy), before "
                                   "the revision starts")]
    return [identity.plan_line(artifact, "cloudrun", "the service account must read the bucket (checked in "
                               f"preflight): {identity.gcs_grant_command(artifact, member)}")]


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
