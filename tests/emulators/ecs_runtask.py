"""Standalone ECS tasks (RunTask) for the tests: moto records a task and answers, but runs nothing; this agent
does what ECS and Fargate do with such a task, on moto's models in this process.

Every ``tick_s`` it looks at moto's tasks that no service started (their group is not ``service:...``) and:

* runs each new one: PROVISIONING, then PENDING while the task definition's image is pulled from the loopback
  registry that stands in for ECR, then RUNNING once its container runs on the local Docker engine with the task
  definition's command and environment, the RunTask ``overrides`` of its container (environment and command), the
  task's memory as the container's limit and **host networking** (so the worker reaches moto's S3 on loopback, as a
  Fargate task reaches S3); ``AWS_REGION``/``AWS_DEFAULT_REGION`` as ECS sets them and, with a task role, that
  role's temporary credentials (moto's STS AssumeRole; ECS serves them from its credentials endpoint);
* a task whose log group does not exist fails to start, as with the awslogs driver (``ResourceInitializationError``),
  and an image that cannot be pulled gives ``CannotPullContainerError`` (stopCode ``TaskFailedToStart``);
* when the container exits: STOPPED with ``stopCode`` EssentialContainerExited, ``stoppedReason`` "Essential
  container in task exited", the container's ``exitCode``, ``startedAt``/``stoppedAt``;
* StopTask (moto marks the task STOPPED): the container gets SIGTERM, then SIGKILL after ``stop_grace_s`` (ECS's
  stopTimeout), its exit code is reported, stopCode ``UserInitiated``;
* the container's output goes to CloudWatch Logs as the awslogs driver sends it: stream
  ``<awslogs-stream-prefix>/<container name>/<task id>`` of the task definition's group.

moto advances a task's lastStatus by itself each time DescribeTasks reads it (its "manual" state transition); the
agent owns the status instead while it runs (``start`` turns moto's progression off, ``stop`` restores it).
``stop()`` removes every container it started. ``launched`` counts the containers started, by task definition;
``running_peak`` is the most that ran at once; ``interrupt_next(index)`` kills the next task of a shard (its
MLSHIP_BATCH_TASK_INDEX) shortly after it starts, as when Fargate loses the task's host (exit code 137).
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from emulators import _runtime
from emulators._runtime import LABEL
from emulators.ecs_moto import MotoServer

ACCOUNT = "123456789012"
TASK_MODEL = "ecs::task"


@dataclass
class Run:
    task: Any  # moto's Task
    container: Any = None
    log_group: str = ""
    stream: str = ""
    shipped: int = 0
    done: bool = False
    kill_at: float | None = None  # monotonic: when interrupt_next kills it


class ContainerAgent:
    """What the test-side agents that run a platform's tasks as local containers share (this one and
    aws_batch.BatchAgent): the engine, moto, the region, an id that labels their containers, the errors they saw,
    the most containers that ran at once."""

    def __init__(self, docker: Any, moto: MotoServer, region: str, *, tick_s: float, stop_grace_s: int) -> None:
        self.docker, self.moto, self.region = docker, moto, region
        self.tick_s, self.stop_grace_s = tick_s, stop_grace_s
        self.id = uuid.uuid4().hex[:8]
        self.errors: list[str] = []
        self.running_peak = 0  # the most task containers that ran at once
        self._stop = threading.Event()

    @property
    def logs(self) -> Any:
        from moto.logs.models import logs_backends

        return logs_backends[ACCOUNT][self.region]

    def containers(self) -> list[Any]:
        return list(self.docker.containers.list(all=True, filters={"label": f"{LABEL}.id={self.id}"}))


class RunTaskAgent(ContainerAgent):
    def __init__(self, docker: Any, moto: MotoServer, region: str, *, tick_s: float = 0.2,
                 stop_grace_s: int = 30) -> None:
        super().__init__(docker, moto, region, tick_s=tick_s, stop_grace_s=stop_grace_s)
        self.runs: dict[str, Run] = {}
        self.launched: dict[str, int] = {}
        self._interrupts: dict[str, list[float]] = {}  # MLSHIP_BATCH_TASK_INDEX -> [after_s, ...]
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name=f"ecs-runtask-{self.id}", daemon=True)

    @property
    def ecs(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][self.region]

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> RunTaskAgent:
        from moto.moto_api import state_manager

        state_manager.set_transition(TASK_MODEL, {"progression": "manual", "times": 2**62})
        self._thread.start()
        return self

    def stop(self) -> None:
        from moto.moto_api import state_manager

        self._stop.set()
        self._thread.join(30)
        for thread in self._threads:
            thread.join(60)
        with self._lock:
            for run in self.runs.values():
                if run.container is not None:
                    _runtime.stop_container(run.container, grace_s=1)
        state_manager.unset_transition(TASK_MODEL)

    def interrupt_next(self, index: int, *, times: int = 1, after_s: float = 1.0) -> None:
        """The next ``times`` tasks of shard ``index`` (their MLSHIP_BATCH_TASK_INDEX) are killed ``after_s`` after
        they start, as when Fargate loses a task's host: SIGKILL, exit code 137."""
        self._interrupts.setdefault(str(index), []).extend([after_s] * times)

    # --- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                with self._lock:
                    self._tick()
            except Exception as exc:  # keep running; the test sees what went wrong
                where = traceback.extract_tb(exc.__traceback__)[-1]
                self.errors.append(f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")

    def _tick(self) -> None:
        for cluster_tasks in list(self.ecs.tasks.values()):
            for arn, task in list(cluster_tasks.items()):
                if str(task.group).startswith("service:") or arn in self.runs:
                    continue
                self.runs[arn] = run = Run(task=task)
                if task.status == "STOPPED":  # stopped before this agent saw it
                    run.done = True
                    continue
                task.status = "PROVISIONING"
                task.containers[0].exitCode = None
                starting = threading.Thread(target=self._launch, args=(run,), daemon=True)
                starting.start()
                self._threads.append(starting)
        live = [r for r in self.runs.values() if not r.done and r.container is not None]
        self.running_peak = max(self.running_peak, len(live))
        for run in live:
            if run.kill_at is not None and time.monotonic() >= run.kill_at:
                run.kill_at = None
                with contextlib.suppress(Exception):
                    run.container.kill()
            code = _runtime.exit_code(run.container)
            if code is not None:
                self._finish(run, code, "EssentialContainerExited", "Essential container in task exited")
            elif run.task.status == "STOPPED":  # StopTask: moto marked it; the container gets SIGTERM
                reason = run.task.stopped_reason or "Task stopped by user"
                with contextlib.suppress(Exception):
                    run.container.stop(timeout=self.stop_grace_s)
                self._finish(run, _runtime.exit_code(run.container), "UserInitiated", reason)
            else:
                self._ship_logs(run)

    # --- one task ----------------------------------------------------------------------------------
    def _launch(self, run: Run) -> None:
        task = run.task
        try:
            td = self.ecs.describe_task_definition(task.task_definition_arn)
            spec = td.container_definitions[0]
            options = (spec.get("logConfiguration") or {}).get("options", {})
            task_id = task.task_arn.rpartition("/")[2]
            run.log_group = options.get("awslogs-group", "")
            run.stream = f"{options.get('awslogs-stream-prefix', 'ecs')}/{spec['name']}/{task_id}"
            if run.log_group and run.log_group not in self.logs.groups:
                self._fail(run, "ResourceInitializationError: failed to validate logger args: The specified log "
                           f"group does not exist: {run.log_group}")
                return
            overrides = task.overrides.get("containerOverrides", [])
            override: dict[str, Any] = next((o for o in overrides if o.get("name") == spec["name"]), {})
            env = {e["name"]: e["value"] for e in spec.get("environment", [])}
            env |= {e["name"]: e["value"] for e in override.get("environment", [])}
            env |= {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region, **self._role_credentials(td, task)}
            command = override.get("command") or spec.get("command") or None
            task.status = "PENDING"
            task.pull_started_at = datetime.now(timezone.utc)
            try:
                self.docker.images.pull(spec["image"])
            except Exception as exc:
                self._fail(run, f"CannotPullContainerError: {' '.join(str(exc).split())[:300]}")
                return
            task.pull_stopped_at = datetime.now(timezone.utc)
            memory = int(td.memory) * 2**20 if td.memory else None
            run.container = self.docker.containers.run(
                spec["image"], name=f"ecs-task-{self.id}-{task_id[:12]}", detach=True, environment=env,
                command=command, network_mode="host", mem_limit=memory, memswap_limit=memory,
                labels={LABEL: "ecs-task", f"{LABEL}.id": self.id, f"{LABEL}.task": task_id})
            self.launched[td.arn] = self.launched.get(td.arn, 0) + 1
            if task.status == "STOPPED":  # StopTask while it was pulled: the loop stops the container
                return
            after = self._interrupts.get(env.get("MLSHIP_BATCH_TASK_INDEX", ""))
            if after:
                run.kill_at = time.monotonic() + after.pop(0)
            task.status = "RUNNING"
            task.containers[0].last_status = "RUNNING"
            task.started_at = datetime.now(timezone.utc)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.errors.append(f"launch {task.task_arn}: {type(exc).__name__}: {exc} ({where.lineno})")
            self._fail(run, f"agent error: {exc}")

    def _role_credentials(self, td: Any, task: Any) -> dict[str, str]:
        """What ECS gives a task with a task role (none without a role)."""
        role = getattr(td, "task_role_arn", None)
        return role_credentials(self.moto, self.region, role, task.task_arn.rpartition("/")[2]) if role else {}

    def _fail(self, run: Run, reason: str) -> None:
        task = run.task
        task.status, task.desired_status = "STOPPED", "STOPPED"
        task.stop_code, task.stopped_reason = "TaskFailedToStart", reason
        task.containers[0].last_status, task.containers[0].reason = "STOPPED", reason
        task.stopped_at = datetime.now(timezone.utc)
        run.done = True

    def _finish(self, run: Run, code: int | None, stop_code: str, reason: str) -> None:
        task = run.task
        self._ship_logs(run)
        task.containers[0].exitCode = code
        task.containers[0].last_status = "STOPPED"
        task.status, task.desired_status = "STOPPED", "STOPPED"
        task.stop_code, task.stopped_reason = stop_code, reason
        task.stopped_at = task.execution_stopped_at = datetime.now(timezone.utc)
        run.done = True
        _runtime.stop_container(run.container, grace_s=1)

    def _ship_logs(self, run: Run) -> None:
        """The awslogs driver: the container's new output lines into the task's stream."""
        run.shipped = ship_logs(self.logs, run.log_group, run.stream, run.container, run.shipped)


def role_credentials(moto: MotoServer, region: str, role_arn: str, session: str) -> dict[str, str]:
    """A role's temporary credentials (moto's STS AssumeRole), as ECS's container credentials endpoint serves a task
    role's (ECS tasks, AWS Batch jobs on Fargate)."""
    import boto3

    sts = boto3.client("sts", endpoint_url=moto.endpoint, region_name=region, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    try:
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session[:32])["Credentials"]
    finally:
        sts.close()
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]}


def ship_logs(logs: Any, group: str, stream: str, container: Any, shipped: int) -> int:
    """The awslogs driver: the container's output lines after the first ``shipped`` into ``stream`` of ``group``
    (moto's Logs backend ``logs``); how many lines are shipped now. Nothing while the group does not exist."""
    if not group or group not in logs.groups:
        return shipped
    try:
        lines = container.logs().decode(errors="replace").splitlines()
    except Exception:
        return shipped
    if len(lines) <= shipped:
        return shipped
    if stream not in logs.groups[group].streams:
        logs.create_log_stream(group, stream)
    now = int(time.time() * 1000)
    logs.put_log_events(group, stream, [{"timestamp": now, "message": line} for line in lines[shipped:]])
    return len(lines)
