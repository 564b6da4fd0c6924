"""What the ``cloudrun`` target asks Cloud Run for, and how it reads what Cloud Run has.

Pure functions: the labels, the revision template as a plain dict (the field names of
``google.cloud.run_v2.RevisionTemplate``), the comparison that decides whether a deploy changes anything,
the plan text, and readers of a service's traffic and conditions (duck-typed ``run_v2`` messages).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

from mlship import __version__
from mlship.artifacts.provenance import CLOUDRUN
from mlship.targets.cloudrun.options import CloudRunOptions

CONTAINER_PORT = 8080
CONTAINER_NAME = "model"
CANDIDATE_TAG = "mlship-candidate"
MAX_SERVICE_NAME = 49  # Cloud Run's limit; revision names add "-00001-abc" and stay under 63
STARTUP_PROBE_LIMIT_S = 240  # Cloud Run: failure_threshold * period_seconds of a startup probe <= 240 s
MANAGED_BY = ("managed-by", "mlship")


def label_value(text: str) -> str:
    """A label value from any text: lowercase, [a-z0-9_-] only, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


def service_labels(opts: CloudRunOptions, *, version: str, model_sha: str) -> dict[str, str]:
    """mlship's provenance labels plus the user's (on the service and on every revision)."""
    return {MANAGED_BY[0]: MANAGED_BY[1], "dev-mlship-version": label_value(__version__),
            "model-version": label_value(version), "model-sha": label_value(model_sha[:12]), **opts.labels}


def startup_failure_threshold(ready_timeout_s: float) -> int:
    """Probes of /readyz, one a second, before Cloud Run gives up on an instance (capped at 240 s)."""
    return max(1, min(STARTUP_PROBE_LIMIT_S, math.ceil(ready_timeout_s)))


def render_template(opts: CloudRunOptions, image: str, labels: dict[str, str], *, ready_timeout_s: float,
                    revision: str = "", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The revision template (``run_v2.RevisionTemplate`` field names) for ``image`` (a digest reference);
    ``annotations``: the image's provenance (:func:`mlship.artifacts.provenance.record`), kept per revision."""
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(opts.environment().items())]
    for name, ref in sorted(opts.secrets.items()):
        secret, _, secret_version = ref.rpartition(":")
        env.append({"name": name, "value_source": {"secret_key_ref": {"secret": secret, "version": secret_version}}})
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "ports": [{"name": "http1", "container_port": CONTAINER_PORT}],
        "env": env,
        "resources": {"limits": {"cpu": opts.cpu, "memory": opts.memory}, "cpu_idle": True,
                      "startup_cpu_boost": True},
        "startup_probe": {"http_get": {"path": "/readyz", "port": CONTAINER_PORT}, "initial_delay_seconds": 0,
                          "period_seconds": 1, "timeout_seconds": 1,
                          "failure_threshold": startup_failure_threshold(ready_timeout_s)},
        "liveness_probe": {"http_get": {"path": "/healthz", "port": CONTAINER_PORT}, "period_seconds": 10,
                           "timeout_seconds": 1, "failure_threshold": 3},
    }
    return {
        "revision": revision,
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "scaling": {"min_instance_count": opts.min_instances, "max_instance_count": opts.max_instances},
        "timeout": timedelta(seconds=opts.timeout_s),
        "service_account": opts.service_account or "",
        "max_instance_request_concurrency": opts.concurrency,
        "containers": [container],
    }


def _probe(probe: Any) -> tuple[Any, ...]:
    return (probe.http_get.path, probe.http_get.port, probe.initial_delay_seconds, probe.period_seconds,
            probe.timeout_seconds, probe.failure_threshold)


def template_view(template: Any, *, service_account: bool = True) -> dict[str, Any]:
    """The fields mlship sets, read from a ``run_v2.RevisionTemplate`` (or a Revision): what a deploy compares.

    ``service_account=False`` leaves the account out (Cloud Run fills in the default compute account
    when none is set, so it only counts when mlship.yaml names one).
    """
    view: dict[str, Any] = {
        "labels": own_labels(template.labels),
        "annotations": {k: v for k, v in dict(template.annotations).items() if k.startswith(CLOUDRUN.prefix)},
        "scaling": (template.scaling.min_instance_count, template.scaling.max_instance_count),
        "timeout_s": int(template.timeout.total_seconds()),
        "concurrency": template.max_instance_request_concurrency,
        "containers": len(template.containers),
    }
    if service_account:
        view["service_account"] = template.service_account
    if template.containers:
        c = template.containers[0]
        view.update({
            "name": c.name,
            "image": c.image,
            "ports": [(p.name, p.container_port) for p in c.ports],
            "env": sorted((e.name, e.value, e.value_source.secret_key_ref.secret,
                           e.value_source.secret_key_ref.version) for e in c.env),
            "limits": dict(c.resources.limits),
            "cpu_idle": c.resources.cpu_idle,
            "startup_cpu_boost": c.resources.startup_cpu_boost,
            "startup_probe": _probe(c.startup_probe),
            "liveness_probe": _probe(c.liveness_probe),
        })
    return view


def template_differences(desired: Any, current: Any, *, service_account: bool) -> list[str]:
    """Names of the managed template fields that differ (empty: the deploy changes nothing)."""
    want = template_view(desired, service_account=service_account)
    have = template_view(current, service_account=service_account)
    return [key for key in want if want[key] != have.get(key)]


