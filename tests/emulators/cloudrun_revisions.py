"""Revisions in the Cloud Run emulator (tests/emulators/cloudrun.py): start one per template change, run
and probe its container, apply the traffic split once the revisions it needs are settled, route requests and
check the invoker, list and delete revisions. A mixin of ``CloudRunEmulator``, which holds the state.
"""

from __future__ import annotations

import random
import re
import string
import threading
from collections.abc import Callable
from typing import Any

from emulators import _runtime
from emulators._checks import LATEST, ApiError, cpus, quantity
from emulators._runtime import LABEL
from emulators.cloudrun_model import (
    FAILED_PRECONDITION,
    REVISION_TYPE,
    SERVICE_TYPE,
    Rendering,
    Revision,
    Service,
    page,
    timestamp,
)


class Revisions(Rendering):
    """The revision half of the emulator (see the module docstring)."""

    docker: Any
    id: str
    services: dict[str, Service]
    operations: dict[str, dict[str, Any]]
    enforce_invoker_iam: bool
    _waiting: list[tuple[str, str, int, str]]
    _lock: threading.RLock
    _closed: threading.Event

    # provided by CloudRunEmulator (cloudrun.py) and Operations (cloudrun_operations.py)
    _spawn: Callable[..., None]
    _service: Callable[[str], Service]
    _operation: Callable[..., dict[str, Any]]

    def _new_revision(self, svc: Service) -> str:
        """Start the revision of the service's template (unless it is a named one that exists)."""
        template = svc.spec["template"]
        short = template.get("revision", "")
        if short in svc.revisions:
            return short
        svc.count += 1
        short = short or f"{svc.id}-{svc.count:05d}-{''.join(random.choices(string.ascii_lowercase, k=3))}"
        rev = Revision(name=f"{svc.name}/revisions/{short}", template=template, created=timestamp())
        svc.revisions[short], svc.latest_created, svc.reconciling = rev, short, True
        self._spawn(self._deploy, svc, rev)
        return short

    def _deploy(self, svc: Service, rev: Revision) -> None:
        """Pull, run and probe one revision's container (a background thread), then reconcile."""
        from docker.errors import DockerException, ImageNotFound, NotFound

        spec = rev.template["containers"][0]
        port = spec["ports"][0]["containerPort"]
        limits = spec["resources"]["limits"]
        env = {"PORT": str(port), "K_SERVICE": svc.id, "K_REVISION": rev.short, "K_CONFIGURATION": svc.id,
               **{e["name"]: e.get("value", "") for e in spec.get("env", [])}}
        labels = {LABEL: "cloudrun", f"{LABEL}.id": self.id, f"{LABEL}.service": svc.id,
                  f"{LABEL}.revision": rev.short}
        why, reason = "", ""
        try:
            container, host_port = _runtime.run_container(
                self.docker, spec["image"], name=f"cloudrun-{rev.short}-{self.id}", port=port, env=env,
                labels=labels, command=spec.get("command"), args=spec.get("args"),
                mem_limit=int(quantity(limits["memory"]) or 0), nano_cpus=int((cpus(limits["cpu"]) or 1) * 1e9))
        except (ImageNotFound, NotFound):
            container, host_port = None, 0
            why, reason = f"Image '{spec['image']}' not found.", "CONTAINER_MISSING"
        except DockerException as exc:
            container, host_port = None, 0
            why = f"The image could not be pulled or run: {str(exc).splitlines()[0][:300]}"
        with self._lock:
            rev.container, rev.host_port = container, host_port
            gone = self._closed.is_set() or self.services.get(svc.name) is not svc
        if container is not None and gone:
            return _runtime.stop_container(container)
        if container is not None:
            why = "" if host_port else (f"The container exited with code {_runtime.exit_code(container)} "
                                        "before the startup probe passed.")
            why = why or _runtime.startup_probe(container, host_port, spec["startupProbe"], port, self._closed,
                                                spec.get("name") or "container")
            if why == "cancelled":
                return None
            if why:
                why += "\nContainer log tail:\n" + _runtime.logs_tail(container)
        with self._lock:
            rev.state, rev.updated, rev.reason = ("FAILED" if why else "READY"), timestamp(), reason
            rev.message = (f"Revision '{rev.short}' is not ready and cannot serve traffic. {why}" if why else "")
            self._reconcile(svc)
        if why and container is not None:
            _runtime.stop_container(container)  # a failed instance is shut down
        return None

    def _reconcile(self, svc: Service) -> None:
        """Apply the traffic spec once every revision it needs is settled; finish waiting operations."""
        svc.latest_ready = next((r.short for r in reversed(svc.revisions.values()) if r.state == "READY"), "")
        needed = {svc.latest_created} | {t.get("revision", "") for t in svc.spec["traffic"]}
        if any(svc.revisions[r].state == "PENDING" for r in needed if r in svc.revisions):
            return
        routes, svc.route_error = [], ""
        for target in svc.spec["traffic"]:
            short = svc.latest_ready if target["type"] == LATEST else target["revision"]
            rev = svc.revisions.get(short)
            if rev is not None and rev.state == "FAILED":
                svc.route_error = rev.message
            routes.append({**target, **({"revision": short} if short else {})})
        if not svc.route_error:
            svc.routes = routes
        svc.reconciling, svc.observed, svc.settled = False, svc.generation, timestamp()
        for entry in list(self._waiting):  # an operation fails when its revision or the routes did
            if entry[1] == svc.name and entry[2] <= svc.generation:
                self._waiting.remove(entry)
                rev = svc.revisions.get(entry[3])
                why = rev.message if rev is not None and rev.state == "FAILED" else svc.route_error
                outcome = ({"error": {"code": FAILED_PRECONDITION, "message": why}} if why
                           else {"response": {"@type": SERVICE_TYPE, **self._render(svc)}})
                self.operations[entry[0]].update(done=True, **outcome)

    def _route(self, name: str) -> tuple[int, str] | None:
        with self._lock:
            svc = self.services.get(name)
            if svc is None:
                return None
            targets = [(svc.revisions[r["revision"]].host_port, r["revision"], r.get("percent", 0))
                       for r in svc.routes if r.get("revision") in svc.revisions
                       and svc.revisions[r["revision"]].state == "READY"]
        return _runtime.weighted_choice(targets)

    def _timeout(self, name: str) -> float:
        with self._lock:
            svc = self.services.get(name)
            return float(svc.spec["template"]["timeout"].rstrip("s")) if svc else 300.0

    def _authorized(self, name: str, headers: dict[str, str]) -> bool:
        if not self.enforce_invoker_iam or headers.get("authorization", "").startswith("Bearer "):
            return True
        with self._lock:
            svc = self.services.get(name)
            if svc is None or svc.spec.get("invokerIamDisabled"):
                return True
            return any(b.get("role") == "roles/run.invoker" and "allUsers" in b.get("members", [])
                       for b in svc.policy.get("bindings", []))

    def _rev(self, m: re.Match[str]) -> tuple[Service, Revision]:
        svc = self._service(m[1])
        if m[5] not in svc.revisions:
            raise ApiError(404, f"Resource '{m[5]}' of kind 'REVISION' in region '{m[3]}' in project "
                                f"'{m[2]}' does not exist.")
        return svc, svc.revisions[m[5]]

    def _list_revisions(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc = self._service(m[1])
        return page([self._render_revision(svc, r) for r in reversed(svc.revisions.values())], "revisions", query)

    def _delete_revision(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        svc, rev = self._rev(m)
        if rev.short in {r.get("revision") for r in svc.routes} or rev.short == svc.latest_created:
            raise ApiError(400, f"Revision '{rev.short}' is serving traffic or is the latest created revision "
                                "and cannot be deleted.", status="FAILED_PRECONDITION")
        rendered = self._render_revision(svc, rev)
        del svc.revisions[rev.short]
        if rev.container is not None:
            self._spawn(_runtime.stop_container, rev.container)
        return self._operation(rev.name, done=True, response=rendered, type_=REVISION_TYPE)
