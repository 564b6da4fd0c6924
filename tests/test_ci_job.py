"""The GitHub Actions job documented in the README ("In CI and from Python"): its `run:` steps, as written,
run in bash against the local target (not the Actions runner). Steps that install mlship or use an action
are what the runner provides; the `if:` of the deploy step is taken as true (a push to main)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import TEST_BASE_IMAGE, copy_project, free_port

REPO = Path(__file__).resolve().parents[1]
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def documented_job() -> dict[str, Any]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```yaml\n(# \.github/workflows/model\.yml\n.*?)```", readme, re.S)
    assert found, "the README's GitHub Actions job is missing"
    workflow = yaml.safe_load(found.group(1))
    job: dict[str, Any] = workflow["jobs"]["ship"]
    return job


def test_the_documented_job_is_a_valid_workflow() -> None:
    job = documented_job()
    names = [step.get("name") or step["uses"] for step in job["steps"]]
    assert names[:2] == ["actions/checkout@v4", "actions/setup-python@v5"]
    deploy = next(step for step in job["steps"] if step.get("name") == "Deploy")
    assert "refs/heads/main" in deploy["if"] and "--json" in deploy["run"]
    commands = [line for step in job["steps"] for line in step.get("run", "").splitlines()
                if re.search(r"\bmlship (deploy|build|test|status|rollback|destroy)\b", line)]
    assert len(commands) == 4 and all("--json" in line for line in commands)  # only JSON and exit codes


def test_the_documented_job_runs_against_the_local_target(iris_image: tuple[Path, str], tmp_path: Path,
                                                          docker_engine: Any) -> None:
    project = copy_project(iris_image[0], tmp_path / "ci-job", name="ci-job",
                           targets={"local": {"port": free_port()}})
    folder = project.root
    job = documented_job()
    env = {**os.environ, **job["env"], "MLSHIP_TARGET": "local", "MLSHIP_BASE_IMAGE": TEST_BASE_IMAGE,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GITHUB_OUTPUT": str(tmp_path / "github-output")}
    ran = []
    try:
        for step in job["steps"]:
            if "run" not in step or step.get("name") == "Install mlship":
                continue
            result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], cwd=folder, env=env,
                                    capture_output=True, text=True, timeout=600, check=False)
            assert result.returncode == 0, f"step {step['name']!r} failed:\n{result.stdout}\n{result.stderr}"
            ran.append((step["name"], result.stdout))
        assert [name for name, _ in ran] == ["Validate the contract and the model", "Preflight and plan",
                                             "Build the image and run its test gate", "Deploy"]
        plan = json.loads((folder / "plan.json").read_text())
        assert plan["kind"] == "deploy" and plan["dry_run"] and plan["preflight"]["ok"]
        assert json.loads((folder / "build.json").read_text())["kind"] == "build"
        assert json.loads((folder / "test.json").read_text())["ok"] is True
        deployed = json.loads((folder / "deploy.json").read_text())
        assert deployed["ok"] and deployed["target"] == "local"
        assert f"serving {deployed['version']} at {deployed['url']}" in ran[-1][1]
        with httpx.Client(timeout=10) as client:
            assert client.post(f"{deployed['url']}/predict", json=IRIS_ROW).json()["label"] == "setosa"
    finally:
        subprocess.run([sys.executable, "-m", "mlship", "destroy", "-f", str(folder)], env=env, check=False,
                       capture_output=True, timeout=120)
        for image in docker_engine.images.list(name="ci-job"):
            for tag in image.tags:
                docker_engine.images.remove(tag, force=True)


@pytest.mark.parametrize("code", [3, 4])
def test_the_documented_deploy_step_reports_gate_and_preflight_failures(code: int, tmp_path: Path) -> None:
    """The deploy step's `case` on the exit code, with a stand-in `mlship` that exits with that code."""
    deploy = next(step for step in documented_job()["steps"] if step.get("name") == "Deploy")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlship").write_text(f"#!/bin/sh\necho '{{\"kind\": \"error\"}}'\nexit {code}\n")
    (fake / "mlship").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "MLSHIP_TARGET": "local"}
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", deploy["run"]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == code
    expected = "test gate" if code == 3 else "preflight failed"
    assert "::error::" in result.stdout and expected in result.stdout
