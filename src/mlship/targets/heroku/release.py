"""Releases and dynos of one Heroku app: create a release of a pushed image (the docker-releases formation update),
follow it, wait for its web dynos and for /readyz through the app's URL, roll back to an earlier release, and read
the app's log (a log session) to say why a release failed: the error code (R10, R14, R15, H10, H12, H20, ...) and
the last lines.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from mlship.errors import TargetError
from mlship.targets.common import poll
from mlship.targets.heroku.api import ACCEPT_DOCKER_RELEASES, HerokuApi

_IMAGE_IN_DESCRIPTION = re.compile(r"\b([0-9a-f]{12})\b")
_ERROR = re.compile(r'Error ([RH]\d\d) \(([^)]*)\)|code=([RH]\d\d)(?: desc="([^"]*)")?')
_EXITED = re.compile(r"Process exited with status (\d+)")
_ROLLBACK = re.compile(r"Rollback to v(\d+)")
CODE_FIXES = {
    "R10": "The server did not bind $PORT in time: run `mlship test` on the image (it reports when /healthz answers), "
           "and check nothing in the image delays the server's start.",
    "R14": "The dyno ran over its memory quota: choose a larger targets.heroku.dyno (the error names the one `mlship "
           "test` measured), or make the model smaller.",
    "R15": "The dyno was killed far over its memory quota: choose a larger targets.heroku.dyno.",
    "H10": "The app crashed: the log lines above say why; `mlship test` runs the same image locally.",
    "H12": "A request took longer than the router's 30 s: lower serve.timeout_s and make the prediction faster.",
    "H20": "The app did not answer the router in time after boot: check /readyz with `mlship test`.",
}


@dataclass(frozen=True)
class Failure:
    """Why a release did not take: a one-line reason, the error code the log shows (if any), the last log lines."""

    reason: str
    code: str | None
    lines: list[str]


def releases(api: HerokuApi, app: str, limit: int = 10) -> list[dict[str, Any]]:
    """The app's newest releases, newest first."""
    found = api.get(f"/apps/{app}/releases", f"list the releases of {app}",
                    headers={"Range": f"version ..; order=desc, max={limit}"})
    return sorted(found or [], key=lambda r: int(r.get("version", 0)), reverse=True)


