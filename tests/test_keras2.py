"""Keras 2 (tf.keras / tf_keras) models as users saved them in the TensorFlow 2.x era: `model.save(dir)` (a
SavedModel folder with keras_metadata.pb), that folder zipped, and `model.save("model.h5")`. mlship detects
them without loading, loads them with tf_keras, pins tensorflow-cpu + tf-keras, and serves them.

TensorFlow's import is slow, so the model files are made once per module.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
import zipfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import running
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.errors import ArtifactError, BuildError
from mlship.image.context import build_pins, plan_build
from mlship.init import init_project
from mlship.runtimes import keras2
from mlship.runtimes.tensorflow import TensorflowRuntime

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

TF_KERAS = version("tf-keras")


def tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_keras2_files(tmp_path_factory.mktemp("keras2"))


def make_keras2_files(out: Path) -> dict[str, Any]:
    """An iris classifier (Dense, softmax, Adam, 2 epochs) saved by tf_keras into ``out`` as a SavedModel folder,
    a zip of it and an HDF5 file; plus the rows to predict and the in-process model's probabilities for them."""
    from sklearn.datasets import load_iris

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tf_keras

        x, y = load_iris(return_X_y=True)
        x = x.astype("float32")
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(16, activation="relu"),
                                     tf_keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, verbose=0)
        model.save(out / "saved_dir")
        model.save(out / "model.h5")
    with zipfile.ZipFile(out / "model.zip", "w") as zf:
        for path in sorted((out / "saved_dir").rglob("*")):
            zf.write(path, path.relative_to(out))
    rows = x[[0, 60, 120]].tolist()
    return {"saved": out / "saved_dir", "zip": out / "model.zip", "h5": out / "model.h5", "rows": rows,
            "expected": np.asarray(model(np.asarray(rows, dtype="float32")), dtype=np.float64)}


def project(directory: Path, files: dict[str, Any], fmt: str) -> Path:
    """`mlship init` on a copy of the format's file, with the three rows as the sample."""
    source: Path = files[fmt]
    target = directory / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    (directory / "sample.json").write_text(json.dumps({"instances": files["rows"]}))
    return target


def test_files_are_detected_as_keras2_without_loading(keras2_files: dict[str, Any]) -> None:
    assert keras2.is_keras2_saved_model(keras2_files["saved"])
    assert keras2.is_keras2_hdf5(keras2_files["h5"])
    assert keras2.hdf5_keras_version(keras2_files["h5"]) == TF_KERAS
    assert TensorflowRuntime.can_load(keras2_files["zip"])


@pytest.mark.parametrize("fmt", ["zip", "saved", "h5"])
def test_init_validate_predict(tmp_path: Path, keras2_files: dict[str, Any], fmt: str) -> None:
    artifact = project(tmp_path, keras2_files, fmt)
    result = init_project(artifact, directory=tmp_path, sample=tmp_path / "sample.json")
    c = result.contract
    assert (c.runtime, c.task, c.output.labels) == ("tensorflow", "classification", ["0", "1", "2"])
    assert c.input.tensor is not None and c.input.tensor.shape == [None, 4]
    reqs = c.dependencies.requirements
    assert f"tensorflow-cpu=={tf_version()}" in reqs and f"tf-keras=={TF_KERAS}" in reqs
    assert not any(r.startswith(("tensorflow==", "keras==")) for r in reqs), reqs
    # the version the file records (HDF5: keras_version; SavedModel: saved_model.pb), not the installed one
    recorded = keras2.hdf5_keras_version(artifact) if fmt == "h5" else keras2.saved_tf_version(
        keras2_files["saved"])
    assert result.info.framework_version == recorded
    assert any("written by Keras 2" in note for note in result.info.notes)

    runner = CliRunner()
    assert (out := runner.invoke(app, ["validate", "-f", str(tmp_path)])).exit_code == 0, out.output
    out = runner.invoke(app, ["predict", "--local", "-f", str(tmp_path), "--input", str(tmp_path / "sample.json"),
                              "--json"])
    assert out.exit_code == 0, out.output
    preds = json.loads(out.output)["predictions"]
    got = np.array([[p["probabilities"][str(k)] for k in range(3)] for p in preds])
    np.testing.assert_allclose(got, keras2_files["expected"], atol=1e-6, rtol=0)
    assert [p["label"] for p in preds] == [str(i) for i in keras2_files["expected"].argmax(axis=1)]
    assert build_pins(load_project(tmp_path)) == {"tensorflow-cpu": tf_version(), "tf-keras": TF_KERAS}


