"""What ``mlship batch --target cloudrun`` asks Cloud Run Jobs for, and how it reads the answers. Pure functions:
the limits of a job, the job template (``google.cloud.run_v2.ExecutionTemplate`` field names), its labels, the
plan text, an execution's state, the Cloud Logging filter of a task, and the cost estimate.

Cost estimate: each task's billable time (its start to its completion, rounded up to 100 ms) times
``cpu * price per vCPU-second + memory in GiB * price per GiB-second``. The default prices are Cloud Run's list
prices for jobs in Tier 1 regions (https://cloud.google.com/run/pricing: $0.000018 per vCPU-second, $0.000002 per
GiB-second), without the monthly free tier; ``targets.cloudrun.batch_vcpu_second_usd`` and
``batch_gib_second_usd`` override them (Tier 2 regions, committed-use discounts).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from mlship import __version__
from mlship.batch.jobs import WORKER_MODULE_COMMAND, BatchJob
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.cloudrun.spec import CONTAINER_NAME, MANAGED_BY, label_value

MAX_RETRIES = 10  # Cloud Run: 0..10 retries per task
MAX_TASKS = 10000
MAX_TIMEOUT_S = 24 * 3600  # generally available task timeout (longer ones are in preview)
MEMORY_MIB = (512, 32768)
CPUS = (1.0, 2.0, 4.0, 6.0, 8.0)


def limit_problems(job: BatchJob) -> list[tuple[str, str]]:
    """(what is wrong, the fix) for each Cloud Run Jobs limit ``job`` exceeds; empty when it fits."""
    found = []
    if job.tasks > MAX_TASKS:
        found.append((f"--tasks {job.tasks} is more than Cloud Run's {MAX_TASKS} tasks per job.",
                      f"Pass --tasks {MAX_TASKS} or fewer (each task takes a bigger shard)."))
    if job.max_retries > MAX_RETRIES:
        found.append((f"--max-retries {job.max_retries} is more than Cloud Run's {MAX_RETRIES} retries per task.",
                      f"Pass --max-retries {MAX_RETRIES} or fewer."))
    if job.timeout_s > MAX_TIMEOUT_S:
        found.append((f"A task timeout of {job.timeout_s}s is more than Cloud Run's {MAX_TIMEOUT_S}s (24 hours).",
                      "Pass a shorter --timeout, and more --tasks so each shard finishes in time."))
    if not MEMORY_MIB[0] <= job.memory_mib <= MEMORY_MIB[1]:
        found.append((f"{job.memory_mib} MiB per task is outside Cloud Run Jobs' {MEMORY_MIB[0]} to "
                      f"{MEMORY_MIB[1]} MiB.", f"Pass --memory between {MEMORY_MIB[0]} and {MEMORY_MIB[1]}."))
    if not (job.cpu in CPUS or 0.08 <= job.cpu < 1):
        found.append((f"{job.cpu:g} CPUs per task is not a Cloud Run size.",
                      "Pass --cpu 1, 2, 4, 6 or 8 (or a fraction below 1, such as 0.5)."))
    return found


def cpu_text(cpu: float) -> str:
    return str(int(cpu)) if cpu in CPUS else f"{round(cpu * 1000)}m"


def job_labels(opts: CloudRunOptions, job: BatchJob) -> dict[str, str]:
    """On the job and on its executions: mlship's, the user's (targets.cloudrun.labels), the batch job's."""
    return {MANAGED_BY[0]: MANAGED_BY[1], "dev-mlship-version": label_value(__version__), **opts.labels,
            **{k: label_value(v) for k, v in job.labels.items()}}


def job_template(opts: CloudRunOptions, job: BatchJob, image: str) -> dict[str, Any]:
    """The job's ``template`` (``run_v2.ExecutionTemplate`` field names) for ``image`` (a digest reference)."""
    env = [{"name": k, "value": v} for k, v in sorted({**opts.environment(), **job.env}.items())]
    container = {"name": CONTAINER_NAME, "image": image, "env": env,  # the batch image's command: the worker
                 "resources": {"limits": {"cpu": cpu_text(job.cpu), "memory": f"{job.memory_mib}Mi"}}}
    return {"labels": job_labels(opts, job), "task_count": job.tasks, "parallelism": job.parallelism,
            "template": {"containers": [container], "max_retries": job.max_retries,
                         "timeout": timedelta(seconds=job.timeout_s),
                         "service_account": opts.service_account or ""}}


def job_path(opts: CloudRunOptions, job: BatchJob) -> str:
    return f"projects/{opts.project}/locations/{opts.region}/jobs/{job.name}"


