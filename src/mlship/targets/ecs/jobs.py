"""``mlship batch --target ecs``: a batch job as ECS RunTask fan-out on Fargate (no AWS Batch compute environment
needed: it runs wherever the ``ecs`` target deploys); with a job queue (``--job-queue``, else
``targets.ecs.batch.job_queue``: ``EcsTarget._batch_opts``) ``run``, ``checks`` and the plan hand the job to
``batch_array`` (an AWS Batch array job), which shares ``prepare`` and ``log_tail``.

``run``: push the batch image to the service's ECR repository (by digest), ensure the log group
``/mlship/<service>/batch``, the execution role, the tasks' role (read the input, write the output; unless
``targets.ecs.task_role_arn``), the network and the cluster, and a task definition revision of family
``mlship-<service>-batch`` (registered only when the latest differs); then start one task per shard with
``RunTask`` (one call per task: a call's overrides go to all of its tasks, and each task needs its own
``MLSHIP_BATCH_TASK_INDEX``), at most ``parallelism`` at once, and poll ``DescribeTasks``. A task that stops with
a non-zero exit code (or that RunTask could not place) is started again up to ``max_retries`` times: RunTask has no
retries of its own; the worker skips a shard whose manifest is already complete. A task that runs past the job's
``timeout_s`` is stopped (StopTask) and counts as failed. The failed tasks' last log lines come from CloudWatch Logs;
the cost estimate from Fargate's list prices (``targets.ecs.batch``). Ctrl-C (or any error) stops the job's running
tasks before it propagates. Everything is tagged (the service's tags and ``job.labels``).

``checks``: the ECS preflight with the batch job's IAM actions (s3:// input and output only).
``remove``: what destroy removes for batch jobs (the task definitions, the log group, the tasks' role).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlship.batch.jobs import BatchJob, JobRun, Progress
from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.ecs import resources, service
from mlship.targets.ecs.api import Aws, ClientFactory
from mlship.targets.ecs.jobs_spec import (
    CONTAINER,
    POLICY_NAME,
    batch_names,
    cost,
    fargate_size,
    overrides,
    s3_policy,
    task_definition,
)
from mlship.targets.ecs.options import EcsOptions
from mlship.targets.ecs.spec import TASKS_TRUST, Names, key_value, owned, tags, task_differences

LOG_LINES = 20  # a failed task's last log lines in the report
DESCRIBE_MAX = 100  # DescribeTasks: tasks per call


@dataclass
class Shard:
    """One shard's tasks: the running one (``arn``), how many were started, the last stopped one."""

    index: int
    attempts: int = 0
    arn: str | None = None
    started: float = 0.0  # monotonic, when RunTask answered
    state: str = "waiting"  # waiting, running, succeeded, failed
    last: dict[str, Any] = field(default_factory=dict)  # the last stopped task (DescribeTasks), or {"reason": ...}
    timed_out: bool = False


