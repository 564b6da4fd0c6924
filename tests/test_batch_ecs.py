"""`mlship batch --target ecs`: batch jobs as ECS RunTask fan-out, against moto in server mode (ECS, ECR's API,
IAM, CloudWatch Logs, S3) with the real boto3 client; the tasks run on the local Docker engine through the test-side
agent (tests/emulators/ecs_runtask.py: host networking, so the tasks reach moto's S3 on loopback).

The fan-out's mechanics (parallelism, per-task overrides, retries after a lost task, a shard that always fails, the
timeout, Ctrl-C, destroy) run a small image of this file's own whose worker says which shard it runs;
test_batch_ecs_cli.py runs `mlship batch --target ecs` with the real batch image end to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators import ecs_batch_fixtures, ecs_fixtures
from emulators.ecs_fixtures import REGION
from emulators.ecs_moto import MotoServer
from emulators.ecs_runtask import RunTaskAgent
from mlship.batch.jobs import BatchJob, batch_job
from mlship.contract_io import load_project
from mlship.targets.ecs import EcsTarget
from mlship.targets.ecs.jobs_spec import cost, fargate_size

aws = ecs_fixtures.aws
moto = ecs_fixtures.moto
runner = ecs_batch_fixtures.runner
batch_env = ecs_batch_fixtures.batch_env
bucket = ecs_batch_fixtures.bucket
tiny_image = ecs_batch_fixtures.tiny_image


@pytest.fixture
def new_target(batch_env: MotoServer, iris_dir: Path, tmp_path: Path,
               docker_engine: Any) -> Iterator[Callable[..., EcsTarget]]:
    """new_target(**options): an ecs target for a service of its own (ecs_batch_fixtures.made_targets)."""
    yield from ecs_batch_fixtures.made_targets(iris_dir, tmp_path, docker_engine, "batch", {})


def done_shards(target: EcsTarget, job_id: str) -> list[str]:
    """The "shard i of n" lines of the job's tasks that finished, from the job's log group (CloudWatch Logs)."""
    import boto3

    logs = boto3.client("logs", region_name=REGION)
    group = f"/mlship/{target.service}/batch"
    found = []
    for stream in logs.describe_log_streams(logGroupName=group)["logStreams"]:
        lines = [e["message"] for e in logs.get_log_events(logGroupName=group,
                                                           logStreamName=stream["logStreamName"])["events"]]
        if lines and lines[0].endswith(f"job {job_id}") and lines[-1].endswith(": done"):
            found.append(lines[0].partition(",")[0])
    logs.close()
    return sorted(found)


def job_for(target: EcsTarget, bucket: str, **flags: Any) -> BatchJob:
    return batch_job(target.project, input_uri=f"s3://{bucket}/in/", output_uri=f"s3://{bucket}/out/", **flags)


def run_tasks(moto: MotoServer, mark: int) -> list[dict[str, Any]]:
    return [params for _, action, params in moto.since(mark) if action == "RunTask"]


def task_index(params: dict[str, Any]) -> int:
    env = params["overrides"]["containerOverrides"][0]["environment"]
    return int(next(e["value"] for e in env if e["name"] == "MLSHIP_BATCH_TASK_INDEX"))


# --- pure ----------------------------------------------------------------------------------------------------
def test_fargate_size_and_cost() -> None:
    assert fargate_size(1.0, 2048) == (1024, 2048)
    assert fargate_size(0.25, 300) == (256, 512)
    assert fargate_size(1.5, 1000) == (2048, 4096)  # 1.5 vCPU: the next size up, and its smallest memory
    assert fargate_size(0.5, 5000) == (1024, 5120)  # 0.5 vCPU offers at most 4 GB
    with pytest.raises(Exception, match="Fargate has no task with 32 vCPU"):
        fargate_size(32, 2048)
    # per second, one-minute minimum: 30 s is billed as 60 s
    assert cost([30, 120], 1024, 2048, 0.04048, 0.004445) == round((60 + 120) * (0.04048 + 2 * 0.004445) / 3600, 6)


# --- plan and preflight (no Docker) ----------------------------------------------------------------------------
def test_plan_needs_no_credentials(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    target = EcsTarget(load_project(iris_dir), {"region": REGION, "batch": {"vcpu_hour_usd": 0.05}})
    job = batch_job(target.project, input_uri="s3://b/in/", output_uri="s3://b/out/", tasks=50, parallelism=10,
                    cpu=2, memory_mib=3000)
    text = "\n".join(target.batch_plan(job, "iris:1.0.0-batch"))
    assert "task definition family mlship-iris-batch" in text
    assert "cpu 2048, memory 4096 MiB from --cpu 2 --memory 3000" in text
    assert "RunTask 50 task(s), one call each" in text and "at most 10 running" in text
    assert "MLSHIP_BATCH_INPUT=s3://b/in/" in text and "MLSHIP_BATCH_TASK_COUNT=50" in text
    assert "role mlship-iris-jobs (created: trusts ecs-tasks.amazonaws.com; inline policy mlship-batch-s3" in text
    assert "$0.05/vCPU-hour" in text and f"mlship-batch-job={job.job_id}" in text


def test_preflight(iris_dir: Path, aws: MotoServer, bucket: str) -> None:
    target = EcsTarget(load_project(iris_dir), {})
    mark = aws.mark()
    started = time.monotonic()
    checks = {c.name: c for c in target.batch_preflight(job_for(target, bucket, tasks=2))}
    took = time.monotonic() - started
    assert all(c.ok for c in checks.values()), checks
    assert list(checks) == ["region", "credentials", "network", "permissions"]
    assert took < 5 and aws.since(mark, mutating=True) == []
    simulated = aws.last("SimulatePrincipalPolicy") or {}
    assert {"ecs:RunTask", "ecs:StopTask", "iam:PassRole", "iam:PutRolePolicy"} <= set(simulated.values())
    assert "elasticloadbalancing:CreateLoadBalancer" not in set(simulated.values())  # a job makes no load balancer

    aws.denied = {"ecs:RunTask"}
    [*_, permissions] = target.batch_preflight(job_for(target, bucket, tasks=2))
    assert not permissions.ok and "ecs:RunTask" in permissions.detail
    aws.denied = set()


def test_preflight_refuses_local_files_and_needs_credentials(iris_dir: Path, aws: MotoServer, bucket: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = EcsTarget(load_project(iris_dir), {})
    [storage] = target.batch_preflight(batch_job(target.project, input_uri="rows.parquet",
                                                 output_uri=f"s3://{bucket}/out/", tasks=2))
    assert not storage.ok and "not rows.parquet" in storage.detail and "aws s3 cp" in (storage.fix or "")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    mark = aws.mark()
    checks = target.batch_preflight(job_for(target, bucket, tasks=2))
    assert [(c.name, c.ok) for c in checks] == [("region", True), ("credentials", False)]
    assert aws.since(mark) == []


# --- the fan-out (Docker: the agent runs the tasks) ----------------------------------------------------------------
def test_fan_out_runs_each_shard_once_with_its_index(batch_env: MotoServer, runner: RunTaskAgent, tiny_image: str,
                                                     new_target: Callable[..., EcsTarget], bucket: str) -> None:
    target = new_target()
    job = job_for(target, bucket, tasks=4, parallelism=2, max_retries=2)
    lines: list[str] = []
    mark, peak = batch_env.mark(), runner.running_peak
    runner.running_peak = 0
    result = target.run_batch(job, tiny_image, lines.append)
    assert (result.tasks, result.succeeded, result.failed, result.retries) == (4, 4, 0, 0), result
    assert done_shards(target, job.job_id) == [f"shard {i} of 4" for i in range(4)]
    runs = run_tasks(batch_env, mark)
    assert sorted(task_index(p) for p in runs) == [0, 1, 2, 3]
    assert all(p["count"] == 1 and p["launchType"] == "FARGATE" for p in runs)
    assert {"key": "mlship-batch-job", "value": job.job_id} in runs[0]["tags"]
    assert runner.running_peak <= 2, f"{runner.running_peak} tasks ran at once with parallelism 2"
    runner.running_peak = max(peak, runner.running_peak)
    assert "4/4 tasks done, 0 failed, 0 running" in lines
    assert result.cost_usd is not None and result.cost_usd >= 4 * 60 * (0.04048 + 2 * 0.004445) / 3600 - 1e-6
    assert result.console and f"clusters/{target.names.cluster}/tasks" in result.console
    registered = [p for _, a, p in batch_env.since(mark) if a == "RegisterTaskDefinition"]
    assert [p["family"] for p in registered] == [f"mlship-{target.service}-batch"]
    print(f"\necs RunTask fan-out, 4 tasks of the small image, parallelism 2: {result.seconds:.2f}s submit -> done")

    mark = batch_env.mark()  # the same image and size again: the revision is reused
    again = target.run_batch(job_for(target, bucket, tasks=2), tiny_image, lambda line: None)
    assert again.succeeded == 2, "\n".join(again.failed_logs[0])
    assert [a for _, a, _ in batch_env.since(mark) if a == "RegisterTaskDefinition"] == []


def test_a_lost_task_is_run_again(batch_env: MotoServer, runner: RunTaskAgent, tiny_image: str,
                                  new_target: Callable[..., EcsTarget], bucket: str) -> None:
    target = new_target(env={"SHARD_SECONDS": "3"})
    runner.interrupt_next(1, after_s=0.5)
    mark = batch_env.mark()
    result = target.run_batch(job_for(target, bucket, tasks=3, max_retries=1), tiny_image, lambda line: None)
    assert (result.succeeded, result.failed, result.retries) == (3, 0, 1), result
    assert sorted(task_index(p) for p in run_tasks(batch_env, mark)) == [0, 1, 1, 2]
    assert done_shards(target, result.job_id) == [f"shard {i} of 3" for i in range(3)]


def test_a_shard_that_always_fails(batch_env: MotoServer, tiny_image: str, new_target: Callable[..., EcsTarget],
                                   bucket: str) -> None:
    target = new_target(env={"FAIL_SHARDS": "2"})
    lines: list[str] = []
    mark = batch_env.mark()
    result = target.run_batch(job_for(target, bucket, tasks=3, max_retries=1), tiny_image, lines.append)
    assert (result.succeeded, result.failed, result.retries) == (2, 1, 1), result
    assert sorted(task_index(p) for p in run_tasks(batch_env, mark)) == [0, 1, 2, 2]
    why, *logs = result.failed_logs[2]
    assert why == "after 2 attempt(s): Essential container in task exited (exit code 3)"
    assert logs[-2:] == [f"shard 2 of 3, job {result.job_id}", "shard 2: cannot score this shard"]
    assert lines[-1] == "2/3 tasks done, 1 failed, 0 running, 1 retried"


def test_timeout_and_interrupt_stop_the_tasks(batch_env: MotoServer, runner: RunTaskAgent, tiny_image: str,
                                              new_target: Callable[..., EcsTarget], bucket: str) -> None:
    target = new_target(env={"SHARD_SECONDS": "60"})
    started = time.monotonic()
    result = target.run_batch(job_for(target, bucket, tasks=1, max_retries=0, timeout_s=3), tiny_image,
                              lambda line: None)
    assert result.failed == 1 and time.monotonic() - started < 40
    assert "ran past the job's timeout" in result.failed_logs[0][0], result.failed_logs

    def interrupt(line: str) -> None:
        if "2 running" in line:
            raise KeyboardInterrupt

    mark = batch_env.mark()
    with pytest.raises(KeyboardInterrupt):
        target.run_batch(job_for(target, bucket, tasks=2), tiny_image, interrupt)
    stopped = [p for _, a, p in batch_env.since(mark) if a == "StopTask"]
    assert len(stopped) == 2 and all(p["reason"] == "mlship batch was interrupted" for p in stopped)
    deadline = time.monotonic() + 30
    while any(not r.done for r in runner.runs.values()) and time.monotonic() < deadline:
        threading.Event().wait(0.2)
    assert all(r.done for r in runner.runs.values())
