"""How the Cloud Run emulator runs a job execution's tasks on Docker, and the Cloud Logging entries it keeps.

One thread per execution: at most ``parallelism`` tasks at once (0: all), each task one container per attempt
(host networking, so a task reaches loopback servers such as a storage emulator), with CLOUD_RUN_JOB,
CLOUD_RUN_EXECUTION, CLOUD_RUN_TASK_INDEX, CLOUD_RUN_TASK_ATTEMPT, CLOUD_RUN_TASK_COUNT and the template's env;
a non-zero exit is retried up to ``maxRetries`` times, an attempt past the task's ``timeout`` is killed (a
failed attempt). Every container is removed once its output is logged.

``Logs`` stands in for Cloud Logging's ``POST /v2/entries:list``: one entry per output line (resource type
``cloud_run_job``; labels ``run.googleapis.com/execution_name``, ``task_index``, ``task_attempt``), filtered
by the subset of the Logging query language the cloudrun target writes (``a.b="v" AND labels."k"="v"``).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from emulators import _runtime
from emulators._checks import ApiError, bad, cpus, quantity
from emulators._runtime import LABEL

LOG_LABEL = "run.googleapis.com/"
DEADLINE_EXCEEDED, UNKNOWN, CANCELLED = 4, 2, 1  # google.rpc.Code


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Task:
    index: int
    name: str
    state: str = "PENDING"  # PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED
    retried: int = 0
    created: str = field(default_factory=now)
    started: str = ""
    completed: str = ""
    exit_code: int | None = None
    term_signal: int = 0
    status: dict[str, Any] = field(default_factory=dict)  # google.rpc.Status of the last attempt
    container: Any = None


@dataclass
class Execution:
    name: str
    job: str  # full job name
    spec: dict[str, Any]  # ExecutionTemplate (taskCount, parallelism, template) with the run's overrides
    labels: dict[str, str]
    operation: str = ""
    created: str = field(default_factory=now)
    started: str = ""
    completed: str = ""
    cancelled: bool = False
    deleted: bool = False
    retried: int = 0
    failure: str = ""  # why it failed, once done
    tasks: list[Task] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[1]

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.tasks)

    @property
    def done(self) -> bool:
        return bool(self.completed)


class Logs:
    """Cloud Logging entries of the tasks' output (see the module docstring)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._count = 0

    def add(self, ex: Execution, task: Task, attempt: int, container: Any) -> None:
        project, location, job = ex.job.split("/")[1], ex.job.split("/")[3], ex.job.rsplit("/", 1)[1]
        found: list[dict[str, Any]] = []
        for stream, stdout in (("stdout", True), ("stderr", False)):
            try:
                raw = container.logs(stdout=stdout, stderr=not stdout, timestamps=True).decode(errors="replace")
            except Exception:
                continue
            for line in raw.splitlines():
                stamp, _, text = line.partition(" ")
                found.append({
                    "logName": f"projects/{project}/logs/run.googleapis.com%2F{stream}", "textPayload": text,
                    "timestamp": stamp, "receiveTimestamp": now(), "insertId": "",
                    "severity": "ERROR" if stream == "stderr" else "DEFAULT",
                    "resource": {"type": "cloud_run_job",
                                 "labels": {"project_id": project, "location": location, "job_name": job}},
                    "labels": {f"{LOG_LABEL}execution_name": ex.short, f"{LOG_LABEL}task_index": str(task.index),
                               f"{LOG_LABEL}task_attempt": str(attempt), "instanceId": container.id[:32]}})
        with self._lock:
            for entry in found:  # ties of timestamp are ordered by insertId, as Cloud Logging does
                self._count += 1
                entry["insertId"] = f"{self._count:016x}"
            self.entries.extend(found)

    def list(self, body: dict[str, Any]) -> dict[str, Any]:
        names = body.get("resourceNames") or [f"projects/{p}" for p in body.get("projectIds", [])]
        if not names or not all(re.fullmatch(r"projects/[^/]+", n) for n in names):
            raise bad("resource_names", "Name one or more parents such as projects/PROJECT_ID.")
        projects = {n.split("/")[1] for n in names}
        tests = _parse_filter(str(body.get("filter", "")))
        order = str(body.get("orderBy") or "timestamp asc")
        if order not in ("timestamp asc", "timestamp desc"):
            raise bad("order_by", 'Only "timestamp asc" and "timestamp desc" are supported.')
        size = int(body.get("pageSize") or 50)
        if not 0 < size <= 1000:
            raise bad("page_size", "must be between 1 and 1000.")
        with self._lock:
            hits = [e for e in self.entries if e["resource"]["labels"]["project_id"] in projects
                    and all(_field(e, path) == value for path, value in tests)]
        hits.sort(key=lambda e: (e["timestamp"], e["insertId"]), reverse=order.endswith("desc"))
        start = int(body.get("pageToken") or 0)
        out: dict[str, Any] = {"entries": hits[start:start + size]} if hits[start:start + size] else {}
        if start + size < len(hits):
            out["nextPageToken"] = str(start + size)
        return out


