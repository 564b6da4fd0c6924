"""A local Heroku (Platform API v3 + container registry + dyno manager + router) that really runs the images, for
testing the heroku target.

    with HerokuEmulator(docker_client, upstream="127.0.0.1:5555") as heroku:
        # API: heroku.api_url (MLSHIP_HEROKU_API_URL), key heroku.api_key; registry: heroku.registry

Python side: ``api_url``, ``registry`` (host:port), ``api_key`` (and ``other_key``, an account with no access to
the first one's apps), ``app_url(app)``, ``containers(app)``, ``inject(method, path_regex, status, times=1,
headers=None, body=None)``, ``calls`` [(method, path)], ``requests`` [{method, path, headers, body}],
``set_limits(boot_s=, router_timeout_s=, stop_grace_s=, quota_mb={size: MB})``, ``logs(app)``,
``boot_seconds(app)`` (launch to $PORT bound, per dyno), ``errors``.

HTTP side (the Platform API reference's shapes; auth ``Authorization: Bearer <key>`` or Basic with the key as
password; ``Accept: application/vnd.heroku+json; version=3`` required, else 400 ``missing_version``; errors are
``{"id", "message"}`` with the matching status; every answer has RateLimit-Remaining and Request-Id):

    GET /account                        POST /apps  POST /teams/apps (team "mlship-team")   GET|PATCH|DELETE /apps/A
    GET|PATCH /apps/A/config-vars       GET|PATCH /apps/A/features/preboot
    GET|PATCH /apps/A/formation (batch: {updates: [{type, quantity?, size?, docker_image?}]})
    GET|PATCH /apps/A/formation/web     GET /apps/A/releases (Range)   GET /apps/A/releases/{id|version}
    POST /apps/A/releases {release}     GET /apps/A/dynos[/{id|name}]   DELETE /apps/A/dynos (restart)
    POST /apps/A/log-sessions {lines, dyno, source, tail: false} -> {logplex_url}; GET logplex_url -> text/plain

Choices where the reference is silent (the emulator's): ``docker_image`` in a formation update needs the
docker-releases variant (``Accept: application/vnd.heroku+json; version=3.docker-releases``, as Heroku's container
docs call it) and an image id (config digest) pushed to the app's registry, else 422; the app's ``build_stack``
must be ``container`` (``stack`` becomes ``container`` with the release). A docker release is ``pending`` while
the emulator fetches the image, then ``succeeded``: there is no release phase, so dynos that crash do not fail the
release (as on Heroku); the dynos show it. Config var changes make a new release (that restarts the dynos when the
app has code), as Heroku does; a rollback copies the target release's image and config vars. New apps start with
v1 "Initial release" and v2 "Enable Logplex". Preboot can only be enabled on standard/performance sizes (422).
Eco/basic web dynos scale to 1 at most. ``tail: true`` log sessions are refused (422): the emulator serves the
lines a session asks for and ends.
"""

from __future__ import annotations

import base64
import json
import re
import traceback
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from emulators._runtime import LoopbackServer, read_body, send
from emulators.heroku_api import NO_CREDENTIALS, ApiError, accept_version
from emulators.heroku_dynos import Limits
from emulators.heroku_platform import Platform
from emulators.heroku_registry import RegistryFront


