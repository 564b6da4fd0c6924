"""Reading a scikit-learn artifact safely, and the errors that say why one cannot be loaded here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


_SCANS: dict[tuple[str, int, int], PickleScan | ArtifactError] = {}  # (path, mtime, size) -> the last scans


def scan_file(path: Path) -> PickleScan:
    """The static scan of a pickle/joblib file (any name, any joblib compression); the last few are kept, so that
    one command reads a file once (init: its packages, the trust policy, the load)."""
    from mlship.pickle_scan import scan

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _SCANS:
        try:
            result: PickleScan | ArtifactError = scan(path)
        except ArtifactError as exc:
            result = exc
        while len(_SCANS) >= 4:
            del _SCANS[next(iter(_SCANS))]
        _SCANS[key] = result
    found = _SCANS[key]
    if isinstance(found, ArtifactError):
        raise found
    return found


def scan_quietly(path: Path) -> PickleScan | None:
    """The static scan of a pickle/joblib file (any name, any joblib compression), or None where it fails."""
    try:
        import mlship.pickle_scan  # noqa: F401
    except ImportError:
        return None
    try:
        return scan_file(path)
    except Exception:
        return None


def unscannable_error(path: Path, exc: ArtifactError) -> ArtifactError:
    """The error for a file the scan cannot read to its end: it is not loaded (the trust policy needs its names)."""
    detail = "EOFError: the file is empty" if path.stat().st_size == 0 else exc.message.removeprefix(path.name + " ")
    return ArtifactError(
        f"{path.name} is not a readable joblib/pickle file: {detail}",
        why=(exc.why or "") + " mlship reads every class and function a pickle names before loading it; a file it "
        "cannot read is not loaded.",
        fix="Re-save the model with `joblib.dump(model, 'model.joblib')`, or choose the runtime that matches the "
        "file. Only if you trust the file: `unsafe_deserialization: true` loads it without reading it first.",
    )


def untrusted_error(path: Path, refused: list[str], dangerous: bool) -> ArtifactError:
    """The error for a pickle that names classes or functions outside the trust policy (read without loading)."""
    from mlship.trust import shown

    what = ("which can run commands or code when it is loaded" if dangerous
            else "which mlship does not trust by default")
    entries = ", ".join(refused[:3]) + (", ..." if len(refused) > 3 else "")
    by_name = ("" if dangerous else
               f"If you trust these classes, name them in mlship.yaml: `trust: [{entries}]` (or `module.*`). ")
    return ArtifactError(
        f"{path.name} refers to {shown(refused)}, {what}.",
        why="A pickle can call any function it names while it is loaded. mlship read the file without loading it "
        "and loads it only when every name it refers to is trusted: scikit-learn, numpy, scipy, pandas, joblib, "
        "xgboost, lightgbm, catboost, statsmodels, imbalanced-learn, plain Python containers, and your own "
        "modules next to mlship.yaml.",
        fix=by_name + "Only if you trust the whole file: `unsafe_deserialization: true` in mlship.yaml "
        "(`mlship init --unsafe-deserialization`). Otherwise re-save the model from its source"
        + ("." if dangerous else ", or save it with skops (`mlship convert --to skops`)."),
    )


def check_trust(path: Path, found: PickleScan, entries: tuple[str, ...] | list[str]) -> None:
    """Refuse ``path`` (scanned as ``found``) before it is loaded unless the trust policy admits every name in it.
    Names of modules that cannot be imported at all (or of classes missing from a module already imported) get
    the error loading would give, when nothing else is refused."""
    from mlship.trust import TrustPolicy, local_modules

    policy = TrustPolicy(tuple(entries), local_modules(path, found.user_modules))
    verdict = policy.check(found.globals)
    dangerous = bool(verdict.forbidden) or any(f"{m}.{n}" in found.dangerous for m, n in verdict.untrusted)
    if not verdict.refused:
        return
    if not dangerous:
        for module, name in verdict.untrusted:
            loaded = sys.modules.get(module)
            if loaded is None and not importable(module.split(".")[0]):
                continue
            if loaded is not None and not hasattr(loaded, name.split(".")[0]):
                continue
            break
        else:  # every refused name is missing here: loading would fail anyway, and say why
            module, name = verdict.untrusted[0]
            if module in sys.modules:
                raise ArtifactError(
                    f"{path.name} refers to a class or function that cannot be found: module {module!r} has no "
                    f"attribute {name!r}.",
                    why="A pickle stores references to the classes it contains, not their code.",
                    fix="Import or define that class where the model is loaded: add its code next to "
                    "mlship.yaml and load the model from a `load:` function in predict.py.")
            raise missing_module_error(path, ModuleNotFoundError(f"No module named {module!r}",
                                                                 name=module.split(".")[0]))
    raise untrusted_error(path, verdict.refused, dangerous)


#: scikit-learn changed the layout of fitted trees in 1.3; 1.2.2 is the newest release that reads older ones
LAST_OLD_TREE_READER = "1.2.2"


def unreadable_error(path: Path, exc: BaseException, found: PickleScan | None, installed: str,
                     served_with: dict[str, str] | None = None) -> ArtifactError:
    """The error for a file joblib cannot load: the version skew when the file records another scikit-learn
    (the usual cause; ``served_with``: the versions mlship.yaml's provenance serves it with), else a file that is
    not what the runtime reads."""
    short = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    saved = found.version("scikit-learn") if found is not None else None
    served = (served_with or {}).get("scikit-learn")
    if saved and served and served != installed:
        pins = " ".join(f"'{k}=={v}'" for k, v in (served_with or {}).items())
        return ArtifactError(
            f"{path.name} was saved with scikit-learn {saved}; mlship.yaml serves it with scikit-learn {served} "
            f"(provenance), and the scikit-learn installed here ({installed}) cannot load it: {short}",
            why="`mlship serve` and `mlship predict --local` load the model on this machine; the image installs "
            "the versions mlship.yaml names (`mlship validate` checks them in a build environment).",
            fix=f"Serve the image: `mlship deploy --target local` (or `mlship build`, then `mlship test`); or "
            f"install those versions here: `pip install {pins}`.")
    if saved and saved != installed:
        from packaging.version import InvalidVersion, Version

        try:
            old = Version(saved) < Version("1.3")
        except InvalidVersion:
            old = False
        venv = "python3.11 -m venv sk && sk/bin/pip install 'mlship[sklearn]'"
        auto = (f"Run `mlship init {path.name} --force`: it runs the file with scikit-learn {saved} in a build "
                "environment (Docker) and writes a contract that serves it" + (
                    f" with scikit-learn {LAST_OLD_TREE_READER} where that is proven to predict the same, else "
                    f"with {saved} in the Python of its time. Or by hand: `{venv} "
                    f"'scikit-learn=={LAST_OLD_TREE_READER}' 'numpy<2'`, then `sk/bin/mlship init {path.name}`."
                    if old else f". Or by hand: `{venv} 'scikit-learn=={saved}'`, then "
                    f"`sk/bin/mlship init {path.name}`."))
        return ArtifactError(
            f"{path.name} was saved with scikit-learn {saved}, and the scikit-learn installed here ({installed}) "
            f"cannot load it: {short}",
            why="A scikit-learn pickle holds the library's internal data layout, which changes between releases; "
            "mlship read the version from the file without loading it.",
            fix=auto,
        )
    return ArtifactError(
        f"{path.name} is not a readable joblib/pickle file: {short}",
        why="The sklearn runtime loads files written by joblib.dump or pickle.dump.",
        fix="Re-save the model with `joblib.dump(model, 'model.joblib')`, or choose the runtime that matches "
        "the file.",
    )


def load_skops(path: Path, entries: tuple[str, ...] | list[str], unsafe: bool) -> Any:
    """A model saved with ``skops.io.dump``: the types skops does not trust by itself go through the same trust
    policy as a pickle's names (skops loads only the types it is told to trust, and runs no pickle)."""
    try:
        import skops.io as sio  # type: ignore[import-untyped]
    except ImportError:
        raise ArtifactError(f"{path.name} is a skops file, and skops is not installed.",
                            fix="pip install skops (`pip install 'mlship[sklearn]'` includes it).") from None
    from mlship.trust import TrustPolicy, local_modules

    try:
        types = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ArtifactError(f"{path.name} is not a readable skops file: {exc.__class__.__name__}: {exc}",
                            fix="Save the model again with `skops.io.dump(model, 'model.skops')`.") from None
    names = [(t.rsplit(".", 1)[0], t.rsplit(".", 1)[1]) if "." in t else ("builtins", t) for t in types]
    policy = TrustPolicy(tuple(entries), local_modules(path, {m.split(".")[0] for m, _ in names}))
    verdict = policy.check(names)
    if verdict.refused and not unsafe:
        raise untrusted_error(path, verdict.refused, bool(verdict.forbidden))
    try:
        return sio.load(path, trusted=list(types))
    except ImportError as exc:
        raise missing_module_error(path, exc) from None
    except Exception as exc:
        raise ArtifactError(f"{path.name} cannot be loaded with skops: {exc.__class__.__name__}: {exc}",
                            fix="Load it with the skops and scikit-learn versions that saved it.") from None
