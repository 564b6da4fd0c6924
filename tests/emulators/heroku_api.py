"""The Heroku emulator's Platform API pieces with no emulator state: errors, request checks, Range pagination, and
the JSON shapes of the Platform API reference (account, app, formation, release, dyno, feature, log session).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from emulators.heroku_dynos import Dyno
from emulators.heroku_router import now

IDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
       422: "invalid_params", 429: "rate_limit", 500: "internal_server_error", 503: "service_unavailable"}
MESSAGES = {"rate_limit": "Your account reached the API rate limit\nPlease wait a few minutes before making new "
                          "requests",
            "unauthorized": "Invalid credentials provided.", "forbidden": "You do not have access to this resource.",
            "not_found": "Couldn't find that resource.", "internal_server_error": "Internal server error.",
            "service_unavailable": "The API is temporarily unavailable."}
NO_CREDENTIALS = ("There were no credentials in your `Authorization` header. Try `Authorization: Bearer <api key>` "
                  "or `Authorization: Basic <base64-encoded email + \":\" + api key>`.")
ACCEPT = re.compile(r"application/vnd\.heroku\+json;\s*version=(3(?:\.[\w-]+)?)")
SIZES = {"eco": "eco", "basic": "basic", "standard-1x": "standard-1X", "standard-2x": "standard-2X",
         "performance-m": "performance-M", "performance-l": "performance-L"}
REGIONS = {"us": "59accabd-516d-4f0e-83e6-6e3757701145", "eu": "ed30241c-ed8c-4bb6-9714-61953675d0b4"}
STACKS = {"container": "69bee368-352b-4bd0-9b7c-819d860a2588", "heroku-24": "74cfe988-7527-4ca4-9667-77bcc2b2fdb4",
          "heroku-22": "ee582d3c-717d-4a57-ba5a-d7bb4a4e52e2"}
APP_NAME = re.compile(r"[a-z][a-z0-9-]{1,28}[a-z0-9]")


class ApiError(Exception):
    def __init__(self, status: int, message: str = "", error_id: str = "", headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        self.status, self.id = status, error_id or IDS.get(status, "error")
        self.message = message or MESSAGES.get(self.id, f"HTTP {status}")
        super().__init__(self.message)
        self.headers, self.extra = headers or {}, extra

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "message": self.message, **self.extra}


def invalid(message: str) -> ApiError:
    return ApiError(422, message)


def not_found(resource: str, what: str = "") -> ApiError:
    return ApiError(404, f"Couldn't find that {what or resource}.", resource=resource)


@dataclass
class Release:
    id: str
    version: int
    description: str
    image: str  # "" for releases without code (initial, config changes before any deploy)
    pull: str  # the reference the dyno manager pulls
    config: dict[str, str]
    user: dict[str, str]
    status: str = "succeeded"
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)


@dataclass
class App:
    id: str
    name: str
    owner: dict[str, str]
    region: str
    stack: str
    build_stack: str
    team: str | None
    web_url: str
    config: dict[str, str] = field(default_factory=dict)
    releases: list[Release] = field(default_factory=list)
    quantity: int = 1
    size: str = "basic"
    formation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    formation_updated: str = field(default_factory=now)
    preboot: bool = False
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    released_at: str | None = None
    images: dict[str, str] = field(default_factory=dict)  # image id (config digest) -> manifest digest

    @property
    def current(self) -> Release | None:
        return next((r for r in reversed(self.releases) if r.status == "succeeded"), None)


def render_app(app: App) -> dict[str, Any]:
    return {"acm": False, "archived_at": None, "buildpack_provided_description": None,
            "build_stack": {"id": STACKS[app.build_stack], "name": app.build_stack}, "created_at": app.created_at,
            "git_url": f"https://git.heroku.com/{app.name}.git", "id": app.id, "internal_routing": None,
            "maintenance": False, "name": app.name, "owner": app.owner, "organization": None,
            "team": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, app.team)), "name": app.team} if app.team else None,
            "region": {"id": REGIONS[app.region], "name": app.region}, "released_at": app.released_at,
            "repo_size": None, "slug_size": None, "space": None,
            "stack": {"id": STACKS[app.stack], "name": app.stack}, "updated_at": app.updated_at,
            "web_url": app.web_url}


def render_formation(app: App) -> dict[str, Any]:
    return {"app": {"id": app.id, "name": app.name}, "command": "", "created_at": app.created_at,
            "id": app.formation_id, "quantity": app.quantity, "size": SIZES[app.size], "type": "web",
            "updated_at": app.formation_updated}


def render_release(app: App, release: Release) -> dict[str, Any]:
    current = app.current
    return {"addon_plan_names": [], "app": {"id": app.id, "name": app.name}, "created_at": release.created_at,
            "description": release.description, "id": release.id, "output_stream_url": None, "slug": None,
            "status": release.status, "updated_at": release.updated_at, "user": release.user,
            "version": release.version, "current": current is release, "eligible_for_rollback": bool(release.image)}


def render_dyno(app: App, dyno: Dyno) -> dict[str, Any]:
    return {"app": {"id": app.id, "name": app.name}, "attach_url": None, "command": "", "created_at": dyno.created_at,
            "id": dyno.id, "name": dyno.name, "release": {"id": dyno.launch.release_id,
                                                          "version": dyno.launch.version},
            "size": SIZES[dyno.size], "state": dyno.state, "type": "web", "updated_at": dyno.updated_at}


def render_preboot(app: App) -> dict[str, Any]:
    return {"can_manage": True, "beta": False, "description": "Provide seamless web dyno deploys",
            "display_name": "Preboot", "doc_url": "http://devcenter.heroku.com/articles/preboot",
            "enabled": app.preboot, "feedback_email": "", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "preboot")),
            "name": "preboot", "state": "general"}


def accept_version(header: str) -> str:
    """The API version an Accept header asks for ("3" or "3.<variant>"); ApiError when none."""
    found = ACCEPT.search(header or "")
    if found is None:
        raise ApiError(400, "Please specify a version along with Heroku's API MIME type. For example, "
                            "`Accept: application/vnd.heroku+json; version=3`.", "missing_version")
    return found[1]


def page(items: list[dict[str, Any]], range_header: str, fields: tuple[str, ...]) -> tuple[int, list[Any], dict[str,
                                                                                                                 str]]:
    """Heroku's Range pagination: ``<field> [start]..[end][; max=N][, order=asc|desc]`` (200 items by default);
    206 with Next-Range when more items follow."""
    headers = {"Accept-Ranges": ", ".join(fields)}
    if not range_header.strip():
        return (206 if len(items) > 200 else 200), items[:200], headers
    found = re.fullmatch(r"\s*(\w+)\s+(\S*?)\.\.([^;,\s]*)\s*(?:[;,]\s*(.*))?", range_header)
    if found is None or found[1] not in fields:
        raise ApiError(400, f"Invalid Range header {range_header!r}: expected e.g. `{fields[0]} ..; max=10, "
                            "order=desc`.", "bad_request")
    options = dict(re.findall(r"(max|order)=(\w+)", found[4] or ""))
    key, start, end = found[1], found[2], found[3]
    order, size = options.get("order", "asc"), int(options.get("max", 200))
    if order not in ("asc", "desc") or not 1 <= size <= 1000:
        raise ApiError(400, f"Invalid Range header {range_header!r}: order is asc or desc, max 1 to 1000.")

    def value(item: dict[str, Any]) -> Any:
        return item[key] if key != "version" else int(item[key])

    typed = (lambda v: int(v)) if key == "version" else (lambda v: v)
    chosen = sorted(items, key=value, reverse=order == "desc")
    if start:  # "]v" starts after v (the form Next-Range uses)
        first, after = typed(start.lstrip("]")), start.startswith("]")
        chosen = [i for i in chosen if (value(i) < first or (value(i) == first and not after) if order == "desc"
                                        else value(i) > first or (value(i) == first and not after))]
    if end:
        chosen = [i for i in chosen if (value(i) >= typed(end) if order == "desc" else value(i) <= typed(end))]
    if len(chosen) > size:
        headers["Next-Range"] = f"{key} ]{chosen[size - 1][key]}..; max={size}, order={order}"
        return 206, chosen[:size], headers
    return 200, chosen, headers
