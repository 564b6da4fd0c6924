"""TensorFlow / Keras runtime: Keras v3 ``.keras`` files, legacy ``.h5`` files, SavedModel folders and a
``.zip`` of a SavedModel folder. Files written by Keras 2 (tf.keras) load with tf-keras (see keras2.py).

Keras files are loaded with ``safe_mode=True``: a model whose file carries Python code (a ``Lambda`` layer)
is refused unless mlship.yaml says ``unsafe_deserialization: true``. SavedModels hold TensorFlow graphs,
not Python code, and load without the opt-in. TensorFlow is imported inside the methods only.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mlship.contract import TENSOR_DTYPES, InputSpec, Task, shape_text
from mlship.errors import ArtifactError
from mlship.runtimes import keras2
from mlship.runtimes.base import ArtifactInfo, ModelOutput, Runtime
from mlship.runtimes.tensorflow_files import extract_saved_model, keras_error

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_DTYPE_ALIASES = {"float16": "float32", "bfloat16": "float32", "int8": "int32", "int16": "int32",
                  "uint16": "int32", "uint32": "int64"}



@dataclass
class TFModel:
    """A loaded model plus what mlship needs to call it; ``load()`` returns this."""

    fn: Any  # batch array -> output tensor (a tf.function over the Keras model, or a SavedModel signature)
    model: Any  # the Keras model, or the SavedModel's loaded object
    kind: str  # "keras" or "savedmodel"
    input_shape: tuple[int | None, ...]  # without the batch dimension; None where the model accepts any size
    input_dtype: str
    output_size: int | None  # last dimension of the output
    activation: str | None  # the final activation when it can be read (Keras), e.g. "softmax"
    saved_tf_version: str | None = None
    saved_keras_version: str | None = None
    tf_keras: str | None = None  # the tf-keras version to pin: a Keras 2 file, loaded with tf_keras


def _quiet_import() -> tuple[Any, Any]:
    """(tensorflow, keras), imported with TensorFlow's C++ log noise turned down and Keras on TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"  # this runtime serves with TensorFlow, whatever the shell says
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TensorFlow's own deprecation warnings at import time
            import keras
            import tensorflow as tf
    except ImportError as exc:
        raise ArtifactError(
            f"The tensorflow runtime needs TensorFlow: {exc}.",
            fix="pip install tensorflow-cpu (or `pip install 'mlship[tensorflow]'`).",
        ) from None
    return tf, keras


def _installed_tf_version() -> str:
    tf, _ = _quiet_import()
    return str(tf.__version__)


def _installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