def test_serve_answers_predict(tmp_path: Path, keras2_files: dict[str, Any]) -> None:
    init_project(project(tmp_path, keras2_files, "zip"), directory=tmp_path, sample=tmp_path / "sample.json")
    with running(tmp_path) as srv:
        response = httpx.post(srv.url + "/predict", json={"instances": keras2_files["rows"]}, timeout=30)
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    got = np.array([[p["probabilities"][str(k)] for k in range(3)] for p in preds])
    np.testing.assert_allclose(got, keras2_files["expected"], atol=1e-6, rtol=0)


def test_one_tensorflow_package(tmp_path: Path, keras2_files: dict[str, Any]) -> None:
    """A user who lists `tensorflow` gets tensorflow-cpu alone in the image, with a note."""
    init_project(project(tmp_path, keras2_files, "h5"), directory=tmp_path, sample=tmp_path / "sample.json")
    contract = tmp_path / "mlship.yaml"
    data = yaml.safe_load(contract.read_text())
    data["dependencies"]["requirements"].append(f"tensorflow=={tf_version()}")
    contract.write_text(yaml.safe_dump(data, sort_keys=False))
    project_ = load_project(tmp_path)
    plan = plan_build(project_, base="python:3.11-slim", pins=build_pins(project_))
    names = [r.split("==")[0] for r in plan.requirements]
    assert names.count("tensorflow-cpu") == 1 and "tensorflow" not in names
    assert f"tensorflow-cpu=={tf_version()}" in plan.requirements and f"tf-keras=={TF_KERAS}" in plan.requirements
    assert any("two builds of the same TensorFlow" in note for note in plan.notes), plan.notes
    # only `tensorflow` listed: renamed to tensorflow-cpu at the same version
    reqs, notes = keras2.one_tensorflow(["tensorflow==2.16.1", "numpy"])
    assert reqs == ["tensorflow-cpu==2.16.1", "numpy"] and "tensorflow-cpu==2.16.1" in notes[0]


