"""The ``local`` target: run the image as a long-lived container on the local Docker engine.

State lives in the engine, not in a file: the service container is named ``mlship-<service>`` and
carries the labels ``dev.mlship.service``, ``dev.mlship.target=local``, ``dev.mlship.image`` (the
image reference it runs) and ``dev.mlship.previous`` (the image it replaced, for ``rollback``).

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

There is a short switch-over gap in step 3, from the old container's SIGTERM until the new one has
loaded its model: Docker cannot move a published port from one container to another, so the old
container must release the port before the new one can bind it. The candidate step makes sure the
new image works before the gap begins, so a bad image never causes an outage. For zero-downtime
switch-overs put a reverse proxy in front, or use a cloud target.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlship import client as http
from mlship.contract_io import Project
from mlship.errors import ClientError, TargetError
from mlship.image import engine
from mlship.reports import Check
from mlship.targets.base import Deployment, Progress, Target, TargetStatus, parse_options

CONTAINER_PORT = 8080
LABEL_SERVICE = "dev.mlship.service"
LABEL_TARGET = "dev.mlship.target"
LABEL_IMAGE = "dev.mlship.image"
LABEL_PREVIOUS = "dev.mlship.previous"
LABEL_ROLE = "dev.mlship.role"
LABEL_CONFIG = "dev.mlship.config"
VERSION_LABEL = "org.opencontainers.image.version"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class LocalOptions(BaseModel):
    """``targets.local`` in mlship.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(default=8080, ge=1, le=65535, description="Host port the service is published on.")
    host: str = Field(default="127.0.0.1", description="Host address to bind; 0.0.0.0 for every interface.")
    env: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Plain environment variables for the container."
    )
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = Field(
        default="unless-stopped", description="Docker restart policy."
    )

    @field_validator("host")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("expected an IP address such as 127.0.0.1 or 0.0.0.0") from None
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in value:
            if not re.match(_ENV_NAME, key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key == "PORT":
                raise ValueError("PORT is set by mlship (8080 inside the container); set `port` for the host port")
        return value

    def environment(self) -> dict[str, str]:
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in self.env.items()}


