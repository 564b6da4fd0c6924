"""Cloud Run Jobs in the Cloud Run emulator (tests/emulators/cloudrun.py): jobs, executions, tasks, and the
Cloud Logging entries of the tasks (``CloudRunEmulator.jobs`` is a :class:`CloudRunJobs`).

HTTP side (the documented REST shapes of the Admin API v2; bodies parsed with google.cloud.run_v2's protos):

    POST   /v2/projects/P/locations/L/jobs?jobId=J[&validateOnly=true]      create -> Operation (done)
    GET    /v2/projects/P/locations/L/jobs                                  list
    GET    /v2/{job}   PATCH /v2/{job}[?allowMissing=&validateOnly=]   DELETE /v2/{job}   -> Operation
    POST   /v2/{job}:run  {overrides: {taskCount, timeout, containerOverrides}}  -> Operation: metadata the
           Execution, done when the execution is (its response), error when it failed
    GET    /v2/{job}/executions   GET|DELETE /v2/{job}/executions/E   POST /v2/{job}/executions/E:cancel
    GET    /v2/{execution}/tasks  GET /v2/{execution}/tasks/T      (T = E-task<index>)
    POST   /v2/entries:list       Cloud Logging (point the target's logging endpoint at the emulator)

Python side: ``jobs.jobs[full name]``, ``jobs.executions[full name]`` (``.tasks``: state, retried, exit_code),
``jobs.logs.entries``, ``jobs.kill_task(index, times=1, after_s=0.5)`` (a lost instance: SIGKILL, exit 137);
``fail_next`` and ``calls`` of the emulator cover these routes too. How tasks run: tests/emulators/cloudrun_tasks.py.
"""

from __future__ import annotations

import copy
import random
import re
import string
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.cloud import run_v2

from emulators._checks import ApiError, bad, cpus, quantity
from emulators.cloudrun_model import canon as _canon
from emulators.cloudrun_model import page as _page
from emulators.cloudrun_tasks import Execution, Logs, Runner, Task, now

if TYPE_CHECKING:
    from emulators.cloudrun import CloudRunEmulator

JOB_TYPE = "type.googleapis.com/google.cloud.run.v2.Job"
EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"
FAILED_PRECONDITION = 9
RESERVED = ("CLOUD_RUN_JOB", "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_ATTEMPT",
            "CLOUD_RUN_TASK_COUNT")
_LOC = r"projects/([^/]+)/locations/([^/]+)"
_JOB = rf"{_LOC}/jobs/([^/:]+)"
_EXEC = rf"{_JOB}/executions/([^/:]+)"
_INPUT = {"labels", "annotations", "client", "clientVersion", "launchStage", "binaryAuthorization", "template"}


@dataclass
class Job:
    name: str
    spec: dict[str, Any]
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    generation: int = 1
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    executions: list[str] = field(default_factory=list)  # full names, oldest first