_CLAUSE = re.compile(r'\s*((?:[A-Za-z_]+|"[^"]+")(?:\.(?:[A-Za-z_]+|"[^"]+"))*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s"]+)\s*')


def _parse_filter(text: str) -> list[tuple[list[str], str]]:
    """``path="value" AND ...`` -> [(path parts, value)]; anything else is a 400 as Cloud Logging answers."""
    tests = []
    for clause in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        found = _CLAUSE.fullmatch(clause)
        if not found:
            raise ApiError(400, f"Unparseable filter: syntax error near {clause[:40]!r} (the emulator knows "
                                'field="value" clauses joined by AND).')
        path = [p.strip('"') for p in re.findall(r'[A-Za-z_]+|"[^"]+"', found[1])]
        value = found[2][1:-1].replace('\\"', '"') if found[2].startswith('"') else found[2]
        tests.append((path, value))
    return tests


def _field(entry: dict[str, Any], path: list[str]) -> Any:
    value: Any = entry
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


class Runner:
    """Runs one execution (a thread of the emulator); ``changed()`` is called after every state change."""

    def __init__(self, docker: Any, emu_id: str, ex: Execution, logs: Logs, lock: Any, closed: threading.Event,
                 changed: Any, kills: dict[int, list[float]]) -> None:
        self.docker, self.emu_id, self.ex, self.logs, self.lock = docker, emu_id, ex, logs, lock
        self.closed, self.changed, self.kills = closed, changed, kills
        self.pending: deque[Task] = deque(ex.tasks)

    def run(self) -> None:
        ex = self.ex
        container = ex.spec["template"]["containers"][0]
        try:
            self.docker.images.pull(container["image"])
        except Exception as exc:
            return self._finish(f"Image '{container['image']}' not found or not pullable: "
                                f"{str(exc).splitlines()[0][:200]}")
        with self.lock:
            ex.started = now()
            self.changed(ex)
        width = int(ex.spec.get("parallelism") or 0) or len(ex.tasks)
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(min(width, len(ex.tasks)))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        failed = [t for t in ex.tasks if t.state == "FAILED"]
        return self._finish(f"Task {failed[0].name} failed with message: {failed[0].status.get('message', '')}"
                            if failed else "")

    def _finish(self, why: str) -> None:
        with self.lock:
            for task in self.ex.tasks:
                if task.state == "PENDING":
                    task.state, task.completed = "CANCELLED", now()
            self.ex.failure = why if why or not self.ex.cancelled else "The execution was cancelled."
            self.ex.completed = now()
            self.changed(self.ex)

    def _work(self) -> None:
        while not self.closed.is_set():
            with self.lock:
                if self.ex.cancelled or not self.pending:
                    return
                task = self.pending.popleft()
            self._run_task(task)

    def _run_task(self, task: Task) -> None:
        ex, template = self.ex, self.ex.spec["template"]
        retries = int(template.get("maxRetries", 3))
        for attempt in range(retries + 1):
            outcome = self._attempt(task, attempt, template)
            with self.lock:
                if outcome == "SUCCEEDED" or ex.cancelled or self.closed.is_set() or attempt == retries:
                    task.state, task.completed = ("CANCELLED" if ex.cancelled and outcome != "SUCCEEDED"
                                                  else outcome), now()
                    self.changed(ex)
                    return
                task.retried += 1
                ex.retried += 1
                task.state = "PENDING"
                self.changed(ex)

    def _attempt(self, task: Task, attempt: int, template: dict[str, Any]) -> str:
        ex, spec = self.ex, template["containers"][0]
        limits = spec.get("resources", {}).get("limits", {})
        env = {e["name"]: e.get("value", "") for e in spec.get("env", [])}
        env.update(CLOUD_RUN_JOB=ex.job.rsplit("/", 1)[1], CLOUD_RUN_EXECUTION=ex.short,
                   CLOUD_RUN_TASK_INDEX=str(task.index), CLOUD_RUN_TASK_ATTEMPT=str(attempt),
                   CLOUD_RUN_TASK_COUNT=str(len(ex.tasks)))
        labels = {LABEL: "cloudrun-job", f"{LABEL}.id": self.emu_id, f"{LABEL}.job": ex.job.rsplit("/", 1)[1],
                  f"{LABEL}.execution": ex.short, f"{LABEL}.task": str(task.index)}
        memory = int(quantity(limits.get("memory", "512Mi")) or 0)
        try:
            container = self.docker.containers.run(
                spec["image"], name=f"{task.name}-{attempt}-{self.emu_id}", detach=True, environment=env,
                labels=labels, network_mode="host", entrypoint=spec.get("command") or None,
                command=spec.get("args") or None, mem_limit=memory or None, memswap_limit=memory or None,
                nano_cpus=int((cpus(limits.get("cpu", "1")) or 1) * 1e9))
        except Exception as exc:
            with self.lock:
                task.exit_code, task.status = None, {"code": UNKNOWN, "message": f"The container could not start: "
                                                     f"{str(exc).splitlines()[0][:200]}"}
            return "FAILED"
        with self.lock:
            task.state, task.container = "RUNNING", container
            task.started = task.started or now()
            self.changed(ex)
        timeout = float(str(template.get("timeout", "600s")).rstrip("s"))
        deadline, code, timed_out = time.monotonic() + timeout, None, False
        with self.lock:  # an injected fault: the instance goes away (SIGKILL) this long after the start
            kill = self.kills.get(task.index, [])
            kill_at = time.monotonic() + kill.pop(0) if kill else None
        while code is None:
            if kill_at is not None and time.monotonic() >= kill_at:
                with contextlib.suppress(Exception):
                    container.kill()
                kill_at = None
            if ex.cancelled or self.closed.is_set() or time.monotonic() > deadline:
                timed_out = not (ex.cancelled or self.closed.is_set())
                with contextlib.suppress(Exception):
                    container.kill()
                code = _runtime.exit_code(container)
                break
            code = _runtime.exit_code(container)
            if code is None:
                self.closed.wait(0.1)
        self.logs.add(ex, task, attempt, container)
        _runtime.stop_container(container, grace_s=0)
        with self.lock:
            task.container, task.exit_code, task.term_signal = None, code, 9 if timed_out else 0
            if timed_out:
                task.status = {"code": DEADLINE_EXCEEDED, "message": f"The configured timeout of {timeout:g}s "
                               "was reached; the task was stopped."}
            elif ex.cancelled or self.closed.is_set():
                task.status = {"code": CANCELLED, "message": "The task was cancelled."}
            elif code:
                task.status = {"code": UNKNOWN, "message": "The container exited with an unhandled error, review "
                               f"logs for more details. Exit code: {code}."}
            else:
                task.status = {}
        return "SUCCEEDED" if code == 0 and not timed_out else "FAILED"
