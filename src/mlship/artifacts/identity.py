"""``serve.fetch_at_start`` on a platform: what the container needs to read its artifact when it starts, by scheme
and platform, in one table (:data:`NEEDS`), and the checks and plan lines the targets build from it.

* ``s3://``: on ECS the task role needs ``s3:GetObject`` and ``s3:GetObjectVersion`` on the object's ARN
  (mlship's task role gets exactly that inline; yours is simulated in preflight); Cloud Run and Heroku have no AWS
  identity: the keys ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` as secrets / config vars.
* ``gs://``: on Cloud Run the service account needs ``roles/storage.objectViewer`` on the bucket (granted with
  ``grant_artifact_access``, else the command is named); ECS and Heroku cannot (ADC reads a key *file*).
* ``https://``: nothing (a public URL; a token in the URL travels with it).
* ``models:/``: ``MLFLOW_TRACKING_URI`` in the image, the server's token as a secret / config var.

A ``models:/`` tracking URI goes into the image's environment (it names a server, not a secret); the token
(``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) never does: the target provides it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlship.errors import ArtifactError
from mlship.reports import Check

AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
GCS_READER = "roles/storage.objectViewer"
GCS_READS = ("roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectAdmin",
             "roles/storage.admin", "roles/storage.legacyObjectReader")  # roles that hold storage.objects.get
MLFLOW_PLAIN = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # into the image: where the registry is
MLFLOW_SECRETS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CHECK = "artifact access"


@dataclass(frozen=True)
class Need:
    """What one scheme needs from one platform: ``how`` it reads (``role``: the platform's identity is granted
    read access; ``vars``: credentials the platform injects; ``none``; ``never``: it cannot work there), in words."""

    how: str
    text: str
    variables: tuple[str, ...] = ()


#: scheme -> platform -> what the container needs (see the module docstring).
NEEDS: dict[str, dict[str, Need]] = {
    "s3": {"ecs": Need("role", "s3:GetObject on the object, for the task role"),
           "cloudrun": Need("vars", "AWS keys as Secret Manager secrets (Cloud Run has no AWS identity)", AWS_KEYS),
           "heroku": Need("vars", "AWS keys as config vars (Heroku has no platform identity)", AWS_KEYS)},
    "gs": {"ecs": Need("never", "Application Default Credentials, which read a key file the task does not have"),
           "cloudrun": Need("role", f"{GCS_READER} on the bucket, for the service account"),
           "heroku": Need("never", "Application Default Credentials, which read a key file a dyno does not have")},
    "https": {p: Need("none", "nothing: a public URL (a token in the URL travels with it)")
              for p in ("ecs", "cloudrun", "heroku")},
    "models": {p: Need("vars", "MLFLOW_TRACKING_URI in the image, and the tracking token when the server needs one")
               for p in ("ecs", "cloudrun", "heroku")},
}
_PLACES = {"ecs": "targets.ecs.secrets (NAME: the ARN of a Secrets Manager secret)",
           "cloudrun": "targets.cloudrun.secrets (NAME: SECRET:VERSION)",
           "heroku": "the app's config vars"}


def scheme(uri: str) -> str:
    """``s3``, ``gs``, ``https`` (and loopback ``http``), ``models`` or ``other``."""
    for prefix, name in (("s3://", "s3"), ("gs://", "gs"), ("https://", "https"), ("http://", "https"),
                         ("models:/", "models")):
        if uri.startswith(prefix):
            return name
    return "other"


# --- S3: the policy statement a task role needs -------------------------------------------------------------
def s3_object(uri: str) -> tuple[str, str, bool]:
    """(bucket, key, pinned to a version) of an s3:// URI."""
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/"), bool(parse_qs(parts.query).get("versionId"))


def s3_statement(uri: str) -> dict[str, Any]:
    """The one IAM statement that lets a role read ``uri`` (and only it). GetObjectVersion too: the fetcher reads
    the version it resolved (``?versionId=``) whenever the bucket keeps versions."""
    bucket, key, _ = s3_object(uri)
    return {"Sid": "MlshipArtifactRead", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"arn:aws:s3:::{bucket}/{key}"}


def s3_policy(uri: str) -> str:
    """The inline policy document (JSON) of mlship's task role."""
    return json.dumps({"Version": "2012-10-17", "Statement": [s3_statement(uri)]}, sort_keys=True)


# --- GCS: the bucket binding a service account needs ----------------------------------------------------------
def gcs_bucket(uri: str) -> str:
    return urlsplit(uri).netloc


def gcs_member(service_account: str | None, project: str) -> str:
    """``serviceAccount:<email>``; the default compute account's email holds the project number, looked up by
    the command itself."""
    if service_account:
        return f"serviceAccount:{service_account}"
    return (f"serviceAccount:$(gcloud projects describe {project} --format='value(projectNumber)')"
            "-compute@developer.gserviceaccount.com")


def gcs_grant_command(uri: str, member: str) -> str:
    return (f"gcloud storage buckets add-iam-policy-binding gs://{gcs_bucket(uri)} --member={member} "
            f"--role={GCS_READER}")


def gcs_can_read(uri: str, member: str) -> bool | None:
    """Whether the bucket's IAM policy gives ``member`` a role that reads objects; None when this identity may
    not read the policy."""
    from google.api_core import exceptions as api

    try:
        policy = _bucket(uri).get_iam_policy(requested_policy_version=3, timeout=5)
    except (api.Forbidden, api.Unauthorized):
        return None
    return any(member in set(b.get("members", ())) for b in policy.bindings if b.get("role") in GCS_READS)


