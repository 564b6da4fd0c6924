"""A local Cloud Run Admin API v2 (REST) that really runs the images, for testing the cloudrun target.

    with CloudRunEmulator(docker_client, registry="127.0.0.1:5555") as emu:
        client = run_v2.ServicesClient(transport="rest", credentials=AnonymousCredentials(),
                                       client_options={"api_endpoint": emu.endpoint})

Python side: ``endpoint``; ``calls`` [(method, path)] and ``requests`` [{method, path, query, body}] of
every API call; ``fail_next(method, path_regex, status, times=1, message="")``; ``containers(service)``;
``services[full name]`` (``.policy``, ``.revisions``, ``.routes``); ``enforce_invoker_iam``; ``stop()``.

HTTP side (shapes of the documented REST API; bodies are parsed with google.cloud.run_v2's protos, so
an unknown field is a 400 as on Google's side; enums are accepted as names or numbers):

    POST   /v2/projects/P/locations/L/services?serviceId=S[&validateOnly=true]   create -> Operation
    GET    /v2/projects/P/locations/L/services[?pageSize=&pageToken=]           list (L may be "-")
    GET    /v2/projects/P/locations/L/services/S                                 get
    PATCH  /v2/projects/P/locations/L/services/S[?updateMask=&allowMissing=&validateOnly=]  -> Operation
    DELETE /v2/projects/P/locations/L/services/S[?etag=]                         -> Operation
    GET|POST /v2/{service}:getIamPolicy   POST /v2/{service}:setIamPolicy   POST {service}:testIamPermissions
    GET    /v2/{service}/revisions        GET|DELETE /v2/{service}/revisions/R
    GET    /v1|v2/projects/P/locations/L/operations/ID                           an Operation
    POST   /v1/projects/P/locations/L/repositories?repositoryId=R   GET /v1/.../repositories/R  (Artifact Registry)

Each revision runs as a container (image pulled from ``registry``; PORT and K_* set; labelled
``dev.mlship.emulator=cloudrun``) and is Ready once its startup probe passes. Each service has a reverse
proxy at ``uri`` (http://127.0.0.1:PORT) that routes by the applied traffic split; a failed revision
never takes traffic, and an operation finishes once its revision is Ready or failed.

Jobs, executions and tasks (really run as containers) and their Cloud Logging entries: ``jobs``
(tests/emulators/cloudrun_jobs.py).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import re
import string
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.cloud import run_v2
from google.protobuf import json_format

from emulators import _runtime
from emulators._checks import (
    LATEST,
    ApiError,
    bad,
    check_template,
    check_traffic,
    copy_path,
    cpus,
    quantity,
    template_defaults,
)
from emulators._runtime import LABEL, Proxy

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"
REVISION_TYPE = "type.googleapis.com/google.cloud.run.v2.Revision"
REPO_TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"
AR_META_TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"
FAILED_PRECONDITION = 9  # google.rpc.Code, for failed operations
OUTPUT_ONLY = {"uid", "generation", "createTime", "updateTime", "deleteTime", "expireTime", "creator",
               "lastModifier", "observedGeneration", "terminalCondition", "conditions", "latestReadyRevision",
               "latestCreatedRevision", "trafficStatuses", "uri", "urls", "satisfiesPzs", "reconciling", "etag"}
_LOC = r"projects/([^/]+)/locations/([^/]+)"
_SVC = rf"{_LOC}/services/([^/:]+)"
_REVISION_FIELDS = {f.json_name for f in run_v2.Revision.pb().DESCRIPTOR.fields}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canon(data: dict[str, Any], cls: Any, what: str = "") -> dict[str, Any]:
    """``data`` parsed as the proto ``cls`` and printed back: camelCase, enum names, defaults dropped."""
    try:
        return dict(json_format.MessageToDict(json_format.ParseDict(data, cls.pb()())))
    except json_format.ParseError as exc:
        if not what:
            raise
        raise ApiError(400, f"Invalid JSON payload received for {what}: {exc}") from None


@dataclass
class _Revision:
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
class _Service:
    name: str
    spec: dict[str, Any]
    proxy: Proxy
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    generation: int = 1
    observed: int = 0
    revisions: dict[str, _Revision] = field(default_factory=dict)  # short name -> revision, oldest first
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


class CloudRunEmulator:
    """Cloud Run Admin API v2 + Artifact Registry repositories on 127.0.0.1 (see the module docstring)."""

    def __init__(self, docker_client: Any, *, registry: str, enforce_invoker_iam: bool = False) -> None:
        self.docker = docker_client
        self.registry = registry.rstrip("/")
        self.enforce_invoker_iam = enforce_invoker_iam
        self.id = uuid.uuid4().hex[:8]
        self.calls: list[tuple[str, str]] = []  # (method, path without query) of every API call
        self.requests: list[dict[str, Any]] = []  # the same with "query" (dict) and "body" (parsed JSON)
        self.services: dict[str, _Service] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.repositories: dict[str, dict[str, Any]] = {}
        self._waiting: list[tuple[str, str, int, str]] = []  # (operation, service, generation, its revision)
        self._faults: list[list[Any]] = []
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""
        from emulators.cloudrun_jobs import CloudRunJobs  # it imports this module's helpers

        self.jobs = CloudRunJobs(self)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> CloudRunEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = emulator._dispatch(self.command, self.path, raw)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._spawn(self._server.serve_forever, 0.1)
        return self

    def stop(self) -> None:
        """Stop the API and every proxy; stop (SIGTERM, 10 s) and remove every container it started."""
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in list(self._threads):
            thread.join(60)
        with self._lock:
            services, self.services = list(self.services.values()), {}
        for svc in services:
            svc.proxy.close()
        left = self.docker.containers.list(all=True, filters={"label": f"{LABEL}.id={self.id}"})
        stoppers = [threading.Thread(target=_runtime.stop_container, args=(c,)) for c in left]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(30)

    def __enter__(self) -> CloudRunEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1, message: str = "") -> None:
        """The next ``times`` API calls with this method (or "*") whose path (no query) matches
        ``path_regex`` (re.search) answer ``status`` with a Google error body, and do nothing else."""
        with self._lock:
            self._faults.append([method.upper(), re.compile(path_regex), status, times, message])

    def containers(self, service: str | None = None) -> list[Any]:
        """The Docker containers this emulator runs (all, or one service's by id or full name)."""
        labels = [f"{LABEL}.id={self.id}"]
        if service:
            labels.append(f"{LABEL}.service={service.rsplit('/', 1)[-1]}")
        return list(self.docker.containers.list(all=True, filters={"label": labels}))

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    # --- HTTP -------------------------------------------------------------------------------------
    def _dispatch(self, method: str, raw_path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items() if not k.startswith("$")}
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            body = None
            error: ApiError | None = ApiError(400, f"Invalid JSON payload received. {exc}")
        else:
            error = None if isinstance(body, dict) else ApiError(400, "Invalid JSON payload: expected an object.")
        with self._lock:
            self.calls.append((method, path))
            self.requests.append({"method": method, "path": path, "query": query, "body": body})
            for fault in self._faults:
                if fault[0] in (method, "*") and fault[3] > 0 and fault[1].search(path):
                    fault[3] -= 1
                    error = ApiError(fault[2], fault[4] or f"Injected fault: HTTP {fault[2]}.")
                    break
            try:
                if error is not None:
                    raise error
                for verbs, pattern, handler in self._routes():
                    found = re.fullmatch(pattern, path)
                    if found and method in verbs:
                        return 200, handler(found, query, body)
                raise ApiError(404, f"The requested URL {path} ({method}) was not found on this server.")
            except ApiError as exc:
                return exc.code, exc.body()
            except Exception as exc:  # a bug in the emulator: say so loudly
                traceback.print_exc()
                return 500, ApiError(500, f"Emulator error: {exc!r}").body()

    def _routes(self) -> list[tuple[tuple[str, ...], str, Any]]:
        return [
            (("POST",), rf"/v2/{_LOC}/services", self._create_service),
            (("GET",), rf"/v2/{_LOC}/services", self._list_services),
            (("GET",), rf"/v2/({_SVC})", lambda m, q, b: self._render(self._service(m[1]))),
            (("PATCH",), rf"/v2/({_SVC})", self._update_service),
            (("DELETE",), rf"/v2/({_SVC})", self._delete_service),
            (("GET", "POST"), rf"/v2/({_SVC}):getIamPolicy", lambda m, q, b: self._service(m[1]).policy),
            (("POST",), rf"/v2/({_SVC}):setIamPolicy", self._set_iam_policy),
            (("POST",), rf"/v2/({_SVC}):testIamPermissions",
             lambda m, q, b: {"permissions": self._service(m[1]) and b.get("permissions", [])}),
            (("GET",), rf"/v2/({_SVC})/revisions", self._list_revisions),
            (("GET",), rf"/v2/({_SVC})/revisions/([^/:]+)", lambda m, q, b: self._render_revision(*self._rev(m))),
            (("DELETE",), rf"/v2/({_SVC})/revisions/([^/:]+)", self._delete_revision),
            (("GET",), rf"/v[12]/({_LOC}/operations/[^/:]+)", self._get_operation),
            (("POST",), rf"/v1/{_LOC}/repositories", self._create_repository),
            (("GET",), rf"/v1/({_LOC}/repositories/[^/:]+)", self._get_repository),
            *self.jobs.routes(),
        ]

    # --- services ---------------------------------------------------------------------------------
    def _service(self, name: str) -> _Service:
        if name not in self.services:
            raise ApiError(404, f"Resource '{name.rsplit('/', 1)[1]}' of kind 'SERVICE' in region "
                                f"'{name.split('/')[3]}' in project '{name.split('/')[1]}' does not exist.")
        return self.services[name]

    def _create_service(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        sid = query.get("serviceId", "")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?", sid):
            raise bad("service_id", f"Invalid service id '{sid}': it must be 1 to 49 lowercase letters, "
                                     "digits or hyphens, start with a letter and not end with a hyphen.")
        name = f"projects/{m[1]}/locations/{m[2]}/services/{sid}"
        if name in self.services:
            raise ApiError(409, f"Resource '{sid}' already exists.")
        spec = self._spec(body, sid)
        if query.get("validateOnly") == "true":
            return self._operation(name, done=True, response={"name": name, **spec}, type_=SERVICE_TYPE)
        svc = _Service(name=name, spec=spec, proxy=Proxy(lambda: self._route(name), timeout=lambda: self._timeout(name),
                                                          authorize=lambda headers: self._authorized(name, headers)))
        self.services[name] = svc
        return self._pending_operation(svc, self._new_revision(svc))

    def _update_service(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        name = m[1]
        if name not in self.services and query.get("allowMissing") == "true":
            return self._create_service(re.match(_LOC, name), {**query, "serviceId": m[4]}, body)
        svc = self._service(name)
        if body.get("etag") and body["etag"] != self._etag(svc):
            raise ApiError(409, "The etag does not match the service's current etag.", status="ABORTED")
        incoming = {k: v for k, v in body.items() if k not in OUTPUT_ONLY}
        if query.get("updateMask"):
            merged = copy.deepcopy(svc.spec)
            for path in query["updateMask"].split(","):
                copy_path(incoming, merged, path.strip().split("."))
            incoming = merged
        spec = self._spec(incoming, svc.id, svc)
        if query.get("validateOnly") == "true":
            return self._operation(name, done=True, response={**self._render(svc), **spec}, type_=SERVICE_TYPE)
        if spec == svc.spec:  # nothing changed: no new generation, no revision
            return self._pending_operation(svc)
        template_changed = spec["template"] != svc.spec["template"]
        svc.spec, svc.generation, svc.updated, svc.reconciling = spec, svc.generation + 1, _now(), True
        return self._pending_operation(svc, self._new_revision(svc) if template_changed else "")

    def _delete_service(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc = self._service(m[1])
        if query.get("etag") and query["etag"] != self._etag(svc):
            raise ApiError(409, "The etag does not match the service's current etag.", status="ABORTED")
        rendered = self._render(svc)
        if query.get("validateOnly") == "true":
            return self._operation(svc.name, done=True, response=rendered, type_=SERVICE_TYPE)
        del self.services[svc.name]
        op = self._operation(svc.name, done=False, response=None, type_=SERVICE_TYPE, metadata=rendered)

        def teardown() -> None:
            svc.proxy.close()
            for container in self.containers(svc.id):
                _runtime.stop_container(container)
            with self._lock:
                self.operations[op["name"]].update(done=True, response={"@type": SERVICE_TYPE, **rendered})

        self._spawn(teardown)
        return op

    def _list_services(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        prefix = f"projects/{m[1]}/locations/{m[2]}/" if m[2] != "-" else f"projects/{m[1]}/"
        found = [self._render(s) for n, s in sorted(self.services.items()) if n.startswith(prefix)]
        return _page(found, "services", query)

    def _spec(self, body: dict[str, Any], sid: str, svc: _Service | None = None) -> dict[str, Any]:
        """The input fields of a Service body, checked, canonical and with Cloud Run's defaults."""
        spec = _canon({k: v for k, v in body.items() if k not in OUTPUT_ONLY | {"name"}}, run_v2.Service, "service")
        if "template" not in spec or not spec["template"].get("containers"):
            raise bad("service.template.containers", "A container is required: set template.containers[0].image.")
        spec["template"] = _canon(template_defaults(spec["template"]), run_v2.RevisionTemplate)
        check_template(spec["template"], self.registry)
        revision = spec["template"].get("revision", "")
        if revision and not revision.startswith(f"{sid}-"):
            raise bad("service.template.revision", f"Revision name '{revision}' must start with '{sid}-'.")
        if revision and svc and revision in svc.revisions and svc.revisions[revision].template != spec["template"]:
            raise ApiError(409, f"Revision named '{revision}' with different configuration already exists.")
        spec["traffic"] = spec.get("traffic") or [{"type": LATEST, "percent": 100}]
        spec.setdefault("ingress", "INGRESS_TRAFFIC_ALL")
        spec.setdefault("launchStage", "GA")
        known = set(svc.revisions if svc else ()) | {revision}
        check_traffic(spec["traffic"], known - {""})
        return spec

    # --- revisions --------------------------------------------------------------------------------
    def _new_revision(self, svc: _Service) -> str:
        """Start the revision of the service's template (unless it is a named one that exists)."""
        template = svc.spec["template"]
        short = template.get("revision", "")
        if short in svc.revisions:
            return short
        svc.count += 1
        short = short or f"{svc.id}-{svc.count:05d}-{''.join(random.choices(string.ascii_lowercase, k=3))}"
        rev = _Revision(name=f"{svc.name}/revisions/{short}", template=template, created=_now())
        svc.revisions[short], svc.latest_created, svc.reconciling = rev, short, True
        self._spawn(self._deploy, svc, rev)
        return short

    def _deploy(self, svc: _Service, rev: _Revision) -> None:
        """Pull, run and probe one revision's container (a background thread), then reconcile."""
        from docker.errors import DockerException, ImageNotFound, NotFound

        spec = rev.template["containers"][0]
        port = spec["ports"][0]["containerPort"]
        limits = spec["resources"]["limits"]
        env = {"PORT": str(port), "K_SERVICE": svc.id, "K_REVISION": rev.short, "K_CONFIGURATION": svc.id,
               **{e["name"]: e.get("value", "") for e in spec.get("env", [])}}
        labels = {LABEL: "cloudrun", f"{LABEL}.id": self.id, f"{LABEL}.service": svc.id,
                  f"{LABEL}.revision": rev.short}
        why, reason = "", ""
        try:
            container, host_port = _runtime.run_container(
                self.docker, spec["image"], name=f"cloudrun-{rev.short}-{self.id}", port=port, env=env,
                labels=labels, command=spec.get("command"), args=spec.get("args"),
                mem_limit=int(quantity(limits["memory"]) or 0), nano_cpus=int((cpus(limits["cpu"]) or 1) * 1e9))
        except (ImageNotFound, NotFound):
            container, host_port = None, 0
            why, reason = f"Image '{spec['image']}' not found.", "CONTAINER_MISSING"
        except DockerException as exc:
            container, host_port = None, 0
            why = f"The image could not be pulled or run: {str(exc).splitlines()[0][:300]}"
        with self._lock:
            rev.container, rev.host_port = container, host_port
            gone = self._closed.is_set() or self.services.get(svc.name) is not svc
        if container is not None and gone:
            return _runtime.stop_container(container)
        if container is not None:
            why = "" if host_port else (f"The container exited with code {_runtime.exit_code(container)} "
                                        "before the startup probe passed.")
            why = why or _runtime.startup_probe(container, host_port, spec["startupProbe"], port, self._closed,
                                                spec.get("name") or "container")
            if why == "cancelled":
                return None
            if why:
                why += "\nContainer log tail:\n" + _runtime.logs_tail(container)
        with self._lock:
            rev.state, rev.updated, rev.reason = ("FAILED" if why else "READY"), _now(), reason
            rev.message = (f"Revision '{rev.short}' is not ready and cannot serve traffic. {why}" if why else "")
            self._reconcile(svc)
        if why and container is not None:
            _runtime.stop_container(container)  # a failed instance is shut down
        return None

    def _reconcile(self, svc: _Service) -> None:
        """Apply the traffic spec once every revision it needs is settled; finish waiting operations."""
        svc.latest_ready = next((r.short for r in reversed(svc.revisions.values()) if r.state == "READY"), "")
        needed = {svc.latest_created} | {t.get("revision", "") for t in svc.spec["traffic"]}
        if any(svc.revisions[r].state == "PENDING" for r in needed if r in svc.revisions):
            return
        routes, svc.route_error = [], ""
        for target in svc.spec["traffic"]:
            short = svc.latest_ready if target["type"] == LATEST else target["revision"]
            rev = svc.revisions.get(short)
            if rev is not None and rev.state == "FAILED":
                svc.route_error = rev.message
            routes.append({**target, **({"revision": short} if short else {})})
        if not svc.route_error:
            svc.routes = routes
        svc.reconciling, svc.observed, svc.settled = False, svc.generation, _now()
        for entry in list(self._waiting):  # an operation fails when its revision or the routes did
            if entry[1] == svc.name and entry[2] <= svc.generation:
                self._waiting.remove(entry)
                rev = svc.revisions.get(entry[3])
                why = rev.message if rev is not None and rev.state == "FAILED" else svc.route_error
                outcome = ({"error": {"code": FAILED_PRECONDITION, "message": why}} if why
                           else {"response": {"@type": SERVICE_TYPE, **self._render(svc)}})
                self.operations[entry[0]].update(done=True, **outcome)

    def _route(self, name: str) -> tuple[int, str] | None:
        with self._lock:
            svc = self.services.get(name)
            if svc is None:
                return None
            targets = [(svc.revisions[r["revision"]].host_port, r["revision"], r.get("percent", 0))
                       for r in svc.routes if r.get("revision") in svc.revisions
                       and svc.revisions[r["revision"]].state == "READY"]
        return _runtime.weighted_choice(targets)

    def _timeout(self, name: str) -> float:
        with self._lock:
            svc = self.services.get(name)
            return float(svc.spec["template"]["timeout"].rstrip("s")) if svc else 300.0

    def _authorized(self, name: str, headers: dict[str, str]) -> bool:
        if not self.enforce_invoker_iam or headers.get("authorization", "").startswith("Bearer "):
            return True
        with self._lock:
            svc = self.services.get(name)
            if svc is None or svc.spec.get("invokerIamDisabled"):
                return True
            return any(b.get("role") == "roles/run.invoker" and "allUsers" in b.get("members", [])
                       for b in svc.policy.get("bindings", []))

    def _rev(self, m: re.Match[str]) -> tuple[_Service, _Revision]:
        svc = self._service(m[1])
        if m[5] not in svc.revisions:
            raise ApiError(404, f"Resource '{m[5]}' of kind 'REVISION' in region '{m[3]}' in project "
                                f"'{m[2]}' does not exist.")
        return svc, svc.revisions[m[5]]

    def _list_revisions(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc = self._service(m[1])
        return _page([self._render_revision(svc, r) for r in reversed(svc.revisions.values())], "revisions", query)

    def _delete_revision(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc, rev = self._rev(m)
        if rev.short in {r.get("revision") for r in svc.routes} or rev.short == svc.latest_created:
            raise ApiError(400, f"Revision '{rev.short}' is serving traffic or is the latest created revision "
                                "and cannot be deleted.", status="FAILED_PRECONDITION")
        rendered = self._render_revision(svc, rev)
        del svc.revisions[rev.short]
        if rev.container is not None:
            self._spawn(_runtime.stop_container, rev.container)
        return self._operation(rev.name, done=True, response=rendered, type_=REVISION_TYPE)

    # --- IAM --------------------------------------------------------------------------------------
    def _set_iam_policy(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc = self._service(m[1])
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise bad("policy", "A policy is required.")
        if policy.get("etag") and policy["etag"] != svc.policy["etag"]:
            raise ApiError(409, "There were concurrent policy changes. Please retry the whole read-modify-write "
                                "with exponential backoff.", status="ABORTED")
        for i, binding in enumerate(policy.get("bindings", [])):
            if not str(binding.get("role", "")).startswith("roles/"):
                raise bad(f"policy.bindings[{i}].role", f"Role {binding.get('role')!r} is not a role name.")
            for member in binding.get("members", []):
                if member not in ("allUsers", "allAuthenticatedUsers") and not re.match(
                        r"(user|serviceAccount|group|domain|principal|principalSet):.+", member):
                    raise bad(f"policy.bindings[{i}].members", f"Invalid member: {member!r}.")
        svc.policy = {"version": policy.get("version") or 1, "bindings": policy.get("bindings", []),
                      "etag": base64.b64encode(os.urandom(8)).decode()}
        return svc.policy

    # --- operations and Artifact Registry ---------------------------------------------------------
    def _operation(self, target: str, *, done: bool, response: dict[str, Any] | None, type_: str,
                   metadata: dict[str, Any] | None = None, meta_type: str = "") -> dict[str, Any]:
        location = "/".join(target.split("/")[:4])
        op: dict[str, Any] = {"name": f"{location}/operations/{uuid.uuid4()}", "done": done,
                              "metadata": {"@type": meta_type or type_,
                                           **(metadata if metadata is not None else response or {})}}
        if done:
            op["response"] = {"@type": type_, **(response or {})}
        self.operations[op["name"]] = op
        return op

    def _pending_operation(self, svc: _Service, revision: str = "") -> dict[str, Any]:
        """An operation that is done once the service has reconciled (failed if ``revision`` failed)."""
        op = self._operation(svc.name, done=False, response=None, type_=SERVICE_TYPE, metadata=self._render(svc))
        self._waiting.append((op["name"], svc.name, svc.generation, revision))
        self._reconcile(svc)
        return self.operations[op["name"]]

    def _get_operation(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if m[1] not in self.operations:
            raise ApiError(404, f"Operation '{m[1]}' not found.")
        return copy.deepcopy(self.operations[m[1]])

    def _create_repository(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        rid = query.get("repositoryId", "")
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", rid):
            raise bad("repository_id", f"Invalid repository id '{rid}'.")
        if body.get("format") not in ("DOCKER", 1):
            raise bad("repository.format", "Only DOCKER repositories are emulated; set format: DOCKER.")
        name = f"projects/{m[1]}/locations/{m[2]}/repositories/{rid}"
        if name in self.repositories:
            raise ApiError(409, f"the repository already exists: {name}")
        now = _now()
        self.repositories[name] = {**{k: v for k, v in body.items() if k in ("description", "labels", "mode")},
                                   "name": name, "format": "DOCKER", "createTime": now, "updateTime": now,
                                   "registryUri": f"{self.registry}/{m[1]}/{rid}"}
        return self._operation(name, done=True, response=self.repositories[name], type_=REPO_TYPE,
                               metadata={}, meta_type=AR_META_TYPE)

    def _get_repository(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if m[1] not in self.repositories:
            raise ApiError(404, f"Requested entity was not found. (repository {m[1]})")
        return self.repositories[m[1]]

    # --- rendering --------------------------------------------------------------------------------
    def _etag(self, svc: _Service) -> str:
        return f'"{svc.uid[:8]}/{svc.generation}"'

    def _render(self, svc: _Service) -> dict[str, Any]:
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
               "terminalCondition": _condition("Ready", *ready),
               "conditions": [_condition("RoutesReady", *routes), _condition("ConfigurationsReady", *config)],
               "latestCreatedRevision": f"{svc.name}/revisions/{svc.latest_created}" if svc.latest_created else "",
               "latestReadyRevision": f"{svc.name}/revisions/{svc.latest_ready}" if svc.latest_ready else "",
               "trafficStatuses": copy.deepcopy(svc.routes), "uri": svc.proxy.url, "urls": [svc.proxy.url],
               "reconciling": svc.reconciling, "etag": self._etag(svc)}
        return _canon(out, run_v2.Service)

    def _render_revision(self, svc: _Service, rev: _Revision) -> dict[str, Any]:
        state = {"PENDING": "CONDITION_RECONCILING", "READY": "CONDITION_SUCCEEDED", "FAILED": "CONDITION_FAILED"}
        ready = _condition("Ready", state[rev.state], rev.message, rev.updated or rev.created, rev.reason)
        out = {k: copy.deepcopy(v) for k, v in rev.template.items() if k in _REVISION_FIELDS}
        out.update(name=rev.name, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, rev.name)), generation=1,
                   createTime=rev.created, updateTime=rev.updated or rev.created, service=svc.name,
                   launchStage=svc.spec.get("launchStage", "GA"), observedGeneration=1 if rev.state != "PENDING" else 0,
                   conditions=[ready, {**ready, "type": "ContainerHealthy"}], reconciling=rev.state == "PENDING",
                   creator="emulator@mlship.dev", etag=f'"{rev.short}"')
        return _canon(out, run_v2.Revision)


def _condition(type_: str, state: str, message: str, when: str, reason: str = "") -> dict[str, Any]:
    out = {"type": type_, "state": state, "message": message, "lastTransitionTime": when}
    if state == "CONDITION_FAILED":
        out.update(severity="ERROR", **({"reason": reason} if reason else {}))
    return out


def _page(items: list[dict[str, Any]], key: str, query: dict[str, str]) -> dict[str, Any]:
    start, size = int(query.get("pageToken") or 0), int(query.get("pageSize") or 0) or len(items) or 1
    out: dict[str, Any] = {key: items[start:start + size]} if items[start:start + size] else {}
    if start + size < len(items):
        out["nextPageToken"] = str(start + size)
    return out
