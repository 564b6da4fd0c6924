"""The tensorflow runtime end to end with the keras-digits example: init -> validate -> serve -> predict over
HTTP (nested lists and base64 PNGs) -> 422s -> build (once per session) -> `mlship test` -> local deploy.
Plus the other formats (.h5, SavedModel folder and .zip), safe mode and its opt-in, and unsafe zips.

TensorFlow's import is slow (seconds), so models and the server are shared at module/session scope.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO, TEST_BASE_IMAGE, Server, build_image, free_port, load_example_module, running
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.errors import ArtifactError, BuildError
from mlship.init import detect_runtime, init_project
from mlship.runtimes.tensorflow import TensorflowRuntime, probabilities

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXAMPLE = REPO / "examples" / "keras-digits"
SAMPLE = json.loads((EXAMPLE / "sample.json").read_text())["instances"]
LABELS = ["1", "7"]  # sklearn's targets of the two sample digits (load_digits().target[1500:1502])


def _train_module() -> Any:
    return load_example_module(EXAMPLE / "train.py", "keras_digits_train")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


def digit_png(image: Any, size: int = 8) -> str:
    """A digit (0..16 values) rendered as a grayscale PNG (0..255), upscaled to size x size, base64."""
    pixels = Image.fromarray(np.round(np.asarray(image, dtype=float) * 255 / 16).astype(np.uint8), "L")
    buf = io.BytesIO()
    pixels.resize((size, size), Image.Resampling.NEAREST).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model/digits.keras trained once per session by examples/keras-digits/train.py."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(_train_module().train(tmp_path_factory.mktemp("digits") / "model" / "digits.keras"))


def make_digits_project(directory: Path, model: Path, image: bool = True) -> Path:
    """A copy of the example (model, sample.json, MODEL.md) with an mlship.yaml from `mlship init`, plus
    `image: {channels: 1, scale: [0, 16]}` so that PNGs are accepted too."""
    (directory / "model").mkdir(parents=True, exist_ok=True)
    shutil.copy(model, directory / "model" / "digits.keras")
    for name in ("sample.json", "MODEL.md"):
        shutil.copy(EXAMPLE / name, directory / name)
    init_project(directory / "model" / "digits.keras", directory=directory, sample=directory / "sample.json")
    if image:
        edit(directory, lambda d: d["input"]["tensor"].update(image={"channels": 1, "scale": [0, 16]}))
    return directory


def edit(directory: Path, change: Any) -> None:
    path = directory / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    return make_digits_project(tmp_path_factory.mktemp("digits-project"), digits_model)


@pytest.fixture(scope="module")
def server(digits_dir: Path) -> Iterator[Server]:
    from mlship.image.context import build_compiled

    build_compiled(load_project(digits_dir))  # as `mlship build` does: the server starts from the compiled model
    with running(digits_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def runtime() -> TensorflowRuntime:
    rt = TensorflowRuntime()
    rt.task = "classification"
    return rt


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory, digits_model: Path, runtime: TensorflowRuntime
            ) -> dict[str, Path]:
    """The digits model as .keras, .h5, a SavedModel folder and a .zip of that folder."""
    import keras

    out = tmp_path_factory.mktemp("formats")
    model = keras.saving.load_model(digits_model, compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(out / "digits.h5")
        model.export(str(out / "saved"), verbose=False)
    archive = out / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((out / "saved").rglob("*")):
            zf.write(path, Path("digits") / path.relative_to(out / "saved"))
    return {"keras": digits_model, "h5": out / "digits.h5", "saved": out / "saved", "zip": archive}


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


# -- formats ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["h5", "saved", "zip"])
def test_other_formats_predict_like_keras(fmt: str, formats: dict[str, Path], runtime: TensorflowRuntime) -> None:
    path = formats[fmt]
    assert TensorflowRuntime.can_load(path)
    assert detect_runtime(path) == "tensorflow"
    x = np.asarray(SAMPLE, dtype=np.float32)
    ref = runtime.predict(runtime.load(formats["keras"]), x, [])
    model = runtime.load(path)
    got = runtime.predict(model, x, [])
    assert got.values == ref.values == [int(label) for label in LABELS]
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-5)
    info = runtime.inspect(model, path)
    assert info.tensor == {"shape": [None, 8, 8], "dtype": "float32"}
    assert info.task == "classification" and info.labels == [str(i) for i in range(10)]
    keras = {"keras": version("keras")} if fmt == "h5" else {}  # SavedModels hold no Keras objects
    assert runtime.saved_versions(model) == {"tensorflow-cpu": tf_version(), **keras}


def with_keras_version(source: Path, dest: Path, keras_version: str) -> Path:
    """A copy of a .keras file whose metadata.json says it was written by ``keras_version``."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "keras_version": keras_version}).encode()
            out.writestr(item, data)
    return dest


def test_keras_files_pin_the_keras_that_wrote_them(tmp_path: Path, digits_model: Path) -> None:
    from mlship.image.context import build_pins, pinned_requirements

    (tmp_path / "model").mkdir()
    with_keras_version(digits_model, tmp_path / "model" / "digits.keras", "3.0.5")
    result = init_project(tmp_path / "model" / "digits.keras", directory=tmp_path)
    assert "keras==3.0.5" in result.contract.dependencies.requirements
    assert f"tensorflow-cpu=={tf_version()}" in result.contract.dependencies.requirements
    project = load_project(tmp_path)
    assert build_pins(project) == {"tensorflow-cpu": tf_version(), "keras": "3.0.5"}
    edit(tmp_path, lambda d: d["dependencies"].update(requirements=[f"tensorflow-cpu=={tf_version()}",
                                                                      f"keras=={version('keras')}"]))
    with pytest.raises(BuildError, match=r"saved with keras 3\.0\.5"):
        pinned_requirements(load_project(tmp_path), build_pins(project))
    # a file that names no Keras 3 release (or none at all) gets the installed Keras, which reads it
    with_keras_version(digits_model, tmp_path / "model" / "digits.keras", "2.15.0")
    result = init_project(tmp_path / "model" / "digits.keras", directory=tmp_path, force=True)
    assert f"keras=={version('keras')}" in result.contract.dependencies.requirements
    assert any("written by Keras 2.15.0" in note for note in result.info.notes)


