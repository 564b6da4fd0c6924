"""The ``heroku`` target: push to the Heroku container registry, release through the Platform API, serve on web
dynos at the app's URL.

State lives on Heroku, not in a file: the app's releases are the deploy history, its config vars say whether mlship
created it (``MLSHIP_CREATED=1``: destroy deletes it) and which service it serves.

Modules of this package: ``options`` (``targets.heroku``, the dyno sizes), ``spec`` (limits, the memory fit, the
plan; pure), ``api`` (the key, the Platform API client, retries, errors), ``preflight``, ``apps`` (the app, its stack,
config vars, preboot), ``registry`` (push, the manifest check), ``release`` (releases, dynos, log sessions, why a
release failed), ``lifecycle`` (status, logs, rollback, destroy) and ``target``: the deploy policy.

How a deploy switches versions (``HerokuTarget.deploy``): refuse before anything changes when the memory `mlship test`
measured is over the web dynos' quota (naming the smallest size that holds it); make the app what the options say
(create it if asked, container stack, config vars, preboot); if the serving release already runs this image on this
formation, change nothing. Otherwise push (checked: a linux/amd64 Docker v2 schema-2 manifest), release the image id
with the web formation, follow the release, wait for its web dynos `up` and /readyz through the app's URL (from the
new version), and smoke-test the examples there. If any of that fails, roll back to the release that served before
(with preboot its dynos never stopped serving), or, on a first deploy, scale web to 0 (nothing keeps crashing); the
error names the code Heroku logged (R10, R14, H12, ...) with the last log lines, and the command exits non-zero.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from mlship.contract_io import Project
from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.base import CONTAINER_PORT, Deployment, Progress, Target, TargetStatus, parse_options
from mlship.targets.common import smoke_test
from mlship.targets.heroku import apps, labels, lifecycle, registry, release
from mlship.targets.heroku.api import HerokuApi, find_key, no_key, registry_host
from mlship.targets.heroku.options import HerokuOptions
from mlship.targets.heroku.spec import (
    BOOT_LIMIT_S,
    SERVER_ENV,
    boot_problem,
    memory_note,
    memory_problem,
    plan_lines,
)


class HerokuTarget(Target):
    """The service on Heroku (see the module docstring)."""

    name: ClassVar[str] = "heroku"
    poll_s: ClassVar[float] = 1.0  # release, dyno and /readyz polling
    release_timeout_s: ClassVar[float] = 600.0  # a release that stays pending (the image is fetched)

    def __init__(self, project: Project, options: dict[str, Any]) -> None:
        super().__init__(project, options)
        self.opts = parse_options(HerokuOptions, self.name, options)
        self.service = project.contract.name
        self._api: HerokuApi | None = None

    @property
    def api(self) -> HerokuApi:
        if self._api is None:
            key = find_key()
            if key is None:
                raise no_key()
            self._api = HerokuApi(key[0])
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    @property
    def boot_timeout_s(self) -> float:
        """How long the web dynos may take to be up and ready: Heroku's boot limit, or the model's load time."""
        return max(BOOT_LIMIT_S, self.spec.ready_timeout_s) + 30.0

    # --- preflight, plan, environment --------------------------------------------------------------
    def preflight(self) -> list[Check]:
        from mlship.targets.heroku import preflight

        return preflight.checks(self.opts, self.spec)

    def plan(self, image: str) -> list[str]:
        from mlship.targets.heroku.preflight import access_plan

        return plan_lines(self.opts, self.spec, image=image, registry=registry_host()) + access_plan(
            self.spec.fetch_at_start)

    def runtime_env(self) -> dict[str, str]:
        """For the test gate: PORT, DYNO, MLSHIP_LISTEN_WHEN_READY=1 and targets.heroku.env. Config vars you set
        yourself (API keys) are not read here; the gate takes ``$<serve.api_keys_env>`` from your shell."""
        env = {"PORT": str(CONTAINER_PORT), "DYNO": "web.1", **SERVER_ENV, **self.opts.environment()}
        keys = self.project.contract.serve.api_keys_env
        if self.spec.secrets and os.environ.get(keys):
            env[keys] = os.environ[keys]
        return env

    # --- deploy ------------------------------------------------------------------------------------
    def deploy(self, image: str, progress: Progress) -> Deployment:
        problem = memory_problem(self.spec, self.opts) or boot_problem(self.spec)
        if problem is not None:  # before anything changes on Heroku
            raise TargetError(problem[0] + ". Nothing was pushed or released.", fix=problem[1])
        progress(memory_note(self.spec, self.opts))
        api, app, host = self.api, self.opts.app, registry_host()
        found, _created = apps.ensure(api, self.opts, self.service, progress)
        preboot_set = apps.configure(api, self.opts, found, self.service, self.spec.secrets, progress)
        url = str(found.get("web_url") or "")
        history = release.releases(api, app, 50)
        serving = release.current(history)
        image_id = registry.local_image(image)
        if self._unchanged(serving, history, image_id, url):
            progress(f"{app} already serves image {image_id[7:19]} on v{serving['version'] if serving else '?'} with "
                     f"{self.opts.quantity} x {self.opts.dyno}; nothing to release")
            return Deployment(url=url, image=f"{host}/{app}/web (image {image_id[7:19]})", version=self.spec.version,
                              changed=False)
        pushed = registry.push(image, app, api.key, host, progress)
        labels.remember(host, app, api.key, image.rpartition(":")[2], pushed.image_id)  # status reads the model
        after = max((int(r.get("version", 0)) for r in history), default=0)
        made = release.create(api, app, pushed.image_id, after, quantity=self.opts.quantity, size=self.opts.dyno)
        progress(f"release v{made['version']} of image {pushed.image_id[7:19]} on {self.opts.quantity} x "
                 f"{self.opts.dyno}")
        before = release.image_of(serving, history)
        reason = self._watch(made, url, progress)
        if reason is not None:
            raise self._recover(made, serving if before else None, reason, progress)
        if not preboot_set:  # the first release made the web formation
            apps.size_and_preboot(api, self.opts, progress)
        progress(f"{app} serves v{made['version']} ({self.spec.version}) at {url}")
        return Deployment(url=url, image=pushed.ref, version=self.spec.version,
                          previous=f"{host}/{app}/web (image {before})" if before else None,
                          digest=pushed.ref.partition("@")[2] or None)

    def _unchanged(self, serving: dict[str, Any] | None, history: list[dict[str, Any]], image_id: str,
                   url: str) -> bool:
        if serving is None or release.image_of(serving, history) != image_id[7:19]:
            return False
        web = apps.formation(self.api, self.opts.app) or {}
        if (int(web.get("quantity", -1)), str(web.get("size", "")).lower()) != (self.opts.quantity, self.opts.dyno):
            return False
        mine = [d for d in release.dynos(self.api, self.opts.app)
                if int((d.get("release") or {}).get("version", -1)) == int(serving["version"])]
        return (sum(d.get("state") == "up" for d in mine) >= self.opts.quantity
                and lifecycle.served_version(url, self.spec.readiness_path) == self.spec.version)

    def _watch(self, made: dict[str, Any], url: str, progress: Progress) -> str | None:
        """Follow the release to serving, then smoke-test it; the reason when it did not get there."""
        api, app, version = self.api, self.opts.app, int(made["version"])
        done = release.follow(api, app, made, timeout_s=self.release_timeout_s, poll_s=self.poll_s)
        if done.get("status") != "succeeded":
            return f"release v{version} {done.get('status')}"
        reason = release.wait_dynos(api, app, version, self.opts.quantity, timeout_s=self.boot_timeout_s,
                                    poll_s=self.poll_s)
        if reason is None:
            progress(f"{self.opts.quantity} web dyno(s) of v{version} up")
            reason = release.wait_ready(url, self.spec.readiness_path, self.spec.version,
                                        timeout_s=self.boot_timeout_s, poll_s=self.poll_s)
        if reason is not None:
            return reason
        key = self._smoke_key()
        if self.spec.secrets and key is None:
            progress(f"smoke test skipped: set ${self.spec.secrets[0]} in your shell to one of the app's keys")
            return None
        headers = {"Authorization": f"Bearer {key}"} if key else None
        problems = smoke_test(url.rstrip("/"), list(self.spec.examples), version=self.spec.version, headers=headers)
        if problems:
            return "the smoke test failed:\n  " + "\n  ".join(problems)
        progress(f"smoke test passed: {len(self.spec.examples)} example(s) via {url}")
        return None

    def _smoke_key(self) -> str | None:
        if not self.spec.secrets:
            return None
        keys = [k.strip() for k in os.environ.get(self.spec.secrets[0], "").split(",") if k.strip()]
        return keys[0] if keys else None

    def _recover(self, made: dict[str, Any], serving: dict[str, Any] | None, reason: str,
                 progress: Progress) -> TargetError:
        """After a failed release: back to what served before (or web scaled to 0); the error to raise."""
        api, app = self.api, self.opts.app
        failure = release.diagnose(api, app, reason)
        if serving is not None:  # a release that ran an image
            back = release.roll_back_to(api, app, serving)
            progress(f"rolled back: v{back['version']} runs what v{serving['version']} ran")
            done = release.follow(api, app, back, timeout_s=self.release_timeout_s, poll_s=self.poll_s)
            after = release.wait_dynos(api, app, int(back["version"]), self.opts.quantity,
                                       timeout_s=self.boot_timeout_s, poll_s=self.poll_s)
            where = (f"Rolled back to what v{serving['version']} ran (release v{back['version']}, "
                     + ("serving" if done.get("status") == "succeeded" and after is None else f"but: {after}") + ").")
        else:
            release.scale_web(api, app, 0)
            where = "There was no earlier release to return to: web scaled to 0 dynos (nothing keeps crashing)."
        code = f" ({failure.code})" if failure.code else ""
        return TargetError(f"Release v{made['version']} of {app} failed: {reason}{code}. {where}",
                           why="Last log lines:\n" + "\n".join(failure.lines), fix=release.failure_fix(failure))

    # --- status / logs / rollback / destroy ----------------------------------------------------------
    def status(self) -> TargetStatus:
        return lifecycle.status(self.api, self.opts, self.spec, registry_host())

    def logs(self, tail: int = 100) -> str:
        return lifecycle.logs(self.api, self.opts.app, tail)

    def rollback(self, progress: Progress) -> Deployment:
        return lifecycle.rollback(self.api, self.opts, self.spec, registry_host(), timeout_s=self.boot_timeout_s,
                                  poll_s=self.poll_s, progress=progress)

    def destroy(self) -> list[str]:
        return lifecycle.destroy(self.api, self.opts.app)