class HerokuEmulator(Platform):
    def __init__(self, docker_client: Any, *, upstream: str = "127.0.0.1:5555", limits: Limits | None = None) -> None:
        super().__init__(docker_client, upstream=upstream, limits=limits)
        self._faults: list[list[Any]] = []
        self._server: LoopbackServer | None = None
        self.registry_front: RegistryFront | None = None
        self.registry = ""

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> HerokuEmulator:
        self._server = LoopbackServer(self._serve, "heroku-api")
        self.api_url = self._server.url
        self.registry_front = RegistryFront(upstream=self.upstream, prefix=f"heroku-{self.id}",
                                            account=self._email, access=self._registry_access,
                                            on_manifest=self._pushed)
        self.registry = self.registry_front.address
        return self

    def stop(self) -> None:
        """Stop the API, the registry front, every router; stop and remove every dyno container."""
        if self._server is not None:
            self._server.close()
        if self.registry_front is not None:
            self.registry_front.close()
        self.dynos.close()

    def __enter__(self) -> HerokuEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test side --------------------------------------------------------------------------------
    @property
    def errors(self) -> list[str]:
        return self.dynos.errors

    def app_url(self, app: str) -> str:
        return self.dynos.url(app)

    def containers(self, app: str | None = None) -> list[Any]:
        return self.dynos.containers(app)

    def boot_seconds(self, app: str) -> list[float]:
        """Seconds from each of the app's dyno launches (container started) to its process listening on $PORT."""
        return [seconds for name, _, _, seconds in self.dynos.boots if name == app]

    def logs(self, app: str, lines: int = 1500) -> str:
        return self.logbook.read(app, lines)

    def set_limits(self, *, boot_s: float | None = None, router_timeout_s: float | None = None,
                   stop_grace_s: float | None = None, quota_mb: dict[str, int] | None = None) -> None:
        for name, value in (("boot_s", boot_s), ("router_timeout_s", router_timeout_s),
                            ("stop_grace_s", stop_grace_s)):
            if value is not None:
                setattr(self.limits, name, float(value))
        if quota_mb:
            self.limits.quota_mb.update({k.lower(): v for k, v in quota_mb.items()})

    def inject(self, method: str, path_regex: str, status: int, times: int = 1, headers: dict[str, str] | None = None,
               body: dict[str, Any] | None = None) -> None:
        """The next ``times`` API calls with this method (or "*") whose path matches ``path_regex`` (re.search)
        answer ``status`` with Heroku's error body (or ``body``) and ``headers`` (a 429 gets Retry-After: 1
        unless given), and do nothing else."""
        if status == 429:
            headers = {"Retry-After": "1", **(headers or {})}
        with self._lock:
            self._faults.append([method.upper(), re.compile(path_regex), status, times, headers or {}, body])

    # --- HTTP -------------------------------------------------------------------------------------
    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        status, payload, headers = self._dispatch(req.command, req.path, dict(req.headers), read_body(req))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        kind = "text/plain; charset=utf-8" if isinstance(payload, bytes) else "application/json"
        send(req, status, data, {"Content-Type": kind, **headers})

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str],
                  raw: bytes) -> tuple[int, Any, dict[str, str]]:
        path = unquote(urlsplit(raw_path).path).rstrip("/") or "/"
        out = {"Request-Id": str(uuid.uuid4()), "RateLimit-Remaining": "4500"}
        if method == "GET" and path.startswith("/log-sessions/"):
            return self._read_session(path.rsplit("/", 1)[1], out)
        with self._lock:
            self.calls.append((method, path))
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                body = None
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            try:
                for fault in self._faults:
                    if fault[0] in (method, "*") and fault[3] > 0 and fault[1].search(path):
                        fault[3] -= 1
                        error = ApiError(fault[2], headers=fault[4])
                        return fault[2], fault[5] or error.body(), {**out, **fault[4]}
                lowered = {k.lower(): v for k, v in headers.items()}
                version = accept_version(lowered.get("accept", ""))
                account = self._authenticate(lowered.get("authorization", ""))
                if not isinstance(body, dict):
                    raise ApiError(400, "Request body is not a JSON object.", "bad_request")
                for verbs, pattern, handler in self._routes():
                    found = re.fullmatch(pattern, path)
                    if found and method in verbs:
                        status, result, extra = handler(found, body, account, {**lowered, "version": version})
                        return status, result, {**out, **extra}
                raise ApiError(404, "The requested API endpoint was not found. Are you using the right HTTP verb "
                                    "(i.e. `GET` vs. `POST`), and did you specify your intended version with the "
                                    "`Accept` header?")
            except ApiError as exc:
                return exc.status, exc.body(), {**out, **exc.headers}
            except Exception as exc:  # an emulator bug: loudly
                traceback.print_exc()
                return 500, ApiError(500, f"Emulator error: {exc!r}").body(), out

    def _authenticate(self, header: str) -> dict[str, str]:
        scheme, _, value = header.partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(value.strip()).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if not header.strip():
            raise ApiError(401, NO_CREDENTIALS)
        if key not in self.accounts:
            raise ApiError(401, "Invalid credentials provided.")
        return self.accounts[key]
