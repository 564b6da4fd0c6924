"""Keras 2 files (TensorFlow 2.x era ``tf.keras`` / ``tf_keras``): detected statically, loaded with tf-keras.

The rule: a file that records Keras 2 is loaded with the library that wrote it, ``tf_keras`` (Keras 2 for
current TensorFlow), and the image pins ``tensorflow-cpu`` plus the matching ``tf-keras``. A file records
Keras 2 when

- it is an HDF5 file whose root ``keras_version`` attribute is 2.x (read with h5py, nothing is loaded), or
- it is a SavedModel folder (or a .zip of one) with ``keras_metadata.pb`` beside ``saved_model.pb`` (what
  Keras 2's ``model.save(dir)`` writes; Keras 3's ``model.export`` and ``tf.saved_model.save`` do not).

Everything else keeps its loader (Keras 3 for ``.keras`` and Keras 3 HDF5 files, ``tf.saved_model.load`` for
plain SavedModels). Keras 3 cannot read a Keras 2 SavedModel at all, and reads Keras 2 HDF5 files only
approximately, so there is no silent fallback: without tf-keras the load fails with the ``pip install``.

This module also keeps one TensorFlow package in a requirements list (``one_tensorflow``); tf-keras itself
declares a dependency on ``tensorflow``, which the image leaves out because tensorflow-cpu provides it
(image/nodeps.py).
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from mlship.errors import ArtifactError

HDF5_SUFFIXES = (".h5", ".hdf5")
_CPU = "tensorflow-cpu"
_GPU = "tensorflow"


def hdf5_keras_version(path: Path) -> str | None:
    """The ``keras_version`` attribute of an HDF5 model file (None when absent or unreadable)."""
    try:
        import h5py

        with h5py.File(path, "r") as fh:
            value = fh.attrs.get("keras_version")
    except Exception:  # not HDF5, or h5py missing: the normal loader says why
        return None
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def saved_keras_version(path: Path) -> str | None:
    """The Keras version that wrote a .keras (metadata.json) or .h5 (root attribute) file."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as zf:
                return str(json.loads(zf.read("metadata.json")).get("keras_version") or "") or None
        return hdf5_keras_version(path)
    except Exception:  # metadata is optional: a file without it still loads
        return None


def saved_tf_version(folder: Path) -> str | None:
    """The TensorFlow version recorded in saved_model.pb (MetaInfoDef.tensorflow_version)."""
    try:
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
        versions = [g.meta_info_def.tensorflow_version for g in proto.meta_graphs if g.meta_info_def.tensorflow_version]
    except Exception:  # an unreadable file fails in tf.saved_model.load with a better message
        return None
    return versions[0] if versions else None


def is_keras2_hdf5(path: Path) -> bool:
    version = hdf5_keras_version(path) if path.suffix.lower() in HDF5_SUFFIXES else None
    return bool(version and version.startswith("2."))


def is_keras2_saved_model(folder: Path) -> bool:
    return (folder / "saved_model.pb").is_file() and (folder / "keras_metadata.pb").is_file()