def run(aws: Aws, opts: EcsOptions, n: Names, job: BatchJob, image: str, progress: Progress, *,
        poll_s: float) -> JobRun:
    """See the module docstring; with a job queue an AWS Batch array job (batch_array.py). ``opts`` are the run's
    (``--job-queue`` already in them: EcsTarget._batch_opts)."""
    if opts.batch.job_queue:
        from mlship.targets.ecs import batch_array

        return batch_array.run(aws, opts, n, job, image, progress, poll_s=poll_s)
    td_arn, size = _prepare(aws, opts, n, job, image, progress)
    net = resources.ensure_network(aws, n, tags(opts, n.service), progress)
    network = {"awsvpcConfiguration": {"subnets": net.subnets, "securityGroups": net.security_groups,
                                       "assignPublicIp": "ENABLED" if net.public_ip else "DISABLED"}}
    task_tags = key_value({**tags(opts, n.service), **job.labels}, "key", "value")
    shards = [Shard(i) for i in range(job.tasks)]
    seconds: list[float] = []
    started = time.monotonic()

    def launch(shard: Shard) -> None:
        shard.attempts += 1
        answer = aws.call(f"run task {shard.index} of {job.name}", "ecs", "run_task", action="ecs:RunTask",
                          cluster=n.cluster, taskDefinition=td_arn, launchType="FARGATE", count=1,
                          networkConfiguration=network, overrides=overrides(job, shard.index),
                          startedBy=f"mlship-batch/{job.job_id}"[:36], tags=task_tags)
        if answer.get("tasks"):
            shard.arn, shard.started, shard.state = str(answer["tasks"][0]["taskArn"]), time.monotonic(), "running"
        else:  # RunTask could not place it (capacity, a limit): an attempt that failed
            why = "; ".join(f"{f.get('reason')}: {f.get('detail', '')}".rstrip(": ")
                            for f in answer.get("failures", []))
            _stopped(shard, {"reason": f"RunTask placed no task: {why or 'no reason given'}"}, job)

    try:
        _loop(aws, n, job, shards, launch, seconds, progress, poll_s)
    except BaseException:
        with contextlib.suppress(TargetError):  # the error that stopped the job is the one to report
            _stop_all(aws, n, [s for s in shards if s.state == "running"], "mlship batch was interrupted")
        raise
    failed = [s for s in shards if s.state == "failed"]
    region = aws.region
    return JobRun(job_id=job.job_id, tasks=job.tasks, succeeded=job.tasks - len(failed), failed=len(failed),
                  retries=sum(max(0, s.attempts - 1) for s in shards),
                  failed_logs={s.index: _failed_lines(aws, n, s) for s in failed},
                  seconds=round(time.monotonic() - started, 3),
                  cost_usd=cost(seconds, *size, opts.batch.vcpu_hour_usd, opts.batch.gb_hour_usd),
                  console=f"https://{region}.console.aws.amazon.com/ecs/v2/clusters/{n.cluster}/tasks?region={region}")


@dataclass(frozen=True)
class Prepared:
    """What both engines (RunTask fan-out, AWS Batch) need before the job: the pushed image, the roles."""

    image: str  # the ECR reference, by digest
    execution_role: str
    task_role: str


def prepare(aws: Aws, opts: EcsOptions, n: Names, job: BatchJob, image: str, progress: Progress) -> Prepared:
    """Push (by digest), the log group ``/mlship/<service>/batch``, the execution role and the tasks' role."""
    for uri in (job.input_uri, job.output_uri):
        if not uri.startswith("s3://"):
            raise not_s3(uri)
    bn, tag_map = batch_names(n), tags(opts, n.service)
    repository = resources.ensure_repository(aws, n, tag_map, progress)
    ref = resources.push(aws, image, repository, n, progress)
    progress(f"pushed {ref}")
    resources.ensure_log_group(aws, bn, tag_map, opts.log_retention_days, progress)
    execution = opts.execution_role_arn or resources.ensure_role(aws, n, tag_map, progress)
    task_role = opts.task_role_arn or _ensure_task_role(aws, bn, tag_map, job, progress)
    return Prepared(ref, execution, task_role)


def _prepare(aws: Aws, opts: EcsOptions, n: Names, job: BatchJob, image: str,
             progress: Progress) -> tuple[str, tuple[int, int]]:
    """Push, log group, roles, cluster, task definition: (its ARN, (cpu units, memory MiB))."""
    ready = prepare(aws, opts, n, job, image, progress)
    ref, execution, task_role = ready.image, ready.execution_role, ready.task_role
    bn, tag_map = batch_names(n), tags(opts, n.service)
    service.ensure_cluster(aws, n, tag_map, progress)
    desired = task_definition(opts, bn, job, image=ref, region=aws.region, execution_role=execution,
                              task_role=task_role)
    latest = service.revisions(aws, bn)[:1]
    if latest and not task_differences(desired, service.task_definition(aws, latest[0])):
        arn = latest[0]
    else:
        arn = service.register(aws, desired)
        progress(f"registered task definition {arn.rpartition('/')[2]}")
    return arn, fargate_size(job.cpu, job.memory_mib)


