"""`mlship test` on the real iris image: pass, a wrong expected output, a size budget, no leftovers.

Every case runs the session's image (`iris_image`); run_gate takes the project and the image separately,
so the failing cases edit mlship.yaml in a copy of the project instead of building again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TEST_BASE_IMAGE
from mlship.cli import app

ROLE = {"label": "dev.mlship.role=test"}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    return " ".join(text.split())


def gate_containers(docker_engine: Any) -> set[str]:
    return {c.id for c in docker_engine.containers.list(all=True, filters=ROLE)}


@pytest.fixture
def no_leftovers(docker_engine: Any) -> Iterator[None]:
    """After the test, no `mlship test` container started during it is left (running or stopped).

    Compared with the containers before the test, so a gate run elsewhere on a shared engine is not ours.
    """
    before = gate_containers(docker_engine)
    yield
    assert gate_containers(docker_engine) - before == set(), "mlship test left a container behind"


@pytest.fixture
def project_copy(iris_image: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the image's project, to edit its contract (the image stays the same)."""
    return Path(shutil.copytree(iris_image[0], tmp_path / "p", ignore=shutil.ignore_patterns(".mlship")))


def edit(directory: Path, **changes: Any) -> None:
    path = directory / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_gate_passes_with_cold_start_and_size(iris_image: tuple[Path, str], no_leftovers: None) -> None:
    root, tag = iris_image
    result = invoke("test", "-f", str(root), "--image", tag, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["image"] == tag
    assert report["size_mb"] > 50
    assert 0 < report["ready_s"] <= report["first_prediction_s"] < 60
    assert [(ex["index"], ex["ok"], ex["got"]["label"]) for ex in report["examples"]] == [(0, True, "setosa")]


def test_wrong_expected_output_fails_and_names_the_example(iris_image: tuple[Path, str], project_copy: Path,
                                                           no_leftovers: None) -> None:
    data = yaml.safe_load((project_copy / "mlship.yaml").read_text())
    assert data["examples"][0]["output"] == {"label": "setosa"}
    data["examples"][0]["output"] = {"label": "virginica"}
    (project_copy / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("test", "-f", str(project_copy), "--image", iris_image[1])
    assert result.exit_code == 3, result.output  # 3: the gate failed
    err = plain(result.stderr)
    assert "FAIL examples[0] output.label: expected 'virginica', got 'setosa'" in err
    assert f"error: {iris_image[1]} failed `mlship test`: examples[0]: output.label: expected 'virginica', " \
           "got 'setosa'" in err
    assert "fix: Fix the model or the expected outputs in mlship.yaml" in err


def test_image_size_budget(iris_image: tuple[Path, str], project_copy: Path, no_leftovers: None) -> None:
    edit(project_copy, test={"max_image_mb": 1})
    result = invoke("test", "-f", str(project_copy), "--image", iris_image[1], "--json")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)  # one error document that carries the gate's report
    assert document["kind"] == "error" and document["exit_code"] == 3 and document["error"]["type"] == "GateError"
    report = document["gate"]
    assert report["ok"] is False
    assert report["examples"][0]["ok"] is True  # the image works; only the budget fails
    assert report["problems"] == [f"image is {report['size_mb']:g} MB, over test.max_image_mb=1"]
    assert "over test.max_image_mb=1" in plain(result.stderr)


def test_container_that_exits_is_reported_and_removed(iris_image: tuple[Path, str], no_leftovers: None) -> None:
    """The base image's `python3` exits at once: the report says so (not a 60 s timeout)."""
    started = time.monotonic()
    result = invoke("test", "-f", str(iris_image[0]), "--image", TEST_BASE_IMAGE, "--json")
    assert result.exit_code == 3, result.output
    problems = json.loads(result.stdout)["gate"]["problems"]
    assert problems == ["the container exited (code 0) before /readyz answered 200"]
    assert time.monotonic() - started < 30


def test_missing_image_is_a_clear_error(iris_image: tuple[Path, str]) -> None:
    result = invoke("test", "-f", str(iris_image[0]), "--image", "iris:no-such-version")
    assert result.exit_code == 1
    assert "error: No image iris:no-such-version in the local engine. fix: Run `mlship build` first." in plain(
        result.stderr)
