"""The ``local`` target: run the image as a long-lived container on the local Docker engine.

State lives in the engine, not in a file: the service container is named ``mlship-<service>`` and
carries the labels ``dev.mlship.service``, ``dev.mlship.target=local``, ``dev.mlship.image`` (the
content tag it runs, NAME:VERSION-<digest>, which never names other contents) and ``dev.mlship.previous``
(the image it replaced, for ``rollback``). Every container mlship starts for the service (the test gate's,
the candidate, the service) also carries ``dev.mlship.deploy`` (the deploy's id) and ``dev.mlship.owner``
(PID@HOST of the mlship process that started it).

Options (``targets.local`` in mlship.yaml)::

    targets:
      local:
        port: 8080              # host port (default 8080)
        host: 127.0.0.1         # host address to bind (0.0.0.0 exposes the service to the network)
        env: {LOG_LEVEL: info}  # plain environment variables for the container
        restart: unless-stopped # Docker restart policy: no, always, unless-stopped, on-failure

The container runs like on any platform: ``PORT=8080`` inside, SIGTERM to stop with
``serve.shutdown_grace_s + 2`` seconds before SIGKILL, the user the image sets (mlship images run as
10001, never root). When ``$<serve.api_keys_env>`` (default ``MLSHIP_API_KEYS``) is set in your
shell it is passed to the container, so ``serve.auth: api_key`` works locally.

How a deploy switches versions (``LocalTarget.deploy``):

1. nothing changes when ``mlship-<service>`` already runs the same image (same image id) with the same
   options and answers ``/readyz`` 200;
2. a *candidate* ``mlship-<service>-candidate`` starts from the new image on an ephemeral loopback port;
   mlship waits for ``/readyz`` (``test.ready_timeout_s``) and POSTs the contract's first example to
   ``/predict``. If either fails, the candidate is removed, the current version keeps serving and
   the error includes the candidate's log tail;
3. the current container is stopped gracefully (SIGTERM: it finishes in-flight requests), the
   candidate is removed, and the final container starts on the stable port; mlship waits for it to
   be ready. If it fails, the previous image is started again on the port.

Recovery (a deploy killed at any step, then run again): the old container is not removed before the new
one is ready: it is stopped and renamed ``mlship-<service>-previous``, and removed once the new one serves
(or renamed back and started if it does not). A re-run finds the service in ``mlship-<service>`` or, after
a kill in the switch, in ``mlship-<service>-previous``, so the history survives; it removes gate and
candidate containers left by a deploy whose owner process is gone (``os.kill(pid, 0)`` on the same host;
from another host, one that runs and is younger than ``test.ready_timeout_s + 60`` s counts as a deploy in
progress). ``destroy`` removes all of them. A deploy interrupted by Ctrl-C (SIGINT) cleans up before it exits:
its gate and candidate containers go, and during the switch either the new container already answers
``/readyz`` (it stays) or it goes and the old one serves again (``LocalContainers._settle_interrupted``). The
containers themselves are handled in :mod:`mlship.targets.local_containers`.

There is a short switch-over gap in step 3, from the old container's SIGTERM until the new one has
loaded its model: Docker cannot move a published port from one container to another, so the old
container must release the port before the new one can bind it. The candidate step makes sure the
new image works before the gap begins, so a bad image never causes an outage. For zero-downtime
switch-overs put a reverse proxy in front, or use a cloud target.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, ClassVar

from mlship import client as http
from mlship.contract_io import Project
from mlship.errors import ClientError, TargetError
from mlship.reports import Check
from mlship.targets.base import (
    CONTAINER_PORT,
    LABEL_DEPLOY,
    LABEL_OWNER,
    LABEL_ROLE,
    LABEL_SERVICE,
    Deployment,
    Progress,
    Target,
    TargetStatus,
    parse_options,
)
from mlship.targets.local_containers import (
    LABEL_CONFIG,
    LABEL_IMAGE,
    LABEL_PREVIOUS,
    LABEL_TARGET,
    LocalContainers,
)
from mlship.targets.local_jobs import LocalBatch  # batch jobs: N task containers (mlship batch --target local)
from mlship.targets.local_options import LocalOptions, host_port, logs_tail, short, url_of

__all__ = ["CONTAINER_PORT", "LABEL_CONFIG", "LABEL_IMAGE", "LABEL_PREVIOUS", "LABEL_ROLE", "LABEL_SERVICE",
           "LABEL_TARGET", "LocalOptions", "LocalTarget"]

VERSION_LABEL = "org.opencontainers.image.version"


class LocalTarget(LocalContainers, LocalBatch, Target):
    """The service as a container on the local Docker engine (see the module docstring)."""

    name: ClassVar[str] = "local"

    def __init__(self, project: Project, options: dict[str, Any]) -> None:
        super().__init__(project, options)
        self.opts = parse_options(LocalOptions, self.name, options)
        self.service = project.contract.name
        self.container_name = f"mlship-{self.service}"
        self.candidate_name = f"mlship-{self.service}-candidate"
        self.retired_name = f"mlship-{self.service}-previous"  # the old container during a switch
        self.stop_timeout = math.ceil(project.contract.serve.shutdown_grace_s + 2)
        self.ready_timeout = project.contract.test.ready_timeout_s
        self._client: Any = None

    # --- connection -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- preflight (read-only) ---------------------------------------------------------------------
    def preflight(self) -> list[Check]:
        """The port is free (or held by this service's own container), no other deploy is running, and
        API keys are at hand when serve.auth is api_key."""
        checks = []
        try:
            current = self._service_container()
            checks.append(self._port_check(current))
            busy = self._busy()
            if busy:
                checks.append(Check(name="no other deploy", ok=False,
                                    detail=f"{busy[0].name} is running: another deploy is in progress",
                                    fix=f"Wait for it, or remove it: `docker rm -f {busy[0].name}`."))
        except TargetError as exc:
            checks.append(Check(name="containers", ok=False, detail=exc.message, fix=exc.fix))
        if self.project.contract.serve.auth == "api_key":
            try:
                self._environment()
                checks.append(Check(name="api keys", ok=True,
                                    detail=f"${self.project.contract.serve.api_keys_env} is set"))
            except TargetError as exc:
                checks.append(Check(name="api keys", ok=False, detail=exc.message, fix=exc.fix))
        return checks

    def _port_check(self, current: Any) -> Check:
        where = f"{self.opts.host}:{self.opts.port}"
        if current is not None:
            return Check(name="port", ok=True,
                         detail=f"{where} is held by {self.container_name}, the deployment this one replaces")
        try:
            self._check_port_free()
        except TargetError as exc:
            return Check(name="port", ok=False, detail=exc.message, fix=exc.fix)
        return Check(name="port", ok=True, detail=f"{where} is free")

    def runtime_env(self) -> dict[str, str]:
        """PORT, targets.local.env and the API keys of your shell: what the service container gets."""
        return self._environment()[0]

    # --- plan (pure) ------------------------------------------------------------------------------
    def plan(self, image: str) -> list[str]:
        env = ["PORT=8080", *sorted(self.opts.environment())]
        keys_env = self.project.contract.serve.api_keys_env
        example = ("POST examples[0] to /predict, expect 200" if self.project.contract.examples
                   else "no examples in mlship.yaml: the smoke test only checks /readyz")
        return [
            f"check that {image} is in the local Docker engine",
            f"if {self.container_name} already runs {image} with these options and is ready: change nothing",
            f"start candidate {self.candidate_name} from {image} on 127.0.0.1:<ephemeral> "
            f"(env {', '.join(e.split('=')[0] for e in env)}"
            f"{f', ${keys_env} from your shell if set' if keys_env not in self.opts.env else ''}; "
            "user from the image; SIGTERM to stop)",
            f"wait up to {self.ready_timeout:g}s for /readyz 200; on failure remove the candidate, keep the "
            "current version serving and show its log tail",
            f"smoke test the candidate: {example}",
            f"remove the candidate; stop {self.container_name} (SIGTERM, {self.stop_timeout}s grace) and keep it "
            f"as {self.retired_name} until the new one is ready (brief gap: Docker cannot move a port between "
            "containers)",
            f"start {self.container_name} from {image} on {self.opts.host}:{self.opts.port} "
            f"(restart: {self.opts.restart}; labels {LABEL_SERVICE}={self.service}, {LABEL_TARGET}=local, "
            f"{LABEL_IMAGE}, {LABEL_PREVIOUS}, {LABEL_DEPLOY}, {LABEL_OWNER})",
            f"wait for /readyz; then remove {self.retired_name}, or if it fails, start it again on port "
            f"{self.opts.port}",
            f"serve at {self.url}",
        ]

    # --- deploy / rollback ------------------------------------------------------------------------
    def deploy(self, image: str, progress: Progress) -> Deployment:
        """Switch the service to ``image`` (see the module docstring for the steps and the gap)."""
        return self._deploy(image, progress, smoke=True)

    def rollback(self, progress: Progress) -> Deployment:
        """Redeploy the image the current one replaced; afterwards its previous image is the one rolled
        back from, so a second rollback undoes the first."""
        with self._engine_errors("rollback"):
            current = self._current()
            if current is None:
                raise TargetError(f"Nothing is deployed for `{self.service}` on the local target.",
                                  fix="Deploy first: `mlship deploy --target local`.")
            labels = current.labels
            previous = labels.get(LABEL_PREVIOUS, "")
            if not previous:
                raise TargetError(
                    f"No previous version of `{self.service}` to roll back to.",
                    why=f"{self.container_name} runs {labels.get(LABEL_IMAGE)}, the first version deployed "
                    f"(its {LABEL_PREVIOUS} label is empty).",
                    fix="Deploy the version you want explicitly: `mlship deploy --target local`.",
                )
            if self._image(previous) is None:
                raise TargetError(
                    f"Cannot roll back to {previous}: the image is no longer in the local Docker engine.",
                    why="Nothing changed: the current version keeps serving.",
                    fix="Check out that version and deploy it: `mlship deploy --target local`. (`mlship build` of "
                    "the same files with the same mlship makes the same tag again; then `mlship rollback --target "
                    "local` works too.)",
                )
        progress(f"rolling back {labels.get(LABEL_IMAGE)} -> {previous}")
        # /readyz includes the image's own warm-up prediction; the current contract's example may not
        # fit an older image's input schema, so the HTTP smoke test is skipped.
        return self._deploy(previous, progress, smoke=False)

    def _deploy(self, image: str, progress: Progress, *, smoke: bool) -> Deployment:
        with self._engine_errors("deploy"):
            info = self._image(image)
            if info is None:
                raise TargetError(f"No image {image} in the local Docker engine.",
                                  fix="Build it first: `mlship build` (or `mlship deploy`, which builds).")
            env, api_key = self._environment()
            config = self._config_hash(env)
            version = (info.labels or {}).get(VERSION_LABEL) or image.rpartition(":")[2]
            self._clear_stale(progress)
            current = self._current()
            if current is not None:
                labels = current.labels
                if (current.name == self.container_name and labels.get(LABEL_IMAGE) == image
                        and current.attrs.get("Image") == info.id
                        and labels.get(LABEL_CONFIG) == config and current.status == "running"
                        and self._ready(self.url)):
                    progress(f"{self.container_name} already runs {image} and is ready; nothing changed")
                    return Deployment(url=self.url, image=image, version=version,
                                      previous=labels.get(LABEL_PREVIOUS) or None, changed=False, digest=info.id)
            else:
                self._check_port_free()
            switching_from = None
            try:
                self._try_candidate(image, env, config, api_key, smoke, current, progress)
                switching_from = current
                previous = self._switch(image, env, config, current, progress)
            except KeyboardInterrupt:  # Ctrl-C: leave one container serving, then stop
                self._settle_interrupted(switching_from, progress)
                raise
        progress(f"{self.container_name} ready at {self.url}")
        return Deployment(url=self.url, image=image, version=version, previous=previous or None, digest=info.id)

    def _try_candidate(self, image: str, env: dict[str, str], config: str, api_key: str | None, smoke: bool,
                       current: Any, progress: Progress) -> None:
        """Step 1: the candidate on an ephemeral loopback port must become ready (and, with ``smoke``, answer
        examples[0]); TargetError otherwise. It is removed either way."""
        unchanged = "Nothing changed" + (f"; {self.container_name} still serves {current.labels.get(LABEL_IMAGE)}."
                                         if current is not None else ".")
        progress(f"starting candidate {self.candidate_name} from {image}")
        candidate = self._run(image, self.candidate_name, "127.0.0.1", None, "no", env,
                              role="candidate", previous="", config=config)
        try:
            cand_url = url_of("127.0.0.1", host_port(candidate))
            problem = self._wait_ready(cand_url, candidate)
            if problem:
                raise TargetError(
                    f"{image} did not become ready: {problem}. {unchanged}",
                    why="Candidate log tail:\n" + logs_tail(candidate),
                    fix=f"Fix the model or its dependencies, rebuild and deploy again; `mlship test` "
                    f"reproduces this (raise test.ready_timeout_s={self.ready_timeout:g} if it is only slow).",
                )
            progress(f"candidate ready at {cand_url}")
            if smoke and self.project.contract.examples:
                try:
                    http.post_json(f"{cand_url}/predict", self.project.contract.examples[0].input, api_key,
                                   timeout=30)
                except ClientError as exc:
                    raise TargetError(
                        f"Smoke test of {image} failed: POST examples[0] to /predict: {exc.message}. {unchanged}",
                        why="Candidate log tail:\n" + logs_tail(candidate),
                        fix="Run `mlship test` on the image to see every example's result.",
                    ) from None
                progress("smoke test passed (examples[0] -> 200)")
        finally:
            candidate.remove(force=True)

    def _switch(self, image: str, env: dict[str, str], config: str, current: Any, progress: Progress) -> str:
        """Step 2: stop the old container and keep it as -previous (the history stays findable), start the final
        one on the stable port, then remove the old one (or bring it back if the new one fails). Returns the
        image the new container replaced ("" for a first deploy)."""
        old_image = old_previous = None
        if current is not None:
            old_image = current.labels.get(LABEL_IMAGE) or None
            old_previous = current.labels.get(LABEL_PREVIOUS, "")
            if current.name == self.container_name:
                progress(f"stopping {self.container_name} ({old_image}; SIGTERM, up to {self.stop_timeout}s)")
                current.stop(timeout=self.stop_timeout)
                current.rename(self.retired_name)
        previous = (old_previous if old_image == image else old_image) or ""
        progress(f"starting {self.container_name} from {image} on {self.opts.host}:{self.opts.port}")
        problem, final_logs = self._start_final(image, env, previous, config)
        if problem:
            restored = ""
            if current is not None:
                restore_problem = self._restore(current)
                restored = (f" Restarted the previous image {old_image} on port {self.opts.port}."
                            if not restore_problem else
                            f" Restarting the previous image {old_image} failed too: {restore_problem}.")
            raise TargetError(
                f"{self.container_name} from {image} failed to start on {self.opts.host}:{self.opts.port}: "
                f"{problem}.{restored}",
                why="Container log tail:\n" + final_logs if final_logs else None,
                fix=f"Check that port {self.opts.port} is free (`targets.local.port` in mlship.yaml) and "
                "deploy again.",
            )
        if current is not None:
            progress(f"removing {self.retired_name} ({old_image})")
            current.remove(force=True)
        return previous

    def _start_final(self, image: str, env: dict[str, str], previous: str, config: str) -> tuple[str, str]:
        """Start the service container on the stable port; ("", "") when ready, else (problem, log tail)."""
        from docker.errors import APIError

        try:
            container = self._run(image, self.container_name, self.opts.host, self.opts.port,
                                  self.opts.restart, env, role="service", previous=previous, config=config)
        except APIError as exc:
            self._remove_mine(self.container_name)
            return short(exc), ""
        problem = self._wait_ready(self.url, container)
        if not problem:
            return "", ""
        logs = logs_tail(container)
        container.remove(force=True)
        return problem, logs

    # --- status / logs / destroy ------------------------------------------------------------------
    def status(self) -> TargetStatus:
        with self._engine_errors("status"):
            container = self._current()
            if container is None:
                return TargetStatus(url=None, image=None, version=None, state="not deployed", history=[])
            labels = container.labels
            image = labels.get(LABEL_IMAGE) or ""
            info = self._image(image) if image else None
            version = ((info.labels or {}).get(VERSION_LABEL) if info is not None else None) \
                or image.rpartition(":")[2]
            history = [image] + ([labels[LABEL_PREVIOUS]] if labels.get(LABEL_PREVIOUS) else [])
            running = container.status == "running" and container.name == self.container_name
            return TargetStatus(url=self.url if running else None, image=image, version=version,
                                state=container.status, history=history,
                                ready=self._ready(self.url) if running else False)

    def logs(self, tail: int = 100) -> str:
        with self._engine_errors("logs"):
            container = self._service_container()
            if container is None:
                raise TargetError(f"Nothing is deployed for `{self.service}` on the local target.",
                                  fix="Deploy first: `mlship deploy --target local`.")
            return str(container.logs(tail=tail).decode(errors="replace"))

    def destroy(self) -> list[str]:
        """Stop (gracefully) and remove every container of the service, leftover candidates included."""
        removed = []
        with self._engine_errors("destroy"):
            for container in self._containers():
                image = container.labels.get(LABEL_IMAGE) or container.attrs.get("Config", {}).get("Image", "")
                if container.status in ("running", "restarting") and container.labels.get(LABEL_ROLE) == "service":
                    container.stop(timeout=self.stop_timeout)
                container.remove(force=True)
                removed.append(f"container {container.name} ({image})")
        return removed + self._remove_start_cache()

    # --- environment ---------------------------------------------------------------------------------
    def _environment(self) -> tuple[dict[str, str], str | None]:
        """The container's environment, and an API key for the smoke test when auth is on."""
        serve = self.project.contract.serve
        env = {"PORT": str(CONTAINER_PORT), **self.opts.environment()}
        if serve.api_keys_env not in env and os.environ.get(serve.api_keys_env):
            env[serve.api_keys_env] = os.environ[serve.api_keys_env]
        keys = [k.strip() for k in env.get(serve.api_keys_env, "").split(",") if k.strip()]
        if serve.auth == "api_key" and not keys:
            raise TargetError(
                f"serve.auth is api_key but ${serve.api_keys_env} holds no keys.",
                why="The server refuses to start without keys rather than leave the model open.",
                fix=f"export {serve.api_keys_env}=key1,key2 before `mlship deploy`; it is passed to the "
                "container.",
            )
        return env, (keys[0] if keys else None)

    def _config_hash(self, env: dict[str, str]) -> str:
        """Fingerprint of everything besides the image that shapes the container (redeploy if changed)."""
        config = {"env": env, "host": self.opts.host, "port": self.opts.port, "restart": self.opts.restart,
                  "stop_timeout": self.stop_timeout}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
