"""The tensorflow runtime's compiled path: a loaded model converted to ONNX (see :mod:`mlship.compiled`).

Keras 3 models go through Keras' own exporter (``model.export(path, format="onnx")``, which drives tf2onnx on the
model's serving function with Keras' compatibility patches); SavedModels and Keras 2 (tf_keras) models through
``tf2onnx.convert.from_function`` on the function the runtime serves. Either way the model takes the instances
array ``(N, *shape)`` in its input dtype with a dynamic batch dimension, and returns the raw output the runtime's
``scores_output`` turns into predictions, exactly as on the native path.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from mlship.compiled import NotCompiled, Unavailable


def _tf2onnx() -> Any:
    try:
        module = importlib.import_module("tf2onnx")
    except ImportError:
        raise Unavailable("tf2onnx is not installed (pip install tf2onnx onnxruntime: the converter for "
                          "TensorFlow and Keras models)") from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return module


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def convert(m: Any) -> tuple[bytes, str]:
    """(the ONNX model, the converter's name and version) for a loaded ``TFModel``; NotCompiled saying why."""
    from mlship.runtimes.tensorflow import _quiet_import

    tf, _ = _quiet_import()
    tf2onnx = _tf2onnx()
    converter = f"tf2onnx {_version('tf2onnx')}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx and Keras' patches warn about numpy and TensorFlow APIs
            if m.kind == "keras" and not m.tf_keras:
                m.fn(np.zeros((1, *m.input_shape), dtype=m.input_dtype))  # export needs a model called once
                with tempfile.TemporaryDirectory(prefix="mlship-onnx-") as tmp:
                    path = Path(tmp) / "model.onnx"
                    m.model.export(str(path), format="onnx", verbose=False)
                    return path.read_bytes(), f"Keras {_version('keras')} export ({converter})"
            spec = tf.TensorSpec((None, *m.input_shape), m.input_dtype, name="x")
            fn = tf.function(lambda x: m.fn(x), input_signature=[spec])
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec])
            return proto.SerializeToString(), converter
    except (Unavailable, NotCompiled):
        raise
    except Exception as exc:  # the converters raise many kinds for ops they do not know
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise NotCompiled(f"{converter} cannot convert the model: {exc.__class__.__name__}: {first}") from None
