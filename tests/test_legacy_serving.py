"""An old model served in the Python of its time: a scikit-learn 0.24.2 tree pickled on Python 3.9 (made in a
Debian bullseye container, tests/legacy_models.py) has no wheels for this machine's Python, so its image runs
Python 3.9 with the versions it was saved with. `mlship build` -> `mlship test` -> `deploy --target local` ->
predictions through the URL equal the ones the model made when it was trained -> `destroy`, on the real engine.

Plus: a base image with another Python is a clear build error, and the server's own requirements are chosen per
Python (this machine's exact versions for its own Python, ranges pip resolves for any other).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from conftest import TEST_BASE_IMAGE, WHEEL_CACHE, free_port
from legacy_models import SKLEARN_024, old_tree_copy
from legacy_models import base_image as bullseye_image
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.errors import BuildError
from mlship.image import wheelhouse
from mlship.image.context import plan_build, plan_project
from mlship.legacy.check import host_cannot_load

LABELS = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SERVICE_LABEL = "dev.mlship.service"


@pytest.fixture(scope="module")
def old_tree(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return old_tree_copy(docker_engine, tmp_path_factory.mktemp("old-tree"), WHEEL_CACHE)  # trained once a session


@pytest.fixture(scope="module")
def bullseye(docker_engine: Any) -> str:
    """A Python 3.9 base image (Debian bullseye), the stand-in for python:3.9-slim where nothing can be pulled."""
    return bullseye_image(docker_engine)


def write_project(folder: Path, tree: tuple[Path, dict[str, Any]], *, port: int | None = None) -> Path:
    """A hand-written contract for the old tree: dependencies.python 3.9 and the versions it was saved with; the
    examples are the first rows the model predicted when it was trained (labels and probabilities)."""
    model, made = tree
    folder.mkdir(parents=True)
    shutil.copy(model, folder / "model.sav")
    picked = list(zip(made["rows"], made["labels"], made["probabilities"], strict=True))[::5]
    examples = [{"input": dict(zip(FEATURES, row, strict=True)),
                 "output": {"label": LABELS[label], "probabilities": dict(zip(LABELS, proba, strict=True))}}
                for row, label, proba in picked]
    contract: dict[str, Any] = {
        "name": f"legacy-{uuid.uuid4().hex[:8]}",
        "runtime": "sklearn",
        "artifact": "model.sav",
        "task": "classification",
        "input": {"features": dict.fromkeys(FEATURES, "float")},
        "output": {"labels": LABELS},
        "dependencies": {"python": "3.9", "requirements": list(SKLEARN_024)},
        "examples": examples,
    }
    if port is not None:
        contract["targets"] = {"local": {"port": port}}
    (folder / "mlship.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    return folder


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def report(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture
def services(docker_engine: Any) -> Iterator[list[str]]:
    """Services a test deploys: their containers are force-removed afterwards, pass or fail."""
    names: list[str] = []
    yield names
    for name in names:
        for container in docker_engine.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={name}"}):
            container.remove(force=True)


def test_an_old_scikit_learn_model_is_built_tested_and_deployed_on_python_39(
        old_tree: tuple[Path, dict[str, Any]], bullseye: str, docker_engine: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, services: list[str]) -> None:
    made = old_tree[1]
    assert made["sklearn"] == "0.24.2" and made["python"].startswith("3.9.")
    root = write_project(tmp_path / "old", old_tree, port=free_port())
    name = load_project(root).contract.name
    services.append(name)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLSHIP_BASE_IMAGE_3_9", bullseye)
    monkeypatch.delenv("MLSHIP_BASE_IMAGE", raising=False)

    started = time.perf_counter()
    built = report(invoke("build", "--json"))
    build_s = time.perf_counter() - started
    assert built["base_image"] == bullseye
    requirements = built["requirements"]
    assert set(SKLEARN_024) <= set(requirements)  # the versions the model was saved with, exactly
    assert "numpy>=1.24" not in requirements and not any(r.startswith("numpy==2") for r in requirements)
    assert any(r.startswith("eval_type_backport") for r in requirements)  # pydantic reads `X | None` on 3.9
    assert any("the image runs Python 3.9" in note for note in built["notes"])  # not loaded on this 3.11 host
    image = built["image"]

    def run(*command: str) -> str:
        out: bytes = docker_engine.containers.run(image, list(command), remove=True, network_mode="none")
        return out.decode().strip()

    assert run("python", "--version").startswith("Python 3.9.")
    assert run("python", "-c", "import sklearn, numpy, scipy, joblib; print(sklearn.__version__, numpy.__version__, "
               "scipy.__version__, joblib.__version__)") == "0.24.2 1.19.5 1.6.3 1.0.1"
    # the serving code's Python 3.9 shims, as the image runs them: the standard library's names, the plugins
    assert run("python", "-c", "from mlship.pycompat import STDLIB_MODULES as s; from mlship.plugins import available; "
               "assert {'os', 'json', 'pickle', 'asyncio', '_pickle', 'collections'} <= s, s; "
               "assert not {'sklearn', 'numpy', 'mlship'} & s; print(sorted(available('runtime')))"
               ) == "['pytorch', 'sklearn', 'tensorflow']"
    assert "No module named pip" in run("sh", "-c", "python -m pip --version 2>&1 || true")  # left the venv

    gate = report(invoke("test", "--json"))
    assert gate["ok"] is True and len(gate["examples"]) == 3 and all(e["ok"] for e in gate["examples"])

    deployed = report(invoke("deploy", "--target", "local", "--json"))
    url = deployed["url"]
    assert url.startswith("http://127.0.0.1:")
    with httpx.Client(timeout=30) as client:
        body = {"instances": [dict(zip(FEATURES, row, strict=True)) for row in made["rows"]]}
        first = time.perf_counter()
        response = client.post(f"{url}/predict", json=body)
        first_s = time.perf_counter() - first
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["label"] for p in predictions] == [LABELS[label] for label in made["labels"]]
        for got, want in zip(predictions, made["probabilities"], strict=True):
            assert [got["probabilities"][label] for label in LABELS] == pytest.approx(want, abs=1e-12)
        bare = client.post(f"{url}/predict", json=made["rows"])  # a bare array of rows, values in feature order
        assert [p["label"] for p in bare.json()["predictions"]] == [LABELS[label] for label in made["labels"]]
        bad = client.post(f"{url}/predict", json={"sepal_length": "wide"})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"
        metadata = client.get(f"{url}/metadata").json()
        assert metadata["runtime"] == "sklearn" and metadata["compiled"] is False
        assert "mlship_requests_total" in client.get(f"{url}/metrics").text
        for page in ("/", "/docs", "/openapi.json", "/healthz", "/readyz"):
            assert client.get(url + page).status_code == 200, page

    destroyed = invoke("destroy", "--target", "local")
    assert destroyed.exit_code == 0, destroyed.output
    assert not docker_engine.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={name}"})
    size_mb = built["size_mb"]
    print(f"\npython 3.9 image: {size_mb} MB, build {build_s:.1f}s (docker build {built['seconds']}s), "
          f"gate ready {gate['ready_s']}s, first prediction {gate['first_prediction_s']}s after start; "
          f"first request through the URL {first_s * 1000:.1f} ms")


def test_the_contract_init_writes_with_keep_versions_builds_and_passes_the_gate(
        old_tree: tuple[Path, dict[str, Any]], bullseye: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlship init --keep-versions` (dependencies.python 3.9, the recorded versions, provenance without a proof)
    -> `mlship build` -> `mlship test`: its examples, computed by 0.24.2 at init, are replayed in the image."""
    (tmp_path / "old").mkdir()
    shutil.copy(old_tree[0], tmp_path / "old" / "model.sav")
    monkeypatch.chdir(tmp_path / "old")
    monkeypatch.setenv("MLSHIP_BASE_IMAGE_3_9", bullseye)
    monkeypatch.delenv("MLSHIP_BASE_IMAGE", raising=False)
    result = invoke("init", "model.sav", "--keep-versions")
    assert result.exit_code == 0, result.output
    contract = load_project(tmp_path / "old").contract
    assert contract.dependencies.python == "3.9" and contract.provenance is not None
    assert set(SKLEARN_024) <= set(contract.dependencies.requirements)
    path = tmp_path / "old" / "mlship.yaml"
    assert "name: model\n" in path.read_text()
    path.write_text(path.read_text().replace("name: model\n", f"name: legacy-init-{uuid.uuid4().hex[:8]}\n"))
    built = report(invoke("build", "--json"))
    assert built["base_image"] == bullseye and set(SKLEARN_024) <= set(built["requirements"])
    gate = report(invoke("test", "--json"))
    assert gate["ok"] is True and gate["examples"] and all(e["ok"] for e in gate["examples"])


