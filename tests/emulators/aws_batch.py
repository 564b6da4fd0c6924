"""AWS Batch jobs for the tests: moto's Batch backend records job queues, compute environments, job definitions and
jobs, but runs a job its own way (its own image pulls, no AWS_BATCH_JOB_ARRAY_INDEX, no retryStrategy). This agent
runs each job the way AWS Batch documents it for Fargate, on moto's models in this process.

The hook: moto starts one thread per job it runs (``moto.batch.models.Job`` is a ``threading.Thread``: an array
job's children are started at SubmitJob, the parent only keeps their statuses). While the agent is started,
``Job.run`` is the agent's (``stop`` restores moto's), so every job moto would run is run by the agent instead, in
moto's own thread; moto's status progression of ``batch::job`` is off, as the agent owns the statuses. Nothing
else of moto is changed: SubmitJob, DescribeJobs, ListJobs, TerminateJob and the job definitions stay moto's.

A job (an array child, or a plain job): PENDING, then RUNNABLE until the queue's compute environments have room
(their maxvCpus over the job's VCPU), STARTING while the image is pulled from the loopback registry that stands in
for ECR, RUNNING while its container runs on the local engine with host networking (so the worker reaches moto's
S3 on loopback). The container gets the job definition's environment, the SubmitJob overrides' environment,
``AWS_BATCH_JOB_ID`` (``<parent>:<index>`` for a child), ``AWS_BATCH_JOB_ARRAY_INDEX`` (children only),
``AWS_BATCH_JOB_ATTEMPT``, ``AWS_BATCH_JQ_NAME``, ``AWS_BATCH_CE_NAME``, the region and, with a ``jobRoleArn``,
that role's temporary credentials (moto's STS); MEMORY as its memory limit. Its output goes to CloudWatch Logs as
the awslogs driver sends it (stream ``<awslogs-stream-prefix>/default/<task id>`` of the definition's group; a
missing group fails the attempt with ``ResourceInitializationError``). Each attempt is recorded in the job's
``attempts`` (container exitCode, reason, logStreamName, startedAt, stoppedAt, statusReason). A failed attempt is
retried while ``retryStrategy.attempts`` allows and ``evaluateOnExit`` says RETRY (its first entry whose
onStatusReason / onReason / onExitCode globs all match; none matching: RETRY); an attempt that runs past
``attemptDurationSeconds`` is killed and not retried ("Job attempt duration exceeded timeout"), as AWS Batch
does. TerminateJob on a job or on its array parent stops the container (SIGTERM, SIGKILL after ``stop_grace_s``)
and fails the job with the given reason, no retry; a child still RUNNABLE fails without an attempt. The parent
of an array is PENDING until all its children are done, then SUCCEEDED (moto) or FAILED.

``interrupt_next(index)`` kills the next attempt of array child ``index`` shortly after it starts, as when
Fargate loses the task's host (exit code 137); ``attempts`` counts the attempts by job id; ``running_peak`` is
the most containers that ran at once. ``stop()`` removes every container it started.
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from emulators import _runtime
from emulators._runtime import LABEL
from emulators.ecs_moto import MotoServer
from emulators.ecs_runtask import ACCOUNT, ContainerAgent, role_credentials, ship_logs

JOB_MODEL = "batch::job"
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
EXITED_REASON = "Essential container in task exited"


@dataclass
class Attempt:
    """One attempt's outcome."""

    exit_code: int | None
    reason: str  # the attempt's statusReason
    container_reason: str | None = None
    retry: bool = True  # False: terminated or timed out (AWS Batch does not retry those)


