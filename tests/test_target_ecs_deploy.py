"""The ecs target's life cycle on moto in server mode (tests/emulators/ecs_moto.py) with the real boto3 client, the
test-side agent (tests/emulators/ecs_agent.py) running the tasks' images on the local engine and serving the load
balancer's URL on loopback, and the session's iris image pushed to the loopback registry that stands in for ECR
($MLSHIP_TEST_REGISTRY, default 127.0.0.1:5555).

deploy -> predict through the load balancer -> unchanged redeploy (no mutating call) -> a new version (one new
revision, the traffic moves, the smoke test passes through the load balancer's URL) -> a model that cannot load
(fails, names the revision and why, removes that revision; the old version answers every request during and after)
-> status (events, the failed deployment), logs -> rollback -> destroy (nothing tagged is left).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from conftest import Hammer, build_image, copy_project
from emulators import ecs_fixtures
from emulators.ecs_agent import EcsAgent
from emulators.ecs_fixtures import REGISTRY, predict, remove_pushed, tagged_left
from emulators.ecs_moto import MotoServer
from mlship.errors import TargetError
from mlship.targets import get_target
from mlship.targets.ecs import EcsTarget

# the shared fixtures (tests/emulators/ecs_fixtures.py), by name
agent = ecs_fixtures.agent
aws = ecs_fixtures.aws
ecs_env = ecs_fixtures.ecs_env
moto = ecs_fixtures.moto
v1_image = ecs_fixtures.v1_image
broken_image = ecs_fixtures.broken_image



@pytest.fixture(scope="module")
def service_name() -> str:
    return f"ecs-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def v2_image(iris_image: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory,
             docker_engine: Any) -> Iterator[str]:
    """The iris project rebuilt as version ecs-v2 (cached layers); its tag removed afterwards."""
    project = copy_project(iris_image[0], tmp_path_factory.mktemp("ecs") / "v2", version="ecs-v2")
    tag = build_image(project)
    yield tag
    with contextlib.suppress(ImageNotFound):
        docker_engine.images.remove(tag)


@pytest.fixture
def make_target(iris_image: tuple[Path, str], ecs_env: MotoServer, agent: EcsAgent, service_name: str,
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
    remove_pushed(docker_engine, service_name)


def test_deploy_predict_redeploy_upgrade_broken_rollback_destroy(
        make_target: Any, iris_image: tuple[Path, str], v1_image: str, v2_image: str, broken_image: str,
        agent: EcsAgent, ecs_env: MotoServer, service_name: str) -> None:
    aws = ecs_env
    target = make_target(desired_count=1, tags={"team": "ml"}, public=True)
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
    assert f"smoke test passed: 1 example(s) via {first.url}" in steps  # through http://<DNSName>

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
    assert message.endswith(f"\nRemoved the task definition revision mlship-{service_name}:3 this deploy registered.")
    assert during.answers and {a for a in during.answers} == {(200, "ecs-v2")}, set(during.answers)
    for _ in range(5):
        assert predict(url).headers["x-model-version"] == "ecs-v2"

    status = target.status()
    assert (status.url, status.version, status.image) == (first.url, "ecs-v2", second.image)
    assert status.ready and status.state.startswith("serving: 1/1 tasks running, 1 healthy")
    assert [h.split(" ")[0] for h in status.history] == [f"mlship-{service_name}:{n}" for n in (2, 1)]
    assert status.history[0].endswith("(ecs-v2, serving)")
    assert status.failed is not None and status.failed.startswith(f"revision mlship-{service_name}:3 (deployment "
                                                                  "ecs-svc/")
    assert "rolled back by the circuit breaker: " in status.failed
    assert "Essential container in task exited (exit code 1)" in status.failed
    assert status.events[0].endswith(f"(service {service_name}) has reached a steady state."), status.events
    assert any("rolling back to deployment ecs-svc/" in e for e in status.events), status.events
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
