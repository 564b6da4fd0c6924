"""Reading a scikit-learn artifact safely, and the errors that say why one cannot be loaded here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from mlship.errors import ArtifactError

if TYPE_CHECKING:
    from mlship.pickle_scan import PickleScan

#: import name -> pip package name, where they differ
PIP_NAMES = {
    "sklearn": "scikit-learn", "skimage": "scikit-image", "cv2": "opencv-python", "PIL": "pillow",
    "yaml": "PyYAML", "bs4": "beautifulsoup4", "dateutil": "python-dateutil", "attr": "attrs",
    "imblearn": "imbalanced-learn", "Crypto": "pycryptodome", "google.protobuf": "protobuf",
}


def pip_name(module: str) -> str:
    """The pip package that provides ``module`` (``sklearn.tree`` -> ``scikit-learn``)."""
    parts = module.split(".")
    return PIP_NAMES.get(".".join(parts[:2]), PIP_NAMES.get(parts[0], parts[0]))


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: None in sys.modules (an import blocked on purpose)
        return False


def missing_module_error(path: Path, exc: ImportError) -> ArtifactError:
    """The error for a pickle whose classes live in a module that cannot be imported here."""
    why = "A pickle stores references to the classes it contains (module and name), not their code."
    module = exc.name
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if module is None:
        return ArtifactError(
            f"{path.name} cannot be loaded: importing a module it needs failed: {first}", why=why,
            fix="Install the packages the model was trained with, in the same versions (`pip freeze` in the "
            "training environment lists them).",
        )
    package = pip_name(module)
    top = module.split(".")[0]
    if importable(top):  # the package is there, in another version than the model's (or broken)
        return ArtifactError(
            f"{path.name} needs the module `{module}`, which cannot be imported from the installed {package}: "
            f"{first}.",
            why=why + f" The model was saved with another version of {package}.",
            fix=f"Install the version the model was trained with: `pip install '{package}==<that version>'`.",
        )
    return ArtifactError(
        f"{path.name} needs the module `{module}`, which is not importable.",
        why=why + f" `{top}` is not installed in this Python environment.",
        fix=f"Install it: `pip install {package}` (the version the model was trained with); or, if it is your "
        f"own code, put it next to mlship.yaml (a folder `{top}/` or a file `{top}.py`): `mlship init` finds it "
        "there and adds it to build.include, and the model is loaded with that folder importable.",
    )


def scan_quietly(path: Path) -> PickleScan | None:
    """The static scan of a pickle/joblib file (any name, any joblib compression), or None where it fails."""
    try:
        from mlship.pickle_scan import scan
    except ImportError:
        return None
    try:
        return scan(path)
    except Exception:  # joblib.load then says what is wrong with the file
        return None


def dangerous_pickle_error(path: Path, dangerous: list[str]) -> ArtifactError:
    """The error for a pickle that names callables that run commands or code (read without running them)."""
    return ArtifactError(
        f"{path.name} refers to {', '.join(dangerous[:5])}, which can run commands or code when it is loaded.",
        why="A pickle can call any function it names while it is loaded; a model does not need these. "
        "mlship read the file without loading it.",
        fix="Only if you trust the file, set `unsafe_deserialization: true` in mlship.yaml "
        "(`mlship init --unsafe-deserialization`); otherwise re-save the model from its source.",
    )


#: scikit-learn changed the layout of fitted trees in 1.3; 1.2.2 is the newest release that reads older ones
LAST_OLD_TREE_READER = "1.2.2"


def unreadable_error(path: Path, exc: BaseException, found: PickleScan | None, installed: str) -> ArtifactError:
    """The error for a file joblib cannot load: the version skew when the file records another scikit-learn
    (the usual cause), else a file that is not what the runtime reads."""
    short = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    saved = found.version("scikit-learn") if found is not None else None
    if saved and saved != installed:
        from packaging.version import InvalidVersion, Version

        try:
            old = Version(saved) < Version("1.3")
        except InvalidVersion:
            old = False
        venv = "python3.11 -m venv sk && sk/bin/pip install 'mlship[sklearn]'"
        fix = (f"Use a scikit-learn that reads it: `{venv} 'scikit-learn=={LAST_OLD_TREE_READER}' 'numpy<2'` (it "
               "reads the data layout of releases before 1.3); there, load the file, check its predictions, save "
               "it again with `joblib.dump(model, 'model.joblib')` and run `sk/bin/mlship init model.joblib` "
               f"(the image is then built with {LAST_OLD_TREE_READER})." if old else
               f"Run mlship with the version it was saved with: `{venv} 'scikit-learn=={saved}'`, then "
               f"`sk/bin/mlship init {path.name}`.")
        return ArtifactError(
            f"{path.name} was saved with scikit-learn {saved}, and the scikit-learn installed here ({installed}) "
            f"cannot load it: {short}",
            why="A scikit-learn pickle holds the library's internal data layout, which changes between releases; "
            f"mlship read the version from the file without loading it. Serving {saved} in the Python of its "
            "time is not supported yet.",
            fix=fix,
        )
    return ArtifactError(
        f"{path.name} is not a readable joblib/pickle file: {short}",
        why="The sklearn runtime loads files written by joblib.dump or pickle.dump.",
        fix="Re-save the model with `joblib.dump(model, 'model.joblib')`, or choose the runtime that matches "
        "the file.",
    )
