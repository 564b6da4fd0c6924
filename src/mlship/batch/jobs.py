"""The batch-job interface: what the core resolves once (:class:`BatchJob`), what a target returns after the job
(:class:`JobRun`), and what a target that runs batch jobs implements (:class:`BatchTarget`).

    job = batch_job(project, input_uri="s3://b/in/", output_uri="s3://b/out/", tasks=50)
    target.check_job(job)                  # pure: a flag this target cannot take (--job-queue): ContractError
    target.batch_preflight(job)            # read-only, fast: credentials, bucket access
    target.batch_plan(job, image)          # --dry-run: every resource and call, no credentials
    run = target.run_batch(job, image, progress)

Every task runs the same batch image with ``job.env`` and finds its shard from the task index the platform (or
the target) sets: ``CLOUD_RUN_TASK_INDEX``/``CLOUD_RUN_TASK_COUNT`` (Cloud Run Jobs), ``AWS_BATCH_JOB_ARRAY_INDEX``
+ ``MLSHIP_BATCH_TASK_COUNT`` (AWS Batch array jobs), ``MLSHIP_BATCH_TASK_INDEX``/``MLSHIP_BATCH_TASK_COUNT``
(a target that fans out itself: ECS RunTask overrides, local; :func:`task_env`). The task writes
``<output>/part-<index:05d>-of-<count:05d>.<ext>``, ``<output>/_mlship/rejects-<index:05d>.<ext>`` and, last,
``<output>/_mlship/task-<index:05d>.json`` (:func:`manifest_name`); a retried task whose manifest matches exits 0
at once. The core reads the manifests after the job for the final report. docs/batch.md.

This module imports nothing heavy (no pyarrow, no boto3): the targets and the worker both import it.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlship.errors import ContractError
from mlship.reports import Check

if TYPE_CHECKING:
    from mlship.contract_io import Project

Progress = Callable[[str], None]  # the same as mlship.targets.base.Progress: one line per call

#: the worker's command in every image mlship builds (`python -m mlship.batch.worker` is the same)
WORKER_COMMAND = ("mlship-batch",)
WORKER_MODULE_COMMAND = ("python", "-m", "mlship.batch.worker")

# the worker's environment (job.env), the same for every task
ENV_INPUT = "MLSHIP_BATCH_INPUT"  # a file or a folder / prefix: local path, s3://bucket/key, gs://bucket/key
ENV_OUTPUT = "MLSHIP_BATCH_OUTPUT"  # the folder / prefix parts and manifests go to
ENV_ID_COLUMN = "MLSHIP_BATCH_ID_COLUMN"  # optional: the input column carried into the output
ENV_FORMAT = "MLSHIP_BATCH_FORMAT"  # the parts' format: parquet (default), csv, jsonl
ENV_CHUNK_ROWS = "MLSHIP_BATCH_CHUNK_ROWS"  # optional: rows per scored chunk
ENV_JOB = "MLSHIP_BATCH_JOB"  # the job's run id (recorded in the manifests)
ENV_TASK_COUNT = "MLSHIP_BATCH_TASK_COUNT"  # in job.env: AWS Batch gives only the index
# set per task by a target that fans out itself (never in job.env)
ENV_TASK_INDEX = "MLSHIP_BATCH_TASK_INDEX"
#: object-storage endpoint overrides and client settings carried from this machine into job.env when set (MinIO,
#: emulators; moto needs AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED for pyarrow's uploads); never credentials:
#: a cloud task gets its platform's role, the local target passes this machine's credentials itself
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST", "AWS_REQUEST_CHECKSUM_CALCULATION")

# labels every resource a job creates carries (lowercase keys and values: valid as GCP labels and AWS tags)
LABEL_SERVICE = "mlship-service"
LABEL_JOB = "mlship-batch-job"

MANIFEST_DIR = "_mlship"
PART_FORMATS = ("parquet", "csv", "jsonl")


@dataclass(frozen=True)
class BatchJob:
    """A batch job, resolved once by the core from the CLI flags and the project (like DeploySpec)."""

    name: str  # "<service>-batch"
    input_uri: str  # local path, s3://bucket/prefix/, gs://bucket/prefix/ (a file or a folder / prefix)
    output_uri: str  # the folder / prefix the tasks write parts and manifests into
    tasks: int  # shard count (--tasks)
    parallelism: int  # at most this many tasks at once (--parallelism, default = tasks)
    max_retries: int  # per task (--max-retries, default 3)
    cpu: float  # per task
    memory_mib: int  # per task
    timeout_s: int  # per task
    env: dict[str, str] = field(default_factory=dict)  # the worker's env (not the task index: see task_env)
    labels: dict[str, str] = field(default_factory=dict)  # on every resource the job creates
    job_queue: str | None = None  # --job-queue: this run's queue, over the contract's (a target with queues: ecs)

    @property
    def job_id(self) -> str:
        """The run id (also ``labels[LABEL_JOB]`` and ``env[ENV_JOB]``)."""
        return self.env.get(ENV_JOB, "")


@dataclass
class JobRun:
    """What a target returns after the job finished (succeeded or not)."""

    job_id: str
    tasks: int
    succeeded: int
    failed: int
    retries: int
    failed_logs: dict[int, list[str]]  # task index -> the last log lines of a failed task
    seconds: float  # submit -> all tasks done
    cost_usd: float | None  # the target's estimate from its list-price table (documented, overridable)
    console: str | None = None  # where to look on the platform, when there is such a place


class BatchTarget(ABC):
    """A target that can run batch jobs inherits this too (``targets/base.py``'s Target stays as it is)."""

    def check_job(self, job: BatchJob) -> None:
        """Pure, before the preflight and the plan: a ContractError (exit 2) for a flag this target cannot take.
        This default refuses ``--job-queue``; a target whose job engine has queues overrides it."""
        if job.job_queue is not None:
            name = getattr(self, "name", type(self).__name__)
            raise ContractError(f"--job-queue does not apply to --target {name}.",
                                why=f"The {name} target's job engine has no job queues: --job-queue picks the AWS "
                                "Batch job queue that `--target ecs` runs an array job on.",
                                fix="Leave --job-queue out, or pass --target ecs with it.")

    @abstractmethod
    def batch_preflight(self, job: BatchJob) -> list[Check]:
        """Read-only, under 5 s: credentials, bucket access, options. A failed check has a fix; never raises."""

    @abstractmethod
    def batch_plan(self, job: BatchJob, image: str) -> list[str]:
        """Pure (``--dry-run``): every resource and call ``run_batch`` would make; no credentials needed."""

    @abstractmethod
    def run_batch(self, job: BatchJob, image: str, progress: Progress) -> JobRun:
        """Run the job with ``image`` (the LOCAL tag of the batch image; the target pushes it), poll with progress
        lines ("12/50 tasks done, 1 failed, 3 running"), retry failed tasks up to ``job.max_retries``, collect the
        failed tasks' last log lines. Platform failures raise mlship errors (what / why / fix); failed tasks do not
        (they are counted in the JobRun)."""


def task_env(job: BatchJob, index: int) -> dict[str, str]:
    """The environment of task ``index`` for a target that starts each task itself."""
    return {**job.env, ENV_TASK_INDEX: str(index), ENV_TASK_COUNT: str(job.tasks)}


def part_name(index: int, count: int, fmt: str) -> str:
    return f"part-{index:05d}-of-{count:05d}.{fmt}"


def rejects_name(index: int, fmt: str) -> str:
    return f"{MANIFEST_DIR}/rejects-{index:05d}.{fmt}"


def manifest_name(index: int) -> str:
    return f"{MANIFEST_DIR}/task-{index:05d}.json"


def _positive(flag: str, value: float, fix: str) -> None:
    if value < 1:
        raise ContractError(f"{flag} must be at least 1, not {value}.", fix=fix)


def job_name(service: str) -> str:
    """The platform name of a service's batch job (a target's destroy finds it by this name and its labels)."""
    return f"{service}-batch"[:63]


def batch_job(project: Project, *, input_uri: str, output_uri: str, tasks: int, parallelism: int | None = None,
              max_retries: int = 3, cpu: float = 1.0, memory_mib: int = 2048, timeout_s: int = 3600,
              id_column: str | None = None, fmt: str = "parquet", chunk_rows: int | None = None,
              job_queue: str | None = None) -> BatchJob:
    """The job for ``project`` from the CLI's flags; bad flags are ContractErrors naming the flag."""
    _positive("--tasks", tasks, "Pass --tasks 1 or more (one task per shard of the input).")
    _positive("--parallelism", parallelism or tasks, "Leave --parallelism out (all tasks at once) or pass 1 or more.")
    _positive("--timeout", timeout_s, "Pass the seconds one task may run, e.g. 3600.")
    if max_retries < 0:
        raise ContractError(f"--max-retries must be 0 or more, not {max_retries}.", fix="Pass --max-retries 3.")
    if cpu <= 0 or memory_mib < 128:
        raise ContractError(f"A task needs cpu > 0 and at least 128 MiB, not cpu {cpu} and {memory_mib} MiB.",
                            fix="Pass e.g. --cpu 1 --memory 2048.")
    if fmt not in PART_FORMATS:
        raise ContractError(f"The output format must be one of {', '.join(PART_FORMATS)}, not {fmt!r}.",
                            fix="Pass --format parquet.")
    if output_uri.rstrip("/") == input_uri.rstrip("/"):
        raise ContractError(f"--output {output_uri} is the input.", fix="Write the predictions to another folder.")
    service = project.contract.name
    run_id = uuid.uuid4().hex[:12]
    env = {ENV_INPUT: input_uri, ENV_OUTPUT: output_uri, ENV_FORMAT: fmt, ENV_JOB: run_id,
           ENV_TASK_COUNT: str(tasks)}
    if id_column:
        env[ENV_ID_COLUMN] = id_column
    if chunk_rows:
        env[ENV_CHUNK_ROWS] = str(chunk_rows)
    env.update({name: os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)})
    return BatchJob(name=job_name(service), input_uri=input_uri, output_uri=output_uri, tasks=tasks,
                    parallelism=min(parallelism or tasks, tasks), max_retries=max_retries, cpu=cpu,
                    memory_mib=memory_mib, timeout_s=timeout_s, env=env,
                    labels={LABEL_SERVICE: service, LABEL_JOB: run_id}, job_queue=job_queue)
