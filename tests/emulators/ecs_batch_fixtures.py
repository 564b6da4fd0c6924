"""Fixtures and helpers of the `mlship batch --target ecs` tests (a test module names the fixtures it uses:
``runner = ecs_batch_fixtures.runner``): ``runner`` (the RunTask agent per module: tests/emulators/ecs_runtask.py;
at its end no container is left), ``batch_agent`` (the same for AWS Batch jobs: tests/emulators/aws_batch.py),
``job_queues`` (``make(kind, state)``: an AWS Batch job queue on a compute environment of that kind, removed
afterwards), ``worker_image(docker, script, prefix)`` (a small image whose mlship-batch is ``script``),
``batch_env`` (aws + the loopback registry + fast polling; moto's S3 takes
pyarrow's uploads), ``bucket`` (a bucket with one input object, emptied and removed afterwards); ``left_after``
(what still carries a service's tag, but stopped tasks) and ``objects``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import build_from_files
from emulators.aws_batch import BatchAgent
from emulators.ecs_fixtures import REGION, tagged_left
from emulators.ecs_moto import MotoServer
from emulators.ecs_runtask import RunTaskAgent
from mlship.targets.ecs import EcsTarget


@pytest.fixture(scope="module")
def runner(docker_engine: Any, moto: MotoServer) -> Iterator[RunTaskAgent]:
    agent = RunTaskAgent(docker_engine, moto, REGION, stop_grace_s=5).start()
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
def batch_agent(docker_engine: Any, moto: MotoServer) -> Iterator[BatchAgent]:
    agent = BatchAgent(docker_engine, moto, REGION).start()
    try:
        yield agent
    finally:
        agent.stop()
        left = [c for c in agent.containers() if c.status != "removing"]
        for container in left:
            container.remove(force=True)
        assert not left, f"containers left behind: {left}"
        assert agent.errors == [], agent.errors


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


def worker_image(docker_engine: Any, script: str, prefix: str) -> str:
    """A small image of the test base whose command ``mlship-batch`` is ``script``; its tag."""
    from conftest import TEST_BASE_IMAGE

    tag = f"{prefix}:{uuid.uuid4().hex[:8]}"
    files = {"Dockerfile": f"FROM {TEST_BASE_IMAGE}\nCOPY mlship-batch /usr/local/bin/mlship-batch\n"
                           "RUN chmod 755 /usr/local/bin/mlship-batch\nCMD [\"mlship-batch\"]\n".encode(),
             "mlship-batch": script.encode()}
    return build_from_files(docker_engine, files, tag)


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
