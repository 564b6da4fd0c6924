"""What an AWS Batch array job asks AWS for; pure functions (no client): the job definition
(``batch.register_job_definition`` arguments) and the comparison that decides whether a new revision is needed,
the SubmitJob arguments, the queue check's verdict, the progress line and the plan (``--dry-run``).

The job definition ``mlship-<service>-batch`` (the RunTask path's task definition family: the two never share an
API, one is ECS's, the other Batch's) holds what is the same for every job of an image and size: the image by
digest, the roles, VCPU/MEMORY, the service's environment and secrets, awslogs, the public IP rule, the retry
strategy and the attempt timeout. The job's own environment (input, output, run id, task count) goes in SubmitJob's
``containerOverrides``, so the next job of the same image and flags reuses the revision.
"""

from __future__ import annotations

import re
from typing import Any

from mlship.batch.jobs import ENV_TASK_COUNT, ENV_TASK_INDEX, WORKER_MODULE_COMMAND, BatchJob
from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.ecs.jobs_spec import POLICY_NAME, batch_names, fargate_size
from mlship.targets.ecs.options import EcsOptions
from mlship.targets.ecs.spec import Names, tags

ARRAY_MIN, ARRAY_MAX = 2, 10_000  # AWS Batch: an array job has 2 to 10,000 children
MAX_ATTEMPTS = 10  # retryStrategy.attempts: 1 to 10
MIN_TIMEOUT_S = 60  # timeout.attemptDurationSeconds: at least 60
FARGATE_TYPES = ("FARGATE", "FARGATE_SPOT")
#: TerminateJob's reason when mlship stops a job (Ctrl-C, an error); the retry strategy exits on it
TERMINATE_REASON = "Terminated by mlship: the batch run was interrupted"
#: retry a failed attempt (a non-zero exit, a lost host, a task that could not start), never a terminated job
EVALUATE_ON_EXIT = [{"onStatusReason": "Terminated by mlship*", "action": "EXIT"},
                    {"onReason": "*", "action": "RETRY"}]
COMPARED = ("image", "resourceRequirements", "executionRoleArn", "jobRoleArn", "environment", "secrets",
            "logConfiguration", "networkConfiguration", "fargatePlatformConfiguration")


def definition_name(n: Names) -> str:
    """``mlship-<service>-batch`` (Batch allows 128 characters)."""
    return batch_names(n).family[:128]


def check_limits(job: BatchJob) -> None:
    """AWS Batch's limits on the job's flags, as TargetErrors naming the flag (before anything is made)."""
    if job.tasks > ARRAY_MAX:
        raise TargetError(f"--tasks {job.tasks} is more than an AWS Batch array job holds.",
                          why=f"An array job has at most {ARRAY_MAX:,} children.",
                          fix=f"Pass --tasks {ARRAY_MAX} or less (each task then scores a larger shard).")
    if job.max_retries + 1 > MAX_ATTEMPTS:
        raise TargetError(f"--max-retries {job.max_retries} is more than AWS Batch allows.",
                          why=f"A job definition's retryStrategy makes at most {MAX_ATTEMPTS} attempts per task.",
                          fix=f"Pass --max-retries {MAX_ATTEMPTS - 1} or less.")
    if job.timeout_s < MIN_TIMEOUT_S:
        raise TargetError(f"--timeout {job.timeout_s} is less than AWS Batch allows.",
                          why=f"An attempt's timeout (attemptDurationSeconds) is at least {MIN_TIMEOUT_S} seconds.",
                          fix=f"Pass --timeout {MIN_TIMEOUT_S} or more.")


def job_definition(opts: EcsOptions, n: Names, job: BatchJob, *, image: str, region: str, execution_role: str,
                   job_role: str) -> dict[str, Any]:
    """``register_job_definition`` arguments (see the module docstring)."""
    check_limits(job)
    bn = batch_names(n)
    cpu, memory = fargate_size(job.cpu, job.memory_mib)
    container: dict[str, Any] = {
        "image": image,  # the batch image's command: the worker
        "resourceRequirements": [{"type": "VCPU", "value": f"{cpu / 1024:g}"},
                                 {"type": "MEMORY", "value": str(memory)}],
        "executionRoleArn": execution_role, "jobRoleArn": job_role,
        "environment": [{"name": k, "value": v} for k, v in sorted(opts.environment().items())],
        "secrets": [{"name": k, "valueFrom": v} for k, v in sorted(opts.secrets.items())],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": bn.log_group, "awslogs-region": region, "awslogs-stream-prefix": "mlship"}},
        # the RunTask path's rule: the default VPC's subnets reach ECR and S3 through a public IP
        "networkConfiguration": {"assignPublicIp": "DISABLED" if opts.subnets else "ENABLED"},
        "fargatePlatformConfiguration": {"platformVersion": "LATEST"},
    }
    return {"jobDefinitionName": definition_name(n), "type": "container", "platformCapabilities": ["FARGATE"],
            "containerProperties": container,
            "retryStrategy": {"attempts": job.max_retries + 1, "evaluateOnExit": EVALUATE_ON_EXIT},
            "timeout": {"attemptDurationSeconds": job.timeout_s}, "tags": tags(opts, n.service),
            "propagateTags": True}


