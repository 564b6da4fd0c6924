"""status / logs / rollback / destroy of the ``heroku`` target: read from the app, its releases and dynos (no local
state); destroy deletes the app only when mlship created it (config var MLSHIP_CREATED=1), otherwise it scales the
web dynos to 0 and says so.
"""

from __future__ import annotations

from typing import Any

import httpx

from mlship.errors import TargetError
from mlship.targets.base import Deployment, Progress, TargetStatus
from mlship.targets.heroku import apps, labels, release
from mlship.targets.heroku.api import HerokuApi
from mlship.targets.heroku.options import HerokuOptions
from mlship.targets.heroku.spec import MARKER_CREATED
from mlship.targets.spec import DeploySpec

DEPLOY_FIRST = "Deploy first: `mlship deploy --target heroku`."


def served_version(url: str, path: str) -> str | None:
    """The model version the app's URL answers /readyz with (None when it does not answer 200)."""
    try:
        resp = httpx.get(url.rstrip("/") + path, timeout=5.0)
        return str(resp.json().get("version")) if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _line(r: dict[str, Any], found: list[dict[str, Any]], models: dict[str, str]) -> str:
    image = release.image_of(r, found)
    model = models.get(image or "")
    return (f"v{r.get('version')} {r.get('status')}: {r.get('description')}" + (f" [image {image}]" if image else "")
            + (" (current)" if r.get("current") else "") + (f": {model}" if model else ""))


def status(api: HerokuApi, opts: HerokuOptions, spec: DeploySpec, registry: str) -> TargetStatus:
    found_app = apps.find(api, opts.app)
    found = release.releases(api, opts.app, 20) if found_app is not None else []
    serving = release.current(found)
    image = release.image_of(serving, found)
    if found_app is None or image is None:
        state = "not deployed" if found_app is None else f"app {opts.app} exists; no image released"
        return TargetStatus(url=None, image=None, version=None, state=state, history=[])
    url = str(found_app.get("web_url") or "")
    dynos = release.dynos(api, opts.app)
    version = served_version(url, spec.readiness_path)
    states = ", ".join(f"{d.get('name')} {d.get('state')} ({d.get('size')}, v{(d.get('release') or {}).get('version')})"
                       for d in sorted(dynos, key=lambda d: str(d.get("name")))) or "no web dynos (scaled to 0)"
    assert serving is not None
    shown = found[:6]
    models = labels.serving_of(registry, opts.app, api.key, [image, *filter(None, (release.image_of(r, found)
                                                                                   for r in shown))])
    return TargetStatus(url=url, image=f"{registry}/{opts.app}/web (image {image})", version=version,
                        state=f"release v{serving.get('version')}: {states}",
                        history=[_line(r, found, models) for r in shown], ready=version is not None,
                        serving=models.get(image))


def logs(api: HerokuApi, app: str, tail: int) -> str:
    if apps.find(api, app) is None:
        raise TargetError(f"The Heroku app {app} does not exist: there is no log to read.", fix=DEPLOY_FIRST)
    return release.log_text(api, app, tail)


def previous_release(found: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the serving release, the release to go back to), or None: the newest older release that succeeded, runs
    another image and was not rolled back from (a release right before a "Rollback to ..." was undone: by mlship
    after its dynos crashed, or by an earlier rollback)."""
    serving = release.current(found)
    if serving is None:
        return None
    image = release.image_of(serving, found)
    undone = {int(r.get("version", 0)) - 1 for r in found if str(r.get("description", "")).startswith("Rollback to")}
    for r in found:
        version = int(r.get("version", 0))
        if version < int(serving.get("version", 0)) and r.get("status") == "succeeded" and version not in undone:
            other = release.image_of(r, found)
            if other is not None and other != image:
                return serving, r
    return None


def rollback(api: HerokuApi, opts: HerokuOptions, spec: DeploySpec, registry: str, *, timeout_s: float,
             poll_s: float, progress: Progress) -> Deployment:
    app = opts.app
    found_app = apps.find(api, app)
    found = release.releases(api, app, 50) if found_app is not None else []
    pair = previous_release(found)
    if found_app is None or pair is None:
        raise TargetError(f"No earlier release of another image on {app} to roll back to.",
                          fix="Deploy another version first; `mlship status --target heroku` lists the releases.")
    serving, target = pair
    progress(f"rolling {app} back from v{serving['version']} to what v{target['version']} ran")
    made = release.follow(api, app, release.roll_back_to(api, app, target), timeout_s=timeout_s, poll_s=poll_s)
    if made.get("status") != "succeeded":
        raise TargetError(f"The rollback release v{made['version']} of {app} failed.",
                          fix=f"`heroku releases -a {app}`; `mlship logs --target heroku` shows why.")
    quantity = int((apps.formation(api, app) or {}).get("quantity", opts.quantity))
    reason = release.wait_dynos(api, app, int(made["version"]), quantity, timeout_s=timeout_s, poll_s=poll_s)
    url = str(found_app.get("web_url") or "")
    reason = reason or release.wait_ready(url, spec.readiness_path, None, timeout_s=timeout_s, poll_s=poll_s)
    if reason:
        failure = release.diagnose(api, app, reason)
        raise TargetError(f"Rollback of {app} to v{target['version']}: {reason}"
                          + (f" ({failure.code})" if failure.code else ""),
                          why="Last log lines:\n" + "\n".join(failure.lines), fix=release.failure_fix(failure))
    image, before = release.image_of(target, found), release.image_of(serving, found)
    progress(f"v{made['version']} serves what v{target['version']} ran (image {image})")
    return Deployment(url=url, image=f"{registry}/{app}/web (image {image})",
                      version=served_version(url, spec.readiness_path) or "?",
                      previous=f"{registry}/{app}/web (image {before})",
                      serving=labels.serving_of(registry, app, api.key, [image] if image else []).get(image or ""))


def destroy(api: HerokuApi, app: str) -> list[str]:
    if apps.find(api, app) is None:
        return []
    if apps.config_vars(api, app).get(MARKER_CREATED) == "1":
        api.request("DELETE", f"/apps/{app}", f"delete app {app}")
        return [f"Heroku app {app} (created by mlship: its releases, dynos, config vars and images)"]
    if apps.formation(api, app) is not None:
        release.scale_web(api, app, 0)
    return [f"web dynos of {app} (scaled to 0); kept: app {app}, which mlship did not create (`heroku apps:destroy "
            f"{app}` deletes it)"]
