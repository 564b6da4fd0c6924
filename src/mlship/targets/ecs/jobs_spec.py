"""What a batch job on ECS asks AWS for; pure functions (no client): the batch resources' names, the Fargate task
size, the task definition, each task's RunTask overrides, the tasks' S3 policy, the cost estimate and the plan
(``mlship batch --target ecs --dry-run``).

Names (next to the service's, ``spec.names``): task definition family ``mlship-<service>-batch``, log group
``/mlship/<service>/batch``, task role ``mlship-<service>-jobs`` (unless ``targets.ecs.task_role_arn``); the ECR
repository, the execution role, the network and the cluster are the service's.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from mlship.batch.jobs import WORKER_MODULE_COMMAND, BatchJob, task_env
from mlship.errors import TargetError
from mlship.targets.ecs.options import FARGATE_SIZES, EcsOptions
from mlship.targets.ecs.spec import Names, key_value, tags

CONTAINER = "batch"
FAMILY_SUFFIX = "-batch"
POLICY_NAME = "mlship-batch-s3"
#: Fargate bills each task per second, with a one-minute minimum
MIN_BILLED_S = 60
#: RunTask's limit on the overrides of one call (JSON characters)
OVERRIDES_MAX = 8192


def batch_names(n: Names) -> Names:
    """The batch job's names, beside the service's ``n``."""
    return replace(n, family=n.family[:255 - len(FAMILY_SUFFIX)] + FAMILY_SUFFIX, log_group=f"{n.log_group}/batch",
                   role=n.role.removesuffix("-exec") + "-jobs")


def fargate_size(cpu: float, memory_mib: int) -> tuple[int, int]:
    """The smallest Fargate task size (CPU units, MiB) with at least ``cpu`` vCPUs and ``memory_mib``."""
    units = math.ceil(cpu * 1024)
    for size, memories in FARGATE_SIZES.items():
        fits = [m for m in memories if m >= memory_mib]
        if size >= units and fits:
            return size, fits[0]
    raise TargetError(f"Fargate has no task with {cpu:g} vCPU and {memory_mib} MiB.",
                      why="Its largest task has 16 vCPU and 120 GiB.",
                      fix="Pass a smaller --cpu / --memory, or more --tasks so each task needs less.")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> (bucket, key prefix)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def task_definition(opts: EcsOptions, bn: Names, job: BatchJob, *, image: str, region: str, execution_role: str,
                    task_role: str | None) -> dict[str, Any]:
    """``register_task_definition`` arguments of the batch tasks; the job's own environment goes in each task's
    overrides (``overrides``), so one revision serves every job of the same image and size."""
    cpu, memory = fargate_size(job.cpu, job.memory_mib)
    container = {
        "name": CONTAINER, "image": image, "essential": True,  # the batch image's command: the worker
        "memory": memory,  # the container may use all of the task's memory (and moto's RunTask reads it here)
        "environment": [{"name": k, "value": v} for k, v in sorted(opts.environment().items())],
        "secrets": [{"name": k, "valueFrom": v} for k, v in sorted(opts.secrets.items())],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": bn.log_group, "awslogs-region": region, "awslogs-stream-prefix": "mlship"}},
    }
    spec: dict[str, Any] = {
        "family": bn.family, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": str(cpu),
        "memory": str(memory), "executionRoleArn": execution_role, "containerDefinitions": [container],
        "tags": key_value(tags(opts, bn.service), "key", "value"),
    }
    if task_role:
        spec["taskRoleArn"] = task_role
    return spec


def overrides(job: BatchJob, index: int) -> dict[str, Any]:
    """RunTask's overrides for task ``index``: the job's environment and the task's index and count."""
    env = [{"name": k, "value": v} for k, v in sorted(task_env(job, index).items())]
    found = {"containerOverrides": [{"name": CONTAINER, "environment": env}]}
    if len(json.dumps(found)) > OVERRIDES_MAX:
        raise TargetError(f"The environment of the batch tasks is over RunTask's {OVERRIDES_MAX} characters.",
                          fix="Shorten the --input / --output URIs, or move values into targets.ecs.env.")
    return found