def import_tf_keras() -> Any:
    """``tf_keras``, or an ArtifactError whose fix installs the version matching the installed TensorFlow."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tf_keras
    except ImportError:
        raise ArtifactError(
            "This model was saved by Keras 2 (tf.keras); mlship loads such files with tf-keras, which is not "
            "installed.",
            why="Keras 3 cannot read a Keras 2 SavedModel, and reads Keras 2 HDF5 files only approximately.",
            fix=f"pip install tf-keras=={_installed_tf_keras_match()}",
        ) from None
    return tf_keras


def load(path: Path, safe_mode: bool) -> Any:
    """The Keras 2 model in ``path`` (an HDF5 file or a SavedModel folder), loaded with tf_keras in safe mode
    unless ``safe_mode`` is False. tf_keras' loaders raise as they do (the caller words the error).

    tf_keras passes ``safe_mode`` to its ``.keras`` loader only; its HDF5 and SavedModel loaders read the flag
    from the scope, which is unset (lambdas allowed) by default, hence the explicit scope."""
    tf_keras = import_tf_keras()
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    with warnings.catch_warnings(), SafeModeScope(safe_mode):
        warnings.simplefilter("ignore")
        return tf_keras.models.load_model(str(path), compile=False)


def versions(keras_version: str | None, saved_tf: str | None, installed_tf: str,
             installed_tf_keras: str | None) -> tuple[str, str]:
    """(tensorflow-cpu, tf-keras) versions for a Keras 2 file.

    TensorFlow: the version the SavedModel records; for HDF5 (which records only ``keras_version``, whose
    major.minor is TensorFlow's) the installed TensorFlow when its major.minor matches, else X.Y.0.
    tf-keras: the HDF5 file's ``keras_version`` when it is a tf-keras release (2.15 and later); else the
    installed tf-keras when its major.minor matches TensorFlow's, else X.Y.0.
    """
    tf_version = saved_tf or _matching(keras_version, installed_tf) or installed_tf
    if keras_version and _minor(keras_version) >= (2, 15) and _minor(keras_version) == _minor(tf_version):
        return tf_version, keras_version
    return tf_version, _matching(tf_version, installed_tf_keras) or _x_y_0(tf_version)


def _minor(version: str) -> tuple[int, ...]:
    found = re.match(r"^(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else ()


def _x_y_0(version: str) -> str:
    found = _minor(version)
    return f"{found[0]}.{found[1]}.0" if found else version


def _matching(version: str | None, candidate: str | None) -> str | None:
    """``candidate`` when its major.minor is ``version``'s, else ``version`` as X.Y.0 (None without one)."""
    if not version or not _minor(version):
        return None
    return candidate if candidate and _minor(candidate) == _minor(version) else _x_y_0(version)


def _installed_tf_keras_match() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in (_CPU, _GPU):
        try:
            return _x_y_0(version(dist))
        except PackageNotFoundError:
            continue
    return "<your TensorFlow version>"


def one_tensorflow(requirements: list[str]) -> tuple[list[str], list[str]]:
    """Keep one TensorFlow package: ``tensorflow`` (the CUDA build on Linux) becomes ``tensorflow-cpu``.

    When both are listed, ``tensorflow-cpu`` is kept (with its own version when it has one, else with
    ``tensorflow``'s); when only ``tensorflow`` is, it is renamed. Returns (requirements, notes).
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    parsed: dict[str, Requirement] = {}
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        parsed.setdefault(str(canonicalize_name(req.name)), req)
    gpu = parsed.get(_GPU)
    if gpu is None:
        return list(requirements), []
    cpu = parsed.get(_CPU)
    out: list[str] = []
    for line in requirements:
        try:
            name = str(canonicalize_name(Requirement(line).name))
        except InvalidRequirement:
            name = ""
        if name == _GPU:
            if cpu is None:  # renamed in place
                out.append(f"{_CPU}{gpu.specifier}")
            continue
        if name == _CPU and cpu is not None and not str(cpu.specifier) and str(gpu.specifier):
            out.append(f"{_CPU}{gpu.specifier}")
            continue
        out.append(line)
    kept = next(r for r in out if r.startswith(_CPU))
    if cpu is None:
        note = (f"requirements name `{gpu}`: the image installs `{kept}` instead (the same TensorFlow without "
                "the CUDA build; one TensorFlow package only)")
    else:
        note = (f"requirements name both `{gpu}` and `{cpu}`, two builds of the same TensorFlow that "
                f"overwrite each other: the image installs only `{kept}`")
        if str(gpu.specifier) and str(cpu.specifier) and str(gpu.specifier) != str(cpu.specifier):
            note += f" (tensorflow-cpu's version; `{gpu}` was dropped)"
    return out, [note]