class BatchAgent(ContainerAgent):
    def __init__(self, docker: Any, moto: MotoServer, region: str, *, tick_s: float = 0.2,
                 stop_grace_s: int = 5) -> None:
        super().__init__(docker, moto, region, tick_s=tick_s, stop_grace_s=stop_grace_s)
        self.attempts: dict[str, int] = {}  # job id -> attempts started
        self._running: dict[str, int] = {}  # job queue ARN -> vCPUs in use (thousandths)
        self._containers: list[Any] = []
        self._interrupts: dict[int, list[float]] = {}
        self._jobs: list[Any] = []
        self._lock = threading.Lock()
        self._original_run: Any = None

    @property
    def batch(self) -> Any:
        from moto.batch.models import batch_backends

        return batch_backends[ACCOUNT][self.region]

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> BatchAgent:
        from moto.batch.models import Job
        from moto.moto_api import state_manager

        state_manager.set_transition(JOB_MODEL, {"progression": "manual", "times": 2**62})
        agent = self
        self._original_run = Job.run

        def run(job: Any) -> None:
            agent._run(job)

        Job.run = run  # type: ignore[method-assign,assignment]
        return self

    def stop(self) -> None:
        from moto.batch.models import Job
        from moto.moto_api import state_manager

        self._stop.set()
        for job in list(self._jobs):
            job.join(60)
        Job.run = self._original_run  # type: ignore[method-assign]
        state_manager.unset_transition(JOB_MODEL)
        for container in self._containers:
            _runtime.stop_container(container, grace_s=1)

    def interrupt_next(self, index: int, *, times: int = 1, after_s: float = 1.0) -> None:
        """The next ``times`` attempts of array child ``index`` are killed ``after_s`` after they start (exit 137)."""
        self._interrupts.setdefault(index, []).extend([after_s] * times)

    # --- one job (in moto's thread) --------------------------------------------------------------------
    def _run(self, job: Any) -> None:
        self._jobs.append(job)
        parent = self._parent(job)
        try:
            job.status = "PENDING"
            vcpus = float(job.job_definition._get_resource_requirement("vcpus", 1))
            retry = job.job_definition.retry_strategy or {}
            timeout = (job.timeout or job.job_definition.timeout or {}).get("attemptDurationSeconds")
            outcome: Attempt | None = None
            for number in range(1, max(1, int(retry.get("attempts", 1))) + 1):
                job.status = "RUNNABLE"
                if not self._acquire(job, parent, vcpus):
                    outcome = Attempt(None, self._terminated(job, parent) or "agent stopped", retry=False)
                    break
                try:
                    outcome = self._attempt(job, parent, number, timeout)
                finally:
                    with self._lock:
                        self._running[job.job_queue.arn] -= int(vcpus * 1000)
                if outcome.exit_code == 0 and outcome.retry:
                    break
                if not outcome.retry or _action(retry.get("evaluateOnExit") or [], outcome) != "RETRY":
                    break
            self._finish(job, outcome)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.errors.append(f"job {job.job_id}: {type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")
            self._finish(job, Attempt(None, f"agent error: {exc}"))
        finally:
            if parent is not None:
                self._settle(parent)

    def _parent(self, job: Any) -> Any:
        parent_id, colon, _ = job.job_id.rpartition(":")
        return self.batch._jobs.get(parent_id) if colon else None

    def _terminated(self, job: Any, parent: Any) -> str | None:
        for owner in (job, parent):
            if owner is not None and owner.stop:
                return str(owner.job_stopped_reason or "Terminated by user")
        return None

    def _acquire(self, job: Any, parent: Any, vcpus: float) -> bool:
        """Wait (RUNNABLE) until the queue's compute environments have ``vcpus`` free; False when terminated."""
        queue = job.job_queue
        room = int(sum(float((e.compute_resources or {}).get("maxvCpus", 0)) for e in queue.environments) * 1000)
        need = int(vcpus * 1000)
        while not self._stop.is_set() and not self._terminated(job, parent):
            with self._lock:
                if self._running.get(queue.arn, 0) + need <= max(room, need):
                    self._running[queue.arn] = self._running.get(queue.arn, 0) + need
                    return True
            time.sleep(self.tick_s)
        return False

    def _attempt(self, job: Any, parent: Any, number: int, timeout: int | None) -> Attempt:
        props = job.job_definition.container_properties
        task_id = uuid.uuid4().hex
        options = (props.get("logConfiguration") or {}).get("options", {})
        group = options.get("awslogs-group", "/aws/batch/job")
        prefix = options.get("awslogs-stream-prefix", job.job_definition.name)
        record: dict[str, Any] = {"container": {"logStreamName": f"{prefix}/default/{task_id}",
                                                "taskArn": f"arn:aws:ecs:{self.region}:{ACCOUNT}:task/{task_id}",
                                                "networkInterfaces": []},
                                  "startedAt": _ms()}
        job.attempts.append(record)
        job.latest_attempt = record
        job.log_stream_name = record["container"]["logStreamName"]
        self.attempts[job.job_id] = self.attempts.get(job.job_id, 0) + 1
        job.status = "STARTING"
        outcome = self._container(job, parent, number, timeout, task_id, group, record["container"]["logStreamName"])
        record["container"].update({"exitCode": outcome.exit_code, "reason": outcome.container_reason})
        record.update({"stoppedAt": _ms(), "statusReason": outcome.reason})
        return outcome

    def _container(self, job: Any, parent: Any, number: int, timeout: int | None, task_id: str, group: str,
                   stream: str) -> Attempt:
        props = job.job_definition.container_properties
        if group not in self.logs.groups:
            reason = (f"ResourceInitializationError: failed to validate logger args: The specified log group does "
                      f"not exist: {group}")
            return Attempt(None, "Task failed to start", reason)
        try:
            self.docker.images.pull(props["image"])
        except Exception as exc:
            why = " ".join(str(exc).split())[:300]
            return Attempt(None, "Task failed to start", f"CannotPullContainerError: {why}")
        index = (job.array_properties or {}).get("index")
        env = {e["name"]: e["value"] for e in props.get("environment", [])}
        env |= {e["name"]: e["value"] for e in list(job.container_overrides.get("environment", []))}
        env |= {"AWS_BATCH_JOB_ID": job.job_id, "AWS_BATCH_JOB_ATTEMPT": str(number),
                "AWS_BATCH_JQ_NAME": job.job_queue.name, "AWS_BATCH_CE_NAME": job.job_queue.environments[0].name,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        if props.get("jobRoleArn"):
            env |= role_credentials(self.moto, self.region, props["jobRoleArn"], task_id)
        memory = int(job.job_definition._get_resource_requirement("memory", 512)) * 2**20
        container = self.docker.containers.run(
            props["image"], name=f"batch-job-{self.id}-{task_id[:12]}", detach=True, environment=env,
            command=props.get("command") or None, network_mode="host", mem_limit=memory, memswap_limit=memory,
            labels={LABEL: "batch-job", f"{LABEL}.id": self.id, f"{LABEL}.job": job.job_id.replace(":", "-")})
        self._containers.append(container)
        job.status, job.job_started_at = "RUNNING", job.job_started_at if number > 1 else _now()
        with self._lock:
            self.running_peak = max(self.running_peak, sum(_runtime.exit_code(c) is None for c in self._containers))
        started = time.monotonic()
        after = self._interrupts.get(index, []) if index is not None else []
        kill_at = started + after.pop(0) if after else None
        shipped = 0
        try:
            while True:
                shipped = ship_logs(self.logs, group, stream, container, shipped)
                code = _runtime.exit_code(container)
                if code is not None:
                    return Attempt(code, EXITED_REASON, None if code == 0 else f"exit code {code}")
                stopped = self._terminated(job, parent) or ("agent stopped" if self._stop.is_set() else None)
                if stopped:
                    with contextlib.suppress(Exception):
                        container.stop(timeout=self.stop_grace_s)
                    return Attempt(_runtime.exit_code(container), stopped, "Task stopped by user", retry=False)
                if timeout and time.monotonic() - started > timeout:
                    with contextlib.suppress(Exception):
                        container.kill()
                    return Attempt(_runtime.exit_code(container), TIMEOUT_REASON, TIMEOUT_REASON, retry=False)
                if kill_at is not None and time.monotonic() >= kill_at:
                    kill_at = None
                    with contextlib.suppress(Exception):
                        container.kill()
                time.sleep(self.tick_s)
        finally:
            ship_logs(self.logs, group, stream, container, shipped)
            _runtime.stop_container(container, grace_s=1)

    def _finish(self, job: Any, outcome: Attempt | None) -> None:
        ok = outcome is not None and outcome.exit_code == 0 and outcome.retry
        job.exit_code = outcome.exit_code if outcome is not None else None
        if not ok:
            job.job_stopped_reason = outcome.reason if outcome is not None else "no attempt"
        job.job_stopped_at, job.job_stopped = _now(), True
        job.status = "SUCCEEDED" if ok else "FAILED"

    def _settle(self, parent: Any) -> None:
        """The array parent is done when its children are: FAILED when any failed (moto marks SUCCEEDED itself)."""
        with self._lock:
            children = parent._child_jobs or []
            statuses = [c.status for c in children]
            if children and all(s in ("SUCCEEDED", "FAILED") for s in statuses) and not parent.job_stopped:
                parent.job_stopped, parent.job_stopped_at = True, _now()
                if "FAILED" in statuses:
                    parent.job_stopped_reason = parent.job_stopped_reason or "Array Child Job failed"
                    parent.status = "FAILED"
                else:
                    parent.status = "SUCCEEDED"
            elif parent.status == "SUBMITTED":
                parent.status = "PENDING"


def _action(rules: list[dict[str, Any]], outcome: Attempt) -> str:
    """The first evaluateOnExit entry whose globs all match the attempt; RETRY when none does (AWS Batch's rule)."""
    fields = {"onStatusReason": outcome.reason, "onReason": outcome.container_reason or "",
              "onExitCode": "" if outcome.exit_code is None else str(outcome.exit_code)}
    for rule in rules:
        if all(fnmatch.fnmatchcase(fields[key], str(rule[key])) for key in fields if key in rule):
            return str(rule.get("action", "RETRY")).upper()
    return "RETRY"


def _now() -> Any:
    from datetime import datetime

    return datetime.now()


def _ms() -> int:
    return int(time.time() * 1000)
