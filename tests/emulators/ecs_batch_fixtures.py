"""Fixtures and helpers of the `mlship batch --target ecs` tests (a test module names the fixtures it uses:
``runner = ecs_batch_fixtures.runner``): ``runner`` (the RunTask agent per module: tests/emulators/ecs_runtask.py;
at its end no container is left), ``batch_env`` (aws + the loopback registry + fast polling; moto's S3 takes
pyarrow's uploads), ``bucket`` (a bucket with one input object, emptied and removed afterwards); ``left_after``
(what still carries a service's tag, but stopped tasks) and ``objects``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

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