def plan_lines(opts: CloudRunOptions, job: BatchJob, image: str) -> list[str]:
    """Every resource and call of ``run_batch`` (``mlship batch --target cloudrun --dry-run``)."""
    name, _, version = image.rpartition(":")
    remote = f"{opts.registry_path}/{name}:{version}"
    labels = ", ".join(f"{k}={v}" for k, v in job_labels(opts, job).items())
    endpoint = opts.api_endpoint or "https://run.googleapis.com"
    return [
        f"create Artifact Registry repository projects/{opts.project}/locations/{opts.region}/repositories/"
        f"{opts.repository} (format DOCKER) if missing",
        f"push {image} to {remote}" + ("" if opts.registry else " (Docker login as oauth2accesstoken with your "
                                        "Application Default Credentials' access token)"),
        f"Cloud Run job {job_path(opts, job)} via {endpoint}: create it, or update it (it must carry "
        f"{MANAGED_BY[0]}={MANAGED_BY[1]})",
        f"  image {remote.rpartition(':')[0]}@sha256:<digest of the push>, its command ("
        f"{' '.join(WORKER_MODULE_COMMAND)})",
        f"  {job.tasks} task(s), at most {job.parallelism} at once, up to {job.max_retries} retries per task, "
        f"task timeout {job.timeout_s}s, cpu {cpu_text(job.cpu)}, memory {job.memory_mib}Mi, service account "
        f"{opts.service_account or '(the default compute account)'}",
        f"  env {', '.join(sorted({**opts.environment(), **job.env}))} (each task also gets CLOUD_RUN_TASK_INDEX "
        "and CLOUD_RUN_TASK_COUNT from Cloud Run)",
        f"  input {job.input_uri}, output {job.output_uri}",
        f"  labels {labels}",
        f"run it (POST {job_path(opts, job)}:run) and poll the execution, printing tasks done / failed / running",
        "after it: the tasks' state; the last log lines of each failed task from Cloud Logging "
        f"({opts.logging_endpoint or 'https://logging.googleapis.com'})",
        f"cost estimate: task time x (cpu x ${opts.batch_vcpu_second_usd}/vCPU-s + memory x "
        f"${opts.batch_gib_second_usd}/GiB-s)",
    ]


def _name(enum: Any) -> str:
    return str(getattr(enum, "name", enum))


def execution_state(execution: Any) -> tuple[str, str]:
    """("running" | "succeeded" | "failed" | "cancelled", message) from an execution's Completed condition."""
    for cond in execution.conditions:
        if cond.type_ == "Completed":
            state = _name(cond.state)
            if state == "CONDITION_SUCCEEDED":
                return "succeeded", str(cond.message)
            if state == "CONDITION_FAILED":
                reason = _name(getattr(cond, "execution_reason", ""))
                return ("cancelled" if reason == "CANCELLED" else "failed"), str(cond.message)
    return ("failed", "") if execution.completion_time and execution.failed_count else (
        ("succeeded", "") if execution.completion_time else ("running", ""))


def task_failed(task: Any) -> bool:
    return any(c.type_ == "Completed" and _name(c.state) == "CONDITION_FAILED"
               and _name(getattr(c, "execution_reason", "")) != "CANCELLED" for c in task.conditions)


def task_seconds(task: Any) -> float:
    """A task's billable time: start to completion, rounded up to 100 ms (0 when it never started)."""
    if not task.start_time or not task.completion_time:
        return 0.0
    seconds = float((task.completion_time - task.start_time).total_seconds())
    return math.ceil(max(0.0, seconds) * 10) / 10


def cost_usd(opts: CloudRunOptions, job: BatchJob, tasks: list[Any]) -> float:
    rate = job.cpu * opts.batch_vcpu_second_usd + job.memory_mib / 1024 * opts.batch_gib_second_usd
    return float(sum(task_seconds(t) for t in tasks) * rate)


def log_filter(opts: CloudRunOptions, job: BatchJob, execution: str, index: int) -> str:
    """The Cloud Logging filter of one task's lines."""
    return (f'resource.type="cloud_run_job" AND resource.labels.job_name="{job.name}" AND '
            f'resource.labels.location="{opts.region}" AND labels."run.googleapis.com/execution_name"="{execution}"'
            f' AND labels."run.googleapis.com/task_index"="{index}"')


def console_url(opts: CloudRunOptions, execution: str) -> str:
    return (f"https://console.cloud.google.com/run/jobs/executions/details/{opts.region}/{execution}/tasks"
            f"?project={opts.project}")