class CloudRunJobs:
    """The jobs half of a CloudRunEmulator (see the module docstring); every handler runs under its lock."""

    def __init__(self, emu: CloudRunEmulator) -> None:
        self.emu = emu
        self.jobs: dict[str, Job] = {}
        self.executions: dict[str, Execution] = {}
        self.logs = Logs()
        self.kills: dict[int, list[float]] = {}  # task index -> seconds after start of the next attempts to kill

    def kill_task(self, index: int, *, times: int = 1, after_s: float = 0.5) -> None:
        """The next ``times`` attempts of task ``index`` (of any execution) are killed with SIGKILL ``after_s``
        seconds after they start, as when Cloud Run loses an instance: exit code 137, retried by the platform."""
        with self.emu._lock:
            self.kills.setdefault(index, []).extend([after_s] * times)

    def routes(self) -> list[tuple[tuple[str, ...], str, Any]]:
        return [
            (("POST",), rf"/v2/{_LOC}/jobs", self._create),
            (("GET",), rf"/v2/{_LOC}/jobs", self._list),
            (("GET",), rf"/v2/({_JOB})", lambda m, q, b: self._render(self._job(m[1]))),
            (("PATCH",), rf"/v2/({_JOB})", self._update),
            (("DELETE",), rf"/v2/({_JOB})", self._delete),
            (("POST",), rf"/v2/({_JOB}):run", self._run),
            (("GET",), rf"/v2/({_JOB})/executions", self._list_executions),
            (("GET",), rf"/v2/({_EXEC})", lambda m, q, b: self._render_execution(self._execution(m[1]))),
            (("DELETE",), rf"/v2/({_EXEC})", self._delete_execution),
            (("POST",), rf"/v2/({_EXEC}):cancel", self._cancel),
            (("GET",), rf"/v2/({_EXEC})/tasks", self._list_tasks),
            (("GET",), rf"/v2/({_EXEC})/tasks/([^/:]+)", self._get_task),
            (("POST",), r"/v2/entries:list", lambda m, q, b: self.logs.list(b)),
        ]

    # --- jobs -------------------------------------------------------------------------------------
    def _job(self, name: str) -> Job:
        if name not in self.jobs:
            parts = name.split("/")
            raise ApiError(404, f"Resource '{parts[-1]}' of kind 'JOB' in region '{parts[3]}' in project "
                                f"'{parts[1]}' does not exist.")
        return self.jobs[name]

    def _create(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        jid = query.get("jobId", "")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", jid):
            raise bad("job_id", f"Invalid job id '{jid}': it must be 1 to 63 lowercase letters, digits or hyphens, "
                                "start with a letter and not end with a hyphen.")
        name = f"projects/{m[1]}/locations/{m[2]}/jobs/{jid}"
        if name in self.jobs:
            raise ApiError(409, f"Resource '{jid}' already exists.")
        job = Job(name=name, spec=self._spec(body))
        if query.get("validateOnly") != "true":
            self.jobs[name] = job
        return self.emu._operation(name, done=True, response=self._render(job), type_=JOB_TYPE)

    def _update(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        if m[1] not in self.jobs and query.get("allowMissing") == "true":
            return self._create(re.match(_LOC, m[1]), {**query, "jobId": m[4]}, body)  # type: ignore[arg-type]
        job = self._job(m[1])
        if body.get("etag") and body["etag"] != self._etag(job):
            raise ApiError(409, "The etag does not match the job's current etag.", status="ABORTED")
        spec = self._spec(body)
        if query.get("validateOnly") == "true":
            return self.emu._operation(job.name, done=True, response={**self._render(job), **spec}, type_=JOB_TYPE)
        if spec != job.spec:
            job.spec, job.generation, job.updated = spec, job.generation + 1, now()
        return self.emu._operation(job.name, done=True, response=self._render(job), type_=JOB_TYPE)

    def _delete(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(m[1])
        rendered = self._render(job)
        del self.jobs[job.name]
        for name in job.executions:  # deleting a job deletes its executions (running ones are cancelled)
            ex = self.executions.pop(name, None)
            if ex is not None:
                ex.cancelled = ex.cancelled or not ex.done
                ex.deleted = True
        return self.emu._operation(job.name, done=True, response=rendered, type_=JOB_TYPE)

    def _list(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        prefix = f"projects/{m[1]}/locations/{m[2]}/"
        return _page([self._render(j) for n, j in sorted(self.jobs.items()) if n.startswith(prefix)], "jobs", query)

    def _spec(self, body: dict[str, Any]) -> dict[str, Any]:
        """The input fields of a Job body, checked, canonical, with Cloud Run's defaults."""
        spec = _canon({k: v for k, v in body.items() if k in _INPUT}, run_v2.Job, "job")
        spec.setdefault("launchStage", "GA")
        execution = spec.setdefault("template", {})
        execution.setdefault("taskCount", 1)
        task = execution.setdefault("template", {})
        task.setdefault("maxRetries", 3)
        task.setdefault("timeout", "600s")
        if len(task.get("containers", [])) != 1:
            raise bad("job.template.template.containers", "Exactly one container is required (image).")
        c = task["containers"][0]
        limits = c.setdefault("resources", {}).setdefault("limits", {})
        limits.setdefault("cpu", "1000m")
        limits.setdefault("memory", "512Mi")
        where = "job.template.template.containers[0]"
        image = c.get("image", "")
        registry = self.emu.registry
        if not re.fullmatch(rf"{re.escape(registry)}/[^\s:@]+(:\w[\w.-]*)?(@sha256:[0-9a-f]{{64}})?", image):
            raise bad(f"{where}.image", f"Expected an image path like {registry}/PROJECT/REPO/NAME[:tag][@digest] "
                                         f"(the emulator's stand-in for [region-]docker.pkg.dev), got {image!r}.")
        names = [e.get("name", "") for e in c.get("env", [])]
        if set(names) & set(RESERVED) or len(set(names)) != len(names) or any("valueSource" in e for e in c.get(
                "env", [])):
            raise bad(f"{where}.env", f"Duplicate or reserved env names ({', '.join(RESERVED)} are set by the "
                                       "system; secret references are not emulated).")
        if not 512 * 2**20 <= (quantity(limits["memory"]) or 0) <= 32 * 2**30:
            raise bad(f"{where}.resources.limits.memory", f"Invalid value '{limits['memory']}': from 512Mi to 32Gi.")
        if not 0 < (cpus(limits["cpu"]) or 0) <= 8:
            raise bad(f"{where}.resources.limits.cpu", f"Invalid value '{limits['cpu']}': at most 8 CPUs.")
        _check_counts(execution, task)
        return spec

    # --- executions -------------------------------------------------------------------------------
    def _run(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(m[1])
        if body.get("etag") and body["etag"] != self._etag(job):
            raise ApiError(409, "The etag does not match the job's current etag.", status="ABORTED")
        spec = copy.deepcopy(job.spec["template"])
        overrides = _canon(body.get("overrides") or {}, run_v2.RunJobRequest.Overrides, "overrides")
        spec["taskCount"] = overrides.get("taskCount", spec["taskCount"])
        spec["template"]["timeout"] = overrides.get("timeout", spec["template"]["timeout"])
        container = spec["template"]["containers"][0]
        for override in overrides.get("containerOverrides", []):
            env = {e["name"]: e for e in container.get("env", [])}
            env.update({e["name"]: e for e in override.get("env", [])})
            container["env"] = list(env.values())
            if override.get("args") or override.get("clearArgs"):
                container["args"] = override.get("args", [])
        _check_counts(spec, spec["template"])
        short = f"{job.name.rsplit('/', 1)[1]}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=5))}"
        name = f"{job.name}/executions/{short}"
        ex = Execution(name=name, job=job.name, spec=spec, labels={**job.spec.get("labels", {}),
                                                                   **spec.get("labels", {})})
        ex.tasks = [Task(index=i, name=f"{short}-task{i}") for i in range(int(spec["taskCount"]))]
        if query.get("validateOnly") == "true" or body.get("validateOnly"):
            return self.emu._operation(name, done=True, response=self._render_execution(ex), type_=EXECUTION_TYPE)
        self.executions[name] = ex
        job.executions.append(name)
        op = self.emu._operation(name, done=False, response=None, type_=EXECUTION_TYPE,
                                 metadata=self._render_execution(ex))
        ex.operation = op["name"]
        runner = Runner(self.emu.docker, self.emu.id, ex, self.logs, self.emu._lock, self.emu._closed, self._changed,
                        self.kills)
        self.emu._spawn(runner.run)
        return op

    def _changed(self, ex: Execution) -> None:
        """Keep the run operation in step with its execution (called under the emulator's lock)."""
        op = self.emu.operations.get(ex.operation)
        if op is None:
            return
        rendered = self._render_execution(ex)
        op["metadata"] = {"@type": EXECUTION_TYPE, **rendered}
        if ex.done:
            op["done"] = True
            op.update({"error": {"code": FAILED_PRECONDITION, "message": ex.failure}} if ex.failure
                      else {"response": {"@type": EXECUTION_TYPE, **rendered}})

    def _execution(self, name: str) -> Execution:
        if name not in self.executions:
            raise ApiError(404, f"Resource '{name.rsplit('/', 1)[1]}' of kind 'EXECUTION' does not exist.")
        return self.executions[name]

    def _list_executions(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(m[1])
        found = [self._render_execution(self.executions[n]) for n in reversed(job.executions) if n in self.executions]
        return _page(found, "executions", query)

    def _cancel(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(m[1])
        if ex.done:
            raise ApiError(400, f"Execution '{ex.short}' has already completed.", status="FAILED_PRECONDITION")
        ex.cancelled = True
        return self.emu._operation(ex.name, done=True, response=self._render_execution(ex), type_=EXECUTION_TYPE)

    def _delete_execution(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(m[1])
        ex.cancelled, ex.deleted = ex.cancelled or not ex.done, True
        rendered = self._render_execution(ex)
        del self.executions[ex.name]
        return self.emu._operation(ex.name, done=True, response=rendered, type_=EXECUTION_TYPE)

    # --- tasks ------------------------------------------------------------------------------------
    def _list_tasks(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(m[1])
        return _page([self._render_task(ex, t) for t in ex.tasks], "tasks", query)

    def _get_task(self, m: re.Match[str], query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(m[1])
        task = next((t for t in ex.tasks if t.name == m[6]), None)
        if task is None:
            raise ApiError(404, f"Resource '{m[6]}' of kind 'TASK' does not exist.")
        return self._render_task(ex, task)

    # --- rendering --------------------------------------------------------------------------------
    def _etag(self, job: Job) -> str:
        return f'"{job.uid[:8]}/{job.generation}"'

    def _render(self, job: Job) -> dict[str, Any]:
        latest = self.executions.get(job.executions[-1]) if job.executions else None
        out: dict[str, Any] = {
            **copy.deepcopy(job.spec), "name": job.name, "uid": job.uid, "generation": job.generation,
            "createTime": job.created, "updateTime": job.updated, "creator": "emulator@mlship.dev",
            "lastModifier": "emulator@mlship.dev", "observedGeneration": job.generation,
            "terminalCondition": _condition("Ready", "CONDITION_SUCCEEDED", "", job.updated),
            "executionCount": len(job.executions), "reconciling": False, "etag": self._etag(job)}
        if latest is not None:
            status = ("EXECUTION_CANCELLED" if latest.cancelled and latest.done else "EXECUTION_FAILED"
                      if latest.failure else "EXECUTION_SUCCEEDED" if latest.done else "EXECUTION_RUNNING"
                      if latest.started else "EXECUTION_PENDING")
            out["latestCreatedExecution"] = {"name": latest.name, "createTime": latest.created,
                                             "completionStatus": status,
                                             **({"completionTime": latest.completed} if latest.done else {})}
        return _canon(out, run_v2.Job)

    def _render_execution(self, ex: Execution) -> dict[str, Any]:
        started = ("CONDITION_SUCCEEDED" if ex.started else "CONDITION_PENDING", "Started deployed execution."
                   if ex.started else "Provisioning resources.", ex.started or ex.created, "")
        if not ex.done:
            completed = ("CONDITION_RECONCILING" if ex.started else "CONDITION_PENDING", "", ex.created, "")
        elif ex.failure:
            reason = "CANCELLED" if ex.cancelled else "NON_ZERO_EXIT_CODE"
            completed = ("CONDITION_FAILED", f"Execution {ex.short} has failed to complete, "
                         f"{ex.count('SUCCEEDED')}/{len(ex.tasks)} tasks were a success. {ex.failure}",
                         ex.completed, reason)
        else:
            completed = ("CONDITION_SUCCEEDED", "Execution completed successfully.", ex.completed, "")
        conditions = [_condition("Completed", *completed[:3], execution_reason=completed[3]),
                      _condition("ResourcesAvailable", *started[:3]), _condition("Started", *started[:3])]
        if ex.retried:
            conditions.append(_condition("Retry", "CONDITION_SUCCEEDED", f"{ex.retried} task attempt(s) retried.",
                                         ex.started))
        template = ex.spec["template"]
        out = {"name": ex.name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, ex.name)), "creator": "emulator@mlship.dev",
               "generation": 1, "labels": ex.labels, "createTime": ex.created, "updateTime": ex.completed or now(),
               "launchStage": "GA", "job": ex.job.rsplit("/", 1)[1], "parallelism": int(ex.spec.get("parallelism", 0)),
               "taskCount": len(ex.tasks), "template": template, "reconciling": not ex.done,
               "conditions": conditions, "observedGeneration": 1, "runningCount": ex.count("RUNNING"),
               "succeededCount": ex.count("SUCCEEDED"), "failedCount": ex.count("FAILED"),
               "cancelledCount": ex.count("CANCELLED"), "retriedCount": ex.retried,
               "logUri": f"https://console.cloud.google.com/logs/viewer?execution={ex.short}", "etag": f'"{ex.short}"'}
        out.update({k: v for k, v in (("startTime", ex.started), ("completionTime", ex.completed)) if v})
        return _canon(out, run_v2.Execution)

    def _render_task(self, ex: Execution, task: Task) -> dict[str, Any]:
        state = {"PENDING": "CONDITION_PENDING", "RUNNING": "CONDITION_RECONCILING", "SUCCEEDED":
                 "CONDITION_SUCCEEDED", "FAILED": "CONDITION_FAILED", "CANCELLED": "CONDITION_FAILED"}[task.state]
        message = "Completed successfully." if task.state == "SUCCEEDED" else task.status.get("message", "")
        template = ex.spec["template"]
        out: dict[str, Any] = {
            "name": f"{ex.name}/tasks/{task.name}", "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, task.name)),
            "generation": 1, "labels": ex.labels, "createTime": task.created, "updateTime": task.completed or now(),
            "job": ex.job.rsplit("/", 1)[1], "execution": ex.short, "containers": template["containers"],
            "maxRetries": template.get("maxRetries", 3), "timeout": template["timeout"],
            "reconciling": task.state in ("PENDING", "RUNNING"), "observedGeneration": 1, "index": task.index,
            "retried": task.retried, "conditions": [
                _condition("Completed", state, message, task.completed or task.started or task.created,
                           execution_reason="CANCELLED" if task.state == "CANCELLED" else "")],
            "logUri": ex.name, "etag": f'"{task.name}"'}
        if task.exit_code is not None or task.status:
            out["lastAttemptResult"] = {"exitCode": task.exit_code or 0, "termSignal": task.term_signal,
                                        **({"status": task.status} if task.status else {})}
        if template.get("serviceAccount"):
            out["serviceAccount"] = template["serviceAccount"]
        out.update({k: v for k, v in (("startTime", task.started), ("completionTime", task.completed)) if v})
        return _canon(out, run_v2.Task)


def _check_counts(execution: dict[str, Any], task: dict[str, Any]) -> None:
    if not 1 <= int(execution["taskCount"]) <= 10000:
        raise bad("job.template.task_count", "must be between 1 and 10000.")
    if int(execution.get("parallelism", 0)) < 0:
        raise bad("job.template.parallelism", "must be 0 (as many as possible) or more.")
    if not 0 <= int(task["maxRetries"]) <= 10:
        raise bad("job.template.template.max_retries", "must be between 0 and 10.")
    if not 1 <= float(str(task["timeout"]).rstrip("s")) <= 86400:
        raise bad("job.template.template.timeout", "must be between 1s and 86400s (24 hours).")


def _condition(type_: str, state: str, message: str, when: str, execution_reason: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "state": state, "message": message, "lastTransitionTime": when}
    if state == "CONDITION_FAILED":
        out["severity"] = "ERROR"
    if execution_reason:
        out["executionReason"] = execution_reason
    return out
