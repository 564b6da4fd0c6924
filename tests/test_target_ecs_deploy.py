"""The ecs target's life cycle on moto in server mode (tests/emulators/ecs_moto.py) with the real boto3 client, the
test-side agent (tests/emulators/ecs_agent.py) running the tasks' images on the local engine and serving the load
balancer's URL on loopback, and the session's iris image pushed to the loopback registry that stands in for ECR
($MLSHIP_TEST_REGISTRY, default 127.0.0.1:5555).

deploy -> predict through the load balancer -> unchanged redeploy (no mutating call) -> a new version (one new
revision, the traffic moves) -> a model that cannot load (fails, names the revision and why, the old version
answers every request during and after) -> status, logs -> rollback -> destroy (nothing tagged is left).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker.errors import ImageNotFound

from conftest import build_broken_image, build_image, copy_project
from emulators.ecs_agent import EcsAgent
from emulators.ecs_moto import MotoServer
from mlship.errors import TargetError
from mlship.targets import get_target
from mlship.targets.ecs import EcsTarget

REGISTRY = os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")
REGION = "eu-west-1"
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(scope="module")
def registry() -> str:
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"no registry answers on http://{REGISTRY}/v2/ ({exc}): run `bash scripts/docker-up`, "
                    "or set MLSHIP_TEST_REGISTRY to one")
    return REGISTRY


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
def aws(moto: MotoServer, registry: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    moto.use(monkeypatch, REGION, str(tmp_path))
    monkeypatch.setenv("MLSHIP_ECR_REGISTRY", registry)
    monkeypatch.setattr(EcsTarget, "poll_s", 0.1)
    monkeypatch.setattr(EcsTarget, "rollout_timeout_s", 180.0)
    return moto


@pytest.fixture(scope="module")
def service_name() -> str:
    return f"ecs-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def v1_image(iris_image: tuple[Path, str], docker_engine: Any) -> Iterator[str]:
    """The session's iris image under a tag of this module's own (a rebuild elsewhere cannot move it)."""
    tag = f"iris:ecs-v1-{uuid.uuid4().hex[:6]}"
    docker_engine.images.get(iris_image[1]).tag(*tag.split(":"))
    yield tag
    docker_engine.images.remove(tag)


@pytest.fixture(scope="module")
def v2_image(iris_image: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    project = copy_project(iris_image[0], tmp_path_factory.mktemp("ecs") / "v2", version="ecs-v2")
    return build_image(project)


@pytest.fixture(scope="module")
def broken_image(v1_image: str, docker_engine: Any) -> Iterator[str]:
    tag = build_broken_image(docker_engine, v1_image, "ecs")
    yield tag
    docker_engine.images.remove(tag, force=True)


@pytest.fixture
def make_target(iris_image: tuple[Path, str], aws: MotoServer, agent: EcsAgent, service_name: str,
                docker_engine: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[EcsTarget] = []

    def make(**options: Any) -> EcsTarget:
        project = copy_project(iris_image[0], tmp_path / f"p{len(made)}", name=service_name,
                               targets={"ecs": options})
        target = get_target("ecs", project)
        assert isinstance(target, EcsTarget)
        made.append(target)
        return target

    yield make
    for target in made[:1]:
        target.destroy()
    for target in made:
        target.close()
    for image in docker_engine.images.list(name=f"{REGISTRY}/{service_name}"):
        for ref in image.tags + image.attrs.get("RepoDigests", []):
            if ref.startswith(f"{REGISTRY}/{service_name}"):
                with contextlib.suppress(ImageNotFound):
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
    for arn in ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]:
        if {"key": "mlship:service", "value": service} in ecs.list_tags_for_resource(resourceArn=arn)["tags"] \
                and arn not in left:
            left.append(arn)
    return left


class Hammer:
    """POSTs /predict to ``url`` in a loop until stopped; keeps every status and version seen."""

    def __init__(self, url: str) -> None:
        self.url, self.answers = url, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(100_000):
                if self._stop.wait(0.05):
                    return
                try:
                    reply = client.post(f"{self.url}/predict", json=IRIS_ROW)
                    self.answers.append((reply.status_code, reply.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.answers.append((0, type(exc).__name__))

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def test_deploy_predict_redeploy_upgrade_broken_rollback_destroy(
        make_target: Any, iris_image: tuple[Path, str], v1_image: str, v2_image: str, broken_image: str,
        agent: EcsAgent, aws: MotoServer, service_name: str) -> None:
    target = make_target(desired_count=1, tags={"team": "ml"})
    v1_version = iris_image[1].rpartition(":")[2]
    steps: list[str] = []

    started = time.monotonic()
    first = target.deploy(v1_image, steps.append)
    cold_s = time.monotonic() - started
    assert first.changed and first.version == v1_version and first.previous is None
    assert first.image.startswith(f"{REGISTRY}/{service_name}@sha256:") and first.digest
    assert first.url is not None and first.url.startswith("http://mlship-") and ".elb.amazonaws.com" in first.url
    url = agent.url(first.url)
    reply = predict(url)
    assert reply.status_code == 200 and reply.json()["label"] == "setosa"
    assert reply.headers["x-model-version"] == v1_version
    created = aws.last("CreateService")
    assert created is not None
    assert created["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert created["launchType"] == "FARGATE" and created["loadBalancers"][0]["containerPort"] == 8080
    registered = aws.last("RegisterTaskDefinition")
    assert registered is not None
    container = registered["containerDefinitions"][0]
    assert container["image"] == first.image and container["stopTimeout"] == 30  # by digest
    assert container["logConfiguration"]["options"]["awslogs-group"] == f"/mlship/{service_name}"
    target_group = aws.last("CreateTargetGroup")
    assert target_group is not None and target_group["HealthCheckPath"] == "/readyz"
    repo = aws.last("CreateRepository")
    assert repo is not None and repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert any(s.startswith("creating execution role mlship-") for s in steps)

    # Unchanged: no call that changes anything.
    mark = aws.mark()
    started = time.monotonic()
    again = target.deploy(v1_image, steps.append)
    unchanged_s = time.monotonic() - started
    assert not again.changed and again.image == first.image
    assert aws.since(mark, mutating=True) == []
    noop_calls = len(aws.since(mark))

    # A new version: one new revision; the traffic moves once its tasks are healthy, with no failed request.
    mark = aws.mark()
    with Hammer(url) as during:
        second = target.deploy(v2_image, steps.append)
    assert second.changed and second.version == "ecs-v2" and second.previous == first.image
    assert [c[1] for c in aws.since(mark, mutating=True)] == ["RegisterTaskDefinition", "UpdateService"]
    assert predict(url).headers["x-model-version"] == "ecs-v2"
    assert during.answers and {a[0] for a in during.answers} == {200}, during.answers[-5:]

    # A model that cannot load: the deploy fails and says why; v2 answers every request during and after.
    with Hammer(url) as during, pytest.raises(TargetError) as info:
        target.deploy(broken_image, steps.append)
    message = info.value.message
    assert message.startswith(f"Revision mlship-{service_name}:3 of {service_name} failed: "), message
    assert "circuit breaker" in message.splitlines()[0]
    assert "Essential container in task exited (exit code 1)" in message
    assert f"Revision mlship-{service_name}:2 keeps serving." in message
    assert "Last log lines of task" in message
    assert during.answers and {a for a in during.answers} == {(200, "ecs-v2")}, set(during.answers)
    for _ in range(5):
        assert predict(url).headers["x-model-version"] == "ecs-v2"

    status = target.status()
    assert (status.url, status.version, status.image) == (first.url, "ecs-v2", second.image)
    assert status.ready and status.state.startswith("serving: 1/1 tasks running, 1 healthy")
    assert [h.split(" ")[0] for h in status.history] == [f"mlship-{service_name}:{n}" for n in (3, 2, 1)]
    assert status.history[1].endswith("(ecs-v2, serving)")
    logs = target.logs(tail=200)  # CloudWatch Logs, as the awslogs driver shipped the tasks' output
    assert "INFO mlship.server: mlship serving iris on http://0.0.0.0:8080" in logs
    assert len(target.logs(tail=3).splitlines()) == 3

    # Rollback: the revision before the serving one.
    back = target.rollback(steps.append)
    assert (back.image, back.version, back.previous) == (first.image, v1_version, second.image)
    assert predict(url).headers["x-model-version"] == v1_version
    with pytest.raises(TargetError, match=r"No task definition revision of `ecs-\w+` older than the serving"):
        target.rollback(steps.append)

    removed = target.destroy()
    assert removed[0] == f"ECS service mlship/{service_name}"
    assert f"load balancer mlship-{service_name} and its listener" in removed
    assert f"ECR repository {service_name} and its images" in removed
    assert target.status().state == "not deployed"
    assert tagged_left(service_name) == []
    assert target.destroy() == []
    print(f"\necs on moto: cold deploy {cold_s:.2f}s, unchanged re-deploy {unchanged_s:.2f}s ({noop_calls} calls, "
          "0 mutating)")


# --- interrupted deploys converge ----------------------------------------------------------------------------
STEPS = ["CreateRepository", "CreateLogGroup", "PutRetentionPolicy", "CreateRole", "AttachRolePolicy",
         "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "CreateLoadBalancer", "CreateTargetGroup",
         "ModifyTargetGroupAttributes", "CreateListener", "CreateCluster", "RegisterTaskDefinition", "CreateService"]
KINDS = {":service/": "ecs service", ":task-definition/": "task definition", ":loadbalancer/": "load balancer",
         ":targetgroup/": "target group", ":security-group/": "security group",
         ":repository/": "repository", ":role/": "role", "/mlship/": "log group"}


ONE_OF_EACH = sorted(["ecs service", "task definition", "load balancer", "target group", "security group",
                      "repository", "role", "log group"])


def inventory(service: str) -> list[str]:
    """The kinds of what is tagged for ``service`` (a listener goes with its load balancer; moto's tagging API
    does not list listeners)."""
    return sorted(next(kind for mark, kind in KINDS.items() if mark in arn) for arn in tagged_left(service))


class Interrupt:
    """A client factory whose clients raise KeyboardInterrupt right after ``action`` succeeded (a Ctrl-C, or a
    kill, at that step)."""

    def __init__(self, action: str) -> None:
        self.action, self.fired = action, False

    def client(self, name: str) -> Any:
        import boto3

        client = boto3.Session(region_name=REGION).client(name)
        client.meta.events.register("after-call.*.*", self._after)
        return client

    def _after(self, model: Any, **_kwargs: Any) -> None:
        if model.name == self.action and not self.fired:
            self.fired = True
            raise KeyboardInterrupt(f"interrupted right after {model.name}")


@pytest.fixture
def fresh_target(iris_image: tuple[Path, str], aws: MotoServer, agent: EcsAgent, docker_engine: Any,
                 tmp_path: Path) -> Iterator[EcsTarget]:
    """A target for a service of its own; destroyed afterwards, its pushed images removed."""
    name = f"ecs-{uuid.uuid4().hex[:8]}"
    project = copy_project(iris_image[0], tmp_path / "p", name=name, targets={"ecs": {}})
    target = get_target("ecs", project)
    assert isinstance(target, EcsTarget)
    yield target
    target.destroy()
    target.close()
    for image in docker_engine.images.list(name=f"{REGISTRY}/{name}"):
        for ref in image.tags + image.attrs.get("RepoDigests", []):
            if ref.startswith(f"{REGISTRY}/{name}"):
                with contextlib.suppress(ImageNotFound):
                    docker_engine.images.remove(ref)


def test_a_clean_first_deploy_makes_each_step_once(fresh_target: EcsTarget, v1_image: str, agent: EcsAgent,
                                                  aws: MotoServer) -> None:
    """The steps the interrupt matrix below cuts after are exactly the mutating calls of a first deploy."""
    mark = aws.mark()
    steps: list[tuple[float, str]] = []
    started = time.monotonic()
    deployed = fresh_target.deploy(v1_image, lambda line: steps.append((time.monotonic() - started, line)))
    total = time.monotonic() - started
    assert [c[1] for c in aws.since(mark, mutating=True) if c[1] != "CreateCluster"] == \
        [s for s in STEPS if s != "CreateCluster"]  # the cluster is shared: made by the first deploy of a run
    assert inventory(fresh_target.service) == ONE_OF_EACH, "\n".join(tagged_left(fresh_target.service))
    assert predict(agent.url(deployed.url or "")).status_code == 200
    pushed = next(t for t, line in steps if line.startswith("pushed "))
    asked = next(t for t, line in steps if line.startswith("creating ECS service"))
    print(f"\necs first deploy on moto: push {pushed:.2f}s, resources {asked - pushed:.2f}s, rollout "
          f"{total - asked:.2f}s, total {total:.2f}s")


@pytest.mark.parametrize("step", STEPS)
def test_an_interrupted_deploy_converges_with_no_orphans(step: str, fresh_target: EcsTarget, v1_image: str,
                                                         agent: EcsAgent, monkeypatch: pytest.MonkeyPatch,
                                                         aws: MotoServer) -> None:
    if step == "CreateCluster":  # the cluster only goes with the last service in it: start without one
        fresh_target.aws.call("x", "ecs", "describe_clusters", clusters=["mlship"])
        for arn in fresh_target.aws.call("x", "ecs", "list_services", cluster="mlship")["serviceArns"]:
            assert fresh_target.aws.call("x", "ecs", "describe_services", cluster="mlship",
                                         services=[arn])["services"][0]["status"] == "INACTIVE"
        fresh_target.aws.call("x", "ecs", "delete_cluster", missing=("ClusterNotFoundException",), cluster="mlship")
    interrupt = Interrupt(step)
    with monkeypatch.context() as patched:
        patched.setattr(EcsTarget, "client_factory", interrupt.client)
        fresh_target.close()  # the next calls make their clients with the factory
        with pytest.raises(KeyboardInterrupt):
            fresh_target.deploy(v1_image, lambda _line: None)
    assert interrupt.fired
    fresh_target.close()
    again = fresh_target.deploy(v1_image, lambda _line: None)  # run again: converges
    assert predict(agent.url(again.url or "")).headers["x-model-version"] == again.version
    assert inventory(fresh_target.service) == ONE_OF_EACH  # one of each: no orphans
    fresh_target.destroy()
    assert tagged_left(fresh_target.service) == []