def current(found: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The release that serves: the one marked current, else the newest that succeeded."""
    return next((r for r in found if r.get("current")), None) or next(
        (r for r in found if r.get("status") == "succeeded"), None)


def image_of(release: dict[str, Any] | None, found: list[dict[str, Any]]) -> str | None:
    """The short image id (12 hex) ``release`` runs: named in "Deployed web (3f2a...)"; a "Rollback to vN" runs vN's;
    any other release (a config change) runs what the release before it ran. None when ``found`` does not reach back
    far enough."""
    by_version = {int(r.get("version", 0)): r for r in found}
    for _ in range(len(found)):
        if release is None:
            return None
        description = str(release.get("description") or "")
        named = _IMAGE_IN_DESCRIPTION.search(description)
        if named and description.startswith("Deployed"):
            return named[1]
        back = _ROLLBACK.match(description)
        release = by_version.get(int(back[1]) if back else int(release.get("version", 0)) - 1)
    return None


def create(api: HerokuApi, app: str, image_id: str, after_version: int, *, quantity: int,
           size: str) -> dict[str, Any]:
    """Release ``image_id`` as the web process on ``quantity`` x ``size`` dynos (one formation update of the
    docker-releases API); returns the new release."""
    api.request("PATCH", f"/apps/{app}/formation", f"release image {image_id[7:19]} on {app}",
                body={"updates": [{"type": "web", "docker_image": image_id, "quantity": quantity, "size": size}]},
                headers={"Accept": ACCEPT_DOCKER_RELEASES})
    return newer(api, app, after_version, f"the release of image {image_id[7:19]}")


def newer(api: HerokuApi, app: str, after_version: int, what: str) -> dict[str, Any]:
    """The newest release of ``app`` with a version above ``after_version`` (it appears within seconds)."""
    def look() -> dict[str, Any] | None:
        return next((r for r in releases(api, app, 5) if int(r.get("version", 0)) > after_version), None)

    return poll(f"{what} on {app}", look, timeout_s=60, first_delay_s=0.2,
                fix="Check the app's releases: `heroku releases -a " + app + "`.")


def follow(api: HerokuApi, app: str, release: dict[str, Any], *, timeout_s: float, poll_s: float) -> dict[str, Any]:
    """Poll the release until it is no longer pending."""
    def look() -> dict[str, Any] | None:
        got: dict[str, Any] = api.get(f"/apps/{app}/releases/{release['id']}", f"read release v{release['version']}")
        return got if got.get("status") != "pending" else None

    return poll(f"release v{release['version']} of {app}", look, timeout_s=timeout_s, first_delay_s=poll_s,
                max_delay_s=2.0, fix=f"Look at it: `heroku releases:info v{release['version']} -a {app}`.")


def dynos(api: HerokuApi, app: str) -> list[dict[str, Any]]:
    return [d for d in api.get(f"/apps/{app}/dynos", f"list the dynos of {app}") or [] if d.get("type") == "web"]


def wait_dynos(api: HerokuApi, app: str, version: int, quantity: int, *, timeout_s: float,
               poll_s: float) -> str | None:
    """Until ``quantity`` web dynos of release ``version`` are up: None; a reason when one crashed or time ran out."""
    deadline, delay = time.monotonic() + timeout_s, poll_s
    while True:
        mine = [d for d in dynos(api, app) if int((d.get("release") or {}).get("version", -1)) == version]
        bad = [d for d in mine if d.get("state") == "crashed"]
        if bad:
            return f"{bad[0].get('name', 'a web dyno')} of v{version} crashed"
        if sum(d.get("state") == "up" for d in mine) >= quantity:
            return None
        if time.monotonic() > deadline:
            states = ", ".join(f"{d.get('name')} {d.get('state')}" for d in mine) or "none started"
            return f"the web dynos of v{version} were not up within {timeout_s:g}s ({states})"
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def wait_ready(url: str, path: str, version: str | None, *, timeout_s: float, poll_s: float) -> str | None:
    """Until ``url``+``path`` answers 200 (from ``version``, when given): None; else the reason."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    with httpx.Client(timeout=5.0) as http:
        while time.monotonic() < deadline:
            try:
                resp = http.get(url.rstrip("/") + path)
                answered = resp.json().get("version") if resp.status_code == 200 else None
                if resp.status_code == 200 and (version is None or answered == version):
                    return None
                last = f"HTTP {resp.status_code}" + (f" from version {answered}" if answered else "")
            except (httpx.HTTPError, ValueError) as exc:
                last = type(exc).__name__
            time.sleep(poll_s)
    return (f"{url.rstrip('/')}{path} did not answer 200{' from version ' + version if version else ''} within "
            f"{timeout_s:g}s (last: {last})")


def roll_back_to(api: HerokuApi, app: str, release: dict[str, Any]) -> dict[str, Any]:
    """A new release that runs what ``release`` ran (the releases API's rollback)."""
    made: dict[str, Any] = api.request("POST", f"/apps/{app}/releases", f"roll {app} back to v{release['version']}",
                                       body={"release": release["id"]})
    return made


def scale_web(api: HerokuApi, app: str, quantity: int, size: str | None = None) -> None:
    body: dict[str, Any] = {"quantity": quantity}
    if size is not None:
        body["size"] = size
    api.request("PATCH", f"/apps/{app}/formation/web", f"scale the web dynos of {app} to {quantity}", body=body)


def log_text(api: HerokuApi, app: str, lines: int, dyno: str | None = None) -> str:
    """The app's last ``lines`` log lines, through a log session (its URL carries its own token: the API key is
    never sent there)."""
    body: dict[str, Any] = {"lines": lines, "tail": False}
    if dyno:
        body["dyno"] = dyno
    session = api.request("POST", f"/apps/{app}/log-sessions", f"open a log session of {app}", body=body)
    try:
        resp = httpx.get(session["logplex_url"], timeout=30.0)
    except httpx.HTTPError as exc:
        raise TargetError(f"Reading the log of {app} failed: {type(exc).__name__}.",
                          fix=f"Try `heroku logs -n {lines} -a {app}`.") from None
    if resp.status_code != 200:
        raise TargetError(f"Reading the log of {app} failed: HTTP {resp.status_code}.",
                          fix=f"Try `heroku logs -n {lines} -a {app}`.")
    return "\n".join(resp.text.splitlines()[-lines:])


def diagnose(api: HerokuApi, app: str, reason: str, lines: int = 15) -> Failure:
    """``reason`` with the last error code and log lines of the app (what failed, as Heroku logged it)."""
    try:
        text = log_text(api, app, 200)
    except TargetError as exc:
        return Failure(reason, None, [f"(no log: {exc.message})"])
    dyno_code = router_code = exited = None  # the dyno's own error first, then how it ended, then the router's
    for line in text.splitlines():
        found = _ERROR.search(line)
        if found:
            code = f"{found[1] or found[3]}" + (f" ({found[2] or found[4]})" if found[2] or found[4] else "")
            if code.startswith("R"):
                dyno_code = code
            else:
                router_code = code
        status = _EXITED.search(line)
        if status:
            exited = f"exit status {status[1]}"
    # the requests the serving release answered meanwhile (router at=info lines) would push out why it failed
    shown = [line for line in text.splitlines() if "heroku[router]: at=info" not in line]
    return Failure(reason, dyno_code or exited or router_code, shown[-lines:])


def failure_fix(failure: Failure) -> str:
    key = "H10" if (failure.code or "").startswith("exit status") else (failure.code or "")[:3]
    return CODE_FIXES.get(key, "The log lines above say why; `mlship test` runs the same image locally with the "
                          "environment the target gives it.")
