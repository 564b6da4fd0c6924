"""A canary pickle (it runs a shell command when unpickled) through every command that reads a model: init,
validate, serve, predict --local, build and test (the gate, in a container). Without a trust flag each refuses it
with the names of its globals and the canary never runs, on the host or in the container; with
`unsafe_deserialization: true` it loads (and runs). test_trust.py covers the trust policy itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest

from conftest import build_from_files, build_image, free_port, make_iris_project
from mlship.contract_io import load_project
from mlship.gate import run_gate
from test_trust import _Payload, invoke, plain

SAID = "CANARY-RAN"  # what the payload prints (a container's log shows it)
REFUSAL = "iris.joblib refers to posix.system, which can run commands or code when it is loaded"


def canary_project(folder: Path, iris_model: Path) -> tuple[Path, Path]:
    """The iris project with its model carrying a payload that prints SAID and appends a line to ``counter`` (in
    the project on the host; in a container the folder does not exist, so only the print shows). Returns (project,
    counter)."""
    project = make_iris_project(folder, iris_model)
    counter = folder / "CANARY-COUNT"
    model = joblib.load(iris_model)  # our own, trusted file
    model.extra_ = _Payload(os.system, f"echo {SAID}; echo ran >> {counter}")
    joblib.dump(model, project / "model" / "iris.joblib")
    return project, counter


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


@pytest.fixture(scope="module")
def native_image(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Iterator[str]:
    """The iris image serving the scikit-learn model itself (serve.compile: off), so the container unpickles
    whatever model file it is given (a compiled image serves ONNX and never imports joblib)."""
    root = make_iris_project(tmp_path_factory.mktemp("native"), iris_model, "serve:\n  compile: 'off'\n")
    # its own name: built as `iris`, it would move the session's iris:VERSION tag (same model, so same version)
    # to this image, and removing it here would take that tag from the tests that use the session's image
    contract = root / "mlship.yaml"
    contract.write_text(contract.read_text().replace("name: iris\n", "name: iris-native\n", 1))
    tag = build_image(load_project(root))
    assert tag.startswith("iris-native:"), tag
    yield tag
    docker_engine.images.remove(tag, force=True)


@pytest.fixture
def images(docker_engine: Any) -> Iterator[list[str]]:
    """Tags a test builds; removed afterwards."""
    made: list[str] = []
    yield made
    for tag in made:
        docker_engine.images.remove(tag, force=True)


def canary_image(engine: Any, base: str, artifact: Path, unsafe: bool, made: list[str]) -> str:
    """``base`` (an iris image) with ``artifact`` as its model; ``unsafe``: its mlship.yaml also says
    `unsafe_deserialization: true`."""
    lines = [f"FROM {base}", "COPY iris.joblib /app/model/iris.joblib"]
    if unsafe:
        lines += ["USER root", "RUN echo 'unsafe_deserialization: true' >> /app/mlship.yaml", "USER 10001:10001"]
    files = {"Dockerfile": "\n".join(lines).encode() + b"\n", "iris.joblib": artifact.read_bytes()}
    tag = f"iris:canary-{uuid.uuid4().hex[:8]}"
    made.append(tag)
    return build_from_files(engine, files, tag)


def test_no_command_runs_the_canary_without_a_trust_flag(tmp_path: Path, iris_model: Path, native_image: str,
                                                         base_image_env: str, docker_engine: Any,
                                                         images: list[str]) -> None:
    project, counter = canary_project(tmp_path / "p", iris_model)
    name = load_project(project).contract.name
    refused: dict[str, str] = {}

    def cli(command: str, *args: str) -> None:
        result = invoke(*args)
        assert result.exit_code == 1, (command, result.output)
        refused[command] = plain(result.stderr)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cli("init", "init", str(project / "model" / "iris.joblib"), "--dir", str(fresh))
    assert list(fresh.iterdir()) == []
    cli("validate", "validate", "--file", str(project))
    cli("predict --local", "predict", "--local", "--file", str(project), "--input", str(project / "rows.csv"))
    before = {tag for img in docker_engine.images.list(name=name) for tag in img.tags}
    cli("build", "build", "--file", str(project))
    assert {tag for img in docker_engine.images.list(name=name) for tag in img.tags} == before  # nothing built

    # `mlship serve`: the port is bound first, then the loader refuses the file and the server exits 1
    serve = subprocess.run([sys.executable, "-m", "mlship", "serve", "--file", str(project), "--port",
                            str(free_port())], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert serve.returncode == 1, serve.stderr
    refused["serve"] = plain(serve.stderr)

    # `mlship test`: the image's own server refuses it inside the container, so the gate fails (exit 3)
    tag = canary_image(docker_engine, native_image, project / "model" / "iris.joblib", False, images)
    result = invoke("test", "--image", tag, "--file", str(project))
    assert result.exit_code == 3, result.output
    refused["test"] = plain(result.stderr)
    gate = run_gate(load_project(project), tag)
    assert not gate.ok and SAID not in gate.logs and REFUSAL in plain(gate.logs), gate.logs

    for command, text in refused.items():
        assert REFUSAL in text and "unsafe_deserialization: true" in text, (command, text)
        assert SAID not in text, command
    executions = runs(counter)
    print(f"canary executions without a trust flag across {', '.join(refused)}: {executions}")
    assert executions == 0


def test_unsafe_deserialization_loads_the_canary_in_the_gate_and_on_the_host(
        tmp_path: Path, iris_model: Path, native_image: str, docker_engine: Any, images: list[str]) -> None:
    project, counter = canary_project(tmp_path / "p", iris_model)
    with (project / "mlship.yaml").open("a") as fh:
        fh.write("unsafe_deserialization: true\n")
    result = invoke("predict", "--local", "--file", str(project), "--input", str(project / "rows.csv"), "--json")
    assert result.exit_code == 0, result.output
    assert runs(counter) == 1  # loaded once, its code ran: the point of the opt-in

    tag = canary_image(docker_engine, native_image, project / "model" / "iris.joblib", True, images)
    gate = run_gate(load_project(project), tag)
    assert gate.ok, (gate.problems, gate.logs)
    assert gate.logs.count(SAID) == 1, gate.logs  # loaded once in the container
    assert runs(counter) == 1  # the container never wrote on the host
