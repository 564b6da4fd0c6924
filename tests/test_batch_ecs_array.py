"""`mlship batch --target ecs` with `targets.ecs.batch.job_queue`: an AWS Batch array job on a Fargate job queue,
against moto in server mode (Batch, ECS's, ECR's, IAM, CloudWatch Logs, S3 APIs) with the real boto3 client; the
jobs run on the local Docker engine through the test-side agent (tests/emulators/aws_batch.py: array index,
attempts by the job definition's retryStrategy, the job role's credentials, awslogs, TerminateJob).

The mechanics (array index, a retried child, a child that always fails, one plain job, Ctrl-C, destroy, an unchanged
second run) run a small image whose worker says which shard and attempt it runs; the end-to-end tests run
`mlship batch --target ecs` with the real batch image of the iris model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import copy_project
from emulators import ecs_batch_fixtures, ecs_fixtures
from emulators.aws_batch import BatchAgent
from emulators.ecs_batch_fixtures import left_after
from emulators.ecs_fixtures import REGION, remove_pushed
from emulators.ecs_moto import MotoServer
from mlship.batch.jobs import BatchJob, batch_job
from mlship.contract_io import load_project
from mlship.errors import TargetError
from mlship.targets.ecs import EcsTarget
from mlship.targets.ecs.batch_array_spec import TERMINATE_REASON, job_definition, queue_check, submit_args
from test_batch_ecs_cli import invoke, upload_rows

aws = ecs_fixtures.aws
moto = ecs_fixtures.moto
runner = ecs_batch_fixtures.runner
batch_agent = ecs_batch_fixtures.batch_agent
batch_env = ecs_batch_fixtures.batch_env
bucket = ecs_batch_fixtures.bucket
job_queues = ecs_batch_fixtures.job_queues
tiny_image = ecs_batch_fixtures.tiny_image


@pytest.fixture
def queue(job_queues: Callable[..., str]) -> str:
    return job_queues()


@pytest.fixture
def new_target(batch_env: MotoServer, batch_agent: BatchAgent, iris_dir: Path, tmp_path: Path, queue: str,
               docker_engine: Any) -> Iterator[Callable[..., EcsTarget]]:
    """new_target(**options): an ecs target on ``queue`` for a service of its own (ecs_batch_fixtures.made_targets)."""
    yield from ecs_batch_fixtures.made_targets(iris_dir, tmp_path, docker_engine, "array",
                                               {"batch": {"job_queue": queue}})


def job_for(target: EcsTarget, bucket: str, **flags: Any) -> BatchJob:
    return batch_job(target.project, input_uri=f"s3://{bucket}/in/", output_uri=f"s3://{bucket}/out/", **flags)


def calls(moto: MotoServer, mark: int, action: str) -> list[dict[str, Any]]:
    return [params for _, name, params in moto.since(mark) if name == action]


def stream_lines(target: EcsTarget) -> dict[str, list[str]]:
    """Each log stream of the service's batch log group -> its lines (CloudWatch Logs)."""
    import boto3

    logs = boto3.client("logs", region_name=REGION)
    group = f"/mlship/{target.service}/batch"
    try:
        return {s["logStreamName"]: [e["message"] for e in logs.get_log_events(
            logGroupName=group, logStreamName=s["logStreamName"])["events"]]
            for s in logs.describe_log_streams(logGroupName=group)["logStreams"]}
    finally:
        logs.close()


