"""What the ``heroku`` target checks and plans, without talking to Heroku (pure): the platform's limits against the
deploy spec (at plan time: the request timeout under the router's 30 s, the drain under the 30 s between SIGTERM and
SIGKILL; before release: the memory the test gate measured within the dyno's quota), and the plan text.

Heroku's limits (Dev Center: "Request Timeout", "Dynos: Dyno Manager", "Memory Quota Exceeded", "R10 Boot Timeout"):
the router answers 503 with H12 when an app sends no response within 30 s; a web dyno that does not bind $PORT within
60 s of its start is killed (R10); a stopping dyno gets SIGTERM and, 30 s later, SIGKILL; a dyno above its memory quota
logs R14 and swaps, far above it is killed (R15).
"""

from __future__ import annotations

from mlship.targets.heroku.options import DYNO_SIZES, DynoSize, HerokuOptions
from mlship.targets.spec import DeploySpec

ROUTER_TIMEOUT_S = 30.0  # H12: the router's limit for the first byte of a response
SIGKILL_AFTER_S = 30.0  # a stopping dyno: SIGTERM, then SIGKILL 30 s later
BOOT_LIMIT_S = 60.0  # R10: a web dyno must bind $PORT within 60 s of its start
MARKER_CREATED, MARKER_SERVICE = "MLSHIP_CREATED", "MLSHIP_SERVICE"  # config vars: mlship created the app / serves
# Heroku has no readiness probe: a dyno is `up` (and preboot moves the traffic to it) once it listens on $PORT, so on
# Heroku the server loads the model first and listens when it is ready (R10's 60 s then bound the load)
SERVER_ENV = {"MLSHIP_LISTEN_WHEN_READY": "1"}


def _mib(memory_mb: float) -> float:
    """The gate's MB (10^6 bytes) in MiB, the unit of Heroku's quotas ("512 MB" is 512 MiB)."""
    return memory_mb * 1e6 / 2**20


def limit_problems(spec: DeploySpec) -> list[tuple[str, str]]:
    """(problem, fix) for each setting that cannot hold on Heroku; empty when the service fits its limits."""
    found = []
    if spec.request_timeout_s > ROUTER_TIMEOUT_S:
        found.append((
            f"serve.timeout_s is {spec.request_timeout_s:g}s, but Heroku's router answers 503 (H12) to any request "
            f"with no response within {ROUTER_TIMEOUT_S:g}s: a prediction allowed to run longer is cut off by the "
            "router instead of getting the server's own 504",
            f"Set serve.timeout_s to at most {ROUTER_TIMEOUT_S:g} in mlship.yaml (e.g. 25, leaving the router time to "
            "pass the answer on), and make slow predictions faster."))
    if spec.grace_s >= SIGKILL_AFTER_S:
        found.append((
            f"serve.shutdown_grace_s is {spec.grace_s:g}s, but Heroku kills a dyno {SIGKILL_AFTER_S:g}s after SIGTERM: "
            "requests still in flight then would be cut off",
            f"Set serve.shutdown_grace_s below {SIGKILL_AFTER_S:g} in mlship.yaml (the default, 8, fits)."))
    return found


def boot_problem(spec: DeploySpec) -> tuple[str, str] | None:
    """(problem, fix) when the model took longer to be ready in `mlship test` than Heroku lets a dyno take to bind
    $PORT (on Heroku the server listens once the model is ready); None when it fits or was not measured."""
    if spec.ready_s is None or spec.ready_s < BOOT_LIMIT_S:
        return None
    return (f"`mlship test` measured {spec.ready_s:g}s from container start to ready for {spec.service}, but Heroku "
            f"kills a web dyno that does not listen on $PORT within {BOOT_LIMIT_S:g}s (R10), and on Heroku the server "
            "listens once the model is loaded (so that preboot moves traffic only to a dyno that can answer)",
            "Make the model load faster (a smaller artifact; serve.compile: auto serves a converted sklearn model "
            "without importing scikit-learn), or ask Heroku support to raise the app's boot timeout (up to 120 s).")


def smallest_fit(memory_mb: float) -> DynoSize | None:
    """The smallest dyno size (by quota, then price order) whose quota holds ``memory_mb``; None if none does."""
    return next((d for d in DYNO_SIZES.values() if d.name != "eco" and _mib(memory_mb) <= d.quota_mib), None)


