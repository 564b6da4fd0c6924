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
(tests/emulators/cloudrun_jobs.py). This module holds the state, the HTTP side and the services; revisions
are in cloudrun_revisions.py, operations, IAM and repositories in cloudrun_operations.py, the resources and
their rendering in cloudrun_model.py.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.cloud import run_v2

from emulators import _runtime
from emulators._checks import LATEST, ApiError, bad, check_template, check_traffic, copy_path, template_defaults
from emulators._runtime import LABEL, Proxy
from emulators.cloudrun_model import LOC, OUTPUT_ONLY, SERVICE_TYPE, SVC, Service, canon, page, timestamp
from emulators.cloudrun_operations import Operations

__all__ = ["LABEL", "CloudRunEmulator"]


class CloudRunEmulator(Operations):
    """Cloud Run Admin API v2 + Artifact Registry repositories on 127.0.0.1 (see the module docstring)."""

    def __init__(self, docker_client: Any, *, registry: str, enforce_invoker_iam: bool = False) -> None:
        self.docker = docker_client
        self.registry = registry.rstrip("/")
        self.enforce_invoker_iam = enforce_invoker_iam
        self.id = uuid.uuid4().hex[:8]
        self.calls: list[tuple[str, str]] = []  # (method, path without query) of every API call
        self.requests: list[dict[str, Any]] = []  # the same with "query" (dict) and "body" (parsed JSON)
        self.services: dict[str, Service] = {}
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
            (("POST",), rf"/v2/{LOC}/services", self._create_service),
            (("GET",), rf"/v2/{LOC}/services", self._list_services),
            (("GET",), rf"/v2/({SVC})", lambda m, q, b: self._render(self._service(m[1]))),
            (("PATCH",), rf"/v2/({SVC})", self._update_service),
            (("DELETE",), rf"/v2/({SVC})", self._delete_service),
            (("GET", "POST"), rf"/v2/({SVC}):getIamPolicy", lambda m, q, b: self._service(m[1]).policy),
            (("POST",), rf"/v2/({SVC}):setIamPolicy", self._set_iam_policy),
            (("POST",), rf"/v2/({SVC}):testIamPermissions",
             lambda m, q, b: {"permissions": self._service(m[1]) and b.get("permissions", [])}),
            (("GET",), rf"/v2/({SVC})/revisions", self._list_revisions),
            (("GET",), rf"/v2/({SVC})/revisions/([^/:]+)", lambda m, q, b: self._render_revision(*self._rev(m))),
            (("DELETE",), rf"/v2/({SVC})/revisions/([^/:]+)", self._delete_revision),
            (("GET",), rf"/v[12]/({LOC}/operations/[^/:]+)", self._get_operation),
            (("POST",), rf"/v1/{LOC}/repositories", self._create_repository),
            (("GET",), rf"/v1/({LOC}/repositories/[^/:]+)", self._get_repository),
            *self.jobs.routes(),
        ]

    # --- services ---------------------------------------------------------------------------------
    def _service(self, name: str) -> Service:
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
        svc = Service(name=name, spec=spec, proxy=Proxy(lambda: self._route(name), timeout=lambda: self._timeout(name),
                                                          authorize=lambda headers: self._authorized(name, headers)))
        self.services[name] = svc
        return self._pending_operation(svc, self._new_revision(svc))

    def _update_service(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        name = m[1]
        if name not in self.services and query.get("allowMissing") == "true":
            return self._create_service(re.match(LOC, name), {**query, "serviceId": m[4]}, body)
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
        svc.spec, svc.generation, svc.updated, svc.reconciling = spec, svc.generation + 1, timestamp(), True
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
        return page(found, "services", query)

    def _spec(self, body: dict[str, Any], sid: str, svc: Service | None = None) -> dict[str, Any]:
        """The input fields of a Service body, checked, canonical and with Cloud Run's defaults."""
        spec = canon({k: v for k, v in body.items() if k not in OUTPUT_ONLY | {"name"}}, run_v2.Service, "service")
        if "template" not in spec or not spec["template"].get("containers"):
            raise bad("service.template.containers", "A container is required: set template.containers[0].image.")
        spec["template"] = canon(template_defaults(spec["template"]), run_v2.RevisionTemplate)
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
