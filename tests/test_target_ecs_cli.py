"""`mlship deploy --target ecs` as a user runs it: preflight -> build (cached layers) -> mlship test -> push ->
ECS (moto in server mode + the test-side agent, tests/emulators/ecs_fixtures.py) -> the load balancer's URL,
then `mlship status`, `mlship logs`, `mlship destroy`. Prints the time of each stage.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

from docker.errors import ImageNotFound
from typer.testing import CliRunner

from conftest import copy_project
from emulators import ecs_fixtures
from emulators.ecs_agent import EcsAgent
from emulators.ecs_fixtures import REGISTRY, predict, remove_pushed, tagged_left
from emulators.ecs_moto import MotoServer
from mlship.cli import app

# the shared fixtures (tests/emulators/ecs_fixtures.py), by name
agent = ecs_fixtures.agent
aws = ecs_fixtures.aws
ecs_env = ecs_fixtures.ecs_env
moto = ecs_fixtures.moto


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_cli_deploy_status_logs_destroy(iris_image: tuple[Path, str], ecs_env: MotoServer, agent: EcsAgent,
                                        base_image_env: str, docker_engine: Any, tmp_path: Path) -> None:
    name = f"ecs-{uuid.uuid4().hex[:8]}"
    project = copy_project(iris_image[0], tmp_path / "p", name=name, targets={"ecs": {"public": True}})
    folder = str(project.root)
    try:
        result = invoke("deploy", "--target", "ecs", "-f", folder, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] and report["target"] == "ecs" and report["changed"]
        assert report["image"].startswith(f"{REGISTRY}/{name}@sha256:") and report["digest"]
        assert any(p.startswith("smoke test: POST each example") for p in report["plan"])
        assert [c["name"] for c in report["preflight"]["checks"] if c["ok"]][-4:] == \
            ["region", "credentials", "network", "permissions"]
        url = report["url"]
        assert url.startswith("http://mlship-") and url.endswith(".elb.amazonaws.com")
        reply = predict(agent.url(url))
        assert reply.status_code == 200 and reply.json()["label"] == "setosa"
        assert reply.headers["x-model-version"] == project.version
        timings = {k: round(v, 2) for k, v in report["timings"].items()}

        result = invoke("status", "--target", "ecs", "-f", folder)
        assert result.exit_code == 0, result.output
        assert "serving: 1/1 tasks running, 1 healthy in the target group" in result.output
        assert f"mlship-{name}:1 ({project.version}, serving)" in result.output
        assert "events:\n  " in result.output and f"(service {name}) has reached a steady state." in result.output
        result = invoke("status", "--target", "ecs", "-f", folder, "--json")
        status = json.loads(result.stdout)
        assert status["failed_deployment"] is None and status["events"][0].endswith("has reached a steady state.")
        assert any(e.endswith("deployment completed.") for e in status["events"]), status["events"]
        result = invoke("logs", "--target", "ecs", "-f", folder, "--tail", "20")
        assert result.exit_code == 0 and f"mlship serving {name} on http://0.0.0.0:8080" in result.output

        result = invoke("destroy", "--target", "ecs", "-f", folder)
        assert result.exit_code == 0, result.output
        assert f"ECS service mlship/{name}" in result.output and f"execution role mlship-{name}-exec" in result.output
        assert tagged_left(name) == []
        print(f"\nmlship deploy --target ecs (moto + agent): {timings}")
    finally:
        invoke("destroy", "--target", "ecs", "-f", folder)
        remove_pushed(docker_engine, name)
        for image in docker_engine.images.list(name=name):
            for ref in image.tags:
                with contextlib.suppress(ImageNotFound):
                    docker_engine.images.remove(ref)
