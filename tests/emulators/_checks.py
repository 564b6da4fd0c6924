"""Checks and defaults for Cloud Run request bodies (camelCase dicts, as google.cloud.run_v2's protos
print them), and the Google error they raise: ApiError -> {"error": {"code", "message", "status"}}.
"""

from __future__ import annotations

import copy
import re
from typing import Any

STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
          501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
LATEST, BY_REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class ApiError(Exception):
    def __init__(self, code: int, message: str, field_name: str = "", status: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.status = code, message, field_name, status or STATUS.get(code, "")

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.field:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                 "fieldViolations": [{"field": self.field, "description": self.message}]}]
        return {"error": error}


def bad(field_name: str, message: str) -> ApiError:
    return ApiError(400, f"{field_name}: {message}", field_name)


def quantity(text: str) -> float | None:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?", text)
    return float(found.group(1)) * _UNITS[found.group(2) or ""] if found else None


def cpus(text: str) -> float | None:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", text)
    return float(found.group(1)) / (1000 if found.group(2) else 1) if found else None


def copy_path(src: dict[str, Any], dst: dict[str, Any], path: list[str]) -> None:
    """updateMask semantics for one (camelCase or snake_case) path: take src's value, or clear it."""
    key = re.sub(r"_([a-z])", lambda c: c.group(1).upper(), path[0])
    if len(path) > 1 and isinstance(src.get(key), dict):
        return copy_path(src[key], dst.setdefault(key, {}), path[1:])
    if key in src:
        dst[key] = copy.deepcopy(src[key])
    else:
        dst.pop(key, None)
    return None


def template_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """What Cloud Run fills in: port 8080, 1 CPU / 512Mi, 80 requests per instance, 300 s, TCP startup probe."""
    t = copy.deepcopy(template)
    t.setdefault("maxInstanceRequestConcurrency", 80)
    t.setdefault("timeout", "300s")
    for c in t["containers"]:
        ports = c.setdefault("ports", [{}]) or [{}]
        for p in ports:
            p.setdefault("name", "http1")
            p.setdefault("containerPort", 8080)
        limits = c.setdefault("resources", {}).setdefault("limits", {})
        limits.setdefault("cpu", "1000m")
        limits.setdefault("memory", "512Mi")
        probe = c.setdefault("startupProbe", {"timeoutSeconds": 240, "periodSeconds": 240, "failureThreshold": 1,
                                              "tcpSocket": {}})
        for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("failureThreshold", 3)):
            probe.setdefault(key, value)
        for kind in ("httpGet", "tcpSocket"):
            if kind in probe:
                probe[kind].setdefault("port", ports[0]["containerPort"])
    return t


_RESERVED_ANNOTATIONS = ("run.googleapis.com", "cloud.googleapis.com", "serving.knative.dev",
                         "autoscaling.knative.dev")
_ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_annotations(annotations: dict[str, str], where: str) -> None:
    """Kubernetes' annotation rules, which the v2 API follows (keys ``[prefix/]name``, 256 KiB in all), and the
    namespaces it rejects."""
    for key in annotations:
        prefix, _, name = key.rpartition("/")
        if prefix.endswith(_RESERVED_ANNOTATIONS):
            raise bad(where, f"Annotation {key!r}: the {prefix} namespace is not supported in the v2 API.")
        if not _ANNOTATION_NAME.fullmatch(name) or (prefix and (len(prefix) > 253 or not
                                                                _DNS_SUBDOMAIN.fullmatch(prefix))):
            raise bad(where, f"Annotation key {key!r} is not a valid [prefix/]name.")
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        raise bad(where, "Annotations may hold at most 256 KiB in all.")


