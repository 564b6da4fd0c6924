"""``mlship batch --target ecs`` with a job queue (``--job-queue``, else ``targets.ecs.batch.job_queue``): the job
as an AWS Batch array job on your Fargate job queue (without a queue: ECS RunTask fan-out, ``jobs.py``).

``run``: what both engines share (``jobs.prepare``: push by digest, the log group ``/mlship/<service>/batch``, the
execution role, the tasks' role that reads the input and writes the output); the job definition
``mlship-<service>-batch`` (a revision only when the active latest differs: ``batch_array_spec``); SubmitJob (an
array of ``tasks`` children, or one plain job); DescribeJobs every ``poll_s`` for the progress line (the parent's
``arrayProperties.statusSummary``); at the end DescribeJobs of every child (100 per call): its attempts give the
retries (AWS Batch retried them by the definition's retryStrategy), the billed seconds of the cost estimate and, for
a FAILED child, the last attempt's reason and exit code and its last log lines (the attempt's ``logStreamName``).
Ctrl-C or any error: TerminateJob on the parent (AWS Batch terminates its children) before it propagates.

``checks``: the ECS preflight with this engine's IAM actions (no network check: the compute environment has the
network), and the queue: it exists, is ENABLED and VALID, its compute environments are FARGATE / FARGATE_SPOT.
``remove``: destroy's part: the job definition revisions tagged for the service (never the queue or the compute
environments: they are yours).
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any

from mlship.batch.jobs import BatchJob, JobRun, Progress
from mlship.errors import TargetError
from mlship.reports import Check
from mlship.targets.ecs import jobs
from mlship.targets.ecs.api import Aws, ClientFactory
from mlship.targets.ecs.batch_array_spec import (
    ARRAY_MIN,
    TERMINATE_REASON,
    check_limits,
    definition_differences,
    definition_name,
    job_definition,
    progress_line,
    queue_check,
    queue_source,
    submit_args,
)
from mlship.targets.ecs.jobs_spec import cost, fargate_size
from mlship.targets.ecs.options import EcsOptions
from mlship.targets.ecs.spec import Names, owned

DESCRIBE_MAX = 100  # DescribeJobs: jobs per call
DONE = ("SUCCEEDED", "FAILED")
WAITING = ("SUBMITTED", "PENDING", "RUNNABLE")
STUCK_S = 600.0  # no task started after this long: say why a job may stay RUNNABLE


def run(aws: Aws, opts: EcsOptions, n: Names, job: BatchJob, image: str, progress: Progress, *,
        poll_s: float) -> JobRun:
    """See the module docstring."""
    queue = str(opts.batch.job_queue)
    check_limits(job)
    ready = jobs.prepare(aws, opts, n, job, image, progress)
    desired = job_definition(opts, n, job, image=ready.image, region=aws.region,
                             execution_role=ready.execution_role, job_role=ready.task_role)
    definition = ensure_definition(aws, desired, progress)
    args = submit_args(opts, n, job, definition=definition, queue=queue)
    started = time.monotonic()
    answer = aws.call(f"submit {args['jobName']} to job queue {queue}", "batch", "submit_job",
                      action="batch:SubmitJob", **args)
    job_id = str(answer["jobId"])
    progress(f"submitted AWS Batch job {answer['jobName']} ({job_id}"
             + (f", an array of {job.tasks}" if job.tasks >= ARRAY_MIN else "") + ")")
    try:
        _wait(aws, job, job_id, progress, poll_s)
        children = _children(aws, job, job_id)
    except BaseException:
        with contextlib.suppress(TargetError):  # the error that stopped the job is the one to report
            aws.call(f"terminate job {job_id}", "batch", "terminate_job", action="batch:TerminateJob",
                     jobId=job_id, reason=TERMINATE_REASON)
        raise
    failed = {index: child for index, child in children.items() if child.get("status") == "FAILED"}
    attempts = [a for child in children.values() for a in child.get("attempts") or []]
    region = aws.region
    return JobRun(job_id=job.job_id, tasks=job.tasks, succeeded=job.tasks - len(failed), failed=len(failed),
                  retries=sum(max(0, len(c.get("attempts") or []) - 1) for c in children.values()),
                  failed_logs={index: _failed_lines(aws, n, child) for index, child in sorted(failed.items())},
                  seconds=round(time.monotonic() - started, 3),
                  cost_usd=cost([_billed_s(a) for a in attempts], *fargate_size(job.cpu, job.memory_mib),
                                opts.batch.vcpu_hour_usd, opts.batch.gb_hour_usd),
                  console=f"https://{region}.console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}")


def ensure_definition(aws: Aws, desired: dict[str, Any], progress: Progress) -> str:
    """The ARN of the active latest revision when it matches ``desired``, else of a new one."""
    name = desired["jobDefinitionName"]
    latest = _definitions(aws, name)[:1]
    if latest and not definition_differences(desired, latest[0]):
        return str(latest[0]["jobDefinitionArn"])
    found = aws.call(f"register job definition {name}", "batch", "register_job_definition",
                     action="batch:RegisterJobDefinition", **desired)
    progress(f"registered job definition {name}:{found['revision']}"
             + (f" ({', '.join(definition_differences(desired, latest[0]))} changed)" if latest else ""))
    return str(found["jobDefinitionArn"])


def _definitions(aws: Aws, name: str, *, missing: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The ACTIVE revisions of job definition ``name``, newest first."""
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = aws.call(f"describe job definition {name}", "batch", "describe_job_definitions",
                        action="batch:DescribeJobDefinitions", missing=missing, jobDefinitionName=name,
                        status="ACTIVE", **({"nextToken": token} if token else {}))
        if page is None:
            raise LookupError(name)
        found += [d for d in page.get("jobDefinitions", []) if d.get("jobDefinitionName") == name]
        token = page.get("nextToken")
        if not token:
            return sorted(found, key=lambda d: int(d.get("revision", 0)), reverse=True)