# --- pure ----------------------------------------------------------------------------------------------------
def test_job_definition_submit_and_queue_verdicts(iris_dir: Path) -> None:
    target = EcsTarget(load_project(iris_dir), {"region": REGION, "batch": {"job_queue": "q"}})
    job = batch_job(target.project, input_uri="s3://b/in/", output_uri="s3://b/out/", tasks=8, cpu=0.5,
                    memory_mib=1000, max_retries=2, timeout_s=600)
    spec = job_definition(target.opts, target.names, job, image="r/iris@sha256:ab", region=REGION,
                          execution_role="arn:exec", job_role="arn:jobs")
    props = spec["containerProperties"]
    assert (spec["jobDefinitionName"], spec["type"], spec["platformCapabilities"]) == \
        ("mlship-iris-batch", "container", ["FARGATE"])
    assert props["resourceRequirements"] == [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "1024"}]
    assert (props["executionRoleArn"], props["jobRoleArn"], props["networkConfiguration"]) == \
        ("arn:exec", "arn:jobs", {"assignPublicIp": "ENABLED"})
    assert spec["retryStrategy"]["attempts"] == 3 and spec["timeout"] == {"attemptDurationSeconds": 600}
    assert spec["propagateTags"] and spec["tags"]["mlship:service"] == "iris"
    args = submit_args(target.opts, target.names, job, definition="arn:def", queue="q")
    assert args["arrayProperties"] == {"size": 8} and args["tags"]["mlship-batch-job"] == job.job_id
    one = submit_args(target.opts, target.names, batch_job(target.project, input_uri="s3://b/in/",
                                                          output_uri="s3://b/out/", tasks=1), definition="d", queue="q")
    assert "arrayProperties" not in one
    assert {"name": "MLSHIP_BATCH_TASK_INDEX", "value": "0"} in one["containerOverrides"]["environment"]
    for flags, words in (({"max_retries": 10}, "--max-retries 9 or less"), ({"timeout_s": 30}, "--timeout 60")):
        bad = batch_job(target.project, input_uri="s3://b/in/", output_uri="s3://b/out/", tasks=2, **flags)
        with pytest.raises(TargetError) as caught:
            job_definition(target.opts, target.names, bad, image="i", region=REGION, execution_role="e", job_role="j")
        assert words in (caught.value.fix or "")
    too_many = batch_job(target.project, input_uri="s3://b/in/", output_uri="s3://b/out/", tasks=10_001)
    with pytest.raises(TargetError, match="more than an AWS Batch array job holds"):
        submit_args(target.opts, target.names, too_many, definition="d", queue="q")
    [limit] = target.batch_preflight(too_many)  # refused by the preflight, before any call or build
    assert not limit.ok and "--tasks 10000 or less" in (limit.fix or "")
    ok = {"jobQueueName": "q", "state": "ENABLED", "status": "VALID",
          "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "arn:ce"}]}
    spot = {"computeEnvironmentArn": "arn:ce", "computeEnvironmentName": "ce", "state": "ENABLED",
            "status": "VALID", "computeResources": {"type": "FARGATE_SPOT", "maxvCpus": 16}}
    assert queue_check("q", ok, [spot], REGION).ok
    invalid = queue_check("q", {**ok, "status": "INVALID", "statusReason": "CE deleted"}, [spot], REGION)
    assert not invalid.ok and "CE deleted" in invalid.detail


# --- dry run and preflight (no job runs) ------------------------------------------------------------------------
def test_dry_run_without_credentials_shows_the_job_definition_and_the_array(iris_dir: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    copy_project(iris_dir, tmp_path / "p", targets={"ecs": {"region": REGION, "batch": {"job_queue": "jobs"}}})
    result = invoke("batch", "--target", "ecs", "--tasks", "50", "--parallelism", "5", "--dry-run", "-f",
                    str(tmp_path / "p"), "-i", "s3://b/in/", "-o", "s3://b/out/")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "engine: AWS Batch array job on job queue jobs (targets.ecs.batch.job_queue is set" in text
    assert "job definition mlship-iris-batch: a revision only if the active latest differs" in text
    assert "platformCapabilities FARGATE, VCPU 1 and MEMORY 2048 MiB" in text and "retryStrategy attempts 4" in text
    assert "SubmitJob an array job of 50 children (AWS_BATCH_JOB_ARRAY_INDEX 0..49" in text
    assert "--parallelism does not apply to an array job" in text
    single = invoke("batch", "--target", "ecs", "--tasks", "1", "--dry-run", "-f", str(tmp_path / "p"),
                    "-i", "s3://b/in/", "-o", "s3://b/out/")
    assert "one job, not an array" in " ".join(single.stdout.split()), single.output
    copy_project(iris_dir, tmp_path / "r", targets={"ecs": {"region": REGION}})
    fan_out = invoke("batch", "--target", "ecs", "--tasks", "3", "--dry-run", "-f", str(tmp_path / "r"),
                     "-i", "s3://b/in/", "-o", "s3://b/out/")
    assert "engine: ECS RunTask fan-out on Fargate (targets.ecs.batch.job_queue is not set" in \
        " ".join(fan_out.stdout.split()), fan_out.output


@pytest.mark.parametrize(("kind", "state", "words", "fix"), [
    (None, "ENABLED", "does not exist in", "Fix targets.ecs.batch.job_queue"),
    ("FARGATE", "DISABLED", "is DISABLED: it takes no jobs", "--state ENABLED"),
    ("EC2", "ENABLED", "is EC2 (a job definition for Fargate runs only on", "are all FARGATE or FARGATE_SPOT"),
])
def test_preflight_refuses_the_queue_before_any_build(kind: str | None, state: str, words: str, fix: str,
                                                      iris_dir: Path, aws: MotoServer, job_queues: Any,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlship.image import engine

    name = job_queues(kind, state) if kind else f"missing-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(engine, "build", lambda *a, **k: pytest.fail("preflight must stop the run before a build"))
    copy_project(iris_dir, tmp_path / "p", targets={"ecs": {"batch": {"job_queue": name}}})
    mark = aws.mark()
    result = invoke("batch", "--target", "ecs", "--tasks", "2", "-f", str(tmp_path / "p"),
                    "-i", "s3://b/in/", "-o", "s3://b/out/")
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert words in text and fix in text and "remove targets.ecs.batch.job_queue" in text
    assert aws.since(mark, mutating=True) == []


# --- the array job (Docker: the agent runs the children) ------------------------------------------------------
def test_array_job_runs_each_child_with_its_index_and_retries_a_failed_attempt(
        batch_env: MotoServer, batch_agent: BatchAgent, tiny_image: str, new_target: Callable[..., EcsTarget],
        bucket: str) -> None:
    target = new_target(env={"SHARD_SECONDS": "1"})
    job = job_for(target, bucket, tasks=4, max_retries=2)
    lines: list[str] = []
    mark = batch_env.mark()
    batch_agent.interrupt_next(1, after_s=0.5)  # child 1's first attempt loses its host: AWS Batch retries it
    result = target.run_batch(job, tiny_image, lines.append)
    assert (result.tasks, result.succeeded, result.failed, result.retries) == (4, 4, 0, 1), result
    [submitted] = calls(batch_env, mark, "SubmitJob")
    assert submitted["arrayProperties"] == {"size": 4} and submitted["tags"]["mlship-batch-job"] == job.job_id
    [registered] = calls(batch_env, mark, "RegisterJobDefinition")
    assert registered["jobDefinitionName"] == f"mlship-{target.service}-batch"
    assert registered["retryStrategy"]["attempts"] == 3 and registered["platformCapabilities"] == ["FARGATE"]
    said = {line for lines in stream_lines(target).values() for line in lines}  # every attempt's lines
    parent = next(line for line in said if line.startswith("attempt ")).split(", id ")[1].split(":")[0]
    assert {f"shard {i} of 4, job {job.job_id}" for i in range(4)} | {f"shard {i}: done" for i in range(4)} <= said
    # each child's attempt, its id and the job role's credentials (shard 1's first attempt may be killed before
    # it said anything)
    assert {f"attempt 1, id {parent}:{i}, role True" for i in (0, 2, 3)} | {f"attempt 2, id {parent}:1, role True"} \
        <= said
    assert [batch_agent.attempts[f"{parent}:{i}"] for i in range(4)] == [1, 2, 1, 1]
    assert "4/4 tasks done, 0 failed, 0 running" in lines and any("submitted AWS Batch job" in ln for ln in lines)
    assert result.cost_usd is not None and result.cost_usd >= 5 * 60 * (0.04048 + 2 * 0.004445) / 3600 - 1e-6
    assert result.console and f"#jobs/detail/{parent}" in result.console

    mark = batch_env.mark()  # the same image and size again: the job definition's revision is reused
    again = target.run_batch(job_for(target, bucket, tasks=4, max_retries=2), tiny_image, lambda line: None)
    assert (again.succeeded, again.retries) == (4, 0) and calls(batch_env, mark, "RegisterJobDefinition") == []
    submit = [t for _, a, t in batch_env.since(mark) if a == "SubmitJob"]
    assert submit and submit[0]["jobDefinition"].endswith(":1")
    print(f"\nAWS Batch array job on moto, 4 tasks of the small image (1 s each): {again.seconds:.2f}s submit -> "
          f"all done; with one child retried: {result.seconds:.2f}s")


def test_a_child_that_fails_every_attempt(batch_env: MotoServer, tiny_image: str,
                                          new_target: Callable[..., EcsTarget], bucket: str) -> None:
    target = new_target(env={"FAIL_SHARDS": "2"})
    lines: list[str] = []
    result = target.run_batch(job_for(target, bucket, tasks=3, max_retries=1), tiny_image, lines.append)
    assert (result.succeeded, result.failed, result.retries) == (2, 1, 1), result
    why, *logs = result.failed_logs[2]
    assert why == "after 2 attempt(s): Essential container in task exited (exit code 3)"
    assert logs[0] == f"shard 2 of 3, job {result.job_id}" and logs[1].startswith("attempt 2, id ")
    assert logs[-1] == "shard 2: cannot score this shard"
    assert lines[-1] == "2/3 tasks done, 1 failed, 0 running"


def test_one_task_is_a_plain_job(batch_env: MotoServer, tiny_image: str, new_target: Callable[..., EcsTarget],
                                 bucket: str) -> None:
    target = new_target()
    mark = batch_env.mark()
    result = target.run_batch(job_for(target, bucket, tasks=1), tiny_image, lambda line: None)
    assert (result.succeeded, result.failed, result.retries) == (1, 0, 0), result
    [submitted] = calls(batch_env, mark, "SubmitJob")
    assert "arrayProperties" not in submitted
    [lines] = stream_lines(target).values()
    assert lines[0] == f"shard 0 of 1, job {result.job_id}" and lines[-1] == "shard 0: done"
    assert lines[1].startswith("attempt 1, id ") and ":" not in lines[1].split(", id ")[1]  # not an array child


def test_interrupt_terminates_the_job_and_destroy_keeps_the_queue(batch_env: MotoServer, batch_agent: BatchAgent,
                                                                  tiny_image: str, queue: str, bucket: str,
                                                                  new_target: Callable[..., EcsTarget]) -> None:
    import boto3

    target = new_target(env={"SHARD_SECONDS": "60"})

    def interrupt(line: str) -> None:
        if line.endswith(("2 running", "3 running")):
            raise KeyboardInterrupt

    mark, started = batch_env.mark(), time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        target.run_batch(job_for(target, bucket, tasks=3), tiny_image, interrupt)
    [terminated] = calls(batch_env, mark, "TerminateJob")
    assert terminated["reason"] == TERMINATE_REASON
    batch = boto3.client("batch", region_name=REGION)
    children = [f"{terminated['jobId']}:{i}" for i in range(3)]
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        found = batch.describe_jobs(jobs=children)["jobs"]
        if all(j["status"] == "FAILED" for j in found):
            break
        time.sleep(0.3)
    assert [(j["status"], j.get("statusReason"), len(j["attempts"]) <= 1) for j in found] == \
        [("FAILED", TERMINATE_REASON, True)] * 3, found
    assert time.monotonic() - started < 50  # not the tasks' 60 s: they were stopped

    removed = target.destroy()
    assert f"AWS Batch job definition mlship-{target.service}-batch revision(s) :1" in removed, removed
    assert batch.describe_job_definitions(jobDefinitionName=f"mlship-{target.service}-batch",
                                          status="ACTIVE")["jobDefinitions"] == []
    [kept] = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
    assert kept["state"] == "ENABLED"
    assert batch.describe_compute_environments(computeEnvironments=[f"ce-{queue}"])["computeEnvironments"]
    batch.close()


# --- end to end: the real batch image -----------------------------------------------------------------------
@pytest.fixture
def batch_project(batch_env: MotoServer, batch_agent: BatchAgent, iris_dir: Path, tmp_path: Path, queue: str,
                  base_image_env: str, docker_engine: Any) -> Iterator[Path]:
    name = f"ea-{uuid.uuid4().hex[:8]}"
    root = copy_project(iris_dir, tmp_path / name, name=name, targets={"ecs": {"batch": {"job_queue": queue}}}).root
    yield root
    with EcsTarget(load_project(root), {"batch": {"job_queue": queue}}) as target:
        removed = target.destroy()
    remove_pushed(docker_engine, name)
    assert left_after(name) == [], removed


def test_cli_array_job_equals_the_in_process_run(batch_project: Path, bucket: str, batch_agent: BatchAgent,
                                                 tmp_path: Path) -> None:
    local = upload_rows(bucket, tmp_path, 9_000)
    batch_agent.interrupt_next(2, after_s=0.2)  # child 2's first attempt loses its host: AWS Batch retries it
    result = invoke("batch", "--target", "ecs", "--tasks", "3", "--memory", "1024", "-f", str(batch_project),
                    "-i", f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["tasks"], report["succeeded"], report["failed"], report["retries"]) == \
        (9_000, 3, 3, 0, 1)
    assert report["cost_usd"] > 0 and "console.aws.amazon.com/batch/" in report["console"]
    ecs_batch_fixtures.assert_parts_equal_in_process(bucket, batch_project, local, tmp_path, 3)
    print(f"\nAWS Batch array job on moto, real batch image: 9,000 rows in 3 tasks (one retried) in "
          f"{report['seconds']:.1f}s submit -> done")


def test_cli_a_child_that_always_fails_exits_1_with_its_last_lines(batch_project: Path, bucket: str,
                                                                    tmp_path: Path) -> None:
    upload_rows(bucket, tmp_path, 3_000)
    ecs_batch_fixtures.put_broken(bucket)
    result = invoke("batch", "--target", "ecs", "--tasks", "2", "--max-retries", "1", "--memory", "1024", "--json",
                    "-f", str(batch_project), "-i", f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/")
    report = json.loads(result.stdout)
    assert (result.exit_code, report["ok"], report["succeeded"], report["failed"], report["retries"]) == \
        (1, False, 1, 1, 1), result.stderr[-3000:]
    why, *lines = report["failed_logs"]["1"]
    assert why == "after 2 attempt(s): Essential container in task exited (exit code 1)"
    assert any("z-broken.parquet" in line for line in lines), lines
