"""The Heroku emulator's Platform API resources (see heroku.py): accounts, apps, config vars, preboot, formation,
docker releases, rollbacks, dynos and log sessions, as the handlers that HerokuEmulator's HTTP server dispatches to.
"""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

from emulators.heroku_api import (
    APP_NAME,
    REGIONS,
    SIZES,
    STACKS,
    ApiError,
    App,
    Release,
    invalid,
    not_found,
    page,
    render_app,
    render_dyno,
    render_formation,
    render_preboot,
    render_release,
)
from emulators.heroku_dynos import DynoManager, Launch, Limits
from emulators.heroku_router import LogBook, now

TEAM = "mlship-team"
_APP = r"/apps/([^/]+)"
Result = tuple[int, Any, dict[str, str]]


class Platform:
    """The emulator's state and the API's handlers; each handler takes (path match, body, account, headers)."""

    def __init__(self, docker_client: Any, *, upstream: str, limits: Limits | None) -> None:
        self.docker, self.upstream = docker_client, upstream
        self.id = uuid.uuid4().hex[:8]
        self.api_key, self.other_key = str(uuid.uuid4()), str(uuid.uuid4())
        self.accounts = {self.api_key: {"email": "owner@mlship.test", "id": str(uuid.uuid4())},
                         self.other_key: {"email": "stranger@mlship.test", "id": str(uuid.uuid4())}}
        self.teams = {TEAM: {"owner@mlship.test"}}
        self.apps: dict[str, App] = {}
        self.calls: list[tuple[str, str]] = []
        self.requests: list[dict[str, Any]] = []
        self.log_sessions: dict[str, tuple[str, int, str | None, str | None]] = {}
        self.limits = limits or Limits()
        self.logbook = LogBook()
        self.dynos = DynoManager(docker_client, self.logbook, self.limits, self.id)
        self._lock = threading.RLock()
        self.api_url = ""

    def _routes(self) -> list[tuple[tuple[str, ...], str, Any]]:
        ok = self._ok
        return [
            (("GET",), r"/account", lambda m, b, a, h: ok({**a, "name": "Owner", "verified": True,
                                                             "created_at": now(), "updated_at": now()})),
            (("POST",), r"/apps", lambda m, b, a, h: self._create(b, a, None)),
            (("POST",), r"/teams/apps", lambda m, b, a, h: self._create(b, a, b.get("team") or "")),
            (("GET",), _APP, lambda m, b, a, h: ok(render_app(self._app(m[1], a)))),
            (("PATCH",), _APP, self._patch_app),
            (("DELETE",), _APP, self._delete_app),
            (("GET",), _APP + r"/config-vars", lambda m, b, a, h: ok(self._app(m[1], a).config)),
            (("PATCH",), _APP + r"/config-vars", self._patch_config),
            (("GET",), _APP + r"/features/preboot", lambda m, b, a, h: ok(render_preboot(self._app(m[1], a)))),
            (("PATCH",), _APP + r"/features/preboot", self._patch_preboot),
            (("GET",), _APP + r"/formation", lambda m, b, a, h: ok([render_formation(self._app(m[1], a))])),
            (("PATCH",), _APP + r"/formation", self._batch_formation),
            (("GET",), _APP + r"/formation/web", lambda m, b, a, h: ok(render_formation(self._app(m[1], a)))),
            (("PATCH",), _APP + r"/formation/web", lambda m, b, a, h: self._formation(m[1], a, b, h, one=True)),
            (("GET",), _APP + r"/releases", self._list_releases),
            (("GET",), _APP + r"/releases/([^/]+)",
             lambda m, b, a, h: ok(render_release(app := self._app(m[1], a), self._release(app, m[2])))),
            (("POST",), _APP + r"/releases", self._rollback),
            (("GET",), _APP + r"/dynos", self._list_dynos),
            (("GET",), _APP + r"/dynos/([^/]+)", self._get_dyno),
            (("DELETE",), _APP + r"/dynos", self._restart),
            (("POST",), _APP + r"/log-sessions", self._log_session),
        ]

    @staticmethod
    def _ok(result: Any, status: int = 200) -> Result:
        return status, result, {}

    # --- apps -------------------------------------------------------------------------------------
    def _email(self, key: str) -> str | None:
        account = self.accounts.get(key)
        return account["email"] if account else None

    def _pushed(self, name: str, process: str, reference: str, digest: str, config_digest: str) -> None:
        """The registry front accepted a manifest: its image id may now be released on the app."""
        with self._lock:
            app = self.apps.get(name)
            if app is not None and process == "web":
                app.images[config_digest] = digest

    def _may(self, email: str, app: App) -> bool:
        return app.owner["email"] == email or (app.team is not None and email in self.teams.get(app.team, set()))

    def _registry_access(self, email: str, name: str) -> str | None:
        with self._lock:
            app = self.apps.get(name)
            return "missing" if app is None else None if self._may(email, app) else "denied"

    def _app(self, ident: str, account: dict[str, str]) -> App:
        app = self.apps.get(ident) or next((a for a in self.apps.values() if a.id == ident), None)
        if app is None:
            raise not_found("app")
        if not self._may(account["email"], app):
            raise ApiError(403, f"You do not have access to the app {app.name}.")
        return app

    def _create(self, body: dict[str, Any], account: dict[str, str],
                team: str | None) -> Result:
        name = str(body.get("name") or f"emulated-app-{uuid.uuid4().hex[:6]}")
        if not APP_NAME.fullmatch(name):
            raise invalid("Name must start with a letter, end with a letter or digit and can only contain lowercase "
                          "letters, digits, and dashes. Name is too long (maximum is 30 characters) or too short.")
        if name in self.apps:
            raise invalid("Name is already taken")
        if team is not None and team not in self.teams:
            raise not_found("team")
        if team is not None and account["email"] not in self.teams[team]:
            raise ApiError(403, f"You do not have access to the team {team}.")
        region, stack = str(body.get("region") or "us"), str(body.get("stack") or "heroku-24")
        if region not in REGIONS:
            raise not_found("region")
        if stack not in STACKS:
            raise not_found("stack")
        app = App(id=str(uuid.uuid4()), name=name, owner={"email": account["email"], "id": account["id"]},
                  region=region, stack=stack, build_stack=stack, team=team, web_url=self.dynos.url(name))
        for description in ("Initial release", "Enable Logplex"):
            self._new_release(app, description, "", "", account)
        self.apps[name] = app
        return 201, render_app(app), {}

    def _patch_app(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                   headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        unknown = sorted(set(body) - {"build_stack", "maintenance", "name"})
        if unknown:
            raise invalid(f"Unknown attribute(s) {', '.join(unknown)}: the emulator changes build_stack only.")
        if "build_stack" in body:
            if body["build_stack"] not in STACKS:
                raise not_found("stack")
            app.build_stack, app.updated_at = str(body["build_stack"]), now()
        return 200, render_app(app), {}

    def _delete_app(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                    headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        if app.owner["email"] != account["email"]:
            raise ApiError(403, f"Only the owner of {app.name} can delete it.")
        rendered = render_app(app)
        del self.apps[app.name]
        self.dynos.remove(app.name)
        self.logbook.drop(app.name)
        return 200, rendered, {}

    # --- config and features ----------------------------------------------------------------------
    def _patch_config(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                      headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        bad = [k for k, v in body.items() if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
               or (v is not None and not isinstance(v, str | int | float | bool))]
        if bad:
            raise invalid(f"Invalid config var name(s) or value(s): {', '.join(bad)}.")
        if "PORT" in body or "DYNO" in body:
            raise invalid("PORT and DYNO are set by the dyno manager and cannot be config vars.")
        config = {**app.config, **{k: str(v) for k, v in body.items() if v is not None}}
        for key in [k for k, v in body.items() if v is None]:
            config.pop(key, None)
        if config != app.config:
            changed = sorted(body)
            verb = "Remove" if all(body[k] is None for k in changed) else "Set"
            app.config = config
            code = app.current
            self._new_release(app, f"{verb} {', '.join(changed)} config vars", code.image if code else "",
                              code.pull if code else "", account)
        return 200, app.config, {}

    def _patch_preboot(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                       headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        if not isinstance(body.get("enabled"), bool):
            raise invalid("enabled: expected true or false.")
        if body["enabled"] and not app.size.startswith(("standard", "performance")):
            raise invalid(f"Preboot is only available for apps on Standard or Performance dynos; {app.name}'s web "
                          f"dynos are {SIZES[app.size]}.")
        app.preboot = body["enabled"]
        return 200, render_preboot(app), {}

    # --- formation and releases -------------------------------------------------------------------
    def _batch_formation(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                         headers: dict[str, str]) -> Result:
        updates = body.get("updates")
        if not isinstance(updates, list) or not updates or not all(isinstance(u, dict) for u in updates):
            raise invalid("updates: expected a list of {type, quantity, size, docker_image}.")
        if any(u.get("type") != "web" for u in updates):
            raise invalid("The emulator runs the web process type only (updates[].type must be \"web\").")
        app = self._app(m[1], account)
        for update in updates:
            self._formation(app.name, account, update, headers, one=False)
        return 200, [render_formation(app)], {}

    def _formation(self, ident: str, account: dict[str, str], body: dict[str, Any], headers: dict[str, str],
                   *, one: bool) -> Result:
        app = self._app(ident, account)
        image = body.get("docker_image")
        if image is not None and (one or headers["version"] != "3.docker-releases"):
            raise invalid("docker_image is an attribute of the docker-releases API: PATCH /apps/{app}/formation "
                          "with `Accept: application/vnd.heroku+json; version=3.docker-releases`.")
        size = str(body.get("size", SIZES[app.size])).lower()
        quantity = body.get("quantity", app.quantity)
        if size not in SIZES:
            raise invalid(f"Size {body.get('size')!r} is not a dyno size: {', '.join(SIZES.values())}.")
        if not isinstance(quantity, int) or quantity < 0:
            raise invalid("quantity: expected a whole number >= 0.")
        if quantity > 1 and size in ("eco", "basic"):
            raise invalid(f"Cannot scale to more than 1 {SIZES[size]} size dynos per process type.")
        if image is not None:
            self._docker_release(app, str(image), account)
        if (size, quantity) != (app.size, app.quantity):
            resized = size != app.size
            app.size, app.quantity, app.formation_updated = size, quantity, now()
            current = app.current
            if current is not None and current.image and image is None:
                launch = self._launch(app, current)
                self.dynos.launch(app.name, launch) if resized else self.dynos.scale(app.name, launch)
        return 200, render_formation(app), {}

    def _docker_release(self, app: App, image: str, account: dict[str, str]) -> None:
        if app.build_stack != "container":
            raise invalid(f"{app.name} is not a container app: set its stack first (PATCH /apps/{app.name} "
                          "{\"build_stack\": \"container\"}, `heroku stack:set container`).")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", image) or image not in app.images:
            raise invalid(f"docker_image {image!r} is not an image id pushed to registry.heroku.com/{app.name}/web "
                          "(the image's config digest, `docker inspect --format {{.Id}}`).")
        pull = f"{self.upstream}/heroku-{self.id}/{app.name}/web@{app.images[image]}"
        release = self._new_release(app, f"Deployed web ({image[7:19]})", image, pull, account, pending=True)
        app.stack = "container"
        threading.Thread(target=self._fetch, args=(app, release), daemon=True).start()

    def _fetch(self, app: App, release: Release) -> None:
        """A docker release is pending while its image is fetched; then it succeeds and the dynos start."""
        try:
            self.dynos.pull(release.pull)
            status = "succeeded"
        except Exception as exc:
            self.dynos.errors.append(f"release v{release.version} of {app.name}: {exc}")
            status = "failed"
        with self._lock:
            release.status, release.updated_at = status, now()
            if status == "succeeded" and self.apps.get(app.name) is app:
                app.released_at = now()
                self.dynos.launch(app.name, self._launch(app, release))

    def _new_release(self, app: App, description: str, image: str, pull: str, account: dict[str, str],
                     *, pending: bool = False, config: dict[str, str] | None = None) -> Release:
        release = Release(id=str(uuid.uuid4()), version=len(app.releases) + 1, description=description, image=image,
                          pull=pull, config=dict(app.config if config is None else config),
                          user={"email": account["email"], "id": account["id"]},
                          status="pending" if pending else "succeeded")
        app.releases.append(release)
        if image and not pending:
            app.released_at = now()
            self.dynos.launch(app.name, self._launch(app, release))
        return release

    def _launch(self, app: App, release: Release) -> Launch:
        return Launch(release_id=release.id, version=release.version, image=release.pull, env=dict(release.config),
                      quantity=app.quantity, size=app.size,
                      preboot=app.preboot and app.size.startswith(("standard", "performance")))

    def _release(self, app: App, ident: str) -> Release:
        found = next((r for r in app.releases if r.id == ident or str(r.version) == ident), None)
        if found is None:
            raise not_found("release")
        return found

    def _list_releases(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                       headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        items = [render_release(app, r) for r in app.releases]
        return page(items, headers.get("range", ""), ("version", "id", "created_at"))

    def _rollback(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                  headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        target = self._release(app, str(body.get("release", "")))
        if not target.image:
            raise invalid(f"Cannot rollback to v{target.version}: it has no code (no docker image was released).")
        app.config = dict(target.config)
        release = self._new_release(app, f"Rollback to v{target.version}", target.image, target.pull, account)
        return 201, render_release(app, release), {}

    # --- dynos and logs ---------------------------------------------------------------------------
    def _list_dynos(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                    headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        return 200, [render_dyno(app, d) for d in self.dynos.dynos(app.name)], {}

    def _get_dyno(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                  headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        dynos = [d for d in self.dynos.dynos(app.name) if m[2] in (d.id, d.name)]
        if not dynos:
            raise not_found("dyno")
        return 200, render_dyno(app, dynos[-1]), {}

    def _restart(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                 headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        current = app.current
        if current is not None and current.image:
            self.dynos.launch(app.name, self._launch(app, current))
        return 202, {}, {}

    def _log_session(self, m: re.Match[str], body: dict[str, Any], account: dict[str, str],
                     headers: dict[str, str]) -> Result:
        app = self._app(m[1], account)
        lines = body.get("lines", 100)
        if not isinstance(lines, int) or not 0 <= lines <= 1500:
            raise invalid("lines: expected a number from 0 to 1500.")
        if body.get("tail"):
            raise invalid("tail: true is not served by the emulator: ask for the last lines (tail: false).")
        if body.get("source") not in (None, "app", "heroku"):
            raise invalid("source: expected app or heroku.")
        token = uuid.uuid4().hex
        self.log_sessions[token] = (app.name, lines, body.get("dyno"), body.get("source"))
        stamp = now()
        return 201, {"created_at": stamp, "id": str(uuid.uuid4()),
                     "logplex_url": f"{self.api_url}/log-sessions/{token}", "updated_at": stamp}, {}

    def _read_session(self, token: str, out: dict[str, str]) -> Result:
        with self._lock:
            session = self.log_sessions.get(token)
        if session is None:
            return 404, b"Log session not found or expired.\n", out
        return 200, self.logbook.read(*session).encode(), out
