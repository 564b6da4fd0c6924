"""The keras-digits example for the tensorflow runtime tests (test_runtime_tensorflow.py,
test_runtime_tensorflow_formats.py): its sample, the ``digits_model`` fixture (trained once per session however
many modules name it: ``digits_model = keras_digits.digits_model``), a project made with `mlship init`, PNGs."""

from __future__ import annotations

import base64
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, load_example_module
from mlship.init import init_project

EXAMPLE = REPO / "examples" / "keras-digits"
SAMPLE = json.loads((EXAMPLE / "sample.json").read_text())["instances"]
LABELS = ["1", "7"]  # sklearn's targets of the two sample digits (load_digits().target[1500:1502])
_TRAINED: dict[Path, Path] = {}  # the session's base temp folder -> the model trained in it


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
    base = tmp_path_factory.getbasetemp()
    if base not in _TRAINED:
        train = load_example_module(EXAMPLE / "train.py", "keras_digits_train")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _TRAINED[base] = Path(train.train(tmp_path_factory.mktemp("digits") / "model" / "digits.keras"))
    return _TRAINED[base]


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
