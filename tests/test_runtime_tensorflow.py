"""The tensorflow runtime end to end with the keras-digits example: init -> validate -> serve -> predict over
HTTP (nested lists and base64 PNGs) -> 422s -> build (once per session) -> `mlship test` -> local deploy.
The other formats, safe mode and unsafe zips: test_runtime_tensorflow_formats.py.

TensorFlow's import is slow (seconds), so models and the server are shared at module/session scope.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import keras_digits
from cli_helpers import invoke
from conftest import TEST_BASE_IMAGE, Server, build_image, free_port, running
from keras_digits import EXAMPLE, LABELS, SAMPLE, digit_png, edit, make_digits_project, tf_version
from mlship.contract_io import load_project

digits_model = keras_digits.digits_model


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    return make_digits_project(tmp_path_factory.mktemp("digits-project"), digits_model)


@pytest.fixture(scope="module")
def server(digits_dir: Path) -> Iterator[Server]:
    from mlship.image.context import build_compiled

    build_compiled(load_project(digits_dir))  # as `mlship build` does: the server starts from the compiled model
    with running(digits_dir) as srv:
        yield srv


# -- init / validate ----------------------------------------------------------------------------------------
def test_init_writes_a_working_contract(digits_dir: Path) -> None:
    data = yaml.safe_load((digits_dir / "mlship.yaml").read_text())
    assert data["runtime"] == "tensorflow" and data["task"] == "classification"
    assert data["input"]["tensor"]["shape"] == [None, 8, 8]
    assert data["input"]["tensor"]["dtype"] == "float32"
    assert data["output"]["labels"] == [str(i) for i in range(10)]
    assert f"tensorflow-cpu=={tf_version()}" in data["dependencies"]["requirements"]
    assert not any(r.startswith("tensorflow==") for r in data["dependencies"]["requirements"])
    example = data["examples"][0]
    assert example["input"] == {"input": SAMPLE[0]}
    assert example["output"] == {"label": LABELS[0]}


def test_cli_init_and_validate(tmp_path: Path, digits_model: Path) -> None:
    (tmp_path / "model").mkdir()
    shutil.copy(digits_model, tmp_path / "model" / "digits.keras")
    shutil.copy(EXAMPLE / "sample.json", tmp_path / "sample.json")
    result = invoke("init", str(tmp_path / "model" / "digits.keras"), "--sample", str(tmp_path / "sample.json"),
                    "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "tensorflow classification model, tensor float32 [null, 8, 8], labels: 0, 1" in result.output
    assert f"saved with tensorflow {tf_version()}" in result.output
    text = (tmp_path / "mlship.yaml").read_text()
    assert "shape: [null, 8, 8]" in text and f"- {json.dumps(SAMPLE[0][0])}\n" in text  # one line per row
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "ok examples[0]" in result.output


def test_wrong_contract_shape_fails_validate(tmp_path: Path, digits_dir: Path) -> None:
    shutil.copytree(digits_dir, tmp_path / "p")
    edit(tmp_path / "p", lambda d: (d["input"]["tensor"].update(shape=[None, 64], image=None),
                                    d.update(examples=[])))
    result = invoke("validate", "-f", str(tmp_path / "p"))
    assert result.exit_code == 1, result.output
    assert "the model takes input shape [null, 8, 8] but input.tensor.shape is [null, 64]" in result.output


def test_labels_map_by_position_and_must_match_in_number(tmp_path: Path, digits_dir: Path) -> None:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    shutil.copytree(digits_dir, tmp_path / "p")
    edit(tmp_path / "p", lambda d: (d["output"].update(labels=names), d["examples"][0].update(output={"label": "one"})))
    result = invoke("predict", "--local", "-f", str(tmp_path / "p"), "--input", str(EXAMPLE / "sample.json"), "--json")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.output)["predictions"]
    assert preds[0]["label"] == "one" and set(preds[0]["probabilities"]) == set(names)
    edit(tmp_path / "p", lambda d: d["output"].update(labels=names[:3]))
    result = invoke("validate", "-f", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert "output.labels has 3 labels but the model has 10 classes" in result.output


# -- serve and predict over HTTP -----------------------------------------------------------------------------
def test_predict_nested_lists_and_batches(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        one = http.post("/predict", json={"input": SAMPLE[0]})
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["label"] == LABELS[0]
        assert set(body["probabilities"]) == {str(i) for i in range(10)}
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
        batch = http.post("/predict", json={"instances": SAMPLE}).json()["predictions"]
        assert [p["label"] for p in batch] == LABELS
        assert batch[0]["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)


def test_predict_base64_png(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        lists = http.post("/predict", json={"instances": SAMPLE}).json()["predictions"]
        for size in (8, 32):  # the 32x32 PNG is resized (box filter) back to the same 8x8 pixels
            pngs = [{"b64": digit_png(image, size)} for image in SAMPLE]
            got = http.post("/predict", json={"instances": pngs})
            assert got.status_code == 200, got.text
            for png, ref in zip(got.json()["predictions"], lists, strict=True):
                assert png["label"] == ref["label"]
                assert png["probabilities"] == pytest.approx(ref["probabilities"], abs=0.05)


def test_wrong_shape_and_dtype_are_422(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/predict", json={"input": [row[:7] for row in SAMPLE[0]]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["msg"] == "expected shape [8, 8], got [8, 7]"
        assert r.json()["detail"][0]["loc"] == ["body", "input"]
        bad = [list(row) for row in SAMPLE[0]]
        bad[4][2] = "16"
        r = http.post("/predict", json={"instances": [SAMPLE[1], bad]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "instances", 1, 4, 2]
        assert r.json()["detail"][0]["msg"] == "expected a number"
        r = http.post("/predict", content=json.dumps({"input": SAMPLE[0]}).replace("16", "1e39", 1))
        assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "number out of range for float32"
        r = http.post("/predict", json={"input": {"b64": base64.b64encode(b"GIF89a").decode()}})
        assert r.status_code == 422 and "not a readable PNG image" in r.json()["message"]
        r = http.post("/predict", json={"sepal_length": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]


def test_metadata_openapi_and_cli_predict(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        meta = http.get("/metadata").json()
        assert meta["runtime"] == "tensorflow"
        assert meta["tensor"]["shape"] == [None, 8, 8] and meta["tensor"]["image"]["channels"] == 1
        assert "Tensor" in http.get("/openapi.json").json()["components"]["schemas"]
        assert 'accept="image/png"' in http.get("/").text
    result = invoke("predict", "--url", server.url, "--input", str(EXAMPLE / "sample.json"), "--json")
    assert result.exit_code == 0, result.output
    assert [p["label"] for p in json.loads(result.output)["predictions"]] == LABELS


# -- the image: build once, `mlship test`, local deploy --------------------------------------------------------------
@pytest.fixture(scope="session")
def digits_image(docker_engine: object, tmp_path_factory: pytest.TempPathFactory, digits_model: Path
                 ) -> tuple[Path, str]:
    root = make_digits_project(tmp_path_factory.mktemp("digits-image"), digits_model)
    edit(root, lambda d: d.update(serve={"compile": "off"}))  # TensorFlow itself (compiled: test_compiled_tensor.py)
    return root, build_image(load_project(root))


def test_build_plan_pins_tensorflow_cpu_and_pillow(digits_dir: Path, tmp_path: Path) -> None:

    from mlship.image.context import plan_project

    project = load_project(digits_dir)
    plan = plan_project(project, TEST_BASE_IMAGE)
    assert f"pillow=={version('pillow')}" in plan.requirements and f"onnxruntime=={version('onnxruntime')}" in (
        plan.requirements)  # compiled (serve.compile: auto): no TensorFlow at all
    assert not any(r.split("==")[0] in ("tensorflow", "tensorflow-cpu", "keras") for r in plan.requirements)
    off = tmp_path / "off"
    shutil.copytree(digits_dir, off, ignore=shutil.ignore_patterns(".mlship", "server-*.log"))
    edit(off, lambda d: d.update(serve={"compile": "off"}))
    plan = plan_project(load_project(off), TEST_BASE_IMAGE)
    assert f"tensorflow-cpu=={tf_version()}" in plan.requirements
    assert f"pillow=={version('pillow')}" in plan.requirements
    assert not any(r.split("==")[0] == "tensorflow" for r in plan.requirements)
    assert "rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include" in plan.dockerfile


def test_mlship_test_on_the_image(digits_image: tuple[Path, str]) -> None:
    root, tag = digits_image
    result = invoke("test", "--json", "-f", str(root), "--image", tag)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["examples"][0]["got"]["label"] == LABELS[0]
    print(f"\nkeras-digits image {tag}: {report['size_mb']} MB, ready {report['ready_s']} s, "
          f"first prediction {report['first_prediction_s']} s")


def test_local_deploy(digits_image: tuple[Path, str], tmp_path: Path, base_image_env: str,
                      docker_engine: Any) -> None:
    name = f"kd-{uuid.uuid4().hex[:8]}"
    port = free_port()
    folder = tmp_path / name
    shutil.copytree(digits_image[0], folder, ignore=shutil.ignore_patterns(".mlship"))
    edit(folder, lambda d: d.update(name=name, targets={"local": {"port": port}}))
    tag = f"{name}:{load_project(folder).version}"
    try:
        result = invoke("deploy", "--target", "local", "-f", str(folder))
        assert result.exit_code == 0, result.output
        assert f"tested {tag}" in result.output and result.output.rstrip().endswith(f"http://127.0.0.1:{port}")
        with httpx.Client(timeout=10) as http:
            r = http.post(f"http://127.0.0.1:{port}/predict", json={"input": {"b64": digit_png(SAMPLE[1], 16)}})
            assert r.status_code == 200 and r.json()["label"] == LABELS[1]
            r = http.post(f"http://127.0.0.1:{port}/predict", json={"input": [[0] * 8] * 7})
            assert r.status_code == 422
        result = invoke("destroy", "-f", str(folder))
        assert result.exit_code == 0, result.output
        assert not docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"})
    finally:
        for container in docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}):
            container.remove(force=True)
        if any(tag in image.tags for image in docker_engine.images.list(name=name)):
            docker_engine.images.remove(tag)
