"""Failed ecs deploys leave the previous version serving and nothing else behind: a smoke test that fails after the
rollout moves the service back to the serving revision and names the failing example; a first deploy refused before
its service exists removes everything it made (nothing tagged is left); a later deploy that fails removes only the
revision it registered. moto in server mode, the test-side agent, the real boto3 client
(tests/emulators/ecs_fixtures.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import copy_project
from emulators import ecs_fixtures
from emulators.ecs_agent import EcsAgent
from emulators.ecs_fixtures import IRIS_ROW, predict, tagged_left
from emulators.ecs_moto import MotoServer
from mlship.errors import TargetError
from mlship.targets.ecs import EcsTarget, service

# the shared fixtures (tests/emulators/ecs_fixtures.py), by name
agent = ecs_fixtures.agent
aws = ecs_fixtures.aws
ecs_env = ecs_fixtures.ecs_env
fresh_target = ecs_fixtures.fresh_target
new_target = ecs_fixtures.new_target
moto = ecs_fixtures.moto
v1_image = ecs_fixtures.v1_image


def _serving(target: EcsTarget) -> str:
    found = service.find_service(target.aws, target.names)
    assert found is not None
    return str(found["taskDefinition"]).rpartition("/")[2]


def test_a_failed_smoke_test_moves_back_to_the_serving_revision(new_target: Any, v1_image: str, agent: EcsAgent,
                                                                ecs_env: MotoServer, tmp_path: Path) -> None:
    target = new_target(public=True)
    name = target.service
    first = target.deploy(v1_image, lambda _line: None)
    # The same image with a new env value (a new revision) and an example it does not answer as written.
    wrong = copy_project(target.project.root, tmp_path / "wrong", targets={"ecs": {"public": True, "env": {"X": 1}}},
                         examples=[{"input": IRIS_ROW, "output": {"label": "virginica"}}])
    steps: list[str] = []
    with EcsTarget(wrong, {"public": True, "env": {"X": 1}}) as changed, pytest.raises(TargetError) as info:
        changed.deploy(v1_image, steps.append)
    message = info.value.message
    assert message.startswith(f"Smoke test of {name} failed at {first.url}:\n  examples[0]: "), message
    assert "virginica" in message.splitlines()[1]
    assert f"\nRolled back: revision mlship-{name}:1 serves again." in message
    assert message.endswith(f"\nRemoved the task definition revision mlship-{name}:2 this deploy registered.")
    assert f"smoke test failed; moving {name} back to mlship-{name}:1" in steps
    assert _serving(target) == f"mlship-{name}:1"
    assert [h.split(" ")[0] for h in target.status().history] == [f"mlship-{name}:1"]
    assert {t.task_definition.rpartition("/")[2] for t in agent.tasks.values() if t.service == name} == \
        {f"mlship-{name}:1"}
    assert predict(agent.url(first.url or "")).json()["label"] == "setosa"


def test_a_first_deploy_refused_before_its_service_exists_removes_what_it_made(
        fresh_target: EcsTarget, v1_image: str, agent: EcsAgent, ecs_env: MotoServer) -> None:
    name = fresh_target.service
    ecs_env.fail_next("CreateService", "AccessDeniedException", 400)
    with pytest.raises(TargetError) as info:
        fresh_target.deploy(v1_image, lambda _line: None)
    message = info.value.message
    assert message.startswith(f"create ECS service {name}: permission denied: AccessDeniedException"), message
    assert f"\nRemoved what this first deploy made: task definition revision " \
           f"mlship-{name}:1, load balancer mlship-{name} and its listener, target group mlship-{name}, security " \
           f"group mlship-{name}, log group /mlship/{name}, execution role mlship-{name}-exec, ECR repository " \
           f"{name} and its images" in message, message
    assert tagged_left(name) == []
    assert fresh_target.destroy() == []  # nothing left to remove


def test_a_later_deploy_that_fails_keeps_the_serving_revision(new_target: Any, v1_image: str, agent: EcsAgent,
                                                              ecs_env: MotoServer) -> None:
    target = new_target()
    name = target.service
    steps: list[str] = []
    first = target.deploy(v1_image, steps.append)
    assert "smoke test skipped: the load balancer is internal (reachable only inside its VPC, not from this " \
           "machine); its health checks on /readyz decided" in steps
    ecs_env.fail_next("UpdateService", "AccessDeniedException", 400)
    with EcsTarget(target.project, {"env": {"X": 1}}) as changed, pytest.raises(TargetError) as info:
        changed.deploy(v1_image, lambda _line: None)
    message = info.value.message
    assert message.startswith(f"update ECS service {name}: permission denied"), message
    assert message.endswith(f"\nRemoved the task definition revision mlship-{name}:2 this deploy registered.")
    assert _serving(target) == f"mlship-{name}:1"
    assert [h.split(" ")[0] for h in target.status().history] == [f"mlship-{name}:1"]
    before = sorted(tagged_left(name))
    assert predict(agent.url(first.url or "")).status_code == 200
    assert sorted(tagged_left(name)) == before  # the rest stays as it was