def _wait(aws: Aws, job: BatchJob, job_id: str, progress: Progress, poll_s: float) -> None:
    """Poll the job until every task is done, with a progress line whenever it changes."""
    last_line, submitted, warned = "", time.monotonic(), False
    while True:
        found = aws.call(f"describe job {job_id}", "batch", "describe_jobs", action="batch:DescribeJobs",
                         jobs=[job_id])["jobs"]
        if not found:
            raise TargetError(f"AWS Batch lost job {job_id}: DescribeJobs does not know it.",
                              why="Batch keeps finished jobs for about 7 days; one just submitted is always there.",
                              fix="Look for the job in the AWS Batch console, then run `mlship batch` again (each "
                              "task skips a shard whose output is complete).")
        parent = found[0]
        summary = dict((parent.get("arrayProperties") or {}).get("statusSummary") or {})
        if job.tasks < ARRAY_MIN:
            summary = {str(parent.get("status")): 1}
        line = progress_line(summary, job.tasks)
        if line != last_line:
            progress(line)
            last_line = line
        if sum(summary.get(s, 0) for s in DONE) >= job.tasks:
            return
        if not warned and time.monotonic() - submitted > STUCK_S and all(s in WAITING for s in summary or WAITING):
            warned = True
            progress(f"no task has started after {STUCK_S / 60:g} min: AWS Batch keeps a job RUNNABLE while no "
                     "compute environment of the queue can place it (maxvCpus below the job's VCPU, a Fargate vCPU "
                     "quota, subnets that cannot reach ECR); see the job in the AWS Batch console")
        time.sleep(poll_s)


def _children(aws: Aws, job: BatchJob, job_id: str) -> dict[int, dict[str, Any]]:
    """Task index -> its job (DescribeJobs), attempts included: the children ``<job id>:<index>`` of an array job,
    or the job itself."""
    ids = [f"{job_id}:{i}" for i in range(job.tasks)] if job.tasks >= ARRAY_MIN else [job_id]
    found: dict[int, dict[str, Any]] = {}
    for chunk in range(0, len(ids), DESCRIBE_MAX):
        for child in aws.call("describe the job's tasks", "batch", "describe_jobs", action="batch:DescribeJobs",
                              jobs=ids[chunk:chunk + DESCRIBE_MAX])["jobs"]:
            index = (child.get("arrayProperties") or {}).get("index")
            suffix = str(child.get("jobId", "")).rpartition(":")[2]  # a child's id is <parent id>:<index>
            found[int(index) if index is not None else int(suffix) if suffix.isdigit() else 0] = child
    return found


def _billed_s(attempt: dict[str, Any]) -> float:
    """An attempt's seconds, from its startedAt / stoppedAt (milliseconds since the epoch)."""
    begin, end = attempt.get("startedAt"), attempt.get("stoppedAt")
    if isinstance(begin, datetime) and isinstance(end, datetime):
        return max(0.0, (end - begin).total_seconds())
    if isinstance(begin, int | float) and isinstance(end, int | float) and begin > 0:
        return max(0.0, (end - begin) / 1000)
    return 0.0


