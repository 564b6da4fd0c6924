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
progress). ``destroy`` removes all of them.

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
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from mlship import client as http
from mlship.contract_io import Project
from mlship.errors import ClientError, TargetError
from mlship.image import engine
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
    owner_alive,
    owner_label,
    parse_options,
)
from mlship.targets.local_options import (
    LocalOptions,
    connect_host,
    created,
    host_port,
    logs_tail,
    short,
    url_of,
)

__all__ = ["CONTAINER_PORT", "LABEL_CONFIG", "LABEL_IMAGE", "LABEL_PREVIOUS", "LABEL_ROLE", "LABEL_SERVICE",
           "LABEL_TARGET", "LocalOptions", "LocalTarget"]

LABEL_TARGET = "dev.mlship.target"
LABEL_IMAGE = "dev.mlship.image"
LABEL_PREVIOUS = "dev.mlship.previous"
LABEL_CONFIG = "dev.mlship.config"
VERSION_LABEL = "org.opencontainers.image.version"


class LocalTarget(Target):
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
    @property
    def docker(self) -> Any:
        if self._client is None:
            self._client = engine.client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def url(self) -> str:
        return url_of(connect_host(self.opts.host), self.opts.port)

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
                    fix="Rebuild it (check out that version and run `mlship build`), then "
                    "`mlship rollback --target local` again.",
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

            # 1. candidate on an ephemeral loopback port
            progress(f"starting candidate {self.candidate_name} from {image}")
            candidate = self._run(image, self.candidate_name, "127.0.0.1", None, "no", env,
                                  role="candidate", previous="", config=config)
            try:
                cand_url = url_of("127.0.0.1", host_port(candidate))
                problem = self._wait_ready(cand_url, candidate)
                if problem:
                    raise TargetError(
                        f"{image} did not become ready: {problem}. Nothing changed"
                        + (f"; {self.container_name} still serves "
                           f"{current.labels.get(LABEL_IMAGE)}." if current is not None else "."),
                        why="Candidate log tail:\n" + logs_tail(candidate),
                        fix=f"Fix the model or its dependencies, rebuild and deploy again; `mlship test` "
                        f"reproduces this (raise test.ready_timeout_s={self.ready_timeout:g} if it is "
                        "only slow).",
                    )
                progress(f"candidate ready at {cand_url}")
                if smoke and self.project.contract.examples:
                    try:
                        http.post_json(f"{cand_url}/predict", self.project.contract.examples[0].input,
                                       api_key, timeout=30)
                    except ClientError as exc:
                        raise TargetError(
                            f"Smoke test of {image} failed: POST examples[0] to /predict: {exc.message}. "
                            "Nothing changed"
                            + (f"; {self.container_name} still serves "
                               f"{current.labels.get(LABEL_IMAGE)}." if current is not None else "."),
                            why="Candidate log tail:\n" + logs_tail(candidate),
                            fix="Run `mlship test` on the image to see every example's result.",
                        ) from None
                    progress("smoke test passed (examples[0] -> 200)")
            finally:
                candidate.remove(force=True)

            # 2. switch over: stop the old container and keep it as -previous (the history stays findable), start
            #    the final one on the stable port, then remove the old one (or bring it back if the new one fails)
            old_image = old_previous = None
            if current is not None:
                old_image = current.labels.get(LABEL_IMAGE) or None
                old_previous = current.labels.get(LABEL_PREVIOUS, "")
                if current.name == self.container_name:
                    progress(f"stopping {self.container_name} ({old_image}; SIGTERM, up to {self.stop_timeout}s)")
                    current.stop(timeout=self.stop_timeout)
                    current.rename(self.retired_name)
            previous = old_previous if old_image == image else old_image
            progress(f"starting {self.container_name} from {image} on {self.opts.host}:{self.opts.port}")
            problem, final_logs = self._start_final(image, env, previous or "", config)
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
        progress(f"{self.container_name} ready at {self.url}")
        return Deployment(url=self.url, image=image, version=version, previous=previous or None, digest=info.id)

    def _restore(self, old: Any) -> str:
        """Bring the stopped old container back as the service (same config); "" when it is ready again."""
        from docker.errors import APIError

        try:
            old.rename(self.container_name)
            old.start()
        except APIError as exc:
            return short(exc)
        return self._wait_ready(self.url, old)

    def _start_final(self, image: str, env: dict[str, str], previous: str, config: str) -> tuple[str, str]:
        """Start the service container on the stable port; ("", "") when ready, else (problem, log tail)."""
        from docker.errors import APIError

        try:
            container = self._run(image, self.container_name, self.opts.host, self.opts.port,
                                  self.opts.restart, env, role="service", previous=previous, config=config)
        except APIError as exc:
            self._remove_named(self.container_name)
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
        return removed

    # --- helpers ----------------------------------------------------------------------------------
    @contextmanager
    def _engine_errors(self, action: str) -> Iterator[None]:
        from docker.errors import APIError

        try:
            yield
        except APIError as exc:
            raise TargetError(
                f"The Docker engine refused a request during `{action}` of `{self.service}`: {short(exc)}",
                why="A failed deploy removes its candidate; the previous container is left as it was.",
                fix=f"Check `docker ps -a --filter label={LABEL_SERVICE}={self.service}`, then try again.",
            ) from None

    def _containers(self) -> list[Any]:
        """Every container of this service on this target, and the test gate's (candidates and gates first)."""
        found = self.docker.containers.list(all=True, filters={"label": [f"{LABEL_SERVICE}={self.service}"]})
        mine = [c for c in found if c.labels.get(LABEL_TARGET) == "local" or c.labels.get(LABEL_ROLE) == "test"]
        return sorted(mine, key=lambda c: c.labels.get(LABEL_ROLE) == "service")

    def _get(self, name: str) -> Any:
        from docker.errors import NotFound

        try:
            return self.docker.containers.get(name)
        except NotFound:
            return None

    def _service_container(self) -> Any:
        return self._own(self.container_name)

    def _current(self) -> Any:
        """The container that holds the service's state: ``mlship-<service>``, or, after a deploy killed in
        the switch, the stopped ``mlship-<service>-previous``."""
        return self._service_container() or self._own(self.retired_name)

    def _own(self, name: str) -> Any:
        """The container ``name`` if it exists; TargetError if it exists but mlship did not create it."""
        container = self._get(name)
        if container is None:
            return None
        labels = container.labels
        if labels.get(LABEL_SERVICE) != self.service or labels.get(LABEL_TARGET) != "local":
            raise TargetError(
                f"A container named {name} exists, but mlship did not create it.",
                why=f"It has no {LABEL_SERVICE}={self.service} / {LABEL_TARGET}=local labels, so it is not "
                "touched.",
                fix=f"Remove or rename it (`docker rm -f {name}`), or rename the service (`name` in "
                "mlship.yaml).",
            )
        return container

    def _remove_named(self, name: str) -> None:
        container = self._get(name)
        if container is not None and container.labels.get(LABEL_SERVICE) == self.service:
            container.remove(force=True)

    def _busy(self) -> list[Any]:
        """Gate and candidate containers of another deploy of this service that is still running: its owner
        process lives (same host), or, where that cannot be told, it runs and is young."""
        busy = []
        for container in self._containers():
            labels = container.labels
            if labels.get(LABEL_ROLE) not in ("candidate", "test") or labels.get(LABEL_DEPLOY) == self.deploy_id:
                continue
            alive = owner_alive(labels.get(LABEL_OWNER, ""))
            if alive is None:
                alive = container.status == "running" and time.time() - created(container) < self.ready_timeout + 60
            if alive:
                busy.append(container)
        return busy

    def _clear_stale(self, progress: Progress) -> None:
        """Remove what an interrupted deploy left (gate and candidate containers whose owner is gone, and an
        old -previous container next to a service container); refuse while another deploy runs."""
        busy = self._busy()
        if busy:
            raise TargetError(
                f"Another deploy of `{self.service}` seems to be in progress ({busy[0].name}, started by "
                f"{busy[0].labels.get(LABEL_OWNER) or 'an unknown process'}).",
                fix=f"Wait for it to finish, or remove it: `docker rm -f {busy[0].name}`.",
            )
        for container in self._containers():
            if container.labels.get(LABEL_ROLE) in ("candidate", "test") \
                    and container.labels.get(LABEL_DEPLOY) != self.deploy_id:
                progress(f"removing {container.name} left by an interrupted deploy")
                container.remove(force=True)
        if self._service_container() is not None:
            retired = self._own(self.retired_name)
            if retired is not None:
                progress(f"removing {self.retired_name} left by an interrupted switch")
                retired.remove(force=True)

    def _image(self, ref: str) -> Any:
        from docker.errors import ImageNotFound

        try:
            return self.docker.images.get(ref)
        except ImageNotFound:
            return None

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

    def _check_port_free(self) -> None:
        """Fail before starting anything when the host port is taken (only for a local engine)."""
        docker_host = os.environ.get("DOCKER_HOST", "")
        if docker_host and not docker_host.startswith("unix://"):
            return
        family = socket.AF_INET6 if ":" in self.opts.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict; a listener is
            try:
                sock.bind((self.opts.host, self.opts.port))
            except OSError as exc:
                raise TargetError(
                    f"Port {self.opts.port} on {self.opts.host} is already in use: {exc.strerror}.",
                    why="The local target publishes the service on targets.local.port.",
                    fix="Stop whatever uses it, or set another port: `targets: {local: {port: 8081}}` "
                    "in mlship.yaml.",
                ) from None

    def _run(self, image: str, name: str, host: str, port: int | None, restart: str, env: dict[str, str], *,
             role: str, previous: str, config: str) -> Any:
        api = self.docker.api
        labels = {LABEL_SERVICE: self.service, LABEL_TARGET: "local", LABEL_IMAGE: image,
                  LABEL_PREVIOUS: previous, LABEL_ROLE: role, LABEL_CONFIG: config,
                  LABEL_DEPLOY: self.deploy_id, LABEL_OWNER: owner_label()}
        host_config = api.create_host_config(
            port_bindings={CONTAINER_PORT: (host, port)},
            restart_policy={"Name": restart, **({"MaximumRetryCount": 5} if restart == "on-failure" else {})},
        )
        created = api.create_container(image, name=name, environment=env, labels=labels,
                                       ports=[CONTAINER_PORT], stop_signal="SIGTERM",
                                       stop_timeout=self.stop_timeout, host_config=host_config, detach=True)
        try:
            api.start(created["Id"])
        except BaseException:
            api.remove_container(created["Id"], force=True)
            raise
        return self.docker.containers.get(created["Id"])

    def _ready(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:  # noqa: S310 - http to the engine
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self, url: str, container: Any) -> str:
        """"" once /readyz is 200; else why not (container exited, restarted, or timed out)."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._ready(url):
                return ""
            container.reload()
            state = container.attrs.get("State", {})
            if container.status in ("exited", "dead") or container.attrs.get("RestartCount", 0) > 0:
                return f"the container exited with code {state.get('ExitCode')}"
            if time.monotonic() > deadline:
                return f"/readyz was not 200 within test.ready_timeout_s={self.ready_timeout:g}s"
            time.sleep(0.1)