def memory_problem(spec: DeploySpec, opts: HerokuOptions) -> tuple[str, str] | None:
    """(problem, fix) when the memory the test gate measured is over the web dynos' quota; None when it fits or
    was not measured."""
    if spec.memory_mb is None:
        return None
    used, quota = _mib(spec.memory_mb), opts.quota_mib
    if used <= quota:
        return None
    where = ("targets.heroku.quota_mb" if opts.quota_mb is not None else f"the quota of a {opts.dyno} dyno")
    problem = (f"`mlship test` measured a peak of {spec.memory_mb:g} MB ({used:.0f} MiB) for {spec.service}, over "
               f"{where} ({quota} MiB): Heroku logs R14 and swaps above the quota, and kills the dyno (R15) far above "
               "it")
    fit = smallest_fit(spec.memory_mb)
    if fit is None:
        return problem, "No Common Runtime dyno size holds it: make the model smaller (`mlship test` prints its peak)."
    if opts.quota_mb is not None and opts.size.quota_mib >= used:
        return problem, f"Raise targets.heroku.quota_mb to at least {used:.0f} (the {opts.dyno} quota is " \
                        f"{opts.size.quota_mib} MiB), or remove it."
    return problem, (f"Set targets.heroku.dyno: {fit.name} in mlship.yaml: the smallest size that holds it "
                     f"({fit.quota_mib} MiB, {fit.price})" + (", and remove quota_mb" if opts.quota_mb else "") + ".")


def memory_note(spec: DeploySpec, opts: HerokuOptions) -> str:
    """One line on the measured memory against the quota, for progress and the plan."""
    if spec.memory_mb is None:
        return (f"memory: not measured (the test gate did not run): the {opts.quota_mib} MiB quota of the web dynos "
                "is not checked")
    used = _mib(spec.memory_mb)
    return (f"memory: `mlship test` measured {spec.memory_mb:g} MB ({used:.0f} MiB, {spec.memory_source}), "
            f"{100 * used / opts.quota_mib:.0f}% of the {opts.quota_mib} MiB quota of a {opts.dyno} dyno")


def plan_lines(opts: HerokuOptions, spec: DeploySpec, *, image: str, registry: str) -> list[str]:
    """Human-readable steps of a deploy (``mlship deploy --target heroku --dry-run``)."""
    size, app = opts.size, opts.app
    create = (f"create app {app} (stack container{', region ' + opts.region if opts.region else ''}"
              f"{', team ' + opts.team if opts.team else ''}) if it does not exist, marked {MARKER_CREATED}=1 in its "
              "config vars (destroy then deletes it)" if opts.create else f"app {app} must exist (create: false)")
    env = ", ".join(sorted(opts.env)) or "none"
    return [
        f"check the API key (GET /account) and app {app}; {create}",
        f"set the app's stack to container if it is not; config vars {MARKER_SERVICE}={spec.service} and env: {env} "
        "(only when they differ: each change is a release)"
        + (f"; the app must have config var(s) {', '.join(spec.secrets)} (checked, never read)" if spec.secrets
           else ""),
        f"limits: serve.timeout_s {spec.request_timeout_s:g}s within the router's {ROUTER_TIMEOUT_S:g}s (H12), drain "
        f"{spec.grace_s:g}s within the {SIGKILL_AFTER_S:g}s before SIGKILL; the server listens on $PORT once the "
        f"model is ready (MLSHIP_LISTEN_WHEN_READY=1: preboot then moves traffic only to dynos that answer), within "
        f"R10's {BOOT_LIMIT_S:g}s (the load time `mlship test` measured is checked before release)",
        memory_note(spec, opts) + "; refused before release if over",
        f"push {image} to {registry}/{app}/web (docker login _ with the API key; a linux/amd64 Docker v2 schema-2 "
        "manifest, checked after the push)",
        f"web formation: {opts.quantity} x {size.name} ({size.quota_mib} MiB, {size.price}); preboot "
        + ("on (new dynos answer before the old stop)" if opts.use_preboot else "off (the old dynos stop first)"),
        "release: PATCH the formation with the pushed image id, follow the release, wait for the web dynos `up` and "
        f"{spec.readiness_path} through the app's URL, then smoke-test {len(spec.examples)} example(s)",
        "on a failed release or crashed dynos: roll back to the release that served before, show the error code "
        "(R10/H12/R14...) and the last log lines, exit non-zero",
    ]
