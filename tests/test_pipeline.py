"""The deploy pipeline (mlship.pipeline) as a Python API and as the CLI with --json: preflight before any build,
progress events, machine-readable reports, exit codes. Real engine, real builds, real containers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import mlship
from conftest import TEST_BASE_IMAGE, copy_project, free_port
from mlship.cli import app
from mlship.errors import GateError, PreflightError
from mlship.events import Event, Events
from mlship.reports import (
    BuildReport,
    DeployReport,
    DestroyReport,
    ErrorReport,
    GateResult,
    RollbackReport,
    StatusReport,
)

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def unique_name() -> str:
    return f"pl-{uuid.uuid4().hex[:8]}"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def document(text: str) -> dict[str, Any]:
    """stdout must be exactly one JSON document."""
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def tags(engine: Any, name: str) -> list[str]:
    return [t for image in engine.images.list(name=name) for t in image.tags]


@pytest.fixture
def cleanup(docker_engine: Any) -> Iterator[list[str]]:
    """Service names a test deploys: their containers and images are removed afterwards, pass or fail."""
    names: list[str] = []
    yield names
    for name in names:
        for container in docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}):
            container.remove(force=True)
        for tag in tags(docker_engine, name):
            docker_engine.images.remove(tag, force=True)


def iris_project(iris_image: tuple[Path, str], tmp_path: Path, names: list[str], **changes: Any) -> Path:
    name = unique_name()
    names.append(name)
    targets = changes.pop("targets", {"local": {"port": free_port()}})
    return copy_project(iris_image[0], tmp_path / name, name=name, targets=targets, **changes).root


# --- the Python API ------------------------------------------------------------------------------
def test_python_api_deploy_predict_status_destroy(iris_image: tuple[Path, str], tmp_path: Path,
                                                  base_image_env: str, cleanup: list[str], docker_engine: Any) -> None:
    folder = iris_project(iris_image, tmp_path, cleanup)
    seen: list[Event] = []
    report = mlship.deploy(folder, target="local", events=Events(seen.append))

    assert isinstance(report, DeployReport) and report.ok and report.changed and not report.dry_run
    assert report.url is not None and report.digest is not None and report.digest.startswith("sha256:")
    assert report.digest == docker_engine.images.get(report.image).id
    assert report.gate is not None and report.gate.ok and report.gate.ready_s > 0
    assert report.preflight.ok and {c.name for c in report.preflight.checks} >= {"docker engine", "base image", "port"}
    assert list(report.timings) == ["preflight", "plan", "build", "test", "deploy"]
    with httpx.Client(timeout=10) as client:
        answer = client.post(f"{report.url}/predict", json=IRIS_ROW)
    assert answer.status_code == 200 and answer.json()["label"] == "setosa"
    # one event stream: every stage started and finished in order, the build reported its steps
    stages = [(e.stage, e.kind) for e in seen if e.kind in ("start", "done")]
    assert stages == [(s, k) for s in report.timings for k in ("start", "done")]
    assert sum(1 for e in seen if e.stage == "build" and e.message.startswith("Step ")) >= 10

    status = mlship.status(folder, target="local")
    assert isinstance(status, StatusReport) and status.deployed and status.ready and status.url == report.url
    again = mlship.deploy(folder, target="local", skip_test=True)
    assert not again.changed and again.gate is None and again.digest == report.digest
    removed = mlship.destroy(folder, target="local")
    assert isinstance(removed, DestroyReport) and len(removed.removed) == 1
    assert not mlship.status(folder, target="local").deployed


def test_python_api_gate_failure_raises_with_its_report(iris_image: tuple[Path, str], tmp_path: Path,
                                                        base_image_env: str, cleanup: list[str],
                                                        docker_engine: Any) -> None:
    wrong = [{"input": IRIS_ROW, "output": {"label": "virginica"}}]
    folder = iris_project(iris_image, tmp_path, cleanup, examples=wrong)
    with pytest.raises(GateError) as info:
        mlship.deploy(folder, target="local")
    assert info.value.exit_code == 3
    gate = info.value.report
    assert isinstance(gate, GateResult) and not gate.ok
    assert gate.examples[0].problems and "virginica" in gate.problems[0]
    name = cleanup[0]
    assert docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}) == []


# --- preflight: before any build -------------------------------------------------------------------
def test_preflight_without_cloud_credentials_fails_before_building(iris_image: tuple[Path, str], tmp_path: Path,
                                                                   base_image_env: str, cleanup: list[str],
                                                                   docker_engine: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server probe on a non-GCE machine
    folder = iris_project(iris_image, tmp_path, cleanup,
                          targets={"cloudrun": {"project": "my-proj-123", "region": "europe-west1"}})
    started = time.monotonic()
    result = invoke("deploy", "--target", "cloudrun", "--json", "-f", str(folder))
    seconds = time.monotonic() - started
    assert result.exit_code == 4, result.output
    doc = ErrorReport.model_validate(document(result.stdout))
    assert doc.error.type == "PreflightError" and doc.preflight is not None
    failed = [c for c in doc.preflight.checks if not c.ok]
    assert [c.name for c in failed] == ["credentials"]
    assert failed[0].fix is not None and "gcloud auth application-default login" in failed[0].fix
    assert "nothing was built or changed" in result.stderr
    assert seconds < 5, f"preflight took {seconds:.1f}s"
    assert tags(docker_engine, cleanup[0]) == [] and not (folder / ".mlship" / "build").exists()


def test_preflight_busy_port_fails_before_building(iris_image: tuple[Path, str], tmp_path: Path,
                                                   base_image_env: str, cleanup: list[str],
                                                   docker_engine: Any) -> None:
    port = free_port()
    folder = iris_project(iris_image, tmp_path, cleanup, targets={"local": {"port": port}})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        started = time.monotonic()
        with pytest.raises(PreflightError) as info:
            mlship.deploy(folder, target="local")
        seconds = time.monotonic() - started
        result = invoke("deploy", "-f", str(folder))
        dry = invoke("deploy", "--dry-run", "-f", str(folder))
    assert info.value.exit_code == 4 and seconds < 5
    assert f"port: Port {port} on 127.0.0.1 is already in use" in info.value.message
    assert info.value.fix is not None and "targets: {local: {port: 8081}}" in info.value.fix
    assert result.exit_code == 4 and f"Port {port} on 127.0.0.1 is already in use" in result.stderr
    assert dry.exit_code == 4 and "FAILED port" in dry.stdout and "dry run: nothing was built" in dry.stdout
    assert tags(docker_engine, cleanup[0]) == [] and not (folder / ".mlship" / "build").exists()


def test_preflight_names_the_ways_to_set_an_unpullable_base_image(iris_dir: Path, docker_engine: Any) -> None:
    result = invoke("deploy", "--json", "-f", str(iris_dir), "--base-image", "mlship-no-such-base:1")
    assert result.exit_code == 4, result.output
    doc = ErrorReport.model_validate(document(result.stdout))
    assert doc.preflight is not None
    check = next(c for c in doc.preflight.checks if c.name == "base image")
    assert not check.ok and "mlship-no-such-base:1 is not in the local engine and cannot be pulled" in check.detail
    assert check.fix is not None
    for way in ("--base-image IMAGE", "MLSHIP_BASE_IMAGE", "build.base_image", "docker pull mlship-no-such-base:1"):
        assert way in check.fix


# --- the CLI's --json documents -------------------------------------------------------------------
def test_cli_json_documents_for_every_command(iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str,
                                              cleanup: list[str]) -> None:
    folder = str(iris_project(iris_image, tmp_path, cleanup))

    result = invoke("build", "--json", "-f", folder)
    assert result.exit_code == 0, result.output
    built = BuildReport.model_validate(document(result.stdout))
    assert built.image_id and built.size_mb and built.base_image == TEST_BASE_IMAGE and not built.dry_run
    assert "[build]   Step 1/" in result.stderr  # progress went to stderr, not into the document

    result = invoke("test", "--json", "-f", folder)
    assert result.exit_code == 0, result.output
    assert GateResult.model_validate(document(result.stdout)).examples[0].ok

    result = invoke("deploy", "--json", "-f", folder)
    assert result.exit_code == 0, result.output
    deployed = DeployReport.model_validate(document(result.stdout))
    assert deployed.url and deployed.image == built.image and deployed.digest == built.image_id

    result = invoke("status", "--json", "-f", folder)
    assert result.exit_code == 0
    assert StatusReport.model_validate(document(result.stdout)).url == deployed.url

    result = invoke("rollback", "--json", "-f", folder)
    assert result.exit_code == 1  # the first version has nothing to go back to
    failed = ErrorReport.model_validate(document(result.stdout))
    assert failed.command == "rollback" and failed.error.type == "TargetError" and failed.exit_code == 1

    result = invoke("destroy", "--json", "-f", folder)
    assert result.exit_code == 0
    assert DestroyReport.model_validate(document(result.stdout)).removed

    result = invoke("deploy", "--dry-run", "--json", "-f", folder)
    assert result.exit_code == 0
    plan = DeployReport.model_validate(document(result.stdout))
    assert plan.dry_run and plan.gate is None and plan.plan[0].startswith("build ")
    assert plan.build is not None and plan.build.dockerfile and plan.build.image_id is None


def test_cli_rollback_json_after_two_versions(iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str,
                                              cleanup: list[str]) -> None:
    folder = iris_project(iris_image, tmp_path, cleanup)
    first = mlship.deploy(folder, skip_test=True)
    text = (folder / "mlship.yaml").read_text()
    (folder / "mlship.yaml").write_text(text + 'version: "v2"\n')
    second = mlship.deploy(folder, skip_test=True)
    assert second.previous == first.image
    result = invoke("rollback", "--json", "-f", str(folder))
    assert result.exit_code == 0, result.output
    back = RollbackReport.model_validate(document(result.stdout))
    assert back.image == first.image and back.previous == second.image


def test_gate_failure_exit_code_and_json(iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str,
                                         cleanup: list[str]) -> None:
    wrong = [{"input": IRIS_ROW, "output": {"label": "virginica"}}]
    folder = str(iris_project(iris_image, tmp_path, cleanup, examples=wrong))
    result = invoke("deploy", "--json", "-f", folder)
    assert result.exit_code == 3, result.output
    doc = ErrorReport.model_validate(document(result.stdout))
    assert doc.error.type == "GateError" and doc.gate is not None and not doc.gate.ok
    assert doc.gate.examples[0].got["label"] == "setosa"


# --- progress in a CI log --------------------------------------------------------------------------
def test_non_tty_build_streams_timestamped_lines(iris_image: tuple[Path, str], tmp_path: Path,
                                                 cleanup: list[str]) -> None:
    """`mlship build` with stderr on a pipe: one timestamped line per stage and build step, while it runs."""
    folder = iris_project(iris_image, tmp_path, cleanup)
    env = {**os.environ, "MLSHIP_BASE_IMAGE": TEST_BASE_IMAGE}
    lines, arrived = [], []
    with subprocess.Popen([sys.executable, "-m", "mlship", "build", "-f", str(folder)], stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            arrived.append(time.monotonic())
        proc.wait(timeout=300)
    assert proc.returncode == 0, "\n".join(lines)
    steps = [ln for ln in lines if "[build]   Step " in ln]
    assert len(steps) >= 10
    # streamed, not flushed at exit: the preflight's lines came long before the build's last step
    assert arrived[lines.index(steps[-1])] - arrived[0] > 1.0
    for stage in ("preflight", "plan", "build"):
        assert any(f"[{stage}] done in " in ln for ln in lines), stage
    assert all(ln[:4].isdigit() and ln[10] == "T" and ln[19] == "Z" for ln in lines)
    assert "\x1b[" not in "".join(lines)  # no colour codes in a log