def _failed_lines(aws: Aws, n: Names, child: dict[str, Any]) -> list[str]:
    """Why a task failed for good (its last attempt's reason and exit code, after how many attempts) and that
    attempt's last log lines."""
    attempts = child.get("attempts") or []
    last = attempts[-1] if attempts else {}
    container = last.get("container") or {}
    reason = last.get("statusReason") or child.get("statusReason") or container.get("reason") or "no reason given"
    code = container.get("exitCode")
    lines = [f"after {len(attempts)} attempt(s): {reason}" + (f" (exit code {code})" if code is not None else "")]
    stream = container.get("logStreamName")
    return lines + (jobs.log_tail(aws, n, str(stream)) if stream else [])


# --- preflight ----------------------------------------------------------------------------------------------
def batch_actions(opts: EcsOptions) -> list[str]:
    """The IAM actions ``run`` calls with these options."""
    shared = [a for a in jobs.batch_actions(opts) if not a.startswith(("ecs:", "ec2:"))]
    return [*shared, "batch:DescribeJobQueues", "batch:DescribeComputeEnvironments", "batch:DescribeJobDefinitions",
            "batch:RegisterJobDefinition", "batch:TagResource", "batch:SubmitJob", "batch:DescribeJobs",
            "batch:TerminateJob"]


def checks(opts: EcsOptions, client_factory: ClientFactory | None, job: BatchJob) -> list[Check]:
    """AWS Batch's limits on the flags, the region, the credentials, the IAM actions (simulated) and the job queue;
    read-only."""
    from mlship.targets.ecs import preflight

    try:
        check_limits(job)
    except TargetError as exc:
        return [Check(name="job", ok=False, detail=exc.message, fix=exc.fix)]
    found = [c for c in preflight.checks(opts, client_factory, actions=batch_actions(opts), zones=1)
             if c.name != "network"]  # the compute environment has the network
    if not all(c.ok for c in found) or not [c for c in found if c.name == "credentials"]:
        return found
    aws = Aws(opts, client_factory=client_factory, attempts=1, timeout_s=preflight.TIMEOUT_S)
    try:
        return [*found, _queue(aws, str(opts.batch.job_queue), queue_source(job))]
    finally:
        aws.close()


def _queue(aws: Aws, name: str, source: str) -> Check:
    try:
        queues = aws.call(f"describe job queue {name}", "batch", "describe_job_queues",
                          action="batch:DescribeJobQueues", jobQueues=[name])["jobQueues"]
        queue = next((q for q in queues if name in (q.get("jobQueueName"), q.get("jobQueueArn"))), None)
        wanted = [o["computeEnvironment"] for o in (queue or {}).get("computeEnvironmentOrder", [])]
        environments = aws.call("describe its compute environments", "batch", "describe_compute_environments",
                                action="batch:DescribeComputeEnvironments",
                                computeEnvironments=wanted)["computeEnvironments"] if wanted else []
    except TargetError as exc:
        return Check(name="job queue", ok=False, detail=exc.message, fix=exc.fix)
    return queue_check(name, queue, environments, aws.region, source)


# --- destroy ------------------------------------------------------------------------------------------------
def remove(aws: Aws, n: Names) -> list[str]:
    """Deregister the service's job definition revisions (those tagged for it); an identity that may not read AWS
    Batch and never set a job queue has none to remove."""
    name = definition_name(n)
    try:
        found = _definitions(aws, name, missing=("AccessDeniedException", "AccessDenied"))
    except LookupError:
        return [f"kept: AWS Batch job definition {name}, if any (not checked: batch:DescribeJobDefinitions was "
                "denied)"] if aws.opts.batch.job_queue else []
    mine = [d for d in found if owned(d.get("tags") or {}, n.service)]
    for definition in mine:
        aws.call(f"deregister job definition {definition['jobDefinitionArn']}", "batch", "deregister_job_definition",
                 action="batch:DeregisterJobDefinition", jobDefinition=definition["jobDefinitionArn"])
    left = [f"kept: AWS Batch job definition {name}:{d['revision']} (not tagged for {n.service})"
            for d in found if d not in mine]
    if not mine:
        return left
    revisions = ", ".join(f":{d['revision']}" for d in sorted(mine, key=lambda d: int(d["revision"])))
    return [f"AWS Batch job definition {name} revision(s) {revisions}", *left]
