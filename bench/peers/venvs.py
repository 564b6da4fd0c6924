"""One virtual environment per peer, built with `python -m venv` + pip under a cache dir and reused.

scikit-learn, joblib, numpy and pandas are pinned to the versions of the interpreter running the bench, so
every peer loads the same pickle with the same code; the tensor peers' venvs (`*-tensor`, `litserve`) pin numpy,
torch (this interpreter's CPU build, e.g. 2.13.0+cpu: never a CUDA one), tensorflow-cpu and keras instead.
A venv is reused when its marker file records the same requirements and Python; otherwise (or with fresh=True)
it is rebuilt. A failed install is reported, not raised: the peers that need it are skipped.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlship-bench" / "venvs"
MARKER = "mlship-bench.json"
PINNED_FROM_HERE = ("scikit-learn", "joblib", "numpy", "pandas")
TENSOR_PINNED = ("numpy", "torch", "tensorflow-cpu", "keras")  # the exact versions, local version label included

REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "flask": ("flask", "gunicorn"),
    "fastapi": ("fastapi", "uvicorn[standard]"),
    "bentoml": ("bentoml==1.4.39",),  # 1.4.40 needs a certifi release the package index lacks
    # newer uvloop crashes MLServer's worker: every request gets a 404
    "mlserver": ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"),
    # the tensor workloads: keras-digits and torch-digits, both frameworks in each venv
    "fastapi-tensor": ("fastapi", "uvicorn[standard]"),
    "bentoml-tensor": ("bentoml==1.4.39",),
    "litserve": ("litserve==0.2.19",),
}
TENSOR_VENVS = ("fastapi-tensor", "bentoml-tensor", "litserve")
# versions to report: the peer's own packages plus the pinned ones
REPORTED: dict[str, tuple[str, ...]] = {
    "flask": ("flask", "gunicorn", "werkzeug"),
    "fastapi": ("fastapi", "uvicorn", "pydantic", "uvloop", "httptools"),
    "bentoml": ("bentoml", "starlette", "uvicorn", "pydantic"),
    "mlserver": ("mlserver", "mlserver-sklearn", "fastapi", "uvicorn", "uvloop", "pydantic"),
    "fastapi-tensor": ("fastapi", "uvicorn", "pydantic", "uvloop", "httptools"),
    "bentoml-tensor": ("bentoml", "starlette", "uvicorn", "pydantic"),
    "litserve": ("litserve", "fastapi", "uvicorn", "uvloop", "pyzmq"),
}


@dataclass
class Venv:
    name: str
    path: Path
    python: Path | None  # None: not installed, see error
    error: str | None = None
    reused: bool = False
    install_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)


def pinned(name: str) -> tuple[str, ...]:
    return TENSOR_PINNED if name in TENSOR_VENVS else PINNED_FROM_HERE


def requirements(name: str) -> list[str]:
    pins = [f"{dist}=={importlib.metadata.version(dist)}" for dist in pinned(name)]
    return [*REQUIREMENTS[name], *pins]


def _failure(log: Path) -> str:
    """The lines of a pip log that say why it failed (pip's noise about missing local indexes dropped)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
             if ln.strip() and not ln.startswith("WARNING: Location ")]
    errors = [re.sub(r" \(from versions: .*\)$", "", ln.removeprefix("ERROR: ")) for ln in lines
              if ln.startswith("ERROR")]
    return " | ".join((errors or lines)[-3:])[:400] or "pip failed without output"


def _versions(python: Path, dists: tuple[str, ...]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for d in sys.argv[1:]:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    done = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True, timeout=60,
                          check=True)
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def ensure(name: str, cache: Path, fresh: bool = False, timeout: float = 900.0) -> Venv:
    """The venv for peer `name`, built unless a matching one is cached."""
    path = cache / name
    python = path / "bin" / "python"
    wanted = {"requirements": requirements(name), "python": platform.python_version()}
    dists = (*REPORTED[name], *pinned(name))
    marker = path / MARKER
    if not fresh and marker.exists() and python.exists():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = {}
        if {k: recorded.get(k) for k in wanted} == wanted:
            return Venv(name, path, python, reused=True, versions=recorded.get("versions", {}))
    shutil.rmtree(path, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f"{name}.pip.log"
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=120)
        with log.open("wb") as out:
            done = subprocess.run([str(python), "-m", "pip", "install", "--no-input", *wanted["requirements"]],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            return Venv(name, path, None, error=f"pip install: {_failure(log)} (log: {log})",
                        install_s=time.perf_counter() - started)
        versions = _versions(python, dists)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(path, ignore_errors=True)
        return Venv(name, path, None, error=f"{exc.cmd[2:4]} took over {exc.timeout:g} s",
                    install_s=time.perf_counter() - started)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(path, ignore_errors=True)
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        detail = " ".join(stderr.strip().splitlines()[-1:])
        return Venv(name, path, None, error=f"{' '.join(map(str, exc.cmd[:4]))} failed: {detail}",
                    install_s=time.perf_counter() - started)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # interrupted: never leave a half-built venv behind
        raise
    marker.write_text(json.dumps({**wanted, "versions": versions}, indent=2) + "\n")
    return Venv(name, path, python, install_s=time.perf_counter() - started, versions=versions)