def check_template(t: dict[str, Any], registry: str) -> None:
    where = "service.template"
    if len(t["containers"]) != 1:
        raise bad(f"{where}.containers", "The emulator runs exactly one container (no sidecars).")
    if not 1 <= t["maxInstanceRequestConcurrency"] <= 1000:
        raise bad(f"{where}.max_instance_request_concurrency", "must be between 1 and 1000.")
    if not 1 <= float(t["timeout"].rstrip("s")) <= 3600:
        raise bad(f"{where}.timeout", "must be between 1s and 3600s.")
    check_annotations(t.get("annotations") or {}, f"{where}.annotations")
    c, where = t["containers"][0], f"{where}.containers[0]"
    image = c.get("image", "")
    if not image:
        raise bad(f"{where}.image", "Image is required.")
    path = image[len(registry) + 1:] if image.startswith(f"{registry}/") else ""
    if not re.fullmatch(r"[^\s:@]+(:\w[\w.-]*)?(@sha256:[0-9a-f]{64})?", path):
        raise bad(f"{where}.image", f"Expected an image path like {registry}/PROJECT/REPO/NAME[:tag][@digest] "
                                     f"(the emulator's stand-in for [region-]docker.pkg.dev), got {image!r}.")
    ports = c["ports"]
    if len(ports) != 1 or not 1 <= ports[0]["containerPort"] <= 65535 or ports[0]["name"] not in ("http1", "h2c"):
        raise bad(f"{where}.ports", "Exactly one port is allowed: containerPort 1-65535, name http1 or h2c.")
    names = [e.get("name", "") for e in c.get("env", [])]
    reserved = sorted(set(names) & set(RESERVED_ENV))
    if reserved:
        raise bad(f"{where}.env", f"The following reserved env names were provided: {', '.join(reserved)}. "
                                   "These values are automatically set by the system.")
    for i, env in enumerate(c.get("env", [])):
        if not re.fullmatch(r"[^=\s]+", env.get("name", "")) or names.count(env["name"]) > 1 or "valueSource" in env:
            raise bad(f"{where}.env[{i}]", f"Invalid or duplicate name {env.get('name')!r} (or a secret reference, "
                                            "which the emulator does not support).")
    memory, cpu = c["resources"]["limits"]["memory"], c["resources"]["limits"]["cpu"]
    if not 128 * 2**20 <= (quantity(memory) or 0) <= 32 * 2**30:
        raise bad(f"{where}.resources.limits.memory", f"Invalid value '{memory}': expected a quantity such as "
                                                       "512Mi or 2Gi, from 128Mi to 32Gi.")
    if not 0 < (cpus(cpu) or 0) <= 8:
        raise bad(f"{where}.resources.limits.cpu", f"Invalid value '{cpu}': expected 1, 2, 4, 8 or millicpu (1000m).")
    probe, where = c["startupProbe"], f"{where}.startup_probe"
    if ("httpGet" in probe) + ("tcpSocket" in probe) != 1:
        raise bad(where, "Set exactly one of httpGet or tcpSocket (gRPC probes are not emulated).")
    if not 1 <= probe["periodSeconds"] <= 240 or probe["failureThreshold"] < 1:
        raise bad(where, "period_seconds must be 1-240 and failure_threshold at least 1.")
    if not 1 <= probe["timeoutSeconds"] <= probe["periodSeconds"] or probe.get("initialDelaySeconds", 0) > 240:
        raise bad(f"{where}.timeout_seconds", "must be between 1 and period_seconds (initial_delay_seconds <= 240).")
    check = probe.get("httpGet") or probe.get("tcpSocket") or {}
    if check.get("port") != ports[0]["containerPort"]:
        raise bad(where, f"The probe port {check.get('port')} must be the container port {ports[0]['containerPort']}.")


def check_traffic(traffic: list[dict[str, Any]], known: set[str]) -> None:
    seen = set()
    for i, target in enumerate(traffic):
        kind, revision = target.get("type"), target.get("revision", "")
        if kind not in (LATEST, BY_REVISION):
            raise bad(f"service.traffic[{i}].type", "Set TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST or _REVISION.")
        if kind == LATEST and revision:
            raise bad(f"service.traffic[{i}].revision", "A LATEST traffic target must not name a revision.")
        if kind == BY_REVISION:
            target["revision"] = revision = revision.rsplit("/", 1)[-1]
            if revision not in known:
                raise bad(f"service.traffic[{i}].revision", f"Revision '{revision}' does not exist.")
        key = revision or LATEST
        if key in seen:
            raise bad(f"service.traffic[{i}]", f"'{key}' appears more than once in traffic.")
        seen.add(key)
        if not 0 <= target.get("percent", 0) <= 100:
            raise bad(f"service.traffic[{i}].percent", "must be between 0 and 100.")
    if sum(t.get("percent", 0) for t in traffic) != 100:
        raise bad("service.traffic", "Traffic percents must add up to 100.")
