"""The tensorflow runtime's formats with the keras-digits model: .h5, a SavedModel folder and .zip predict like
.keras, the Keras and SavedModel versions become build pins, unsafe zips and corrupt files are refused; safe mode
and its opt-in; probabilities.
"""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml

import keras_digits
from cli_helpers import invoke
from keras_digits import EXAMPLE, LABELS, SAMPLE, edit, tf_version
from mlship.contract_io import load_project
from mlship.errors import ArtifactError, BuildError
from mlship.init import detect_runtime, init_project
from mlship.runtimes.tensorflow import TensorflowRuntime, probabilities

digits_model = keras_digits.digits_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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
