"""Which Python a recorded library release runs in, and the versions of its era that go with it.

``pythons_for("scikit-learn", "0.24.2")`` asks pip's configured index (the wheel files' own tags: one
``pip install --dry-run --only-binary=:all: --python-version X`` per candidate Python, run side by side, nothing
installed), keeps the answer in the user cache (``$MLSHIP_CACHE/python-versions.json``) and falls back to the small
table below when the index cannot be reached. ``era_requirements`` caps numpy/scipy/joblib/threadpoolctl at the
releases of the library's own time (scikit-learn 0.24 does not run with numpy 2); ``bridge_for`` names the newest
release that still reads an old release's files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.version import InvalidVersion, Version

from mlship.errors import BuildError
from mlship.image.wheelhouse import PLATFORMS, cache_dir

#: CPython versions a build environment can be made for (python:X-slim exists for each)
CANDIDATES = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")

#: offline fallback: scikit-learn release -> the CPython versions it has Linux wheels for (read from the index,
#: December 2026); a release not listed takes its minor release's row ("0.24" for 0.24.1)
FALLBACK: dict[str, tuple[str, ...]] = {
    "0.22": ("3.6", "3.7", "3.8"),
    "0.23": ("3.6", "3.7", "3.8"),
    "0.24": ("3.6", "3.7", "3.8", "3.9"),
    "1.0": ("3.7", "3.8", "3.9"),
    "1.0.1": ("3.7", "3.8", "3.9", "3.10"),
    "1.0.2": ("3.7", "3.8", "3.9", "3.10"),
    "1.1": ("3.8", "3.9", "3.10"),
    "1.1.3": ("3.8", "3.9", "3.10", "3.11"),
    "1.2": ("3.8", "3.9", "3.10", "3.11"),
    "1.3": ("3.8", "3.9", "3.10", "3.11", "3.12"),
}

#: scikit-learn minor release -> the numpy/scipy/joblib/threadpoolctl of its time (upper bounds). 0.24's row
#: resolves to the set tests/legacy_models.py trains with (numpy 1.19.5, scipy 1.6.3, joblib 1.0.1,
#: threadpoolctl 2.1.0); releases from 1.3 on are served as they are and need no row.
ERA: dict[str, tuple[str, ...]] = {
    "0.22": ("numpy<1.19", "scipy<1.5", "joblib<0.15"),
    "0.23": ("numpy<1.20", "scipy<1.6", "joblib<1.0", "threadpoolctl<2.2"),
    "0.24": ("numpy<1.20", "scipy<1.7", "joblib<1.1", "threadpoolctl<2.2"),
    "1.0": ("numpy<1.22", "scipy<1.8", "joblib<1.2", "threadpoolctl<3.1"),
    "1.1": ("numpy<1.24", "scipy<1.10", "joblib<1.3", "threadpoolctl<3.2"),
    "1.2": ("numpy<1.25", "scipy<1.11", "joblib<1.3", "threadpoolctl<3.2"),
}

#: the newest scikit-learn that reads the files of releases before 1.3 (1.3 changed the layout of fitted trees),
#: with the numpy/scipy it was made for; it has wheels for current Pythons (3.8-3.11)
BRIDGE_RELEASE = "1.2.2"
BRIDGE = (f"scikit-learn=={BRIDGE_RELEASE}", "numpy<2", "scipy<1.12")
BRIDGE_PYTHON = "3.11"
_CACHE_FILE = "python-versions.json"


def _minor(version: str) -> str:
    v = Version(version)
    return f"{v.major}.{v.minor}"


def era_requirements(package: str, version: str) -> list[str]:
    """``package==version`` and the caps of its era (only scikit-learn has a row; others are pinned alone)."""
    caps = ERA.get(_minor(version), ()) if package == "scikit-learn" else ()
    return [f"{package}=={version}", *caps]


def bridge_for(package: str, version: str) -> tuple[str, ...] | None:
    """The requirements of the newest release that reads ``package`` ``version``'s files on a current Python, or
    None when there is none to try (the version is current enough to be served as it is, or not scikit-learn)."""
    if package != "scikit-learn":
        return None
    try:
        old = Version(version) < Version("1.3")
    except InvalidVersion:
        return None
    return BRIDGE if old and version != BRIDGE_RELEASE else None


def has_wheel(package: str, version: str, python: str) -> bool | None:
    """Whether pip's configured index has a Linux x86-64 CPython ``python`` wheel of ``package==version``; None
    when pip could not ask (no network, no index)."""
    abi = "cp" + python.replace(".", "")
    abis = [abi + "m", abi] if python in ("3.6", "3.7") else [abi]  # before 3.8 the ABI tag ends in m (pymalloc)
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
           "--disable-pip-version-check", "--only-binary=:all:", "--python-version", python, "--implementation",
           "cp", *(arg for a in (*abis, "abi3") for arg in ("--abi", a)),
           "--target", str(cache_dir() / "never-installed"),
           *(arg for p in PLATFORMS for arg in ("--platform", p)), f"{package}=={version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return True
    return False if "No matching distribution found" in proc.stderr else None


def pythons_for(package: str, version: str) -> tuple[list[str], str]:
    """The CPython versions ``package==version`` has wheels for, and where that was read: "index" (asked now),
    "cache" (asked before) or "table" (the built-in table, when the index cannot be reached)."""
    key = f"{package}=={version}"
    path = cache_dir() / _CACHE_FILE
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), list) and cached[key]:
        return [str(v) for v in cached[key]], "cache"
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = dict(zip(CANDIDATES, pool.map(lambda py: has_wheel(package, version, py), CANDIDATES),
                           strict=True))
    found = [py for py, ok in answers.items() if ok]
    if found and None not in answers.values():
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = found
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        return found, "index"
    table = FALLBACK.get(version) or FALLBACK.get(_minor(version)) if package == "scikit-learn" else None
    if table:
        return list(table), "table"
    if found:  # some answers are missing: what was found is still true
        return found, "index"
    raise BuildError(
        f"Cannot tell which Python {package} {version} runs in: pip's index has no Linux wheel of it for "
        f"CPython {CANDIDATES[0]}-{CANDIDATES[-1]}" + (" (or could not be reached)" if None in answers.values()
                                                       else "") + ".",
        why="mlship runs an old release in the Python of its time, from wheels (nothing is compiled).",
        fix="Set the Python yourself: `mlship init MODEL --python 3.X` (a version that release supports), or "
        "check that pip can reach your package index.")


def choose_python(package: str, version: str, wanted: str | None = None) -> tuple[str, str]:
    """The Python a build environment for ``package==version`` runs: ``wanted`` when given, else the newest one
    the release has wheels for. Returns (python, how it was chosen)."""
    if wanted:
        return wanted, "given"
    pythons, source = pythons_for(package, version)
    ordered = sorted(pythons, key=lambda v: tuple(int(p) for p in v.split(".")))
    span = f"CPython {ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else f"CPython {ordered[0]}"
    return ordered[-1], f"its wheels are for {span}, " + {
        "index": "read from the package index", "cache": "read from the package index (cached)",
        "table": "from mlship's built-in table (the index could not be reached)"}[source]


def cache_path() -> Path:
    return cache_dir() / _CACHE_FILE