def s3_policy(job: BatchJob) -> dict[str, Any]:
    """The tasks' role policy: list and read the input, read and write under the output prefix."""
    (in_bucket, in_key), (out_bucket, out_key) = split_s3(job.input_uri), split_s3(job.output_uri)
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": sorted({f"arn:aws:s3:::{in_bucket}", f"arn:aws:s3:::{out_bucket}"})},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{in_bucket}/{in_key}*"]},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": [f"arn:aws:s3:::{out_bucket}/{out_key}*"]},
    ]}


def cost(seconds: list[float], cpu_units: int, memory_mib: int, vcpu_hour: float, gb_hour: float) -> float:
    """Fargate's price of tasks that ran ``seconds`` each (per second, one-minute minimum)."""
    rate = cpu_units / 1024 * vcpu_hour + memory_mib / 1024 * gb_hour
    return round(sum(max(MIN_BILLED_S, s) for s in seconds) * rate / 3600, 6)


def plan_lines(opts: EcsOptions, n: Names, job: BatchJob, *, image: str, region: str | None,
               poll_s: float) -> list[str]:
    """Every resource and call of ``run_batch``, in words (with a job queue: batch_array_spec.plan_lines)."""
    if opts.batch.job_queue:
        from mlship.targets.ecs import batch_array_spec

        return batch_array_spec.plan_lines(opts, n, job, image=image, region=region, poll_s=poll_s)
    bn, where = batch_names(n), region or "<your AWS region: AWS_REGION or your profile's>"
    cpu, memory = fargate_size(job.cpu, job.memory_mib)
    tag_text = ", ".join(f"{k}={v}" for k, v in {**tags(opts, n.service), **job.labels}.items())
    role = opts.task_role_arn or (f"role {bn.role} (created: trusts ecs-tasks.amazonaws.com; inline policy "
                                  f"{POLICY_NAME}: list and read {job.input_uri}, write {job.output_uri})")
    env = ", ".join(f"{k}={v}" for k, v in sorted(job.env.items()))
    prices = opts.batch
    return [
        "engine: ECS RunTask fan-out on Fargate (targets.ecs.batch.job_queue is not set; set it, or pass --job-queue, "
        "to an AWS Batch job queue on Fargate to run an array job there)",
        f"check credentials (sts:GetCallerIdentity) and region {where}; list {job.input_uri}; the bucket of "
        f"{job.output_uri} exists; every resource below is tagged {tag_text}",
        f"ECR repository {n.repository} (scan on push, tagged) if missing; push {image} (referenced by digest)",
        f"CloudWatch Logs group {bn.log_group} with {opts.log_retention_days} days' retention if missing",
        "execution role: " + (opts.execution_role_arn or f"role {n.role} (the service's; created if missing)"),
        f"task role (the tasks' S3 access): {role}",
        "network: " + (", ".join(opts.subnets) if opts.subnets else "the default VPC's default subnets")
        + "; security groups " + (", ".join(opts.security_groups) or f"{n.security_group} (the service's; created "
                                  "if missing)"),
        f"ECS cluster {n.cluster} if missing (FARGATE)",
        f"task definition family {bn.family}: a revision only if the latest differs (FARGATE, cpu {cpu}, memory "
        f"{memory} MiB from --cpu {job.cpu:g} --memory {job.memory_mib}, the image's command ("
        f"{' '.join(WORKER_MODULE_COMMAND)}), "
        f"awslogs to {bn.log_group})",
        f"RunTask {job.tasks} task(s), one call each (a call's overrides go to all its tasks; each task gets its own "
        f"MLSHIP_BATCH_TASK_INDEX, and MLSHIP_BATCH_TASK_COUNT={job.tasks}), at most {job.parallelism} running; "
        f"the job's environment: {env}",
        f"DescribeTasks every {poll_s:g}s; a task that exits non-zero is run again up to {job.max_retries} time(s) "
        f"(RunTask does not retry); a task past {job.timeout_s}s is stopped (StopTask) and counts as failed",
        "the failed tasks' last log lines from CloudWatch Logs; each task writes its part and manifest to "
        f"{job.output_uri}",
        f"cost estimate: ${prices.vcpu_hour_usd:g}/vCPU-hour + ${prices.gb_hour_usd:g}/GB-hour (Fargate Linux/x86 "
        "list prices, us-east-1; per second, one-minute minimum; targets.ecs.batch overrides them)",
    ]
