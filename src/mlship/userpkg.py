"""Your own code next to the contract: the packages a pickle needs, found without loading it, put in the
image (``build.include``) and made importable while the model loads.

A pickle names the modules of the classes it holds (``mymodels.wrapper.ThresholdClassifier``), not their code.
:func:`find` reads those names with :func:`mlship.pickle_scan.scan` and looks for each one next to the contract
(a folder ``mymodels/`` or a file ``mymodels.py``). :func:`static_imports` lists what such a package imports by
parsing its files (never importing them), so that `mlship init` can tell which of those imports the model needs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from mlship.runtimes.sklearn_load import importable, scan_quietly


@dataclass
class UserCode:
    """The artifact's own modules, as found next to the contract."""

    local: list[str] = field(default_factory=list)  #: top-level modules next to the contract that it references
    include: list[str] = field(default_factory=list)  #: their build.include entries: "mymodels" or "mymodels.py"
    missing: list[str] = field(default_factory=list)  #: referenced, neither next to the contract nor installed
    frameworks: list[str] = field(default_factory=list)  #: the known frameworks' top-level modules it references


def local_path(folder: Path, name: str) -> Path | None:
    """``folder/name/`` (a package: a folder holding .py files) or ``folder/name.py``; None when neither."""
    package = folder / name
    if package.is_dir() and any(package.glob("*.py")):
        return package
    module = folder / f"{name}.py"
    return module if module.is_file() else None


def find(artifact: Path, folder: Path) -> UserCode:
    """The modules ``artifact`` (a pickle/joblib file; anything else has none) references that are neither the
    standard library nor a known framework, sorted into those next to the contract and those missing."""
    found = scan_quietly(artifact) if artifact.is_file() else None
    code = UserCode(frameworks=sorted(found.frameworks) if found else [])
    for name in found.user_modules if found else []:
        if name == "__main__" or not name.isidentifier():  # a training script's class: the runtime says so
            continue
        path = local_path(folder, name)
        if path is not None:
            code.local.append(name)
            code.include.append(path.name)
        elif not importable(name):
            code.missing.append(name)
    return code


def make_importable(root: Path) -> None:
    """Put a project's folder on sys.path for good, where a pickle's own modules live (next to mlship.yaml, which
    is /app in an image: build.include copies them there); for a process that serves or builds that project."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def static_imports(path: Path) -> set[str]:
    """The top-level modules that the .py files of ``path`` (a package folder or a module) import, absolute
    imports only, read with :mod:`ast`: nothing is run."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    tops: set[str] = set()
    for file in files:
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    return tops


def third_party(names: set[str], folder: Path) -> list[str]:
    """``names`` less the standard library and the modules next to the contract."""
    return sorted(n for n in names if n != "__future__" and n not in sys.stdlib_module_names
                  and local_path(folder, n) is None)


class Imports:
    """What loading imported: the top-level modules that were new, and those bound in the user's modules."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.before = set(sys.modules)
        self.used: set[str] = set()

    def record(self) -> None:
        self.used |= {n.split(".")[0] for n in set(sys.modules) - self.before}
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in self.names:
                continue
            for value in list(vars(module).values()):  # `import x` / `from x import f` at module level
                owner = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
                if isinstance(owner, str):
                    self.used.add(owner.split(".")[0])


@contextmanager
def importing_from(folder: Path, names: list[str]) -> Iterator[Imports]:
    """Make ``folder`` importable, and the modules ``names`` come from it, for one inspection; afterwards
    sys.path and those modules (and the hooks imported from the folder) are as they were."""
    saved_path = list(sys.path)
    saved: dict[str, ModuleType] = {}
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            saved[name] = sys.modules.pop(name)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    imports = Imports(names)
    try:
        yield imports
    finally:
        imports.record()
        sys.path[:] = saved_path
        for name in list(sys.modules):
            if name.split(".")[0] in names or (name.startswith("mlship_user_") and name not in imports.before):
                del sys.modules[name]
        sys.modules.update(saved)
        importlib.invalidate_caches()


def import_notes(code: UserCode, folder: Path, used: set[str],
                 requirements: list[str]) -> tuple[list[str], list[str]]:
    """(notes, requirements to add) about the third-party modules the user's packages import: those the model
    does not need are notes only; one that loading imported and nothing pins yet is pinned as installed."""
    notes: list[str] = []
    added: list[str] = []
    pinned = {_dist_key(r) for r in requirements}
    needed = used | set(code.frameworks)
    dists = importlib.metadata.packages_distributions()
    for name in code.local:
        path = local_path(folder, name)
        for module in third_party(static_imports(path), folder) if path is not None else []:
            if module not in needed:
                state = "installed here" if importable(module) else "not installed here"
                notes.append(f"{name} imports {module} ({state}), which the model does not need to load; "
                             "not added to dependencies.")
                continue
            dist = next(iter(dists.get(module, [])), None)
            if dist is None or _dist_key(dist) in pinned or _required_by(dist, pinned | {"mlship"}):
                continue  # not a distribution, pinned, or installed with one that is (or with mlship itself)
            pin = f"{dist}=={importlib.metadata.version(dist)}"
            pinned.add(_dist_key(dist))
            added.append(pin)
            notes.append(f"{name} imports {module}, which the model needs when it loads: added {pin} to "
                         "dependencies.")
    return notes, added


def _dist_key(requirement: str) -> str:
    """A requirement's project name, normalised (``Scikit_Learn==1.5`` -> ``scikit-learn``)."""
    name = requirement.split(";")[0].split("[")[0]
    for sep in "=<>!~ ":
        name = name.split(sep)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _required_by(dist: str, pinned: set[str]) -> bool:
    """Whether one of the pinned projects depends on ``dist`` directly (numpy for scikit-learn)."""
    key = _dist_key(dist)
    for project in pinned:
        try:
            requires = importlib.metadata.requires(project) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(_dist_key(r) == key for r in requires if "extra ==" not in r):
            return True
    return False
