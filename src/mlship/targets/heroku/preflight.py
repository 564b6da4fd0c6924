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
    return found


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
