"""Fixtures and helpers of the ecs target's tests (a test module names the fixtures it uses: ``moto =
ecs_fixtures.moto``):

``moto`` (a MotoServer per module), ``aws`` (boto3 pointed at it for one test, every action allowed),
``agent`` (the EcsAgent per module; at its end no container is left; ``registry`` is conftest.py's),
``ecs_env`` (aws + the registry + fast polling + HTTP_PROXY: the load balancers' DNS names answer),
``v1_image`` (the session's iris image under a tag of the
module's own), ``broken_image`` (one whose model cannot load), ``new_target(**options)`` / ``fresh_target`` (a
target for a service of its own, destroyed afterwards, its pushed images removed), ``user_listener`` (a load
balancer and listener of the user's own); ``predict``, ``tagged_left``
(what still carries the service's tag, asked of each API), ``inventory``, ``remove_pushed``.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker.errors import ImageNotFound

from conftest import build_broken_image, copy_project
from emulators.ecs_agent import EcsAgent
from emulators.ecs_moto import MotoServer
from mlship.targets import get_target
from mlship.targets.ecs import EcsTarget

REGISTRY = os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")
REGION = "eu-west-1"
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
ONE_OF_EACH = sorted(["ecs service", "task definition", "load balancer", "target group", "security group",
                      "repository", "role", "log group"])
KINDS = {":listener-rule/": "listener rule",
         ":service/": "ecs service", ":task-definition/": "task definition", ":loadbalancer/": "load balancer",
         ":targetgroup/": "target group", ":security-group/": "security group",
         ":repository/": "repository", ":role/": "role", "/mlship/": "log group"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def agent(docker_engine: Any, moto: MotoServer) -> Iterator[EcsAgent]:
    running = EcsAgent(docker_engine, moto, REGION).start()
    try:
        yield running
    finally:
        running.stop()
        time.sleep(0.5)  # containers stopped in the background by the agent's drain threads
        left = [c for c in running.containers() if c.status != "removing"]
        for container in left:
            container.remove(force=True)
        assert not left, f"containers left behind: {left}"
        assert running.errors == [], running.errors


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    return moto.use(monkeypatch, REGION, str(tmp_path))


@pytest.fixture
def ecs_env(aws: MotoServer, registry: str, agent: EcsAgent, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """aws + the registry + fast polling + the load balancers' addresses: http://<DNSName> answers through the
    agent's HTTP proxy (loopback itself goes direct), as it would from a machine that can reach the ALB."""
    for key in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(key, agent.proxy_url)
    for key in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(key, "127.0.0.1,localhost")
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener reads the proxies when it is made
    monkeypatch.setenv("MLSHIP_ECR_REGISTRY", registry)
    monkeypatch.setattr(EcsTarget, "poll_s", 0.1)
    monkeypatch.setattr(EcsTarget, "rollout_timeout_s", 180.0)
    return aws


@pytest.fixture(scope="module")
def v1_image(iris_image: tuple[Path, str], docker_engine: Any) -> Iterator[str]:
    """The session's iris image under a tag of this module's own (a rebuild elsewhere cannot move it)."""
    tag = f"iris:ecs-v1-{uuid.uuid4().hex[:6]}"
    docker_engine.images.get(iris_image[1]).tag(*tag.split(":"))
    yield tag
    docker_engine.images.remove(tag, force=True)  # only this tag: a task the agent still stops may use the image


@pytest.fixture(scope="module")
def broken_image(v1_image: str, docker_engine: Any) -> Iterator[str]:
    """The iris image with a model file that cannot be loaded: the server exits 1 at start-up."""
    tag = build_broken_image(docker_engine, v1_image, "ecs")
    yield tag
    docker_engine.images.remove(tag, force=True)


@pytest.fixture
def new_target(iris_image: tuple[Path, str], ecs_env: MotoServer, agent: EcsAgent, docker_engine: Any,
               tmp_path: Path) -> Iterator[Callable[..., EcsTarget]]:
    """new_target(**options): a target for a service of its own; each destroyed afterwards, its images removed."""
    made: list[EcsTarget] = []

    def make(**options: Any) -> EcsTarget:
        name = f"ecs-{uuid.uuid4().hex[:8]}"
        project = copy_project(iris_image[0], tmp_path / name, name=name, targets={"ecs": options})
        target = get_target("ecs", project)
        assert isinstance(target, EcsTarget)
        made.append(target)
        return target

    yield make
    for target in made:
        target.destroy()
        target.close()
        remove_pushed(docker_engine, target.service)