def _ensure_task_role(aws: Aws, bn: Names, tag_map: dict[str, str], job: BatchJob, progress: Progress) -> str:
    """The role the batch tasks run as: trusts ecs-tasks; its inline policy reads the input and writes the output
    of this job (replaced at each job)."""
    role = resources.find_role(aws, bn)
    if role is None:
        progress(f"creating task role {bn.role} (S3: read the input, write the output)")
        role = aws.call(f"create role {bn.role}", "iam", "create_role", action="iam:CreateRole", RoleName=bn.role,
                        AssumeRolePolicyDocument=json.dumps(TASKS_TRUST), Tags=key_value(tag_map),
                        Description=f"The role of the mlship batch tasks of {bn.service}")["Role"]
    elif not owned(role.get("Tags") or resources._role_tags(aws, bn, bn.role), bn.service):
        raise resources.not_ours("IAM role", bn.role, bn.service)
    aws.call(f"put the S3 policy of {bn.role}", "iam", "put_role_policy", action="iam:PutRolePolicy",
             RoleName=bn.role, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(s3_policy(job)))
    return str(role["Arn"])


def _loop(aws: Aws, n: Names, job: BatchJob, shards: list[Shard], launch: Callable[[Shard], None],
          seconds: list[float], progress: Progress, poll_s: float) -> None:
    last_line = ""
    while True:
        running = [s for s in shards if s.state == "running"]
        for shard in [s for s in shards if s.state == "waiting"][:max(0, job.parallelism - len(running))]:
            launch(shard)
        running = [s for s in shards if s.state == "running"]
        for chunk in range(0, len(running), DESCRIBE_MAX):
            batch = {s.arn: s for s in running[chunk:chunk + DESCRIBE_MAX]}
            found = aws.call("describe tasks", "ecs", "describe_tasks", action="ecs:DescribeTasks",
                             cluster=n.cluster, tasks=list(batch))["tasks"]
            for task in found:
                mine = batch.get(task["taskArn"])
                if mine is not None and task.get("lastStatus") == "STOPPED":
                    seconds.append(_ran_s(task, mine))
                    _stopped(mine, task, job)
        now = time.monotonic()
        late = [s for s in shards if s.state == "running" and not s.timed_out and now - s.started > job.timeout_s]
        for shard in late:
            shard.timed_out = True
        _stop_all(aws, n, late, f"mlship: the task ran past the job's timeout ({job.timeout_s}s)")
        done = sum(s.state == "succeeded" for s in shards)
        failed = sum(s.state == "failed" for s in shards)
        retried = sum(max(0, s.attempts - 1) for s in shards)
        line = (f"{done}/{job.tasks} tasks done, {failed} failed, {sum(s.state == 'running' for s in shards)} running"
                + (f", {retried} retried" if retried else ""))
        if line != last_line:
            progress(line)
            last_line = line
        if done + failed == job.tasks:
            return
        time.sleep(poll_s)


def _stopped(shard: Shard, task: dict[str, Any], job: BatchJob) -> None:
    """A task of ``shard`` stopped (or could not be placed): done, run again, or failed for good."""
    shard.arn, shard.last = None, task
    code = ((task.get("containers") or [{}])[0]).get("exitCode")
    if task.get("lastStatus") == "STOPPED" and code == 0 and not shard.timed_out:
        shard.state = "succeeded"
    else:
        shard.state = "waiting" if shard.attempts <= job.max_retries else "failed"
        shard.timed_out = False if shard.state == "waiting" else shard.timed_out


def _ran_s(task: dict[str, Any], shard: Shard) -> float:
    """How long the task was billed: from the pull's start (or its start) to its stop, as ECS reports them; else
    what this process saw."""
    begin, end = task.get("pullStartedAt") or task.get("startedAt"), task.get("stoppedAt")
    if isinstance(begin, datetime) and isinstance(end, datetime):
        return max(0.0, (end - begin).total_seconds())
    return time.monotonic() - shard.started


def _stop_all(aws: Aws, n: Names, shards: list[Shard], reason: str) -> None:
    for shard in shards:
        if shard.arn:
            aws.call(f"stop task {shard.arn.rpartition('/')[2]}", "ecs", "stop_task", action="ecs:StopTask",
                     missing=("InvalidParameterException",), cluster=n.cluster, task=shard.arn, reason=reason[:255])