def test_init_a_zipped_saved_model(tmp_path: Path, formats: dict[str, Path]) -> None:
    shutil.copy(formats["zip"], tmp_path / "digits.zip")
    shutil.copy(EXAMPLE / "sample.json", tmp_path / "sample.json")
    result = init_project(tmp_path / "digits.zip", directory=tmp_path, sample=tmp_path / "sample.json")
    assert result.contract.runtime == "tensorflow"
    assert result.contract.examples[0].output == {"label": LABELS[0]}
    assert invoke("validate", "-f", str(tmp_path)).exit_code == 0


def test_saved_model_version_is_the_build_pin(tmp_path: Path, formats: dict[str, Path]) -> None:
    from mlship.image.context import build_pins, pinned_requirements

    shutil.copy(formats["zip"], tmp_path / "digits.zip")
    init_project(tmp_path / "digits.zip", directory=tmp_path)
    project = load_project(tmp_path)
    pins = build_pins(project)
    assert pins == {"tensorflow-cpu": tf_version()}
    edit(tmp_path, lambda d: d["dependencies"].update(requirements=["tensorflow-cpu==2.15.0"]))
    with pytest.raises(BuildError, match=f"saved with tensorflow-cpu {tf_version()}"):
        pinned_requirements(load_project(tmp_path), pins)


@pytest.mark.parametrize("entry", ["../evil/saved_model.pb", "/abs/saved_model.pb", "a/../../saved_model.pb"])
def test_unsafe_zip_entries_are_refused(tmp_path: Path, entry: str, runtime: TensorflowRuntime) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(entry, b"x")
    with pytest.raises(ArtifactError, match="unsafe entry"):
        runtime.load(archive)
    assert not (tmp_path.parent / "evil").exists()


def test_zip_without_saved_model(tmp_path: Path, runtime: TensorflowRuntime) -> None:
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", b"x")
    assert not TensorflowRuntime.can_load(archive)
    with pytest.raises(ArtifactError, match=r"holds no saved_model\.pb"):
        runtime.load(archive)


def test_corrupt_keras_file(tmp_path: Path, runtime: TensorflowRuntime) -> None:
    (tmp_path / "m.keras").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable Keras file"):
        runtime.load(tmp_path / "m.keras")


# -- safe mode ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    import keras

    out = tmp_path_factory.mktemp("lambda") / "model"
    out.mkdir()
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Lambda(lambda t: t / 16.0),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(out / "lambda.keras")
        model.save(out / "lambda.h5")
    return out


@pytest.mark.parametrize("name", ["lambda.keras", "lambda.h5"])
def test_unsafe_model_is_refused_without_the_opt_in(tmp_path: Path, lambda_model: Path, name: str) -> None:
    shutil.copy(lambda_model / name, tmp_path / name)
    result = invoke("init", str(tmp_path / name), "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "stores Python code (e.g. a Lambda layer), so Keras' safe mode refuses to load it" in result.output
    assert "unsafe_deserialization: true" in result.output
    assert "--unsafe-deserialization" in result.output
    assert not (tmp_path / "mlship.yaml").exists()


def test_unsafe_model_loads_with_the_opt_in(tmp_path: Path, lambda_model: Path) -> None:
    shutil.copy(lambda_model / "lambda.keras", tmp_path / "lambda.keras")
    result = invoke("init", str(tmp_path / "lambda.keras"), "--dir", str(tmp_path), "--unsafe-deserialization")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "mlship.yaml").read_text())["unsafe_deserialization"] is True
    assert invoke("validate", "-f", str(tmp_path)).exit_code == 0
    edit(tmp_path, lambda d: d.pop("unsafe_deserialization"))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code == 1 and "unsafe_deserialization: true" in result.output


def test_probabilities_softmax_when_needed() -> None:
    kept = probabilities(np.array([[0.2, 0.8]]))
    np.testing.assert_allclose(kept, [[0.2, 0.8]])
    logits = probabilities(np.array([[1.0, -1.0, 0.0]]))
    np.testing.assert_allclose(logits.sum(axis=1), [1.0])
    assert logits.argmax() == 0
    np.testing.assert_allclose(probabilities(np.array([[0.9]])), [[0.1, 0.9]])
    np.testing.assert_allclose(probabilities(np.array([[0.0]])), [[1.0, 0.0]])  # 0 is a probability: kept
    np.testing.assert_allclose(probabilities(np.array([[3.0]]))[0, 1], 1 / (1 + np.exp(-3.0)))


# -- the image: build once, `mlship test`, local deploy --------------------------------------------------------------
@pytest.fixture(scope="session")
def digits_image(docker_engine: object, tmp_path_factory: pytest.TempPathFactory, digits_model: Path
                 ) -> tuple[Path, str]:
    root = make_digits_project(tmp_path_factory.mktemp("digits-image"), digits_model)
    edit(root, lambda d: d.update(serve={"compile": "off"}))  # TensorFlow itself (compiled: test_compiled_tensor.py)
    return root, build_image(load_project(root))


def test_build_plan_pins_tensorflow_cpu_and_pillow(digits_dir: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

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