def plan_lines(opts: CloudRunOptions, *, service: str, image: str, ready_timeout_s: float,
               api_keys_env: str | None) -> list[str]:
    """Human-readable steps of a deploy (``mlship deploy --target cloudrun --dry-run``)."""
    name, _, version = image.rpartition(":")
    remote = f"{opts.registry_path}/{name}:{version}"
    labels = service_labels(opts, version=version, model_sha="<model sha256>")
    labels["model-sha"] = "<first 12 hex of the image's dev.mlship.model-sha256>"
    env_names = sorted(opts.env) or ["(none)"]
    secret_refs = [f"{k}={v}" for k, v in sorted(opts.secrets.items())] or ["(none)"]
    threshold = startup_failure_threshold(ready_timeout_s)
    where = f"projects/{opts.project}/locations/{opts.region}/services/{service}"
    iam = ("grant roles/run.invoker to allUsers (public: true; anyone can call the URL)" if opts.public else
           "keep the service private: no allUsers in roles/run.invoker (removed if present); callers need "
           "roles/run.invoker and an ID token")
    steps = [
        f"create Artifact Registry repository projects/{opts.project}/locations/{opts.region}/repositories/"
        f"{opts.repository} (format DOCKER) if missing",
        f"push {image} to {remote}"
        + ("" if opts.registry else " (Docker login as oauth2accesstoken with your Application Default "
           "Credentials' access token)"),
        f"service {where} via {opts.api_endpoint or 'https://run.googleapis.com'}: create it, or update it only "
        "if the spec below differs from the current one (an unchanged deploy changes nothing)",
        f"  image {remote.rpartition(':')[0]}@sha256:<digest of the push>, port {CONTAINER_PORT} (http1), "
        f"cpu {opts.cpu}, memory {opts.memory}, concurrency {opts.concurrency}, instances "
        f"{opts.min_instances}..{opts.max_instances}, request timeout {opts.timeout_s}s, ingress all",
        f"  env {', '.join(env_names)}; secrets {', '.join(secret_refs)}; service account "
        f"{opts.service_account or '(the default compute account)'}",
        "  labels " + ", ".join(f"{k}={v}" for k, v in labels.items()),
        f"  startup probe GET /readyz every 1s, up to {threshold} failures ({threshold}s, from "
        f"test.ready_timeout_s={ready_timeout_s:g}); liveness probe GET /healthz every 10s",
        "new revision takes no traffic yet: traffic stays 100% on the current ready revision, the new one is "
        f"tagged {CANDIDATE_TAG}",
        "wait for the operation; if the new revision is not Ready, fail naming it and its condition (traffic "
        "stays where it was)",
        "smoke test the new revision: POST each example in mlship.yaml to its URL /predict and compare",
        "move 100% of traffic to the latest revision",
        iam,
        "print the service URL",
    ]
    if api_keys_env is not None:
        steps.insert(3, f"  serve.auth is api_key: ${api_keys_env} comes from Secret Manager "
                        f"({opts.secrets.get(api_keys_env, 'MISSING: add it to targets.cloudrun.secrets')})")
    return steps


# --- reading a service's state (run_v2 messages, duck-typed) ---------------------------------------
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"


def short(name: str) -> str:
    """``projects/p/locations/r/services/s/revisions/x`` -> ``x``."""
    return name.rpartition("/")[2]


def _name(enum: Any) -> str:
    return str(getattr(enum, "name", enum))


def ready_state(resource: Any) -> tuple[str, str]:
    """("ready" | "failed" | "pending", message) from a service's or revision's Ready condition."""
    conditions = list(getattr(resource, "conditions", []))
    terminal = getattr(resource, "terminal_condition", None)
    if terminal is not None and terminal.type_:
        conditions.insert(0, terminal)
    for cond in conditions:
        if cond.type_ == "Ready":
            state = _name(cond.state)
            if state == "CONDITION_SUCCEEDED":
                return "ready", str(cond.message)
            if state == "CONDITION_FAILED":
                return "failed", str(cond.message or _name(cond.reason))
            return "pending", str(cond.message)
    return "pending", ""


def traffic_split(service: Any) -> dict[str, int]:
    """Percent of traffic per revision (short names), from the traffic status (else the traffic spec)."""
    split: dict[str, int] = {}
    for entry in list(service.traffic_statuses) or list(service.traffic):
        name = short(service.latest_ready_revision) if _name(entry.type_) == LATEST else entry.revision
        if name and entry.percent:
            split[name] = split.get(name, 0) + int(entry.percent)
    return split


def serving_revision(service: Any) -> str | None:
    """The revision with the most traffic (None when nothing serves)."""
    split = traffic_split(service)
    return max(split, key=lambda k: split[k]) if split else None


def traffic_spec(service: Any) -> list[tuple[str, str, int, str]]:
    """The traffic spec as (type, revision, percent, tag) tuples."""
    return [(_name(t.type_), t.revision, int(t.percent), t.tag) for t in service.traffic]


def tag_url(service: Any, tag: str) -> str:
    return next((str(s.uri) for s in service.traffic_statuses if s.tag == tag and s.uri), "")


def own_labels(labels: Any) -> dict[str, str]:
    """Labels without those Google may add itself (goog-*, *.googleapis.com/*)."""
    return {k: v for k, v in dict(labels).items() if not k.startswith("goog-") and "googleapis.com" not in k}


def service_differences(service: Any, labels: dict[str, str]) -> list[str]:
    """Service-level fields mlship sets that differ."""
    return [field for field, same in (("labels", own_labels(service.labels) == labels),
                                      ("ingress", _name(service.ingress) == "INGRESS_TRAFFIC_ALL")) if not same]