def test_a_base_image_with_another_python_is_a_clear_error(old_tree: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_project(tmp_path / "old", old_tree)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLSHIP_BASE_IMAGE_3_9", TEST_BASE_IMAGE)  # Debian bookworm: Python 3.11
    result = invoke("build")
    assert result.exit_code != 0
    err = " ".join(result.stderr.split())
    assert f"The base image {TEST_BASE_IMAGE} runs Python 3.11, but dependencies.python is 3.9." in err
    assert "installs wheels downloaded for Python 3.9" in err
    assert "python:3.9-slim is the default" in err and "$MLSHIP_BASE_IMAGE_3_9" in err
    assert "Traceback" not in result.output


def test_the_server_requirements_follow_the_images_python(old_tree: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host = "{}.{}".format(*sys.version_info[:2])
    exact = wheelhouse.server_requirements(host)
    assert exact == wheelhouse.server_requirements()  # this Python: the versions this mlship runs with, as before
    assert all("==" in r for r in exact) and len(exact) == len(wheelhouse.SERVER_PACKAGES)
    old = wheelhouse.server_requirements("3.9")
    assert not any("==" in r for r in old)  # ranges, resolved by pip for 3.9 (host pins may have no cp39 wheels)
    assert "numpy>=1.24" in old and "pydantic>=2.6" in old and "eval_type_backport>=0.2" in old
    assert not any(r.startswith("eval_type_backport") for r in wheelhouse.server_requirements("3.12"))
    with pytest.raises(BuildError, match=r"dependencies.python is 3.8, but mlship's server runs on Python 3.9 and "
                                         r"newer") as caught:
        wheelhouse.server_requirements("3.8")
    assert caught.value.fix is not None and "3.9 or newer" in caught.value.fix

    for variable in ("MLSHIP_BASE_IMAGE", "MLSHIP_BASE_IMAGE_3_9", f"MLSHIP_BASE_IMAGE_{host.replace('.', '_')}"):
        monkeypatch.delenv(variable, raising=False)
    project = load_project(write_project(tmp_path / "old", old_tree))
    plan = plan_project(project, dry_run=True)  # not loaded here: this scikit-learn cannot load 0.24.2
    assert plan.python == "3.9" and plan.base_image == "python:3.9-slim"
    assert set(SKLEARN_024) <= set(plan.requirements)
    assert set(old) - set(plan.requirements) == {"numpy>=1.24"}  # mlship.yaml names numpy: its pin, not our range
    assert "python mismatch: base image python:3.9-slim" in plan.dockerfile  # the build's first step checks it
    assert "--python /opt/venv/bin/python" not in plan.dockerfile  # the venv's own pip (a base's may be older)
    assert not (project.root / ".mlship").exists()  # a dry run writes nothing
    assert host_cannot_load(project) == f"the image runs Python 3.9 and this machine {host}"  # validate: elsewhere
    path = write_project(tmp_path / "current", old_tree) / "mlship.yaml"
    path.write_text(path.read_text().replace("python: '3.9'", f"python: '{host}'"))
    current = plan_build(load_project(path), pins={})  # this Python: the Dockerfile and server pins as before
    assert current.python == host and {r for r in exact if not r.startswith("numpy==")} <= set(current.requirements)
    assert "python mismatch" not in current.dockerfile and "RUN python3 -m venv --without-pip /opt/venv\n" in (
        current.dockerfile)
