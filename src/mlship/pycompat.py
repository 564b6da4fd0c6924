"""What the serving code needs to run on Python 3.9 as well: an old model's image runs the Python of its time
(scikit-learn 0.24 has wheels up to 3.9 only), while the CLI needs 3.10+ (see docs/python-versions.md).

Only the modules ``python -m mlship.serving`` imports use this; everything else may use 3.10+ freely.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any


def _stdlib_modules() -> frozenset[str]:
    """The standard library's top-level module names: ``sys.stdlib_module_names`` (3.10+), else (3.9) the
    built-in modules and the modules and packages in the standard library's folder and its lib-dynload."""
    names: frozenset[str] | None = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return names
    lib = Path(sysconfig.get_paths()["stdlib"])
    found = set(sys.builtin_module_names)
    for folder in (lib, lib / "lib-dynload"):
        if folder.is_dir():
            found.update(p.name.split(".")[0] for p in folder.iterdir()
                         if p.suffix in (".py", ".so") or (p / "__init__.py").is_file())
    return frozenset(found)


STDLIB_MODULES = _stdlib_modules()


def entry_points_of(group: str, find: Callable[..., Any] = entry_points) -> Iterable[EntryPoint]:
    """The installed entry points of ``group``: ``find(group=group)`` (importlib.metadata.entry_points, or what a
    caller looks them up with); on Python 3.9 ``entry_points()`` takes no ``group=`` and returns a dict of groups."""
    try:
        found: Iterable[EntryPoint] = find(group=group)
    except TypeError:  # Python 3.9
        groups: dict[str, Iterable[EntryPoint]] = find()
        return groups.get(group, ())
    return found
