"""The tensorflow runtime's file handling: a zipped SavedModel unpacked safely, and the errors that say why a Keras
file does not load. No TensorFlow import here."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from mlship.errors import ArtifactError

MAX_ZIP_BYTES = 8 << 30  # uncompressed size of a zipped SavedModel
UNSAFE_FIX = ("If you trust this file, add `unsafe_deserialization: true` to mlship.yaml (or run `mlship init "
              "--unsafe-deserialization`). Safer: replace the Lambda layer with a built-in layer, or a layer "
              "class registered with @keras.saving.register_keras_serializable, and save the model again.")


def keras_error(path: Path, exc: Exception) -> ArtifactError:
    text = str(exc)
    if "safe_mode" in text or "unsafe" in text.lower() or "arbitrary code" in text:
        return ArtifactError(
            f"{path.name} stores Python code (e.g. a Lambda layer), so Keras' safe mode refuses to load it.",
            why="Loading such a file runs code from it, which can do anything a program can. mlship loads Keras "
            "files with safe_mode=True unless mlship.yaml opts in.",
            fix=UNSAFE_FIX,
        )
    if "Could not locate" in text or "Unknown layer" in text or "custom_objects" in text:
        return ArtifactError(
            f"{path.name} uses a custom class that is not importable: {text.splitlines()[0]}",
            why="A Keras file stores the name of each custom layer/model class, not its code.",
            fix="Decorate the class with @keras.saving.register_keras_serializable() in a module, add the module "
            "next to mlship.yaml (build.include) and load the model from a `load: predict.py:load` function.",
        )
    return ArtifactError(
        f"{path.name} is not a readable Keras file: {exc.__class__.__name__}: {text.splitlines()[0] if text else ''}",
        fix="Save the model with model.save('model.keras') (or .h5) and point `artifact` at it.",
    )


def extract_saved_model(path: Path, into: Path) -> Path:
    """Unzip a zipped SavedModel safely (no absolute paths, `..`, links or zip bombs); its folder."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{path.name} is not a readable zip file: {exc}.",
                            fix="Zip the SavedModel folder again (e.g. `cd model && zip -r ../model.zip .`).") from None
    with zf:
        total = 0
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            mode = info.external_attr >> 16
            if (name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in name
                    or (mode & 0o170000) == 0o120000):
                raise ArtifactError(
                    f"{path.name} contains the unsafe entry {name!r} (an absolute path, `..`, a drive or a link).",
                    why="Extracting it could write outside the temporary folder.",
                    fix="Zip the SavedModel folder with relative paths only.",
                )
            total += info.file_size
        if total > MAX_ZIP_BYTES:
            raise ArtifactError(f"{path.name} unpacks to {total / 1e9:.1f} GB, over the "
                                f"{MAX_ZIP_BYTES >> 30} GiB limit.",
                                fix="Serve the SavedModel folder itself (artifact: path/to/folder).")
        zf.extractall(into)
    found = sorted((p.parent for p in into.rglob("saved_model.pb")), key=lambda p: len(p.parts))
    if not found:
        raise ArtifactError(f"{path.name} holds no saved_model.pb.",
                            fix="Zip the folder that model.export() / tf.saved_model.save() wrote.")
    if len(found) > 1 and len(found[0].parts) == len(found[1].parts):
        raise ArtifactError(f"{path.name} holds more than one SavedModel.", fix="Zip one SavedModel folder.")
    return found[0]
