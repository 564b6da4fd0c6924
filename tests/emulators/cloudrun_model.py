"""The Cloud Run emulator's resources (tests/emulators/cloudrun.py): a service and its revisions as the
emulator keeps them, and how the API renders them (protos printed back: camelCase, enum names, conditions,
pages of a list). No state of its own: the emulator holds the services.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from google.cloud import run_v2
from google.protobuf import json_format

from emulators._checks import ApiError
from emulators._runtime import Proxy

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"
REVISION_TYPE = "type.googleapis.com/google.cloud.run.v2.Revision"
REPO_TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"
AR_META_TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"
FAILED_PRECONDITION = 9  # google.rpc.Code, for failed operations
OUTPUT_ONLY = {"uid", "generation", "createTime", "updateTime", "deleteTime", "expireTime", "creator",
               "lastModifier", "observedGeneration", "terminalCondition", "conditions", "latestReadyRevision",
               "latestCreatedRevision", "trafficStatuses", "uri", "urls", "satisfiesPzs", "reconciling", "etag"}
LOC = r"projects/([^/]+)/locations/([^/]+)"
SVC = rf"{LOC}/services/([^/:]+)"
REVISION_FIELDS = {f.json_name for f in run_v2.Revision.pb().DESCRIPTOR.fields}


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canon(data: dict[str, Any], cls: Any, what: str = "") -> dict[str, Any]:
    """``data`` parsed as the proto ``cls`` and printed back: camelCase, enum names, defaults dropped."""
    try:
        return dict(json_format.MessageToDict(json_format.ParseDict(data, cls.pb()())))
    except json_format.ParseError as exc:
        if not what:
            raise
        raise ApiError(400, f"Invalid JSON payload received for {what}: {exc}") from None


@dataclass
class Revision:
    name: str  # full resource name
    template: dict[str, Any]
    created: str
    state: str = "PENDING"  # PENDING, READY, FAILED
    message: str = ""
    reason: str = ""
    container: Any = None
    host_port: int = 0
    updated: str = ""

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[1]


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    proxy: Proxy
    created: str = field(default_factory=timestamp)
    updated: str = field(default_factory=timestamp)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    generation: int = 1
    observed: int = 0
    revisions: dict[str, Revision] = field(default_factory=dict)  # short name -> revision, oldest first
    latest_created: str = ""
    latest_ready: str = ""
    routes: list[dict[str, Any]] = field(default_factory=list)  # the traffic actually applied
    route_error: str = ""
    reconciling: bool = True
    settled: str = ""  # when it last finished reconciling
    policy: dict[str, Any] = field(default_factory=lambda: {"version": 1, "etag": "ACAB"})
    count: int = 0

    @property
    def id(self) -> str:
        return self.name.rsplit("/", 1)[1]


class Rendering:
    """The Service and Revision resources as the API shows them (methods of the emulator)."""

    def _etag(self, svc: Service) -> str:
        return f'"{svc.uid[:8]}/{svc.generation}"'

    def _render(self, svc: Service) -> dict[str, Any]:
        """The Service as the API shows it; Ready = the latest created revision is ready and routes applied."""
        latest = svc.revisions.get(svc.latest_created)
        pending = ("CONDITION_RECONCILING", "Deploying revision.", svc.updated, "")
        config = (pending if latest is None or latest.state == "PENDING" else
                  ("CONDITION_FAILED", latest.message, latest.updated, latest.reason) if latest.state == "FAILED"
                  else ("CONDITION_SUCCEEDED", "", latest.updated, ""))
        routes = (pending if svc.reconciling else ("CONDITION_FAILED", svc.route_error, svc.settled, "")
                  if svc.route_error else ("CONDITION_SUCCEEDED", "", svc.settled, ""))
        failed = [c for c in (config, routes) if c[0] == "CONDITION_FAILED"]
        ready = pending if svc.reconciling else (failed or [routes])[0]
        out = {**copy.deepcopy(svc.spec), "name": svc.name, "uid": svc.uid, "generation": svc.generation,
               "createTime": svc.created, "updateTime": svc.updated, "creator": "emulator@mlship.dev",
               "lastModifier": "emulator@mlship.dev", "observedGeneration": svc.observed,
               "terminalCondition": condition("Ready", *ready),
               "conditions": [condition("RoutesReady", *routes), condition("ConfigurationsReady", *config)],
               "latestCreatedRevision": f"{svc.name}/revisions/{svc.latest_created}" if svc.latest_created else "",
               "latestReadyRevision": f"{svc.name}/revisions/{svc.latest_ready}" if svc.latest_ready else "",
               "trafficStatuses": copy.deepcopy(svc.routes), "uri": svc.proxy.url, "urls": [svc.proxy.url],
               "reconciling": svc.reconciling, "etag": self._etag(svc)}
        return canon(out, run_v2.Service)

    def _render_revision(self, svc: Service, rev: Revision) -> dict[str, Any]:
        state = {"PENDING": "CONDITION_RECONCILING", "READY": "CONDITION_SUCCEEDED", "FAILED": "CONDITION_FAILED"}
        ready = condition("Ready", state[rev.state], rev.message, rev.updated or rev.created, rev.reason)
        out = {k: copy.deepcopy(v) for k, v in rev.template.items() if k in REVISION_FIELDS}
        out.update(name=rev.name, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, rev.name)), generation=1,
                   createTime=rev.created, updateTime=rev.updated or rev.created, service=svc.name,
                   launchStage=svc.spec.get("launchStage", "GA"), observedGeneration=1 if rev.state != "PENDING" else 0,
                   conditions=[ready, {**ready, "type": "ContainerHealthy"}], reconciling=rev.state == "PENDING",
                   creator="emulator@mlship.dev", etag=f'"{rev.short}"')
        return canon(out, run_v2.Revision)


def condition(type_: str, state: str, message: str, when: str, reason: str = "") -> dict[str, Any]:
    out = {"type": type_, "state": state, "message": message, "lastTransitionTime": when}
    if state == "CONDITION_FAILED":
        out.update(severity="ERROR", **({"reason": reason} if reason else {}))
    return out


def page(items: list[dict[str, Any]], key: str, query: dict[str, str]) -> dict[str, Any]:
    start, size = int(query.get("pageToken") or 0), int(query.get("pageSize") or 0) or len(items) or 1
    out: dict[str, Any] = {key: items[start:start + size]} if items[start:start + size] else {}
    if start + size < len(items):
        out["nextPageToken"] = str(start + size)
    return out