class LocalTarget(Target):
    """The service as a container on the local Docker engine (see the module docstring)."""

    name: ClassVar[str] = "local"

    def __init__(self, project: Project, options: dict[str, Any]) -> None:
        super().__init__(project, options)
        self.opts = parse_options(LocalOptions, self.name, options)
        self.service = project.contract.name
        self.container_name = f"mlship-{self.service}"
        self.candidate_name = f"mlship-{self.service}-candidate"
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
        return _url(_connect_host(self.opts.host), self.opts.port)

    # --- preflight (read-only) ---------------------------------------------------------------------
    def preflight(self) -> list[Check]:
        """The port is free (or held by this service's own container), no other deploy is running, and
        API keys are at hand when serve.auth is api_key."""
        checks = []
        try:
            current = self._service_container()
            checks.append(self._port_check(current))
            candidate = self._own(self.candidate_name)
            if candidate is not None and candidate.status == "running" \
                    and time.time() - _created(candidate) < self.ready_timeout + 60:
                checks.append(Check(name="no other deploy", ok=False,
                                    detail=f"{self.candidate_name} is running: another deploy is in progress",
                                    fix=f"Wait for it, or remove it: `docker rm -f {self.candidate_name}`."))
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
            f"stop {self.container_name} (SIGTERM, {self.stop_timeout}s grace) and remove the candidate "
            "(brief gap: Docker cannot move a port between containers)",
            f"start {self.container_name} from {image} on {self.opts.host}:{self.opts.port} "
            f"(restart: {self.opts.restart}; labels {LABEL_SERVICE}={self.service}, {LABEL_TARGET}=local, "
            f"{LABEL_IMAGE}, {LABEL_PREVIOUS})",
            f"wait for /readyz; if it fails, start the previous image again on port {self.opts.port}",
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
            current = self._service_container()
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
            current = self._service_container()
            if current is not None:
                labels = current.labels
                if (labels.get(LABEL_IMAGE) == image and current.attrs.get("Image") == info.id
                        and labels.get(LABEL_CONFIG) == config and current.status == "running"
                        and self._ready(self.url)):
                    progress(f"{self.container_name} already runs {image} and is ready; nothing changed")
                    return Deployment(url=self.url, image=image, version=version,
                                      previous=labels.get(LABEL_PREVIOUS) or None, changed=False, digest=info.id)
            else:
                self._check_port_free()
            self._clear_candidate(progress)

            # 1. candidate on an ephemeral loopback port
            progress(f"starting candidate {self.candidate_name} from {image}")
            candidate = self._run(image, self.candidate_name, "127.0.0.1", None, "no", env,
                                  role="candidate", previous="", config=config)
            try:
                cand_url = _url("127.0.0.1", _host_port(candidate))
                problem = self._wait_ready(cand_url, candidate)
                if problem:
                    raise TargetError(
                        f"{image} did not become ready: {problem}. Nothing changed"
                        + (f"; {self.container_name} still serves "
                           f"{current.labels.get(LABEL_IMAGE)}." if current is not None else "."),
                        why="Candidate log tail:\n" + _logs_tail(candidate),
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
                            why="Candidate log tail:\n" + _logs_tail(candidate),
                            fix="Run `mlship test` on the image to see every example's result.",
                        ) from None
                    progress("smoke test passed (examples[0] -> 200)")
            finally:
                candidate.remove(force=True)

            # 2. switch over: stop the old container, start the final one on the stable port
            old_image = old_previous = None
            old_env, old_config = env, config
            if current is not None:
                old_image = current.labels.get(LABEL_IMAGE) or None
                old_previous = current.labels.get(LABEL_PREVIOUS, "")
                old_env = dict(e.split("=", 1) for e in current.attrs.get("Config", {}).get("Env") or [] if "=" in e)
                old_config = current.labels.get(LABEL_CONFIG, "")
                progress(f"stopping {self.container_name} ({old_image}; SIGTERM, up to {self.stop_timeout}s)")
                current.stop(timeout=self.stop_timeout)
                current.remove(force=True)
            previous = old_previous if old_image == image else old_image
            progress(f"starting {self.container_name} from {image} on {self.opts.host}:{self.opts.port}")
            problem, final_logs = self._start_final(image, env, previous or "", config)
            if problem:
                restored = ""
                if old_image is not None and self._image(old_image) is not None:
                    restore_problem, _ = self._start_final(old_image, old_env, old_previous or "", old_config)
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
        progress(f"{self.container_name} ready at {self.url}")
        return Deployment(url=self.url, image=image, version=version, previous=previous or None, digest=info.id)

    def _start_final(self, image: str, env: dict[str, str], previous: str, config: str) -> tuple[str, str]:
        """Start the service container on the stable port; ("", "") when ready, else (problem, log tail)."""
        from docker.errors import APIError

        try:
            container = self._run(image, self.container_name, self.opts.host, self.opts.port,
                                  self.opts.restart, env, role="service", previous=previous, config=config)
        except APIError as exc:
            self._remove_named(self.container_name)
            return _short(exc), ""
        problem = self._wait_ready(self.url, container)
        if not problem:
            return "", ""
        logs = _logs_tail(container)
        container.remove(force=True)
        return problem, logs

    # --- status / logs / destroy ------------------------------------------------------------------
    def status(self) -> TargetStatus:
        with self._engine_errors("status"):
            container = self._service_container()
            if container is None:
                return TargetStatus(url=None, image=None, version=None, state="not deployed", history=[])
            labels = container.labels
            image = labels.get(LABEL_IMAGE) or ""
            info = self._image(image) if image else None
            version = ((info.labels or {}).get(VERSION_LABEL) if info is not None else None) \
                or image.rpartition(":")[2]
            history = [image] + ([labels[LABEL_PREVIOUS]] if labels.get(LABEL_PREVIOUS) else [])
            running = container.status == "running"
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
                image = container.labels.get(LABEL_IMAGE, "")
                if container.status in ("running", "restarting") and container.name != self.candidate_name:
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
                f"The Docker engine refused a request during `{action}` of `{self.service}`: {_short(exc)}",
                why="A failed deploy removes its candidate; the previous container is left as it was.",
                fix=f"Check `docker ps -a --filter label={LABEL_SERVICE}={self.service}`, then try again.",
            ) from None

    def _containers(self) -> list[Any]:
        """Every container of this service on this target (candidates first)."""
        found = self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_SERVICE}={self.service}", f"{LABEL_TARGET}=local"]})
        return sorted(found, key=lambda c: c.name != self.candidate_name)

    def _get(self, name: str) -> Any:
        from docker.errors import NotFound

        try:
            return self.docker.containers.get(name)
        except NotFound:
            return None

    def _service_container(self) -> Any:
        return self._own(self.container_name)

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

    def _clear_candidate(self, progress: Progress) -> None:
        """Remove a candidate left by an interrupted deploy; refuse if a deploy seems to be running."""
        candidate = self._own(self.candidate_name)
        if candidate is None:
            return
        age = time.time() - _created(candidate)
        if candidate.status == "running" and age < self.ready_timeout + 60:
            raise TargetError(
                f"Another deploy of `{self.service}` seems to be in progress "
                f"({self.candidate_name} started {age:.0f}s ago).",
                fix=f"Wait for it to finish, or remove it: `docker rm -f {self.candidate_name}`.",
            )
        progress(f"removing {self.candidate_name} left by an interrupted deploy")
        candidate.remove(force=True)

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
                  LABEL_PREVIOUS: previous, LABEL_ROLE: role, LABEL_CONFIG: config}
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


def _connect_host(host: str) -> str:
    """Where to reach a port bound on ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _host_port(container: Any) -> int:
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{CONTAINER_PORT}/tcp") or []
    if not bindings:
        raise TargetError(f"{container.name} has no published port (it exited at once?).",
                          why="Container log tail:\n" + _logs_tail(container))
    return int(bindings[0]["HostPort"])


def _logs_tail(container: Any, lines: int = 30) -> str:
    try:
        return str(container.logs(tail=lines).decode(errors="replace")).strip() or "(no output)"
    except Exception:  # the container may be gone already
        return "(no logs: the container is gone)"


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]


def _created(container: Any) -> float:
    """The container's creation time as a Unix timestamp."""
    stamp = str(container.attrs.get("Created", ""))[:19]
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0.0
