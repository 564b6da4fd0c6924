"""The pytorch runtime with the torch-digits example end to end: a state_dict through the `load:` hook, a CPU pin
in the contract, init -> validate -> serve -> predict, the image (CPU-only torch), `mlship test` and a local deploy.

The digits models are trained once per session (a few seconds on CPU); the image is built once per session from
the example's checked-in mlship.yaml.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml

import torch_digits
from cli_helpers import invoke
from conftest import REPO, TEST_BASE_IMAGE, build_image, free_port, running
from mlship.contract_io import load_project
from mlship.errors import BuildError
from mlship.runtimes import pytorch as rt

INSTALLED = rt.public_version(torch.__version__)


DIGITS = REPO / "examples" / "torch-digits"
ZERO = json.loads((DIGITS / "rows.json").read_text())["instances"][0]  # sklearn's digits.images[0], a 0


digits_models = torch_digits.digits_models  # trained once a session (test_compiled_tensor.py too)


def digits_project(directory: Path, models: Path, **changes: Any) -> Path:
    """A copy of examples/torch-digits with trained models; ``changes`` edit its mlship.yaml."""
    shutil.copytree(DIGITS, directory, ignore=shutil.ignore_patterns("model", ".mlship", "__pycache__"))
    shutil.copytree(models, directory / "model")
    if changes:
        path = directory / "mlship.yaml"
        data = yaml.safe_load(path.read_text())
        data.update(changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def test_state_dict_through_the_load_hook(digits_models: Path, tmp_path: Path) -> None:
    """The example's predict.py builds DigitsNet and loads the weights with weights_only=True."""
    root = digits_project(tmp_path / "sd", digits_models, artifact="model/digits_state.pt", load="predict.py:load",
                          build={"include": ["net.py"]})
    result = invoke("validate", "-f", str(root))
    assert result.exit_code == 0, result.output
    assert result.output.count("ok examples[") == 3
    from mlship.image.context import plan_project

    assert "ok compiled: onnxruntime" in result.output and "torch.export" in result.output  # a module: dynamo
    project = load_project(root)
    plan = plan_project(project, TEST_BASE_IMAGE)  # compiled: the image needs neither torch nor the load function
    assert not [r for r in plan.requirements if r.startswith("torch")], plan.requirements
    assert "contract/net.py" in [ctx for _src, ctx in plan.files]
    record = root / ".mlship" / "compiled" / "record.json"
    before = json.loads(record.read_text())["source_sha256"]
    (root / "net.py").write_text((root / "net.py").read_text() + "\n# changed\n")  # your code is part of the source
    result = invoke("validate", "-f", str(root))
    assert result.exit_code == 0 and "ok compiled: onnxruntime" in result.output, result.output
    assert json.loads(record.read_text())["source_sha256"] != before  # converted again, from the changed code
    data = yaml.safe_load((root / "mlship.yaml").read_text())
    data["serve"] = {"compile": "off"}
    (root / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    plan = plan_project(load_project(root), TEST_BASE_IMAGE)
    assert plan.requirements[0] == f"torch=={rt.public_version(torch.__version__)}+cpu"


def test_a_cpu_pin_in_the_contract_is_not_version_skew(digits_models: Path, tmp_path: Path) -> None:
    from mlship.image.context import build_pins, plan_build, plan_project

    for pin, ok in ((f"torch=={INSTALLED}+cpu", True), (f"torch=={INSTALLED}", True), ("torch==2.0.1+cpu", False)):
        root = digits_project(tmp_path / pin.replace("=", "-").replace("+", "_"), digits_models,
                              dependencies={"python": "3.11", "requirements": [pin]},
                              serve={"compile": "off"})  # the native image (compiled: tests/test_compiled_tensor.py)
        project = load_project(root)
        if not ok:
            with pytest.raises(BuildError, match="Version skew"):
                plan_build(project, pins=build_pins(project))
            continue
        plan = plan_project(project, TEST_BASE_IMAGE)
        assert [r for r in plan.requirements if r.startswith("torch")] == [f"torch=={INSTALLED}+cpu"]


# --- the torch-digits example: init -> validate -> serve -> predict ---------------------------------
def test_init_validate_serve_predict_and_422(digits_models: Path, tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    shutil.copytree(digits_models, root / "model")
    shutil.copy(DIGITS / "rows.json", root / "rows.json")
    result = invoke("init", str(root / "model" / "digits.pt"), "--sample", str(root / "rows.json"),
                    "--dir", str(root))
    assert result.exit_code == 0, result.output
    assert "tensor float32 [null, 8, 8]" in result.output
    contract = root / "mlship.yaml"
    data = yaml.safe_load(contract.read_text())
    assert data["runtime"] == "pytorch" and data["task"] == "classification"
    assert data["input"] == {"tensor": {"shape": [None, 8, 8], "dtype": "float32"}}
    assert data["output"]["labels"] == [str(i) for i in range(10)]
    assert data["dependencies"]["requirements"] == [f"torch=={INSTALLED}"]
    assert data["examples"][0]["output"] == {"label": "0"}

    result = invoke("validate", "-f", str(root))
    assert result.exit_code == 0, result.output

    with running(root) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        one = client.post("/predict", json={"input": ZERO})
        assert one.status_code == 200, one.text
        assert one.json()["label"] == "0" and len(one.json()["probabilities"]) == 10
        batch = client.post("/predict", content=(root / "rows.json").read_bytes())
        assert [p["label"] for p in batch.json()["predictions"]] == ["0", "1", "2", "3", "4"]

        wrong_shape = client.post("/predict", json={"input": ZERO[:7]})
        assert wrong_shape.status_code == 422
        [detail] = wrong_shape.json()["detail"]
        assert detail["msg"] == "expected shape [8, 8], got [7, 8]"
        assert detail["got"] == "array of shape [7, 8]"

        wrong_dtype = client.post("/predict", json={"input": [["x"] * 8] * 8})
        assert wrong_dtype.status_code == 422
        assert wrong_dtype.json()["detail"][0]["loc"] == ["body", "input", 0, 0]
        assert wrong_dtype.json()["detail"][0]["expected"] == "float32"
        assert client.get("/readyz").status_code == 200


# --- the image: CPU-only torch, `mlship test`, local deploy ----------------------------------------
@pytest.fixture(scope="session")
def digits_image(docker_engine: Any, digits_models: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Path, str]:
    """The example's mlship.yaml built once per session, serving torch itself (serve.compile: off; the compiled
    image is tests/test_compiled_tensor.py's): (project dir, image tag)."""
    root = digits_project(tmp_path_factory.mktemp("digits-image") / "p", digits_models, serve={"compile": "off"})
    return root, build_image(load_project(root))


def test_image_installs_cpu_torch_only(digits_image: tuple[Path, str], docker_engine: Any) -> None:
    root, tag = digits_image
    lock = (root / ".mlship" / "build" / "requirements.lock").read_text()
    assert f"torch=={INSTALLED}+cpu --hash=sha256:" in lock
    names = [line.split("==")[0] for line in lock.splitlines() if "==" in line]
    assert not [n for n in names if n.startswith("nvidia") or n == "triton"], names
    wheels = [p.name for p in (root / ".mlship" / "build" / "wheels").iterdir()]
    assert not [w for w in wheels if w.startswith(("nvidia", "triton"))]
    size_mb = docker_engine.images.get(tag).attrs["Size"] / 1e6
    assert size_mb < 1000, f"torch-digits image is {size_mb:.0f} MB"
    dockerfile = (root / ".mlship" / "build" / "Dockerfile").read_text()
    assert "site-packages/torch/include" in dockerfile  # headers pruned from the image


def test_mlship_test_passes_on_the_image(digits_image: tuple[Path, str]) -> None:
    root, tag = digits_image
    result = invoke("test", "-f", str(root), "--image", tag, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and [e["ok"] for e in report["examples"]] == [True, True, True]
    assert report["size_mb"] < 1000
    print(f"\ntorch-digits image: {report['size_mb']} MB, first prediction {report['first_prediction_s']}s")


def _png(image: list[list[int]]) -> str:
    from PIL import Image

    pixels = np.clip(np.asarray(image, dtype=np.float64) * 255 / 16, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_deploy_local_predict_and_destroy(digits_image: tuple[Path, str], tmp_path: Path, base_image_env: str,
                                          docker_engine: Any) -> None:
    name = f"td-{uuid.uuid4().hex[:8]}"
    port = free_port()
    root = Path(shutil.copytree(digits_image[0], tmp_path / name, ignore=shutil.ignore_patterns(".mlship")))
    path = root / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(name=name, targets={"local": {"port": port}})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    tag = f"{name}:{load_project(root).version}"
    try:
        result = invoke("deploy", "--target", "local", "-f", str(root))
        assert result.exit_code == 0, result.output
        assert f"tested {tag}" in result.output and f"http://127.0.0.1:{port}" in result.output
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.post("/predict", json={"input": ZERO}).json()["label"] == "0"
            png = client.post("/predict", json={"input": {"b64": _png(ZERO)}})
            assert png.status_code == 200 and png.json()["label"] == "0", png.text
            bad = client.post("/predict", json={"input": [[0.0] * 8] * 9})
            assert bad.status_code == 422 and "expected shape [8, 8], got [9, 8]" in bad.json()["detail"][0]["msg"]
        result = invoke("destroy", "-f", str(root))
        assert result.exit_code == 0 and f"removed container mlship-{name}" in result.output
    finally:
        for container in docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}):
            container.remove(force=True)
        for image in docker_engine.images.list(name=name):
            docker_engine.images.remove(image.id, force=True)