def _failed_lines(aws: Aws, n: Names, shard: Shard) -> list[str]:
    """Why a shard failed for good (its last task's stop, after ``attempts`` tries) and that task's last log lines."""
    task = shard.last
    if "taskArn" not in task:
        return [f"after {shard.attempts} attempt(s): {task.get('reason', 'not started')}"]
    lines = [f"after {shard.attempts} attempt(s): {service.stop_reason(task)}"
             + (" (stopped: it ran past the job's timeout)" if shard.timed_out else "")]
    return lines + log_tail(aws, n, f"mlship/{CONTAINER}/{task['taskArn'].rpartition('/')[2]}")


def log_tail(aws: Aws, n: Names, stream: str) -> list[str]:
    """The last LOG_LINES lines of a batch task's stream in ``/mlship/<service>/batch`` (none when it is missing)."""
    found = aws.call("read the task's log", "logs", "get_log_events", action="logs:GetLogEvents",
                     missing=("ResourceNotFoundException",), logGroupName=batch_names(n).log_group,
                     logStreamName=stream, limit=LOG_LINES, startFromHead=False)
    return [str(e["message"]).rstrip() for e in (found or {}).get("events", [])]


def not_s3(uri: str) -> TargetError:
    return TargetError(f"The ecs target's batch tasks read and write S3, not {uri}.",
                       why="Each task runs on Fargate in your AWS account: it cannot see this machine's files.",
                       fix="Upload the input (`aws s3 cp --recursive DIR s3://BUCKET/in/`) and pass s3:// URIs to "
                       "--input and --output.")


# --- preflight ----------------------------------------------------------------------------------------------
def batch_actions(opts: EcsOptions) -> list[str]:
    """The IAM actions ``run`` calls with these options."""
    from mlship.targets.ecs.preflight import ALWAYS

    actions = [a for a in ALWAYS if a.startswith("ecr:")] + [
        "ecs:DescribeClusters", "ecs:CreateCluster", "ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition",
        "ecs:ListTaskDefinitions", "ecs:TagResource", "ecs:RunTask", "ecs:DescribeTasks", "ecs:StopTask",
        "logs:DescribeLogGroups", "logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:TagResource",
        "logs:GetLogEvents", "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups", "iam:PassRole", "s3:ListBucket"]
    actions += [] if opts.subnets else ["ec2:DescribeSubnets"]
    actions += [] if opts.security_groups else ["ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                                                "ec2:CreateTags"]
    actions += [] if opts.execution_role_arn else ["iam:GetRole", "iam:CreateRole", "iam:AttachRolePolicy",
                                                   "iam:TagRole"]
    actions += [] if opts.task_role_arn else ["iam:GetRole", "iam:CreateRole", "iam:PutRolePolicy", "iam:TagRole"]
    return list(dict.fromkeys(actions))


def checks(opts: EcsOptions, client_factory: ClientFactory | None, job: BatchJob) -> list[Check]:
    """The ECS preflight for a batch job (one Availability Zone will do: no load balancer); the core checks that the
    input lists and the output takes a write (batch/remote.py). With a job queue: batch_array.checks."""
    from mlship.targets.ecs import batch_array, preflight

    bad = [uri for uri in (job.input_uri, job.output_uri) if not uri.startswith("s3://")]
    if bad:
        error = not_s3(bad[0])
        return [Check(name="storage", ok=False, detail=error.message, fix=error.fix)]
    if opts.batch.job_queue:
        return batch_array.checks(opts, client_factory, job)
    return preflight.checks(opts, client_factory, actions=batch_actions(opts), zones=1)


# --- destroy ------------------------------------------------------------------------------------------------
def remove(aws: Aws, n: Names) -> list[str]:
    """What batch jobs left for the service: the task definitions, the AWS Batch job definitions, the log group, the
    tasks' role (each only when tagged for it)."""
    from mlship.targets.ecs import batch_array
    from mlship.targets.ecs.teardown import _drop_role, _log_group, deregister

    bn = batch_names(n)
    return (deregister(aws, bn, service.revisions(aws, bn)) + batch_array.remove(aws, n) + _log_group(aws, bn)
            + _drop_role(aws, bn, bn.role, {"PolicyName": POLICY_NAME}, f"batch task role {bn.role}"))