def _view(definition: dict[str, Any]) -> dict[str, Any]:
    """The compared part of a job definition, as register_job_definition takes it or describe answers it."""
    container = definition.get("containerProperties") or {}
    view: dict[str, Any] = {key: container.get(key) or None for key in COMPARED}
    for key, sort_by in (("environment", "name"), ("secrets", "name"), ("resourceRequirements", "type")):
        view[key] = sorted(view[key] or [], key=lambda item, k=sort_by: str(item.get(k)))
    retry = definition.get("retryStrategy") or {}
    view["retryStrategy"] = (retry.get("attempts"), [{k: str(v).upper() if k == "action" else v for k, v in e.items()}
                                                     for e in retry.get("evaluateOnExit") or []])
    for key in ("type", "platformCapabilities", "timeout", "tags"):
        view[key] = definition.get(key) or None
    view["propagateTags"] = bool(definition.get("propagateTags"))
    return view


def definition_differences(desired: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields of ``current`` (describe_job_definitions' answer) that differ from ``desired``."""
    want, have = _view(desired), _view(current)
    return sorted(key for key in want if want[key] != have.get(key))


def job_name(job: BatchJob) -> str:
    """SubmitJob's name: ``<service>-batch-<run id>`` (letters, digits, hyphens, underscores; 128 at most)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{job.name}-{job.job_id}")[:128]


def submit_args(opts: EcsOptions, n: Names, job: BatchJob, *, definition: str, queue: str) -> dict[str, Any]:
    """``submit_job`` arguments: an array job of ``job.tasks`` children, or one plain job (Batch's arrays have at
    least 2 children) that gets MLSHIP_BATCH_TASK_INDEX=0."""
    check_limits(job)
    env = {**job.env, ENV_TASK_COUNT: str(job.tasks)}
    if job.tasks < ARRAY_MIN:
        env[ENV_TASK_INDEX] = "0"
    args: dict[str, Any] = {
        "jobName": job_name(job), "jobQueue": queue, "jobDefinition": definition,
        "containerOverrides": {"environment": [{"name": k, "value": v} for k, v in sorted(env.items())]},
        "tags": {**tags(opts, n.service), **job.labels}, "propagateTags": True}
    if job.tasks >= ARRAY_MIN:
        args["arrayProperties"] = {"size": job.tasks}
    return args


def queue_source(job: BatchJob) -> str:
    """Where the job's queue comes from: ``--job-queue`` (this run) or ``targets.ecs.batch.job_queue``."""
    return "--job-queue" if job.job_queue else "targets.ecs.batch.job_queue"


def queue_check(name: str, queue: dict[str, Any] | None, environments: list[dict[str, Any]],
                region: str, source: str = "targets.ecs.batch.job_queue") -> Check:
    """The verdict on the job queue (named by ``source``) from describe_job_queues / describe_compute_environments."""
    fallback = ("or leave --job-queue out (then targets.ecs.batch.job_queue, or ECS RunTask fan-out without it)"
                if source == "--job-queue" else
                "or remove targets.ecs.batch.job_queue to run the job as ECS RunTask fan-out")
    if queue is None:
        return Check(name="job queue", ok=False, detail=f"AWS Batch job queue {name} does not exist in {region}",
                     fix=f"Fix {source} (`aws batch describe-job-queues` lists yours), create it "
                     f"with a FARGATE compute environment (docs/batch.md), {fallback}.")
    qname = queue.get("jobQueueName", name)
    if queue.get("state") != "ENABLED":
        return Check(name="job queue", ok=False, detail=f"job queue {qname} is {queue.get('state')}: it takes no jobs",
                     fix=f"`aws batch update-job-queue --job-queue {qname} --state ENABLED`, {fallback}.")
    if queue.get("status") != "VALID":
        return Check(name="job queue", ok=False, detail=f"job queue {qname} is {queue.get('status')}: "
                     f"{queue.get('statusReason') or 'no reason given'}",
                     fix=f"Repair the queue in the AWS Batch console (its status reason says what), {fallback}.")
    by_arn = {e.get("computeEnvironmentArn"): e for e in environments}
    by_arn.update({e.get("computeEnvironmentName"): e for e in environments})
    ordered = [by_arn.get(o.get("computeEnvironment")) for o in queue.get("computeEnvironmentOrder", [])]
    bad = []
    for env in ordered:
        if env is None:
            bad.append("a compute environment that does not exist")
            continue
        kind = (env.get("computeResources") or {}).get("type") or env.get("type", "UNMANAGED")
        if kind not in FARGATE_TYPES:
            bad.append(f"{env.get('computeEnvironmentName')} is {kind}")
        elif env.get("state") != "ENABLED" or env.get("status") not in ("VALID", None):
            bad.append(f"{env.get('computeEnvironmentName')} is {env.get('state')}/{env.get('status')}")
    if bad or not ordered:
        problems = "; ".join(bad) or "no compute environment"
        return Check(name="job queue", ok=False, detail=f"job queue {qname}: {problems}"
                     " (a job definition for Fargate runs only on ENABLED, VALID FARGATE or FARGATE_SPOT compute "
                     "environments)",
                     fix=f"Use a queue whose compute environments are all FARGATE or FARGATE_SPOT (`aws batch "
                     f"create-compute-environment --type MANAGED --compute-resources type=FARGATE,...`), {fallback}.")
    vcpus = sum(int((e or {}).get("computeResources", {}).get("maxvCpus", 0)) for e in ordered)
    return Check(name="job queue", ok=True, detail=f"{qname}: ENABLED, VALID, {len(ordered)} Fargate compute "
                 f"environment(s), {vcpus} vCPUs at most")


def progress_line(summary: dict[str, int], tasks: int, retried: int = 0) -> str:
    """"5/8 tasks done, 1 failed, 2 running" from an array job's statusSummary (or one job's status)."""
    running = summary.get("RUNNING", 0) + summary.get("STARTING", 0)
    return (f"{summary.get('SUCCEEDED', 0)}/{tasks} tasks done, {summary.get('FAILED', 0)} failed, {running} running"
            + (f", {retried} retried" if retried else ""))


def plan_lines(opts: EcsOptions, n: Names, job: BatchJob, *, image: str, region: str | None,
               poll_s: float) -> list[str]:
    """Every resource and call of the AWS Batch engine, in words (the first line says which engine and why)."""
    check_limits(job)
    bn, where, queue = batch_names(n), region or "<your AWS region>", opts.batch.job_queue
    cpu, memory = fargate_size(job.cpu, job.memory_mib)
    tag_text = ", ".join(f"{k}={v}" for k, v in {**tags(opts, n.service), **job.labels}.items())
    role = opts.task_role_arn or (f"role {bn.role} (created: trusts ecs-tasks.amazonaws.com; inline policy "
                                  f"{POLICY_NAME}: list and read {job.input_uri}, write {job.output_uri})")
    env = ", ".join(f"{k}={v}" for k, v in sorted(job.env.items()))
    shape = (f"an array job of {job.tasks} children (AWS_BATCH_JOB_ARRAY_INDEX 0..{job.tasks - 1}, "
             f"MLSHIP_BATCH_TASK_COUNT={job.tasks})" if job.tasks >= ARRAY_MIN else
             "one job, not an array (AWS Batch arrays have 2 to 10,000 children): MLSHIP_BATCH_TASK_INDEX=0, "
             "MLSHIP_BATCH_TASK_COUNT=1")
    at_once = ("--parallelism does not apply to an array job: the queue's compute environments' maxvCpus caps how "
               "many tasks run at once" if job.parallelism < job.tasks else
               "as many at once as the compute environments' maxvCpus allow")
    return [
        f"engine: AWS Batch array job on job queue {queue} (" + (
            "from --job-queue, for this run: it takes the place of targets.ecs.batch.job_queue; without either the "
            "job runs as ECS RunTask fan-out)" if job.job_queue else
            "targets.ecs.batch.job_queue is set; without it the job runs as ECS RunTask fan-out)"),
        f"check credentials and region {where}; job queue {queue} exists, is ENABLED and VALID, and its compute "
        f"environments are FARGATE or FARGATE_SPOT; list {job.input_uri}; the bucket of {job.output_uri} exists; "
        f"every resource below is tagged {tag_text}",
        f"ECR repository {n.repository} (scan on push, tagged) if missing; push {image} (referenced by digest)",
        f"CloudWatch Logs group {bn.log_group} with {opts.log_retention_days} days' retention if missing",
        "execution role: " + (opts.execution_role_arn or f"role {n.role} (the service's; created if missing)"),
        f"job role (the tasks' S3 access): {role}",
        f"job definition {definition_name(n)}: a revision only if the active latest differs (container, "
        f"platformCapabilities FARGATE, VCPU {cpu / 1024:g} and MEMORY {memory} MiB from --cpu {job.cpu:g} --memory "
        f"{job.memory_mib}, the image's command ({' '.join(WORKER_MODULE_COMMAND)}), assignPublicIp "
        f"{'DISABLED' if opts.subnets else 'ENABLED'}, awslogs to {bn.log_group}, retryStrategy attempts "
        f"{job.max_retries + 1} (retry a failed attempt, exit when mlship terminates the job), attemptDurationSeconds "
        f"{job.timeout_s}, propagateTags)",
        f"SubmitJob {shape} to {queue}; {at_once}; the job's environment: {env}",
        f"DescribeJobs every {poll_s:g}s (arrayProperties.statusSummary); at the end ListJobs FAILED children and "
        "their attempts' reasons, exit codes and last log lines (CloudWatch Logs); Ctrl-C or an error: TerminateJob "
        "on the job (its children follow)",
        f"cost estimate: ${opts.batch.vcpu_hour_usd:g}/vCPU-hour + ${opts.batch.gb_hour_usd:g}/GB-hour (Fargate "
        "list prices; each attempt per second, one-minute minimum; targets.ecs.batch overrides them)",
    ]
