"""The Heroku emulator's dyno manager: runs each released image on the local Docker engine as Heroku runs it.

A web dyno is a container of the release's image (pulled by digest from the registry the emulator's registry front
stores into) with the release's config vars, ``PORT`` (a random port, as Heroku picks one per dyno) and
``DYNO=web.N``; it runs as the image's user, or as uid 10000 when the image says root (Heroku never runs a dyno as
root); the image's ENTRYPOINT/CMD run (EXPOSE, HEALTHCHECK and STOPSIGNAL are ignored, as on Heroku). The container
gets a memory limit of twice the dyno size's quota, so the kernel ends what R15 would end.

States (GET /apps/{app}/dynos): ``starting`` until the process listens on $PORT (read from the container's
/proc/<pid>/net/tcp{,6}, or by connecting through the published port where the engine is not local) -> ``up``;
a process that exits is ``crashed`` ("Process exited with status N"); one that has not bound $PORT within the boot
limit gets R10 ("Error R10 (Boot timeout) -> Web process failed to bind to $PORT within N seconds of launch"),
SIGKILL and ``crashed``. Memory (usage without page cache, Docker's stats) above the size's quota logs
"Process running mem=..M(..%)" and "Error R14 (Memory quota exceeded)" (again every 20 s while above); above twice
the quota, R15: SIGKILL and ``crashed``. Stopping a dyno: SIGTERM, SIGKILL after the grace (30 s; configurable),
"Error R12 (Exit timeout)" when it had to. Crashed dynos are not restarted (Heroku restarts them after a cool-off
of up to 20 minutes: longer than any test; the emulator's choice, so a crashed state stays visible).

Releases: each release or formation change starts a new *generation* of dynos. With preboot (and a dyno that
serves), the new generation boots beside the old one and the router switches to it once all its dynos are up,
then the old ones are stopped; if a new dyno crashes, the old generation keeps serving. Without preboot the old
dynos are stopped first, then the new ones start.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from emulators import _runtime
from emulators._runtime import Proxy
from emulators.heroku_router import LogBook, RouterHooks, now

LABEL = "dev.mlship.test"
QUOTA_MB = {"eco": 512, "basic": 512, "standard-1x": 512, "standard-2x": 1024, "performance-m": 2560,
            "performance-l": 14336}
NON_ROOT = "10000:10000"


@dataclass
class Limits:
    boot_s: float = 60.0
    router_timeout_s: float = 30.0
    stop_grace_s: float = 30.0
    quota_mb: dict[str, int] = field(default_factory=lambda: dict(QUOTA_MB))
    memory_poll_s: float = 0.5


@dataclass(frozen=True)
class Launch:
    """What a generation runs: the release, its pull reference and config vars, the formation."""

    release_id: str
    version: int
    image: str
    env: dict[str, str]
    quantity: int
    size: str
    preboot: bool


@dataclass
class Dyno:
    id: str
    name: str
    size: str
    launch: Launch
    generation: int
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    state: str = "starting"
    container: Any = None
    host_port: int = 0
    port: int = 0
    started: float = field(default_factory=time.monotonic)
    boot_s: float | None = None  # seconds from launch to binding $PORT
    r14_at: float = 0.0
    checked_memory: float = 0.0


@dataclass
class AppRun:
    name: str
    proxy: Proxy
    dynos: list[Dyno] = field(default_factory=list)
    serving: int = 0
    latest: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class DynoManager:
    def __init__(self, docker: Any, logs: LogBook, limits: Limits, emulator_id: str) -> None:
        self.docker, self.logs, self.limits, self.id = docker, logs, limits, emulator_id
        self.apps: dict[str, AppRun] = {}
        self.errors: list[str] = []
        self.pulled: set[str] = set()
        self.boots: list[tuple[str, str, int, float]] = []  # (app, dyno, release version, seconds to bind $PORT)
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._monitor = threading.Thread(target=self._loop, name=f"heroku-dynos-{emulator_id}", daemon=True)
        self._monitor.start()

    # --- API side ---------------------------------------------------------------------------------
    def url(self, app: str) -> str:
        with self._lock:
            if app not in self.apps:
                hooks = RouterHooks(app, self.logs, lambda: self._why_not(app))
                proxy = Proxy(lambda: self._route(app), timeout=lambda: self.limits.router_timeout_s,
                              authorize=lambda _headers: True, hooks=hooks)
                self.apps[app] = AppRun(app, proxy)
            return f"{self.apps[app].proxy.url}/"

    def launch(self, app: str, launch: Launch) -> None:
        """Start a new generation for ``launch`` (a release, or a formation change of the current one)."""
        self.url(app)
        self._spawn(self._launch, self.apps[app], launch)

    def scale(self, app: str, launch: Launch) -> None:
        """A quantity change of the serving generation: start the missing dynos, stop the extra ones."""
        run = self.apps.get(app)
        if run is not None:
            self._spawn(self._scale, run, launch)

    def remove(self, app: str) -> None:
        with self._lock:
            run = self.apps.pop(app, None)
        if run is not None:
            run.proxy.close()
            self._spawn(self._stop_all, run, [*run.dynos])

    def dynos(self, app: str) -> list[Dyno]:
        with self._lock:
            run = self.apps.get(app)
            return [*run.dynos] if run else []

    def containers(self, app: str | None = None) -> list[Any]:
        labels = [f"{LABEL}={'heroku-emulator'}", f"{LABEL}.id={self.id}"] + ([f"{LABEL}.app={app}"] if app else [])
        return list(self.docker.containers.list(all=True, filters={"label": labels}, ignore_removed=True))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            runs, self.apps = list(self.apps.values()), {}
        for run in runs:
            run.proxy.close()
        self._monitor.join(10)
        for thread in list(self._threads):
            thread.join(60)
        stoppers = [threading.Thread(target=_runtime.stop_container, args=(c, 2)) for c in self.containers()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(30)
        for ref in self.pulled:
            with contextlib.suppress(Exception):  # another name of the image may still use it
                self.docker.images.remove(ref)

    # --- generations ------------------------------------------------------------------------------
    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _guarded(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # the test sees it in errors
            self.errors.append(f"{target.__name__}: {type(exc).__name__}: {exc}")

    def _launch(self, run: AppRun, launch: Launch) -> None:
        with run.lock:
            if self._closed.is_set():
                return
            with self._lock:
                run.latest += 1
                generation = run.latest
                serving_up = any(d.state == "up" for d in run.dynos if d.generation == run.serving)
                stale = [d for d in run.dynos if d.generation not in (run.serving, generation)]
            self._stop_all(run, stale)  # an earlier new generation that never took over
            if not (launch.preboot and serving_up and launch.quantity):
                self._stop_all(run, [d for d in run.dynos if d.generation != generation])
                with self._lock:
                    run.serving = generation
            for n in range(1, launch.quantity + 1):
                self._start(run, launch, generation, f"web.{n}")

    def _scale(self, run: AppRun, launch: Launch) -> None:
        with run.lock:
            with self._lock:
                mine = sorted((d for d in run.dynos if d.generation == run.serving), key=lambda d: d.name)
                names = {d.name for d in mine}
            self._stop_all(run, [d for d in mine if int(d.name.split(".")[1]) > launch.quantity])
            for n in range(1, launch.quantity + 1):
                if f"web.{n}" not in names:
                    self._start(run, launch, run.serving, f"web.{n}")

    def _start(self, run: AppRun, launch: Launch, generation: int, name: str) -> None:
        dyno = Dyno(id=str(uuid.uuid4()), name=name, size=launch.size, launch=launch, generation=generation,
                    port=random.randint(10000, 60000))
        with self._lock:
            run.dynos.append(dyno)
        self.logs.add(run.name, "heroku", name, "State changed from down to starting")
        try:
            image = self.pull(launch.image)
            config = image.attrs.get("Config") or {}
            user = config.get("User") or ""
            command = " ".join([*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])
            quota = self.limits.quota_mb[launch.size.lower()]
            env = {**launch.env, "PORT": str(dyno.port), "DYNO": name}
            labels = {LABEL: "heroku-emulator", f"{LABEL}.id": self.id, f"{LABEL}.app": run.name,
                      f"{LABEL}.dyno": dyno.id}
            container, host_port = _runtime.run_container(
                self.docker, launch.image, name=f"heroku-{run.name}-{name.replace('.', '-')}-{dyno.id[:8]}",
                port=dyno.port, env=env, labels=labels, command=None, args=None, mem_limit=2 * quota * 2**20,
                nano_cpus=None, user=NON_ROOT if user.split(":")[0] in ("", "root", "0") else user)
        except Exception as exc:  # an emulator problem (the API checked the image): visible in errors and the log
            self.errors.append(f"dyno {name} of {run.name}: {type(exc).__name__}: {exc}")
            self.logs.add(run.name, "heroku", name, f"Error R99 (Platform error) -> {type(exc).__name__}: {exc}")
            self._set_state(run, dyno, "crashed")
            return
        self.logs.add(run.name, "heroku", name, f"Starting process with command `{command}`")
        with self._lock:
            dyno.container, dyno.host_port, dyno.started = container, host_port, time.monotonic()
            if self._closed.is_set() or dyno not in run.dynos:
                self._spawn(_runtime.stop_container, container, 1)
        threading.Thread(target=self._ship, args=(run.name, dyno), daemon=True).start()

    def pull(self, ref: str) -> Any:
        image = self.docker.images.pull(ref)
        self.pulled.add(ref)
        return image

    def _stop_all(self, run: AppRun, dynos: list[Dyno]) -> None:
        threads = [threading.Thread(target=self._stop, args=(run, d)) for d in dynos]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.limits.stop_grace_s + 60)

    def _stop(self, run: AppRun, dyno: Dyno) -> None:
        with self._lock:
            if dyno not in run.dynos:
                return
            was = dyno.state
            dyno.state = "down" if was != "crashed" else was
        if dyno.container is not None and was != "crashed":
            self.logs.add(run.name, "heroku", dyno.name, "Stopping all processes with SIGTERM")
            started = time.monotonic()
            with contextlib.suppress(Exception):  # gone already
                dyno.container.stop(timeout=int(self.limits.stop_grace_s))
            code = _runtime.exit_code(dyno.container)
            if code == 137 and time.monotonic() - started >= self.limits.stop_grace_s - 0.5:
                self.logs.add(run.name, "heroku", dyno.name, "Error R12 (Exit timeout) -> At least one process "
                              f"failed to exit within {self.limits.stop_grace_s:g} seconds of SIGTERM")
                self.logs.add(run.name, "heroku", dyno.name, "Stopping remaining processes with SIGKILL")
            self.logs.add(run.name, "heroku", dyno.name, f"Process exited with status {code}")
            self.logs.add(run.name, "heroku", dyno.name, f"State changed from {was} to down")
        if dyno.container is not None:
            _runtime.stop_container(dyno.container, 1)
        with self._lock:
            if dyno in run.dynos:
                run.dynos.remove(dyno)

    # --- the router -------------------------------------------------------------------------------
    def _serving(self, app: str) -> list[Dyno]:
        with self._lock:
            run = self.apps.get(app)
            return [d for d in run.dynos if d.generation == run.serving] if run else []

    def _route(self, app: str) -> tuple[int, str] | None:
        deadline = time.monotonic() + min(self.limits.boot_s, 75.0)
        while True:
            dynos = self._serving(app)
            up = [d for d in dynos if d.state == "up" and d.host_port]
            if up:
                dyno = random.choice(up)
                return dyno.host_port, dyno.name
            if not any(d.state == "starting" for d in dynos) or time.monotonic() > deadline or self._closed.wait(0.05):
                return None

    def _why_not(self, app: str) -> str:
        states = {d.state for d in self._serving(app)}
        return "H20" if "starting" in states else "H10" if "crashed" in states else "H14"

    # --- the monitor ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed.wait(0.1):
            with self._lock:
                work = [(run, d) for run in self.apps.values() for d in run.dynos
                        if d.container is not None and d.state in ("starting", "up")]
            for run, dyno in work:
                try:
                    self._check(run, dyno)
                except Exception as exc:  # keep watching; the test sees what went wrong
                    self.errors.append(f"monitor: {type(exc).__name__}: {exc}")
            with self._lock:
                for run in self.apps.values():
                    self._switch(run)

    def _check(self, run: AppRun, dyno: Dyno) -> None:
        code = _runtime.exit_code(dyno.container)
        if code is not None:
            oom = bool(dyno.container.attrs.get("State", {}).get("OOMKilled"))
            if oom:
                self._memory_line(run, dyno, 2 * self.limits.quota_mb[dyno.size.lower()] * 2**20)
                self.logs.add(run.name, "heroku", dyno.name, "Error R15 (Memory quota vastly exceeded)")
                self.logs.add(run.name, "heroku", dyno.name, "Stopping process with SIGKILL")
            return self._crashed(run, dyno, code)
        if dyno.state == "starting":
            if _runtime.listening(dyno.container, dyno.port, dyno.host_port):
                dyno.boot_s = time.monotonic() - dyno.started
                self.boots.append((run.name, dyno.name, dyno.launch.version, dyno.boot_s))
                self._set_state(run, dyno, "up")
            elif time.monotonic() - dyno.started > self.limits.boot_s:
                self.logs.add(run.name, "heroku", dyno.name, "Error R10 (Boot timeout) -> Web process failed to "
                              f"bind to $PORT within {self.limits.boot_s:g} seconds of launch")
                self._kill(run, dyno)
            return None
        if time.monotonic() - dyno.checked_memory >= self.limits.memory_poll_s:
            dyno.checked_memory = time.monotonic()
            self._memory(run, dyno)
        return None

    def _memory(self, run: AppRun, dyno: Dyno) -> None:
        used = _runtime.memory_used(dyno.container)
        if used is None:
            return
        quota = self.limits.quota_mb[dyno.size.lower()] * 2**20
        if used > 2 * quota:
            self._memory_line(run, dyno, used)
            self.logs.add(run.name, "heroku", dyno.name, "Error R15 (Memory quota vastly exceeded)")
            self._kill(run, dyno)
        elif used > quota and time.monotonic() - dyno.r14_at >= 20:
            dyno.r14_at = time.monotonic()
            self._memory_line(run, dyno, used)
            self.logs.add(run.name, "heroku", dyno.name, "Error R14 (Memory quota exceeded)")

    def _memory_line(self, run: AppRun, dyno: Dyno, used: int) -> None:
        quota = self.limits.quota_mb[dyno.size.lower()] * 2**20
        self.logs.add(run.name, "heroku", dyno.name, f"Process running mem={used // 2**20}M({100 * used / quota:.1f}%)")

    def _kill(self, run: AppRun, dyno: Dyno) -> None:
        self.logs.add(run.name, "heroku", dyno.name, "Stopping process with SIGKILL")
        with contextlib.suppress(Exception):  # exited meanwhile
            dyno.container.kill()
        for _ in range(50):
            code = _runtime.exit_code(dyno.container)
            if code is not None:
                break
            time.sleep(0.05)
        self._crashed(run, dyno, code if code is not None else 137)

    def _crashed(self, run: AppRun, dyno: Dyno, code: int) -> None:
        self.logs.add(run.name, "heroku", dyno.name, f"Process exited with status {code}")
        self._set_state(run, dyno, "crashed")

    def _set_state(self, run: AppRun, dyno: Dyno, state: str) -> None:
        self.logs.add(run.name, "heroku", dyno.name, f"State changed from {dyno.state} to {state}")
        with self._lock:
            dyno.state, dyno.updated_at = state, now()

    def _switch(self, run: AppRun) -> None:
        """Preboot: the newest generation takes the traffic once all its dynos are up; the old ones stop."""
        if run.latest == run.serving:
            return
        new = [d for d in run.dynos if d.generation == run.latest]
        if new and len(new) == new[0].launch.quantity and all(d.state == "up" for d in new):
            old = [d for d in run.dynos if d.generation != run.latest]
            run.serving = run.latest
            self._spawn(self._stop_all, run, old)

    def _ship(self, app: str, dyno: Dyno) -> None:
        """The dyno's output into the log book as app[web.N] lines, until the container is gone."""
        partial = b""
        with contextlib.suppress(Exception):  # the container was removed
            for chunk in dyno.container.logs(stream=True, follow=True):
                partial += chunk
                *lines, partial = partial.split(b"\n")
                for line in lines:
                    self.logs.add(app, "app", dyno.name, line.decode(errors="replace").rstrip("\r"))
        if partial:
            self.logs.add(app, "app", dyno.name, partial.decode(errors="replace"))