@pytest.fixture
def fresh_target(new_target: Callable[..., EcsTarget]) -> EcsTarget:
    """A target with default options for a service of its own (see new_target)."""
    return new_target()


@pytest.fixture
def user_listener(aws: MotoServer) -> Iterator[dict[str, str]]:
    """A load balancer of the user's own (untagged; internet-facing, in the default VPC, with a security group of
    its own) and its HTTP:80 listener, whose default action answers 404; removed afterwards. Keys: listener, dns,
    lb, security_group."""
    import boto3

    s, tag = boto3.Session(region_name=REGION), uuid.uuid4().hex[:8]
    ec2, elb = s.client("ec2"), s.client("elbv2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [n["SubnetId"] for n in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}, {
        "Name": "default-for-az", "Values": ["true"]}])["Subnets"]]
    group = ec2.create_security_group(GroupName=f"user-alb-{tag}", Description="the user's ALB", VpcId=vpc)["GroupId"]
    lb = elb.create_load_balancer(Name=f"user-{tag}", Subnets=subnets, SecurityGroups=[group],
                                  Scheme="internet-facing", Type="application")["LoadBalancers"][0]
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404", "ContentType": "text/plain",
                                                           "MessageBody": "not here"}}])["Listeners"][0]
    yield {"listener": listener["ListenerArn"], "dns": lb["DNSName"], "lb": lb["LoadBalancerArn"],
           "security_group": group}
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    ec2.delete_security_group(GroupId=group)


def remove_pushed(docker_engine: Any, service: str) -> None:
    """The local tags and digest references the pushes (and the agent's pulls) of ``service`` made."""
    for image in docker_engine.images.list(name=f"{REGISTRY}/{service}"):
        for ref in image.tags + image.attrs.get("RepoDigests", []):
            if ref.startswith(f"{REGISTRY}/{service}"):
                with contextlib.suppress(ImageNotFound):  # gone with the image's last other name
                    docker_engine.images.remove(ref)


def predict(url: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(f"{url}/predict", json=IRIS_ROW)


def tagged_left(service: str) -> list[str]:
    """Everything in the account that carries mlship:service=<service>, asked of each API."""
    import boto3

    s = boto3.Session(region_name=REGION)
    left = [m["ResourceARN"] for m in s.client("resourcegroupstaggingapi").get_resources(
        TagFilters=[{"Key": "mlship:service", "Values": [service]}])["ResourceTagMappingList"]]
    ecs = s.client("ecs")
    for arn in [a for a in left if ":service/" in a]:  # a deleted service stays visible a while, INACTIVE
        cluster, name = arn.rpartition(":service/")[2].split("/")
        if ecs.describe_services(cluster=cluster, services=[name])["services"][0]["status"] == "INACTIVE":
            left.remove(arn)
    ecr = s.client("ecr")
    for repo in ecr.describe_repositories()["repositories"]:
        if {"Key": "mlship:service", "Value": service} in ecr.list_tags_for_resource(
                resourceArn=repo["repositoryArn"])["tags"]:
            left.append(repo["repositoryArn"])
    logs = s.client("logs")
    for group in logs.describe_log_groups()["logGroups"]:
        name = group["logGroupName"]
        if logs.list_tags_log_group(logGroupName=name)["tags"].get("mlship:service") == service and not any(
                a.endswith(f":log-group:{name}") for a in left):  # the tagging API may list it already
            left.append(name)
    iam = s.client("iam")
    for role in iam.list_roles()["Roles"]:
        if {"Key": "mlship:service", "Value": service} in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]:
            left.append(role["Arn"])
    elb = s.client("elbv2")  # listener rules: the tagging API does not list them
    for lb in elb.describe_load_balancers()["LoadBalancers"]:
        for listener in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
            for rule in elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]:
                if not rule["IsDefault"] and {"Key": "mlship:service", "Value": service} in elb.describe_tags(
                        ResourceArns=[rule["RuleArn"]])["TagDescriptions"][0]["Tags"]:
                    left.append(rule["RuleArn"])
    for arn in ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]:
        if {"key": "mlship:service", "value": service} in ecs.list_tags_for_resource(resourceArn=arn)["tags"] \
                and arn not in left:
            left.append(arn)
    return left


def inventory(service: str) -> list[str]:
    """The kinds of what is tagged for ``service`` (a listener goes with its load balancer; moto's tagging API
    does not list listeners; tagged_left finds listener rules on each listener)."""
    return sorted(next(kind for mark, kind in KINDS.items() if mark in arn) for arn in tagged_left(service))
