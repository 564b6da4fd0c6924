"""A build environment: a throw-away container with exactly the given Python and library versions, no network,
the host's wheelhouse and the model mounted read-only, that runs ``probe_script.py`` on the model and returns
what it said.

The model is read and trust-checked on the host first (the caller does: ``check_trust``); the container adds a
second wall (no network, nothing writable but one output folder), it does not replace that check.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlship.errors import ArtifactError, BuildError, EngineError

LABEL = "dev.mlship.buildenv"  #: on every build-environment container (value: the artifact's file name), with
#: dev.mlship.owner (PID@HOST of the process that made it, as on every container mlship starts)
_SCRIPT = Path(__file__).with_name("probe_script.py")
_TIMEOUT_S = 900


@dataclass
class ProbeResult:
    """What the model said in one build environment."""

    python: str
    versions: dict[str, str]  #: package -> the version installed there (scikit-learn, numpy, scipy, ...)
    model_class: str
    estimator_type: str | None
    n_features_in: int | None
    feature_names_in: list[str] | None
    classes: list[Any] | None
    predictions: list[Any]
    probabilities: list[list[float]] | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    onnx: dict[str, bytes] = field(default_factory=dict)  #: "double"/"float" -> the converted model (convert=True)
    onnx_errors: list[str] = field(default_factory=list)
    converter: str | None = None

    def describe(self) -> str:
        libs = ", ".join(f"{k} {v}" for k, v in self.versions.items() if k in ("scikit-learn", "numpy", "scipy"))
        return f"Python {self.python}, {libs}"


def run_probe(model: Path, rows: list[list[float]], python: str, requirements: list[str],
              progress: Callable[[str], None] | None = None, convert: bool = False) -> ProbeResult:
    """Load ``model`` in a container of Python ``python`` with ``requirements`` (installed from wheels the host
    downloads once, cached) and predict ``rows`` there; ``convert``: also convert it to ONNX (skl2onnx must be in
    ``requirements``)."""
    from mlship.image import engine, wheelhouse
    from mlship.image.context import base_image_for

    say = progress or (lambda _line: None)
    start = time.monotonic()
    image = base_image_for(python)
    cli = engine.client()
    _require_image(cli, image, python)
    work = Path(tempfile.mkdtemp(prefix="mlship-buildenv-"))
    try:
        say(f"build environment: Python {python}, {', '.join(requirements)} ({image}, no network)")
        lock = wheelhouse.download(requirements, python, work / "wheels", progress=say)
        probe = work / "probe"
        probe.mkdir()
        (probe / "requirements.lock").write_text(lock.text(), encoding="utf-8")
        shutil.copy(_SCRIPT, probe / "probe_script.py")
        (probe / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
        out = work / "out"
        out.mkdir()
        for path in (work, *work.rglob("*")):
            path.chmod(0o777 if path == out else (0o755 if path.is_dir() else 0o644))
        name = model.name
        script = ("python3 -m venv /tmp/env && /tmp/env/bin/python -m pip install --quiet --no-index "
                  "--no-cache-dir --find-links /wheels --only-binary :all: --require-hashes "
                  "-r /probe/requirements.lock && /tmp/env/bin/python /probe/probe_script.py "
                  f"/model/{_safe(name)} /probe/rows.json /out/result.json" + (" /out" if convert else ""))
        logs = _run(cli, image, script, {
            str(work / "wheels"): {"bind": "/wheels", "mode": "ro"},
            str(probe): {"bind": "/probe", "mode": "ro"},
            str(model.resolve()): {"bind": f"/model/{_safe(name)}", "mode": "ro"},
            str(out): {"bind": "/out", "mode": "rw"}}, name)
        result_file = out / "result.json"
        if not result_file.is_file():
            tail = "\n".join([ln for ln in logs.splitlines() if ln.strip()][-12:])
            raise BuildError(
                f"The build environment (Python {python}, {', '.join(requirements)}) did not run the model:\n{tail}",
                why="mlship makes a container with the versions the model was saved with to run it where this "
                "machine cannot.",
                fix=engine.failure_hint(logs) or "Read the lines above; `docker run --rm -it " + image
                + " python3 -V` checks the base image.")
        data = json.loads(result_file.read_text(encoding="utf-8"))
        onnx = {kind: (out / f"model-{kind}.onnx").read_bytes() for kind in data.get("onnx", [])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not data.get("ok"):
        raise ArtifactError(
            f"{model.name} cannot be loaded even in a build environment with Python {python} and "
            f"{', '.join(requirements)}: {data.get('error')}",
            why="These are the versions the file records (or the newest that reads them); the file itself, or a "
            f"library it needs, is the problem. The environment's traceback:\n{data.get('traceback', '')[-800:]}",
            fix="Load it in the environment it was trained in and save it again with `joblib.dump(model, "
            "'model.joblib')`; or, if it needs another library, add it to the requirements.")
    return ProbeResult(python=str(data["python"]), versions=dict(data.get("versions", {})),
                       model_class=str(data["class"]), estimator_type=data.get("estimator_type"),
                       n_features_in=data.get("n_features_in"), feature_names_in=data.get("feature_names_in"),
                       classes=data.get("classes"), predictions=list(data["predictions"]),
                       probabilities=data.get("probabilities"), warnings=list(data.get("warnings", [])),
                       seconds=round(time.monotonic() - start, 3), onnx=onnx,
                       onnx_errors=list(data.get("onnx_errors", [])), converter=data.get("converter"))


def _safe(name: str) -> str:
    """A file name usable in the container's command line and mount path (the model's own name when it is)."""
    return name if name.replace(".", "").replace("-", "").replace("_", "").isalnum() else "model.bin"


def _require_image(cli: Any, image: str, python: str) -> None:
    from docker.errors import DockerException, ImageNotFound

    from mlship.image import engine

    try:
        cli.images.get(image)
        return
    except ImageNotFound:
        pass
    try:
        cli.images.pull(image)
    except DockerException as exc:
        raise BuildError(
            f"The build environment needs the base image {image} (Python {python}), and it cannot be pulled: "
            f"{str(exc).strip().splitlines()[0][:200]}",
            why=f"The model's libraries run in the Python of their time ({python}), in a container made from that "
            "base image.",
            fix=f"`docker pull {image}` (or `docker load` it), or name another Python {python} image with "
            f"$MLSHIP_BASE_IMAGE_{python.replace('.', '_')}. " + engine.base_image_fix(image)) from None


def _run(cli: Any, image: str, script: str, volumes: dict[str, dict[str, str]], name: str) -> str:
    """Run ``script`` in a new container (no network, removed afterwards); its output."""
    from docker.errors import DockerException

    from mlship.targets.base import LABEL_OWNER, owner_label

    env = {"HOME": "/tmp", "PIP_NO_INDEX": "1",  # noqa: S108 (the container's /tmp)
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
    try:
        container = cli.containers.run(image, ["sh", "-c", script], detach=True, network_mode="none",
                                       volumes=volumes, environment=env, user=user,
                                       labels={LABEL: name, LABEL_OWNER: owner_label()})
    except DockerException as exc:
        raise EngineError(f"Cannot start the build environment ({image}): {str(exc).strip()[:300]}",
                          fix="Check that the Docker engine runs (`docker info`).") from None
    try:
        container.wait(timeout=_TIMEOUT_S)
        return str(container.logs().decode(errors="replace"))
    finally:
        container.remove(force=True)
