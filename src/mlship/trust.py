"""The trust policy for pickles: which classes and functions a model file may name to be loaded without asking.

A pickle can call any function it names while it is loaded. mlship reads every name first (:mod:`mlship.pickle_scan`,
nothing runs) and loads the file only when each one is trusted, in this order:

1. :data:`FORBIDDEN_MODULES` / :data:`FORBIDDEN_NAMES` (commands, code, imports, other pickles) are never trusted by
   name, not even by a ``trust:`` entry: only ``unsafe_deserialization: true`` loads such a file;
2. :data:`TRUSTED_NAMES`: exact standard-library names (containers, dates, decimals) and the wrappers joblib writes;
3. :data:`TRUSTED_LIBRARIES`: every class and function of these libraries (module prefixes), except the parts that
   read or write files, fetch data, evaluate strings or load code (:data:`LIBRARY_EXCLUDED_MODULES`,
   :data:`LIBRARY_EXCLUDED_NAME`) and attribute paths (``Outer.Inner``);
4. the project's own modules next to the contract (``local``), and the contract's ``trust:`` entries
   (``module.Name``, or ``module.*`` for a module and its submodules).

Anything else is refused before loading, with the names it was refused for. In the spirit of skops' trusted types.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlship.pycompat import STDLIB_MODULES

#: libraries whose classes and functions a model pickle may name (a module and all its submodules)
TRUSTED_LIBRARIES = ("sklearn", "numpy", "scipy", "pandas", "joblib", "xgboost", "lightgbm", "catboost",
                     "statsmodels", "imblearn")
#: exact standard-library (and joblib wrapper) names, "module.name"
TRUSTED_NAMES = frozenset("""
builtins.set builtins.frozenset builtins.slice builtins.complex builtins.bytearray builtins.bytes builtins.object
builtins.list builtins.dict builtins.tuple builtins.int builtins.float builtins.str builtins.bool builtins.range
collections.OrderedDict collections.defaultdict collections.deque collections.Counter copyreg._reconstructor
_codecs.encode functools.partial
datetime.datetime datetime.date datetime.time datetime.timedelta datetime.timezone
decimal.Decimal fractions.Fraction uuid.UUID
joblib.numpy_pickle.NumpyArrayWrapper joblib.numpy_pickle_compat.NDArrayWrapper
joblib.numpy_pickle_compat.ZNDArrayWrapper sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper
sklearn.externals.joblib.numpy_pickle.NDArrayWrapper sklearn.externals.joblib.numpy_pickle.ZNDArrayWrapper
""".split())  # noqa: SIM905
#: top-level modules that are never trusted by name: any of their callables runs commands or code, imports, or
#: reaches the file system or the network
FORBIDDEN_MODULES = frozenset("""os posix nt subprocess _posixsubprocess shutil sys socket importlib pty runpy
marshal pickle _pickle ctypes code codeop pdb bdb profile cProfile timeit trace webbrowser multiprocessing
asyncio signal ssl urllib http ftplib smtplib io _io tempfile dill cloudpickle""".split())  # noqa: SIM905
#: single callables that do the same, "module.name"
FORBIDDEN_NAMES = frozenset("""builtins.eval builtins.exec builtins.compile builtins.__import__ builtins.getattr
builtins.setattr builtins.delattr builtins.open builtins.breakpoint builtins.globals builtins.vars builtins.input
builtins.type types.FunctionType types.CodeType types.LambdaType types.MethodType operator.methodcaller
operator.attrgetter functools.reduce torch.storage._load_from_bytes torch.load torch.serialization.load""".split())  # noqa: SIM905
#: parts of the trusted libraries that are not trusted: file and network I/O, test helpers, code loading, formulas
LIBRARY_EXCLUDED_MODULES = frozenset("""io npyio format testing _testing _testutils ctypeslib distutils f2py
datasets formula computation numpy_pickle numpy_pickle_compat pickle_compat parallel _memmapping_reducer""".split())  # noqa: SIM905
#: function names of the trusted libraries that read, write, fetch, evaluate or load
LIBRARY_EXCLUDED_NAME = re.compile(r"^_*(load|save|dump|read|to_|from_?file|tofile|fetch|eval|exec|system|popen|"
                                   r"spawn|open|memmap|genfromtxt|fromregex|getattr|setattr|delattr|import|query|"
                                   r"compile|run|call|apply_along|vectorize|frompyfunc|Parallel|delayed)")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.([A-Za-z_][A-Za-z0-9_]*|\*)$")


def forbidden(module: str, name: str) -> bool:
    """Whether ``module.name`` is never trusted by name (only ``unsafe_deserialization`` loads it)."""
    parts = module.split(".")
    return (parts[0] in FORBIDDEN_MODULES or f"{module}.{name}" in FORBIDDEN_NAMES
            or any(p in FORBIDDEN_MODULES for p in name.split(".")[:-1])
            or name.split(".")[-1] in ("eval", "exec", "system", "popen", "__import__", "getattr", "import_module"))


def library_trusted(module: str, name: str) -> bool:
    """Whether the allow-list admits ``module.name`` (rules 2 and 3 of the module docstring)."""
    if forbidden(module, name):
        return False
    if f"{module}.{name}" in TRUSTED_NAMES:
        return True
    parts = module.split(".")
    return (parts[0] in TRUSTED_LIBRARIES and "." not in name
            and not any(p in LIBRARY_EXCLUDED_MODULES for p in parts[1:])
            and not LIBRARY_EXCLUDED_NAME.match(name))


def entry_problem(entry: str) -> str | None:
    """Why a ``trust:`` entry is not accepted (None: it is)."""
    if not _ENTRY.match(entry):
        return f"expected `module.Name` or `module.*`, got {entry!r}"
    module, name = entry.rsplit(".", 1)
    if forbidden(module, "x" if name == "*" else name):
        return (f"{entry} can run commands or code and cannot be trusted by name; set `unsafe_deserialization: "
                "true` instead (only for a file you trust)")
    return None


def library(module: str) -> str:
    """The pip package (or "your code" / "the standard library") a module belongs to, for grouping names."""
    from mlship.pickle_scan import FRAMEWORKS

    top = module.split(".")[0]
    if top in FRAMEWORKS:
        return FRAMEWORKS[top]
    if top in STDLIB_MODULES or top in ("_codecs", "__builtin__", "copy_reg"):
        return "the standard library"
    return top


def grouped(names: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``module.name`` strings grouped by :func:`library`, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for module, name in names:
        groups.setdefault(library(module), []).append(f"{module}.{name}")
    return groups


@dataclass
class Verdict:
    """What the policy says about every global of one file."""

    trusted: list[tuple[str, str]] = field(default_factory=list)
    untrusted: list[tuple[str, str]] = field(default_factory=list)  #: refused unless named in `trust:`
    forbidden: list[tuple[str, str]] = field(default_factory=list)  #: refused unless unsafe_deserialization

    @property
    def refused(self) -> list[str]:
        """Every refused name, the forbidden ones first."""
        return [f"{m}.{n}" for m, n in [*self.forbidden, *self.untrusted]]


@dataclass(frozen=True)
class TrustPolicy:
    """The allow-list plus a project's ``trust:`` entries and its own modules (top-level names)."""

    entries: tuple[str, ...] = ()
    local: frozenset[str] = frozenset()

    def admits(self, module: str, name: str) -> bool:
        if forbidden(module, name):
            return False
        if library_trusted(module, name) or module.split(".")[0] in self.local:
            return True
        full = f"{module}.{name}"
        return any(full == e or (e.endswith(".*") and (module == e[:-2] or module.startswith(e[:-1])))
                   for e in self.entries)

    def check(self, names: Iterable[tuple[str, str]]) -> Verdict:
        verdict = Verdict()
        for module, name in names:
            if forbidden(module, name):
                verdict.forbidden.append((module, name))
            elif self.admits(module, name):
                verdict.trusted.append((module, name))
            else:
                verdict.untrusted.append((module, name))
        return verdict


def local_modules(artifact: Path, names: Iterable[str]) -> frozenset[str]:
    """Those of ``names`` (top-level modules) that are the project's own: ``name/`` or ``name.py`` in a folder on
    sys.path (the server and build put the contract's folder there) that holds the artifact."""
    from mlship.userpkg import local_path

    here = artifact.resolve().parent
    folders = [Path(p).resolve() for p in sys.path if p and Path(p).is_dir()]
    roots = [f for f in folders if f == here or f in here.parents]
    return frozenset(n for n in names if n.isidentifier() and n != "__main__"
                     and any(local_path(root, n) is not None for root in roots))


def shown(names: list[str], limit: int = 10) -> str:
    """Up to ``limit`` names, then "and N more"."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")