def gcs_grant(uri: str, member: str) -> bool:
    """Add ``member`` as roles/storage.objectViewer on the bucket (read-modify-write with the policy's etag);
    False when it already reads."""
    from google.api_core import exceptions as api

    bucket = _bucket(uri)
    try:
        policy = bucket.get_iam_policy(requested_policy_version=3, timeout=10)
        if any(member in set(b.get("members", ())) for b in policy.bindings if b.get("role") in GCS_READS):
            return False
        policy.bindings.append({"role": GCS_READER, "members": {member}})
        bucket.set_iam_policy(policy, timeout=10)
    except (api.Forbidden, api.Unauthorized) as exc:
        raise ArtifactError(f"Cannot grant {GCS_READER} on gs://{gcs_bucket(uri)} to {member}: {exc.message}.",
                            why="Changing a bucket's IAM policy needs storage.buckets.setIamPolicy.",
                            fix=f"Ask a bucket admin to run: {gcs_grant_command(uri, member)}") from None
    return True


def _bucket(uri: str) -> Any:
    from google.cloud import storage

    return storage.Client().bucket(gcs_bucket(uri))


# --- MLflow: what the image carries and what stays a secret ---------------------------------------------------
def mlflow_env() -> dict[str, str]:
    """The tracking (and registry) URI of this machine's environment: the image's env for ``models:/``."""
    return {name: os.environ[name] for name in MLFLOW_PLAIN if os.environ.get(name)}


def mlflow_secret_names() -> tuple[str, ...]:
    """The credential variables this machine uses for the tracking server, which the platform must provide."""
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return ("MLFLOW_TRACKING_TOKEN",)
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    return ()


def _mlflow_problem(uri: str, platform: str) -> tuple[str, str] | None:
    """Why a ``models:/`` artifact cannot be fetched at start (on a cloud ``platform``; "local" for the engine)."""
    if "@" in uri or uri.rstrip("/").endswith("/latest"):
        return (f"{uri} names an alias, which the container would resolve again when it starts (an alias that moved "
                "since the build would fail the digest check)",
                f"Pin a version for serve.fetch_at_start: artifact: models:/{uri[8:].partition('@')[0]}/<version> "
                "(`mlship models` lists them), or remove fetch_at_start to bake the resolved version.")
    server = mlflow_env().get("MLFLOW_REGISTRY_URI") or mlflow_env().get("MLFLOW_TRACKING_URI")
    if not server:
        return ("MLFLOW_TRACKING_URI is not set, so the image would not know its registry",
                "export MLFLOW_TRACKING_URI=https://your-mlflow-server before `mlship deploy`.")
    host = urlsplit(server).hostname or ""
    if platform != "local" and (host in ("localhost", "") or host.startswith("127.") or host == "::1"):
        return (f"MLFLOW_TRACKING_URI is {server}, which the container on {platform} cannot reach",
                "Point MLFLOW_TRACKING_URI at a server the platform reaches, or remove serve.fetch_at_start.")
    return None


# --- the checks and plan lines --------------------------------------------------------------------------------
def variable_check(uri: str, platform: str, provided: set[str]) -> Check:
    """The check of a scheme read with injected credentials or none: the variables ``provided`` (the
    target's secrets / config var names) hold what the container needs; a scheme that cannot work, refused."""
    kind = scheme(uri)
    need = NEEDS.get(kind, {}).get(platform)
    if need is None:
        return Check(name=CHECK, ok=False, detail=f"serve.fetch_at_start cannot read {uri} on {platform}",
                     fix="Remove serve.fetch_at_start (the image then carries the model).")
    if need.how == "never":
        return Check(name=CHECK, ok=False, detail=f"serve.fetch_at_start: the container on {platform} cannot read "
                     f"{uri}: it needs {need.text}",
                     fix="Remove serve.fetch_at_start (the image then carries the model), or keep the model in "
                     + ("S3 (the task role reads it)" if platform == "ecs" else "an https:// URL or S3 (keys as "
                        "config vars)") + ".")
    if need.how == "none":
        return Check(name=CHECK, ok=True, detail=f"{uri}: the container needs {need.text}")
    if kind == "models":
        problem = _mlflow_problem(uri, platform)
        if problem is not None:
            return Check(name=CHECK, ok=False, detail=f"serve.fetch_at_start: {problem[0]}", fix=problem[1])
    wanted = mlflow_secret_names() if kind == "models" else need.variables
    missing = [v for v in wanted if v not in provided]
    if missing:
        return Check(name=CHECK, ok=False, detail=f"serve.fetch_at_start: the container on {platform} needs "
                     f"{', '.join(missing)} to read {uri} ({need.text}); {' and '.join(missing)} "
                     f"{'is' if len(missing) == 1 else 'are'} not in {_PLACES[platform]}",
                     fix=set_fix(platform, missing))
    given = f"; {', '.join(wanted)} from {_PLACES[platform].split(' (')[0]}" if wanted else ""
    return Check(name=CHECK, ok=True, detail=f"{uri}: the container reads it at start{given}")


def set_fix(platform: str, names: list[str]) -> str:
    if platform == "heroku":
        return "heroku config:set " + " ".join(f"{n}=..." for n in names) + " -a <app>"
    if platform == "ecs":
        return ("Store each in Secrets Manager and add under targets.ecs.secrets: "
                + ", ".join(f"{n}: arn:aws:secretsmanager:REGION:ACCOUNT:secret:{n.lower().replace('_', '-')}"
                            for n in names))
    return ("Store each in Secret Manager (`printf ... | gcloud secrets create NAME --data-file=-`) and add under "
            "targets.cloudrun.secrets: " + ", ".join(f"{n}: {n.lower().replace('_', '-')}:latest" for n in names))


def plan_line(uri: str, platform: str, grant: str) -> str:
    """The plan's line for the artifact's access (``grant``: what the target does or asks for)."""
    return f"serve.fetch_at_start: the container reads {uri} when it starts; access: {grant}"