class TensorflowRuntime(Runtime):
    """Keras models (``.keras``, ``.h5``) and SavedModels (folder or ``.zip``), served with tensorflow-cpu."""

    name = "tensorflow"
    extensions = KERAS_SUFFIXES
    # 290 MB of C++ headers (only for compiling custom ops) and libclang (a build-time tool TensorFlow never
    # imports when serving); and 250 MB of symbol tables in TensorFlow's unstripped shared libraries.
    image_prune = ("tensorflow/include", "clang/native")
    image_strip = ("tensorflow",)
    # an image serving the compiled model (model.onnx, see mlship.compiled) installs onnxruntime instead
    framework_packages = ("tensorflow-cpu", "tensorflow", "keras", "tf-keras")
    batchable = True  # one instance's output depends on that instance alone (stateful models: serve.batching)

    def __init__(self) -> None:
        self._warnings: list[str] = []

    @classmethod
    def can_load(cls, path: Path) -> bool:
        suffix = path.suffix.lower()
        if suffix in KERAS_SUFFIXES:
            return True
        if path.is_dir():
            return (path / "saved_model.pb").is_file()
        if suffix == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    return any(PurePosixPath(n).name == "saved_model.pb" for n in zf.namelist())
            except (zipfile.BadZipFile, OSError):
                return False
        return False

    # -- load --------------------------------------------------------------------------------------------
    def load(self, path: Path) -> TFModel:
        if not path.exists():
            raise ArtifactError(f"Model not found: {path}.", fix="Train the model or fix `artifact`.")
        suffix = path.suffix.lower()
        if path.is_dir():
            return self._load_folder(path, path.name)
        if suffix in KERAS_SUFFIXES:
            return self._load_keras(path)
        if suffix == ".zip":
            with tempfile.TemporaryDirectory(prefix="mlship-savedmodel-") as tmp:
                return self._load_folder(extract_saved_model(path, Path(tmp)), path.name)
        raise ArtifactError(
            f"{path.name} is not a format the tensorflow runtime reads.",
            fix="Save the model with model.save('model.keras') (or .h5), or export a SavedModel folder (or a "
            ".zip of it).",
        )

    def _load_folder(self, folder: Path, shown: str) -> TFModel:
        if keras2.is_keras2_saved_model(folder):  # Keras 2's model.save(dir): a Keras model, via tf_keras
            return self._load_keras(folder, shown)
        return self._load_saved_model(folder, shown)

    def _load_keras(self, path: Path, shown: str | None = None) -> TFModel:
        tf, keras = _quiet_import()
        shown = shown or path.name
        legacy = path.is_dir() or keras2.is_keras2_hdf5(path)
        if legacy:
            keras = keras2.import_tf_keras()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = (keras2.load(path, safe_mode=not self.unsafe_deserialization) if legacy else
                         keras.saving.load_model(path, compile=False, safe_mode=not self.unsafe_deserialization))
            except Exception as exc:  # Keras raises ValueError/TypeError/OSError/... for unreadable files
                raise keras_error(Path(shown), exc) from None
        self._warnings += [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, UserWarning)]
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ArtifactError(
                f"{path.name}: cannot tell the model's input shape (the model was never built with an Input).",
                fix="Build the model with keras.Input(shape=...) (or call it once on data) before saving it.",
            )
        if len(inputs) != 1 or len(getattr(model, "outputs", []) or []) != 1:
            raise ArtifactError(
                f"{path.name} has {len(inputs)} inputs and {len(model.outputs)} outputs; the tensorflow runtime "
                "serves models with one input and one output.",
                fix="Wrap the model with a `predict: predict.py:predict` function in mlship.yaml.",
            )
        spec_in, spec_out = inputs[0], model.outputs[0]
        input_shape = tuple(spec_in.shape[1:])
        dtype = _dtype_name(spec_in.dtype)
        signature = tf.TensorSpec(shape=(None, *input_shape), dtype=dtype)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        saved_keras = None if path.is_dir() else keras2.saved_keras_version(path)
        saved_tf, tf_keras = (keras2.versions(saved_keras, keras2.saved_tf_version(path) if path.is_dir() else None,
                                              str(tf.__version__), _installed_version("tf-keras"))
                              if legacy else (None, None))
        return TFModel(fn=fn, model=model, kind="keras", input_shape=input_shape, input_dtype=dtype,
                       output_size=_last_dim(spec_out.shape), activation=_final_activation(model, keras),
                       saved_tf_version=saved_tf, saved_keras_version=saved_keras, tf_keras=tf_keras)

    def _load_saved_model(self, folder: Path, shown: str) -> TFModel:
        tf, _ = _quiet_import()
        version = keras2.saved_tf_version(folder)
        try:
            loaded = tf.saved_model.load(str(folder))
        except Exception as exc:  # TensorFlow raises many kinds for a broken SavedModel
            raise ArtifactError(
                f"{shown} is not a loadable SavedModel: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
                fix="Export it again with model.export(path) (Keras) or tf.saved_model.save(obj, path).",
            ) from None
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        fn = signatures.get("serving_default") or (next(iter(signatures.values())) if len(signatures) == 1 else None)
        if fn is None:
            raise ArtifactError(
                f"{shown} has no `serving_default` signature (signatures: {', '.join(signatures) or 'none'}).",
                fix="Export with model.export(path), or tf.saved_model.save(obj, path, signatures=...).",
            )
        args, kwargs = fn.structured_input_signature
        inputs = list(kwargs.items())
        outputs = fn.structured_outputs
        if args or len(inputs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
            raise ArtifactError(
                f"{shown}: the serving signature takes {', '.join(kwargs) or 'positional inputs'} and returns "
                f"{', '.join(outputs) if isinstance(outputs, dict) else 'a structure'}; the tensorflow runtime serves "
                "one named input and one output.",
                fix="Export a single-input, single-output signature, or use a `predict: predict.py:predict` function.",
            )
        in_name, in_spec = inputs[0]
        out_name, out_spec = next(iter(outputs.items()))

        def call(x: Any) -> Any:
            return fn(**{in_name: x})[out_name]

        return TFModel(fn=call, model=loaded, kind="savedmodel", input_shape=tuple(in_spec.shape[1:]),
                       input_dtype=_dtype_name(in_spec.dtype), output_size=_last_dim(out_spec.shape),
                       activation=None, saved_tf_version=version)

    def load_warnings(self) -> list[str]:
        return list(dict.fromkeys(self._warnings))

    def saved_versions(self, model: Any) -> dict[str, str]:
        saved = model.saved_tf_version if isinstance(model, TFModel) else None
        versions = {"tensorflow-cpu": saved or _installed_tf_version()}
        keras_version = _keras_pin(model) if isinstance(model, TFModel) else None
        if keras_version:
            versions["keras"] = keras_version
        if isinstance(model, TFModel) and model.tf_keras:
            versions["tf-keras"] = model.tf_keras
        return versions

    @classmethod
    def image_requirements(cls, requirements: list[str]) -> tuple[list[str], list[str], list[str]]:
        """One TensorFlow package in the image: ``tensorflow`` (the CUDA build) gives way to ``tensorflow-cpu``."""
        reqs, notes = keras2.one_tensorflow(requirements)
        return reqs, [], notes

    # -- inspect / check -----------------------------------------------------------------------------------
    def inspect(self, model: Any, path: Path) -> ArtifactInfo:
        m = _require(model)
        notes: list[str] = []
        if any(d is None for d in m.input_shape):
            raise ArtifactError(
                f"{path.name} accepts inputs of shape {shape_text((None, *m.input_shape))}; mlship needs every "
                "dimension but the batch one to be fixed.",
                fix="Give the model a fixed-size input (e.g. keras.Input((224, 224, 3))) and save it again, or write "
                "input.tensor.shape in mlship.yaml by hand.",
            )
        dtype = m.input_dtype
        if dtype not in TENSOR_DTYPES:
            raise ArtifactError(f"{path.name} takes {dtype} inputs, which mlship does not accept over HTTP.",
                                fix="Give the model a numeric input (float32, int32, ...) and save it again.")
        task: Task
        labels: list[str] | None = None
        size = m.output_size
        if m.activation == "softmax" and size:
            task, labels = "classification", [str(i) for i in range(size)]
        elif m.activation == "sigmoid" and size == 1:
            task, labels = "classification", ["0", "1"]
        elif m.kind == "savedmodel" and size and size > 1:
            task, labels = "classification", [str(i) for i in range(size)]
            notes.append(f"The SavedModel returns {size} values per instance: assumed to be class scores "
                         "(task: classification; softmax is applied when they are not probabilities). Set "
                         "task: regression if they are not.")
        else:
            task = "regression"
            if size and size > 1:
                notes.append(f"The model returns {size} values per instance without a softmax: served as "
                             "regression. If they are class scores (logits), set task: classification and "
                             "output.labels; mlship applies softmax.")
        if task == "classification":
            notes.append("Labels are the class indices 0..N-1; replace output.labels with your class names "
                         "(in the same order).")
        tf_version = m.saved_tf_version or _installed_tf_version()
        reqs = [f"tensorflow-cpu=={tf_version}"]
        keras_version = _keras_pin(m)
        if m.tf_keras:
            reqs.append(f"tf-keras=={m.tf_keras}")
            writer = m.saved_keras_version or "a SavedModel with keras_metadata.pb"
            notes.append(f"{path.name} was written by Keras 2 ({writer}): loaded with tf-keras; the image "
                         f"installs tensorflow-cpu=={tf_version} and tf-keras=={m.tf_keras}.")
        elif keras_version:
            reqs.append(f"keras=={keras_version}")
            if m.saved_keras_version and m.saved_keras_version != keras_version:
                notes.append(f"{path.name} was written by Keras {m.saved_keras_version}; the image installs the "
                             f"Keras 3 you have ({keras_version}), which reads such files.")
        if len(m.input_shape) in (2, 3):
            notes.append("For image inputs, add `image: {channels: 1 or 3, scale: [min, max]}` under input.tensor to "
                         "also accept base64 PNGs.")
        recorded = m.saved_keras_version if m.tf_keras and m.saved_keras_version else tf_version  # Keras 2 .h5
        return ArtifactInfo(task=task, features={}, labels=labels, requirements=reqs, framework_version=recorded,
                            notes=notes, tensor={"shape": [None, *m.input_shape], "dtype": dtype})

    def check_input(self, model: Any, spec: InputSpec) -> list[str]:
        m = _require(model)
        expected = spec.tensor.instance_shape if spec.tensor is not None else (len(spec.features),)
        what = (f"input.tensor.shape is {shape_text(spec.tensor.shape)}" if spec.tensor is not None
                else f"input.features lists {len(spec.features)}")
        if len(expected) != len(m.input_shape) or any(
                d is not None and d != e for d, e in zip(m.input_shape, expected, strict=True)):
            return [f"the model takes input shape {shape_text((None, *m.input_shape))} but {what}"]
        return []

    def classes(self, model: Any) -> list[Any] | None:
        if not isinstance(model, TFModel) or self.task != "classification" or not model.output_size:
            return None
        return list(range(2 if model.output_size == 1 else model.output_size))

    def to_onnx(self, model: Any, features: list[str]) -> tuple[bytes, list[int], str]:
        """The model as ONNX (Keras 3: ``model.export(format="onnx")``; else tf2onnx on the serving function)."""
        from mlship.runtimes.tensorflow_onnx import convert

        onnx_bytes, converter = convert(_require(model))
        return onnx_bytes, [], converter

    # -- predict ---------------------------------------------------------------------------------------------
    def predict(self, model: Any, rows: Any, features: list[str]) -> ModelOutput:
        m = _require(model)
        x = np.asarray(rows, dtype=m.input_dtype)
        return self.scores_output(np.asarray(m.fn(x)))

    def scores_output(self, out: Any) -> ModelOutput:
        """Predictions from the model's output (N, ...): values, or class probabilities (see
        :func:`probabilities`); the compiled path gives onnxruntime's output the same treatment."""
        out = np.asarray(out).reshape(len(out), -1).astype(np.float64)
        if self.task == "regression":
            return ModelOutput(values=out[:, 0].tolist() if out.shape[1] == 1 else out.tolist())
        if self.scores_kind is None:  # settled once, on the first batch (the probe rows): never per request
            self.scores_kind = scores_kind(out)
        proba = probabilities(out, self.scores_kind)
        return ModelOutput(values=proba.argmax(axis=1).tolist(), probabilities=proba,
                           classes=list(range(proba.shape[1])))


def scores_kind(out: Any) -> str:
    """"probabilities" when a model's outputs are probabilities (a single column in [0, 1]; rows of non-negative
    values summing to 1), else "logits"."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape[1] == 1:
        return "logits" if ((out < 0) | (out > 1)).any() else "probabilities"
    return "logits" if (out < 0).any() or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3) else "probabilities"


def probabilities(out: Any, kind: str | None = None) -> Any:
    """Class probabilities from a model's output: kept when they are probabilities; else softmax (or sigmoid
    for a single output). One output column p becomes two classes [1 - p, p]. ``kind`` (see
    :func:`scores_kind`) is decided from ``out`` when not given."""
    out = np.asarray(out, dtype=np.float64)
    logits = (kind or scores_kind(out)) == "logits"
    if out.shape[1] == 1:
        p = out[:, 0]
        if logits:
            p = 1.0 / (1.0 + np.exp(-p))
        return np.stack([1.0 - p, p], axis=1)
    if logits:
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return out


def _require(model: Any) -> TFModel:
    if not isinstance(model, TFModel):
        raise ArtifactError(
            f"The tensorflow runtime got a {type(model).__name__}, not a model it loaded.",
            fix="A `load:` function with the tensorflow runtime needs a `predict:` function as well.",
        )
    return model


def _dtype_name(dtype: Any) -> str:
    name = str(getattr(dtype, "name", dtype))
    return _DTYPE_ALIASES.get(name, name)


def _last_dim(shape: Any) -> int | None:
    dims = list(shape)
    return int(dims[-1]) if len(dims) >= 2 and dims[-1] is not None else (1 if len(dims) == 1 else None)


def _final_activation(model: Any, keras: Any) -> str | None:
    """The activation of the last layer ("softmax", "sigmoid", "linear", ...), None when unknown."""
    layers = getattr(model, "layers", None) or []
    if not layers:
        return None
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    activation = getattr(last, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", None)
    return str(name) if name else None


def _keras_pin(model: TFModel) -> str | None:
    """The keras version an image of a Keras 3 file installs: the Keras 3 release that wrote the file (read
    from its metadata), else the installed one. A Keras 2 file (loaded with tf_keras) pins tf-keras instead."""
    if model.kind != "keras" or model.tf_keras:
        return None
    saved = model.saved_keras_version
    if saved and re.match(r"^[3-9]\.\d+\.\d+$", saved):
        return saved
    return _installed_version("keras")