def test_without_tf_keras_the_error_says_what_to_install(keras2_files: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # `import tf_keras` raises ImportError
    major, minor = tf_version().split(".")[:2]
    for fmt in ("h5", "saved"):
        with pytest.raises(ArtifactError) as caught:
            TensorflowRuntime().load(keras2_files[fmt])
        assert caught.value.fix == f"pip install tf-keras=={major}.{minor}.0"
        assert "Keras 2" in str(caught.value)


def test_safe_mode_applies_to_keras2_files(tmp_path: Path) -> None:
    """tf_keras' HDF5 loader runs a Lambda's stored bytecode unless safe mode is set: mlship sets it. A Keras 2
    SavedModel's Lambda is revived from its TensorFlow graph instead (no Python code from the file runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tf_keras

        model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Lambda(lambda x: x * 2),
                                     tf_keras.layers.Dense(3, activation="softmax")])
        model.save(tmp_path / "lambda.h5")
        model.save(tmp_path / "lambda_saved")
    with pytest.raises(ArtifactError, match="stores Python code"):
        TensorflowRuntime().load(tmp_path / "lambda.h5")
    runtime = TensorflowRuntime()
    runtime.unsafe_deserialization = True
    assert runtime.load(tmp_path / "lambda.h5").tf_keras == TF_KERAS
    revived = TensorflowRuntime().load(tmp_path / "lambda_saved").model.layers[0]
    assert type(revived).__module__.endswith("saved_model.load")  # a RevivedLayer, not the deserialized lambda


# --- one TensorFlow package in the image (image/nodeps.py), with real pip runs on wheels made here ----------


def make_wheel(folder: Path, name: str, ver: str, requires: Sequence[str] = ()) -> Path:
    """A minimal installable wheel ``name==ver`` whose METADATA declares ``requires``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{ver}.dist-info"
    files = {f"{dist}/__init__.py": "",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
                 name, ver, "".join(f"Requires-Dist: {r}\n" for r in requires)),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
        zf.writestr(f"{info}/RECORD", "\n".join(f"{n},," for n in [*files, f"{info}/RECORD"]) + "\n")
    return wheel


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only the wheels in this folder (no index): a fake TensorFlow family at version 99."""
    links = tmp_path / "links"
    make_wheel(links, "tensorflow-cpu", "99.0.0", ["absl-fake>=1"])
    make_wheel(links, "tensorflow", "99.0.0", ["absl-fake>=1"])
    make_wheel(links, "tensorflow", "98.0.0", ["absl-fake>=1"])
    make_wheel(links, "absl-fake", "1.0")
    make_wheel(links, "tf-keras", "99.0.0", ["tensorflow<100,>=99", "kdep==2.0", 'never; python_version < "3"'])
    make_wheel(links, "kdep", "2.0")
    make_wheel(links, "app-lib", "1.0", ["tf-addon==1.0"])
    make_wheel(links, "tf-addon", "1.0", ["tensorflow>=99"])
    make_wheel(links, "old-lib", "1.0", ["tensorflow<99"])
    make_wheel(links, "legacy-app", "1.0", ["old-lib==1.0"])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def fill(requirements: list[str], into: Path) -> tuple[set[str], list[str]]:
    """nodeps.pip_download with wheelhouse's real pip download, then nodeps.check: (wheel names, progress lines)."""
    from mlship.image import nodeps, wheelhouse

    lines: list[str] = []
    nodeps.pip_download(wheelhouse._pip_download, requirements, "3.11", into, None, lines.append)
    nodeps.check(into, "3.11", lines.append)
    return {wheelhouse.canonical(p.name.split("-")[0]) for p in into.glob("*.whl")}, lines


def test_tf_keras_comes_without_tensorflow(tmp_path: Path, local_index: Path) -> None:
    from mlship.image import nodeps

    reqs = ["tensorflow-cpu==99.0.0", "tf-keras==99.0.0"]
    assert nodeps.stale(tmp_path / "old", reqs) and not nodeps.stale(tmp_path / "old", ["tf-keras==99.0.0"])
    names, lines = fill(reqs, tmp_path / "wh")
    assert names == {"tensorflow-cpu", "tf-keras", "kdep", "absl-fake"}, names  # tf-keras's other dependency too
    assert any("tf-keras 99.0.0 is installed without its dependency on tensorflow: tensorflow-cpu" in ln
               for ln in lines), lines
    assert not any(ln.startswith("warning") for ln in lines) and not nodeps.stale(tmp_path / "wh", reqs)
    # tf-keras asks for tensorflow 99: tensorflow-cpu 98 cannot provide it, and pip says so
    make_wheel(local_index, "tensorflow-cpu", "98.0.0")
    with pytest.raises(BuildError, match="tensorflow-cpu"):
        fill(["tensorflow-cpu==98.0.0", "tf-keras==99.0.0"], tmp_path / "wh98")


def test_tensorflow_pulled_in_further_down(tmp_path: Path, local_index: Path) -> None:
    """app-lib -> tf-addon -> tensorflow: left out, tensorflow-cpu provides it. legacy-app -> old-lib, which wants
    tensorflow < 99, which tensorflow-cpu 99 cannot provide: both stay, with a warning that names who asks for
    what (listed at the top, old-lib would meet tensorflow-cpu's pin in pip's resolver, an error)."""
    names, lines = fill(["tensorflow-cpu==99.0.0", "app-lib==1.0"], tmp_path / "a")
    assert "tensorflow" not in names and {"tf-addon", "tensorflow-cpu"} <= names, names
    assert any("tensorflow 99.0.0 (required by tf-addon) is left out" in ln for ln in lines), lines
    names, lines = fill(["tensorflow-cpu==99.0.0", "legacy-app==1.0"], tmp_path / "b")
    assert {"tensorflow", "tensorflow-cpu"} <= names
    warning = [ln for ln in lines if ln.startswith("warning")]
    assert warning and "old-lib requires `tensorflow<99`" in warning[0], lines
    with pytest.raises(BuildError, match="conflicting dependencies"):
        fill(["tensorflow-cpu==99.0.0", "old-lib==1.0"], tmp_path / "c")


def test_check_catches_what_pip_install_would(tmp_path: Path) -> None:
    """The image installs the lock with --no-deps, so the host check must see a missing or wrong dependency,
    with markers evaluated for the image's Python."""
    from mlship.image import nodeps

    folder = tmp_path / "wh"
    make_wheel(folder, "lib", "1.0", ['tomli>=1; python_version < "3.11"', "dep>=2"])
    make_wheel(folder, "dep", "2.5")
    nodeps.check(folder, "3.11", print)
    with pytest.raises(BuildError, match=r"lib 1.0 requires `tomli>=1`, which is not in the wheelhouse") as caught:
        nodeps.check(folder, "3.9", print)
    assert "dependencies.requirements" in (caught.value.fix or "")
    make_wheel(folder, "dep", "1.0").rename(folder / "dep-1.0-py3-none-any.whl")
    (folder / "dep-2.5-py3-none-any.whl").unlink()
    with pytest.raises(BuildError, match=r"requires `dep>=2`, the wheelhouse has dep 1.0"):
        nodeps.check(folder, "3.11", print)
