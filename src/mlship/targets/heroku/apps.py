"""The Heroku app of a service: found or created (container stack, marked as mlship's in its config vars), its stack,
config vars, preboot and web formation made what the options say, each changed only where it differs (a config var
change is a release on Heroku, so an unchanged deploy changes nothing).
"""

from __future__ import annotations

from typing import Any

from mlship.errors import TargetError
from mlship.targets.base import Progress
from mlship.targets.heroku.api import HerokuApi
from mlship.targets.heroku.options import HerokuOptions
from mlship.targets.heroku.spec import MARKER_CREATED, MARKER_SERVICE, SERVER_ENV

MISSING_FIX = ("Set targets.heroku.create: true in mlship.yaml to let mlship create it, create it yourself "
               "(`heroku create APP --stack container`), or correct targets.heroku.app (`heroku apps` lists yours).")


def find(api: HerokuApi, app: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = api.get(f"/apps/{app}", f"read app {app}", missing=True)
    return found


def stack_of(found: dict[str, Any]) -> str:
    """The stack the next release builds on (``build_stack``), else the app's stack."""
    return str((found.get("build_stack") or found.get("stack") or {}).get("name") or "?")


def config_vars(api: HerokuApi, app: str) -> dict[str, str]:
    found: dict[str, str] = api.get(f"/apps/{app}/config-vars", f"read the config vars of {app}") or {}
    return found


def ensure(api: HerokuApi, opts: HerokuOptions, service: str, progress: Progress) -> tuple[dict[str, Any], bool]:
    """The app, created when missing and ``create`` is set; also whether this call created it."""
    app = opts.app
    found = find(api, app)
    if found is not None:
        return found, False
    if not opts.create:
        raise TargetError(f"The Heroku app {app} does not exist.", fix=MISSING_FIX)
    body: dict[str, Any] = {"name": app, "stack": "container"}
    if opts.region:
        body["region"] = opts.region
    if opts.team:
        body["team"] = opts.team
    path = "/teams/apps" if opts.team else "/apps"
    made: dict[str, Any] = api.request("POST", path, f"create app {app}", body=body,
                                       fix="Choose another targets.heroku.app (app names are unique across "
                                           "Heroku), or check targets.heroku.region/team.")
    api.request("PATCH", f"/apps/{app}/config-vars", f"mark {app} as created by mlship",
                body={MARKER_CREATED: "1", MARKER_SERVICE: service})
    progress(f"created app {app} (stack container, region {(made.get('region') or {}).get('name', '?')}"
             + (f", team {opts.team}" if opts.team else "") + f"); {MARKER_CREATED}=1 marks it as mlship's")
    return made, True


def configure(api: HerokuApi, opts: HerokuOptions, found: dict[str, Any], service: str, secrets: tuple[str, ...],
              progress: Progress) -> bool:
    """Stack, config vars, the web formation's size and preboot, each only where it differs. False when the app has
    no web formation yet (a first release makes it): preboot is then set after that release (see ``size_and_preboot``,
    as Heroku allows preboot only once the web dynos are of a Standard or Performance size)."""
    app = opts.app
    if stack_of(found) != "container":
        api.request("PATCH", f"/apps/{app}", f"set the stack of {app} to container",
                    body={"build_stack": "container"})
        progress(f"set the stack of {app} to container (was {stack_of(found)})")
    have = config_vars(api, app)
    missing = [name for name in secrets if not have.get(name)]
    if missing:
        raise TargetError(f"App {app} has no config var {', '.join(missing)}, which the service needs "
                          "(serve.auth: api_key).", why="The server refuses to start without its API keys.",
                          fix=f"heroku config:set {missing[0]}=KEY1,KEY2 -a {app}  (then deploy again)")
    want = {MARKER_SERVICE: service, **SERVER_ENV, **opts.environment()}
    changed = {k: v for k, v in want.items() if have.get(k) != v}
    if changed:
        api.request("PATCH", f"/apps/{app}/config-vars", f"set config vars of {app}", body=changed)
        progress(f"set config vars of {app}: {', '.join(sorted(changed))} (a release of its own)")
    return size_and_preboot(api, opts, progress)


def size_and_preboot(api: HerokuApi, opts: HerokuOptions, progress: Progress) -> bool:
    """The web formation's size and quantity, then preboot; False when there is no web formation yet."""
    web = formation(api, opts.app)
    if web is None:
        return False
    if (str(web.get("size", "")).lower(), int(web.get("quantity", -1))) != (opts.dyno, opts.quantity):
        api.request("PATCH", f"/apps/{opts.app}/formation/web", f"scale the web dynos of {opts.app}",
                    body={"quantity": opts.quantity, "size": opts.dyno})
        progress(f"web formation of {opts.app}: {opts.quantity} x {opts.dyno} (was {web.get('quantity')} x "
                 f"{web.get('size')})")
    ensure_preboot(api, opts.app, opts.use_preboot, progress)
    return True


def ensure_preboot(api: HerokuApi, app: str, enabled: bool, progress: Progress) -> None:
    feature = api.get(f"/apps/{app}/features/preboot", f"read the preboot feature of {app}") or {}
    if bool(feature.get("enabled")) != enabled:
        api.request("PATCH", f"/apps/{app}/features/preboot", f"turn preboot {'on' if enabled else 'off'} on {app}",
                    body={"enabled": enabled})
        progress(f"preboot {'on' if enabled else 'off'}: "
                 + ("new dynos answer before the old ones stop" if enabled else "the old dynos stop first"))


def formation(api: HerokuApi, app: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = api.get(f"/apps/{app}/formation/web", f"read the web formation of {app}",
                                           missing=True)
    return found
