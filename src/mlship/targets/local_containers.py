"""The local target's containers: finding them by name and label, starting, readiness, clearing what a killed
deploy left, and settling a deploy interrupted by Ctrl-C (the policy is in :mod:`mlship.targets.local`).

``serve.fetch_at_start``: the service's containers find this machine's checked copy of the artifact in their start
cache, a read-only bind mount of ``<cache>-local-start/<service>`` (:func:`start_cache_root`), the way the test gate
runs them: no credentials enter a container on this machine; destroy removes the folder.

Names: ``mlship-<service>`` (the service), ``mlship-<service>-candidate`` (a deploy's candidate) and
``mlship-<service>-previous`` (the old service while a deploy switches). Every container carries the labels
:data:`LABEL_SERVICE`, :data:`LABEL_TARGET`, :data:`LABEL_IMAGE`, :data:`LABEL_PREVIOUS`, :data:`LABEL_ROLE`,
:data:`LABEL_CONFIG`, :data:`LABEL_DEPLOY` and :data:`LABEL_OWNER`.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from mlship.contract_io import Project
from mlship.errors import TargetError
from mlship.image import engine
from mlship.targets.base import (
    CONTAINER_PORT,
    LABEL_DEPLOY,
    LABEL_OWNER,
    LABEL_ROLE,
    LABEL_SERVICE,
    Progress,
    owner_alive,
    owner_label,
)
from mlship.targets.local_options import LocalOptions, connect_host, created, short, url_of

LABEL_TARGET = "dev.mlship.target"
LABEL_IMAGE = "dev.mlship.image"
LABEL_PREVIOUS = "dev.mlship.previous"
LABEL_CONFIG = "dev.mlship.config"


def start_cache_root(service: str) -> Path:
    """Where the local target keeps ``service``'s start cache (serve.fetch_at_start), beside the artifact cache."""
    from mlship.artifacts.cache import cache_dir

    cache = cache_dir()
    return cache.with_name(f"{cache.name}-local-start") / service


