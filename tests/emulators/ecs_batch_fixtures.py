"""Fixtures and helpers of the `mlship batch --target ecs` tests (a test module names the fixtures it uses:
``runner = ecs_batch_fixtures.runner``): ``runner`` (the RunTask agent per module: tests/emulators/ecs_runtask.py;
at its end no container is left), ``batch_agent`` (the same for AWS Batch jobs: tests/emulators/aws_batch.py),
``job_queues`` (``make(kind, state)``: an AWS Batch job queue on a compute environment of that kind, removed
afterwards), ``tiny_image`` (a stand-in worker that says which shard it runs: TINY_WORKER), ``batch_env`` (aws
+ the loopback registry + fast polling; moto's S3 takes pyarrow's uploads), ``bucket`` (a bucket with one input
object, emptied and removed afterwards); ``left_after`` (what still carries a service's tag, but stopped tasks) and
``objects``.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import build_from_files
from emulators.aws_batch import BatchAgent
from emulators.ecs_fixtures import REGION, tagged_left
from emulators.ecs_moto import MotoServer
from emulators.ecs_runtask import RunTaskAgent
from mlship.targets.ecs import EcsTarget

TINY_WORKER = textwrap.dedent('''\
    #!/usr/bin/env python3
    """A stand-in worker: says which shard it runs (on AWS Batch also the attempt, the job id and whether it has the
    job role's credentials), takes SHARD_SECONDS, fails for the shards in FAIL_SHARDS."""
    import os, sys, time
    i = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", os.environ.get("MLSHIP_BATCH_TASK_INDEX", "?"))
    print(f"shard {i} of {os.environ['MLSHIP_BATCH_TASK_COUNT']}, job {os.environ['MLSHIP_BATCH_JOB']}", flush=True)
    if "AWS_BATCH_JOB_ATTEMPT" in os.environ:
        print(f"attempt {os.environ['AWS_BATCH_JOB_ATTEMPT']}, id {os.environ['AWS_BATCH_JOB_ID']}, "
              f"role {bool(os.environ.get('AWS_SESSION_TOKEN'))}", flush=True)
    time.sleep(float(os.environ.get("SHARD_SECONDS", "0")))
    if i in os.environ.get("FAIL_SHARDS", "").split(","):
        print(f"shard {i}: cannot score this shard", flush=True)
        sys.exit(3)
    print(f"shard {i}: done", flush=True)
''')


def _agent(agent: RunTaskAgent | BatchAgent) -> Iterator[Any]:
    """Yield a started agent; at the end it is stopped, no container of its may be left, it saw no error."""
    try:
        yield agent
    finally:
        agent.stop()
        left = [c for c in agent.containers() if c.status != "removing"]
        for container in left:
            container.remove(force=True)
        assert not left, f"containers left behind: {left}"
        assert agent.errors == [], agent.errors


@pytest.fixture(scope="module")
def runner(docker_engine: Any, moto: MotoServer) -> Iterator[RunTaskAgent]:
    yield from _agent(RunTaskAgent(docker_engine, moto, REGION, stop_grace_s=5).start())


@pytest.fixture(scope="module")
def batch_agent(docker_engine: Any, moto: MotoServer) -> Iterator[BatchAgent]:
    yield from _agent(BatchAgent(docker_engine, moto, REGION).start())


@pytest.fixture(scope="module")
def tiny_image(docker_engine: Any) -> Iterator[str]:
    """A small image of the test base whose command ``mlship-batch`` is TINY_WORKER."""
    from conftest import TEST_BASE_IMAGE

    tag = f"mlship-batch-tiny:{uuid.uuid4().hex[:8]}"
    files = {"Dockerfile": f"FROM {TEST_BASE_IMAGE}\nCOPY mlship-batch /usr/local/bin/mlship-batch\n"
                           "RUN chmod 755 /usr/local/bin/mlship-batch\nCMD [\"mlship-batch\"]\n".encode(),
             "mlship-batch": TINY_WORKER.encode()}
    build_from_files(docker_engine, files, tag)
    yield tag
    docker_engine.images.remove(tag, force=True)


@pytest.fixture
def job_queues(aws: MotoServer) -> Iterator[Any]:
    """make(kind="FARGATE", state="ENABLED", max_vcpus=4) -> the name of a new job queue on one compute environment
    of that kind (the user's own: untagged); queues, compute environments and roles are removed afterwards."""
    import boto3

    s = boto3.Session(region_name=REGION)
    batch, ec2, iam = s.client("batch"), s.client("ec2"), s.client("iam")
    made: list[tuple[str, str]] = []
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [n["SubnetId"] for n in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    group = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                  {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]
    tag = uuid.uuid4().hex[:8]
    role = iam.create_role(RoleName=f"batch-service-{tag}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName=f"batch-instances-{tag}")["InstanceProfile"]["Arn"]

    def make(kind: str = "FARGATE", state: str = "ENABLED", max_vcpus: int = 4) -> str:
        name = f"q-{kind.lower()}-{uuid.uuid4().hex[:8]}"
        resources: dict[str, Any] = {"type": kind, "maxvCpus": max_vcpus, "subnets": subnets[:2],
                                     "securityGroupIds": [group["GroupId"]]}
        if "FARGATE" not in kind:
            resources.update(minvCpus=0, instanceTypes=["m5.large"], instanceRole=profile)
        batch.create_compute_environment(computeEnvironmentName=f"ce-{name}", type="MANAGED", state="ENABLED",
                                         computeResources=resources, serviceRole=role)
        batch.create_job_queue(jobQueueName=name, state=state, priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": f"ce-{name}"}])
        made.append((name, f"ce-{name}"))
        return name

    yield make
    for queue, environment in made:
        batch.delete_job_queue(jobQueue=queue)
        batch.delete_compute_environment(computeEnvironment=environment)
    iam.delete_instance_profile(InstanceProfileName=f"batch-instances-{tag}")
    iam.delete_role(RoleName=f"batch-service-{tag}")
    for client in (batch, ec2, iam):
        client.close()


@pytest.fixture
def batch_env(aws: MotoServer, registry: str, runner: RunTaskAgent, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    monkeypatch.setenv("MLSHIP_ECR_REGISTRY", registry)
    # moto stores an empty object for an upload with the checksum trailers newer AWS SDKs (pyarrow's) send
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    monkeypatch.setattr(EcsTarget, "poll_s", 0.2)
    return aws


@pytest.fixture
def bucket(aws: MotoServer) -> Iterator[str]:
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    name = f"batch-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=name, Key="in/rows.csv", Body=b"a,b\n1,2\n")
    yield name
    for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)
    s3.close()


def left_after(service: str) -> list[str]:
    """What still carries the service's tag, but the job's stopped tasks (ECS lists a stopped task for a while
    after it stopped, as it lists a deleted service as INACTIVE)."""
    import boto3

    ecs = boto3.client("ecs", region_name=REGION)
    left = []
    for arn in tagged_left(service):
        if ":task/" in arn:
            cluster = arn.rpartition(":task/")[2].split("/")[0]
            if ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]["lastStatus"] == "STOPPED":
                continue
        left.append(arn)
    ecs.close()
    return left


def objects(bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    try:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    finally:
        s3.close()


def made_targets(iris_dir: Path, tmp_path: Path, docker_engine: Any, prefix: str,
                 defaults: dict[str, Any]) -> Iterator[Callable[..., EcsTarget]]:
    """For a ``new_target`` fixture: make(**options) -> an ecs target (``defaults`` + options) for a service of its
    own; each destroyed at the end (and nothing tagged for it may be left), its pushed images removed."""
    from conftest import copy_project
    from emulators.ecs_fixtures import remove_pushed

    made: list[EcsTarget] = []

    def make(**options: Any) -> EcsTarget:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        options = {**defaults, **options}
        made.append(EcsTarget(copy_project(iris_dir, tmp_path / name, name=name, targets={"ecs": options}),
                              options))
        return made[-1]

    yield make
    for target in made:
        removed = target.destroy()
        target.close()
        remove_pushed(docker_engine, target.service)
        assert left_after(target.service) == [], removed


def assert_parts_equal_in_process(bucket: str, project: Path, local: Path, tmp_path: Path, tasks: int) -> None:
    """The job's parts under s3://<bucket>/out/, concatenated, equal `mlship batch` of ``local`` in this process
    (same rows, same order, same values)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from mlship.cli import app

    parts = objects(bucket, "out/part-")
    assert [k.split("/")[-1] for k in sorted(parts)] == [f"part-{i:05d}-of-{tasks:05d}.parquet" for i in range(tasks)]
    got = pa.concat_tables([pq.read_table(io.BytesIO(parts[k])) for k in sorted(parts)])
    here = CliRunner().invoke(app, ["batch", "-f", str(project), "-i", str(local), "-o",
                                    str(tmp_path / "here.parquet"), "--workers", "1"])
    assert here.exit_code == 0, here.output
    want = pq.read_table(tmp_path / "here.parquet")
    assert got.column_names == want.column_names and got.equals(want)


def put_broken(bucket: str) -> None:
    """s3://<bucket>/in/z-broken.parquet: not Parquet, so the task whose shard holds it fails every attempt."""
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=bucket, Key="in/z-broken.parquet", Body=b"PAR1 this is not parquet " * 40)
    s3.close()
