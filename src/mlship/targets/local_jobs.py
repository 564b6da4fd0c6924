"""Batch jobs on the local Docker engine (``mlship batch --target local --tasks N``): N containers of the batch
image, at most ``parallelism`` at once, each with its task index (MLSHIP_BATCH_TASK_INDEX/COUNT).

A local input or output is bind-mounted at the same path (input read-only), so the worker reads the same
MLSHIP_BATCH_INPUT / MLSHIP_BATCH_OUTPUT values; the containers run as your user and group (what they write in
the output folder is yours, and a folder only you can write works). They use the host's network (object storage,
an endpoint on loopback) and get your AWS variables (keys, region, profile) for s3:// data; for gs:// data, set
STORAGE_EMULATOR_HOST or mount credentials yourself (GOOGLE_APPLICATION_CREDENTIALS names a file the container
cannot see otherwise). A task that exits non-zero is started again after a pause (2 s, 4 s, ...) up to
``max_retries`` times; a task over ``timeout_s`` is killed and counts as failed. Every container carries the job's
labels and is removed when its task ends, and all of them when the run stops for any reason (Ctrl-C too).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from mlship.batch.jobs import BatchJob, BatchTarget, JobRun, Progress, task_env
from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.base import LABEL_OWNER, LABEL_ROLE, LABEL_SERVICE, owner_label

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED")
POLL_S = 0.25
LOG_LINES = 20


def _mounts(job: BatchJob) -> dict[str, dict[str, str]]:
    """Local input and output paths, bound at the same path (input read-only)."""
    volumes: dict[str, dict[str, str]] = {}
    if "://" not in job.input_uri:
        path = str(Path(job.input_uri).resolve())
        volumes[path] = {"bind": path, "mode": "ro"}
    if "://" not in job.output_uri:
        path = str(Path(job.output_uri).resolve())
        volumes[path] = {"bind": path, "mode": "rw"}
    return volumes


def _env(job: BatchJob, index: int) -> dict[str, str]:
    env = task_env(job, index)
    for name in ("MLSHIP_BATCH_INPUT", "MLSHIP_BATCH_OUTPUT"):
        if "://" not in env[name]:
            env[name] = str(Path(env[name]).resolve())
    env.update({name: os.environ[name] for name in AWS_VARS if os.environ.get(name)})
    env.setdefault("MLSHIP_BATCH_WORKERS", str(max(1, int(job.cpu))))
    return env


class LocalBatch(BatchTarget):
    """The local target's batch jobs (LocalTarget inherits it; ``self.docker`` is its engine client)."""

    service: str
    docker: Any

    def batch_preflight(self, job: BatchJob) -> list[Check]:
        checks = []
        if "://" not in job.output_uri:
            out = Path(job.output_uri).resolve()
            try:
                out.mkdir(parents=True, exist_ok=True)
                writable = os.access(out, os.W_OK | os.X_OK)
            except OSError as exc:
                writable, out = False, Path(f"{out} ({exc.strerror})")
            checks.append(Check(name="output folder", ok=writable, detail=f"{out} is writable" if writable else
                                f"{out} is not writable by you (the task containers run as your user)",
                                fix=None if writable else "Pick a folder you can write, or change its owner."))
        cpus = os.cpu_count() or 1
        checks.append(Check(name="task size", ok=job.cpu <= cpus, detail=f"{job.cpu:g} CPU per task, {cpus} here",
                            fix=None if job.cpu <= cpus else f"Pass --cpu {cpus} or less."))
        return checks

    def batch_plan(self, job: BatchJob, image: str) -> list[str]:
        mounts = [f"mount {src} at the same path ({m['mode']})" for src, m in _mounts(job).items()]
        return [f"run {job.tasks} container(s) of {image} on the local Docker engine, at most {job.parallelism} at "
                f"once, as user {os.getuid()}:{os.getgid()}, host network, {job.cpu:g} CPU and {job.memory_mib} MiB "
                f"each, labels {', '.join(f'{k}={v}' for k, v in job.labels.items())}",
                *mounts,
                f"task i gets MLSHIP_BATCH_TASK_INDEX=i, MLSHIP_BATCH_TASK_COUNT={job.tasks}, "
                + ", ".join(f"{k}={v}" for k, v in sorted(job.env.items()) if k != "MLSHIP_BATCH_TASK_COUNT"),
                f"retry a failed task up to {job.max_retries} time(s); kill a task after {job.timeout_s}s",
                "remove each container when its task ends"]

    def run_batch(self, job: BatchJob, image: str, progress: Progress) -> JobRun:
        started = time.monotonic()
        queue: deque[tuple[int, float]] = deque((i, 0.0) for i in range(job.tasks))  # (task, not before)
        attempts = dict.fromkeys(range(job.tasks), 0)
        running: dict[int, tuple[Any, float]] = {}
        succeeded: set[int] = set()
        failed: dict[int, list[str]] = {}
        retries = 0
        last = ""
        try:
            while queue or running:
                now = time.monotonic()
                for _ in range(len(queue)):
                    if len(running) >= job.parallelism:
                        break
                    index, not_before = queue.popleft()
                    if not_before > now:
                        queue.append((index, not_before))
                        continue
                    attempts[index] += 1
                    running[index] = (self._start_task(job, image, index, attempts[index]), now)
                for index, (container, since) in list(running.items()):
                    code = self._exit_code(container, since, job.timeout_s)
                    if code is None:
                        continue
                    del running[index]
                    if code == 0:
                        succeeded.add(index)
                    else:
                        lines = _tail(container)
                        if attempts[index] <= job.max_retries:
                            retries += 1
                            pause = 2.0 * attempts[index]
                            progress(f"task {index} failed (exit {code}): {_why(lines)}; "
                                     f"retry {attempts[index]} of {job.max_retries} in {pause:g}s")
                            queue.append((index, time.monotonic() + pause))
                        else:
                            failed[index] = lines
                            progress(f"task {index} failed (exit {code}) after {attempts[index]} attempt(s)")
                    _remove(container)
                line = (f"{len(succeeded)}/{job.tasks} tasks done, {len(failed)} failed, {len(running)} running")
                if line != last:
                    progress(line)
                    last = line
                time.sleep(POLL_S)
        finally:
            for container, _since in running.values():
                _remove(container)
        return JobRun(job_id=job.job_id, tasks=job.tasks, succeeded=len(succeeded), failed=len(failed),
                      retries=retries, failed_logs=failed, seconds=round(time.monotonic() - started, 3),
                      cost_usd=None)

    def _start_task(self, job: BatchJob, image: str, index: int, attempt: int) -> Any:
        from docker.errors import DockerException

        labels = {**job.labels, LABEL_SERVICE: self.service, LABEL_ROLE: "batch-task", LABEL_OWNER: owner_label(),
                  "dev.mlship.batch-task": str(index)}
        try:
            return self.docker.containers.run(
                image, detach=True, environment=_env(job, index), volumes=_mounts(job), network_mode="host",
                user=f"{os.getuid()}:{os.getgid()}", labels=labels, mem_limit=f"{job.memory_mib}m",
                nano_cpus=int(job.cpu * 1e9), name=f"{job.name}-{job.job_id}-{index}-{attempt}")
        except DockerException as exc:
            raise TargetError(f"Cannot start task {index} of {job.name} from {image}: {str(exc).splitlines()[0]}",
                              why="The local Docker engine refused the container.",
                              fix=f"Check that {image} exists (`docker image ls`) and the engine runs.") from None

    def _exit_code(self, container: Any, since: float, timeout_s: int) -> int | None:
        container.reload()
        if container.status in ("exited", "dead"):
            return int(container.attrs["State"]["ExitCode"])
        if time.monotonic() - since > timeout_s:
            container.kill()
            container.wait(timeout=30)
            return 137
        return None


def _why(lines: list[str]) -> str:
    """The worker's error line (`mlship-batch: what`) of a failed task's log, else its last line."""
    said = [line for line in lines if line.startswith("mlship-batch: ")]
    return (said or lines or ["no output"])[-1]


def _tail(container: Any) -> list[str]:
    try:
        text = container.logs(tail=LOG_LINES).decode(errors="replace")
    except Exception:  # the container may be gone already
        return []
    return [line for line in text.splitlines() if line.strip()]


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):  # already gone
        container.remove(force=True)
