"""Heroku preflight: read-only checks before anything is built (one try per call, short timeouts: the pipeline gives
all checks 4.5 s). The platform's limits (serve.timeout_s under the router's 30 s, the drain under the 30 s before
SIGKILL: no key needed); the API key found and valid (GET /account); the app there, or ``create: true``; its stack
container or settable; the key may deploy to it (it may read the app's config vars, which Heroku grants with deploy
access), and the config vars the service needs are set.
"""

from __future__ import annotations

from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.heroku import apps
from mlship.targets.heroku.api import HerokuApi, find_key, no_key
from mlship.targets.heroku.options import HerokuOptions
from mlship.targets.heroku.spec import limit_problems
from mlship.targets.spec import DeploySpec

TIMEOUT_S = 3.0


def checks(opts: HerokuOptions, spec: DeploySpec) -> list[Check]:
    limits = limit_problems(spec)
    found = [Check(name="heroku limits", ok=not limits,
                   detail="; ".join(p for p, _ in limits) or f"serve.timeout_s {spec.request_timeout_s:g}s and drain "
                   f"{spec.grace_s:g}s fit the router's 30 s and the 30 s before SIGKILL",
                   fix=" ".join(f for _, f in limits) or None)]
    key = find_key()
    if key is None:
        error = no_key()
        return [*found, Check(name="heroku api key", ok=False, detail=f"{error.message} {error.why}", fix=error.fix)]
    with HerokuApi(key[0], attempts=1, timeout_s=TIMEOUT_S) as api:
        try:
            account = api.get("/account", "GET /account")
        except TargetError as exc:
            return [*found, Check(name="heroku api key", ok=False, detail=f"key from {key[1]}: {exc.message}",
                                  fix=exc.fix)]
        found.append(Check(name="heroku api key", ok=True, detail=f"from {key[1]}: {account.get('email', '?')}"))
        found.append(_app(api, opts, spec))
        if spec.fetch_at_start:
            found.append(artifact_access(api, opts, spec.fetch_at_start))
    return found


def artifact_access(api: HerokuApi, opts: HerokuOptions, artifact: str) -> Check:
    """serve.fetch_at_start: a dyno has no platform identity, so the credentials the artifact needs must be config
    vars of the app (https:// needs none; gs:// cannot work: ADC reads a key file)."""
    from mlship.artifacts.identity import variable_check

    try:
        have = apps.config_vars(api, opts.app) if apps.find(api, opts.app) is not None else {}
    except TargetError as exc:
        return Check(name="artifact access", ok=False, detail=exc.message, fix=exc.fix)
    check = variable_check(artifact, "heroku", {name for name, value in have.items() if value})
    return check.model_copy(update={"fix": check.fix.replace("<app>", opts.app)}) if check.fix else check


def access_plan(artifact: str | None) -> list[str]:
    """The plan's line for the artifact's access (none without serve.fetch_at_start)."""
    from mlship.artifacts.identity import NEEDS, plan_line, scheme

    need = NEEDS.get(scheme(artifact or ""), {}).get("heroku")
    return [plan_line(artifact, "heroku", need.text + (f" ({', '.join(need.variables)}; checked in preflight)"
                                                      if need.variables else ""))] if artifact and need else []


def _app(api: HerokuApi, opts: HerokuOptions, spec: DeploySpec) -> Check:
    app = opts.app
    try:
        found = apps.find(api, app)
        if found is None:
            if opts.create:
                return Check(name="heroku app", ok=True, detail=f"{app} does not exist yet: the deploy creates it "
                             f"(stack container{', team ' + opts.team if opts.team else ''})")
            return Check(name="heroku app", ok=False, detail=f"app {app} does not exist", fix=apps.MISSING_FIX)
        stack = apps.stack_of(found)
        have = apps.config_vars(api, app)  # 403 when the key may not deploy to the app
    except TargetError as exc:
        return Check(name="heroku app", ok=False, detail=exc.message, fix=exc.fix)
    missing = [name for name in spec.secrets if not have.get(name)]
    if missing:
        return Check(name="heroku app", ok=False, detail=f"{app} has no config var {', '.join(missing)}, which the "
                     "server needs (serve.auth: api_key)", fix=f"heroku config:set {missing[0]}=KEY1,KEY2 -a {app}")
    stack_text = "container" if stack == "container" else f"{stack} (the deploy sets it to container)"
    owner = (found.get("owner") or {}).get("email", "?")
    return Check(name="heroku app", ok=True, detail=f"{app} (owner {owner}, stack {stack_text}); the key may deploy "
                 "to it")