class LocalContainers:
    """The container side of :class:`mlship.targets.local.LocalTarget` (a mixin: the target sets the fields)."""

    project: Project
    opts: LocalOptions
    deploy_id: str
    service: str
    container_name: str
    candidate_name: str
    retired_name: str
    stop_timeout: int
    ready_timeout: float
    _client: Any
    _start_filled: bool = False

    @property
    def url(self) -> str:
        return url_of(connect_host(self.opts.host), self.opts.port)

    @property
    def docker(self) -> Any:
        if self._client is None:
            self._client = engine.client()
        return self._client

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

    # --- finding containers ---------------------------------------------------------------------------------
    def _containers(self) -> list[Any]:
        """Every container of this service on this target, and the test gate's (candidates and gates first)."""
        from docker.errors import NotFound

        for attempt in range(3):
            try:
                found = self.docker.containers.list(all=True, filters={"label": [f"{LABEL_SERVICE}={self.service}"]})
                break
            except NotFound:  # one was removed between the listing and its inspect (an interrupted remove)
                if attempt == 2:
                    raise
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
            _remove(container)

    def _remove_mine(self, name: str, wait_s: float = 0.0) -> None:
        """Remove the container ``name`` if this deploy started it (an interrupted start may have made it).
        ``wait_s``: how long to look for it (the engine finishes a create whose client was interrupted)."""
        deadline = time.monotonic() + wait_s
        while True:
            container = self._get(name)
            if container is not None:
                if container.labels.get(LABEL_DEPLOY) == self.deploy_id:
                    _remove(container)
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def _image(self, ref: str) -> Any:
        from docker.errors import ImageNotFound

        try:
            return self.docker.images.get(ref)
        except ImageNotFound:
            return None

    # --- what other deploys left ------------------------------------------------------------------------------
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
                _remove(container)
        if self._service_container() is not None:
            retired = self._own(self.retired_name)
            if retired is not None:
                progress(f"removing {self.retired_name} left by an interrupted switch")
                _remove(retired)

    # --- after Ctrl-C -----------------------------------------------------------------------------------------
    def _settle_interrupted(self, switching_from: Any, progress: Progress) -> None:
        """A deploy interrupted by Ctrl-C (KeyboardInterrupt) cleans up on its way out: this deploy's candidate
        goes; a new service container that already answers /readyz stays (the switch is finished), otherwise it
        goes and ``switching_from`` (the old container the switch stopped, None before the switch) serves again.
        A second Ctrl-C or an engine error leaves the rest to the next deploy, which converges from any step."""
        from docker.errors import APIError

        try:
            for container in self._containers():
                if container.labels.get(LABEL_DEPLOY) == self.deploy_id \
                        and container.labels.get(LABEL_ROLE) in ("candidate", "test"):
                    progress(f"interrupted: removing {container.name}")
                    _remove(container)
            new = self._get(self.container_name)
            if new is not None and new.labels.get(LABEL_DEPLOY) == self.deploy_id:
                new.reload()
                if new.status == "running" and self._ready(self.url):
                    progress(f"interrupted after {self.container_name} became ready: it serves "
                             f"{new.labels.get(LABEL_IMAGE)}")
                    self._remove_retired()
                    return
                progress(f"interrupted: removing {self.container_name} ({new.labels.get(LABEL_IMAGE)}), not ready")
                _remove(new)
            if switching_from is not None:
                old_image = switching_from.labels.get(LABEL_IMAGE)
                progress(f"interrupted: starting {old_image} again as {self.container_name}")
                problem = self._restore(switching_from)
                progress(f"{self.container_name} serves {old_image} again" if not problem else
                         f"starting {old_image} again failed: {problem}; `mlship deploy` converges")
        except APIError as exc:
            progress(f"cleaning up after the interrupt failed: {short(exc)}; `mlship deploy` converges")

    def _remove_retired(self) -> None:
        retired = self._get(self.retired_name)
        if retired is not None and retired.labels.get(LABEL_SERVICE) == self.service:
            _remove(retired)

    def _restore(self, old: Any) -> str:
        """Bring the old container back as the service (same config); "" when it is ready again. A stop that
        was cut short (Ctrl-C during the switch) is finished first, so the start is not undone by it."""
        from docker.errors import APIError

        try:
            old.reload()
            old.stop(timeout=self.stop_timeout)
            if old.name != self.container_name:
                self._remove_mine(self.container_name)  # a new container of this deploy must not hold the name
                old.rename(self.container_name)
            old.start()
        except APIError as exc:
            return short(exc)
        return self._wait_ready(self.url, old)

    # --- starting and readiness -------------------------------------------------------------------------------
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
            binds=self._start_binds() or None,
            port_bindings={CONTAINER_PORT: (host, port)},
            restart_policy={"Name": restart, **({"MaximumRetryCount": 5} if restart == "on-failure" else {})},
        )
        made: dict[str, Any] | None = None
        try:
            made = api.create_container(image, name=name, environment=env, labels=labels,
                                        ports=[CONTAINER_PORT], stop_signal="SIGTERM",
                                        stop_timeout=self.stop_timeout, host_config=host_config, detach=True)
            api.start(made["Id"])
        except BaseException as exc:
            if made is not None:
                api.remove_container(made["Id"], force=True)
            else:  # Ctrl-C may land while the engine makes it: it finishes the create all the same
                self._remove_mine(name, wait_s=2.0 if isinstance(exc, KeyboardInterrupt) else 0.0)
            raise
        return self.docker.containers.get(made["Id"])

    def _start_binds(self) -> dict[str, dict[str, str]]:
        """The start cache's read-only mount (serve.fetch_at_start; see the module docstring), filled with the
        project's artifact once per command; kept while it holds an artifact an image of the service may read."""
        from mlship.artifacts.image import START_CACHE
        from mlship.gate import fill_start_cache

        root = start_cache_root(self.service)
        if self.project.remote and self.project.contract.serve.fetch_at_start and not self._start_filled:
            fill_start_cache(self.project, root)
            self._start_filled = True
        return {str(root): {"bind": START_CACHE, "mode": "ro"}} if root.is_dir() else {}

    def _remove_start_cache(self) -> list[str]:
        root = start_cache_root(self.service)
        if not root.is_dir():
            return []
        shutil.rmtree(root)
        return [f"start cache {root}"]

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


def _remove(container: Any) -> None:
    """Remove ``container`` (force); one already gone is no error."""
    from docker.errors import NotFound

    with suppress(NotFound):
        container.remove(force=True)
