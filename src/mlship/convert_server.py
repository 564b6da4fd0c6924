"""The conversion worker's process (see :mod:`mlship.convert_worker`, which starts it and talks to it).

    python -m mlship.convert_server serve PROJECT RUNTIME    # what convert_worker starts, in the background
    python -m mlship.convert_server stop [PROJECT]            # stop a project's workers (default: .)

One request at a time, each one JSON line: ``ping``, ``stop``, or ``convert`` (a contract path inside this
worker's project, and the caller's stamp). A convert runs ``Predictor(project).load()`` exactly as the caller
would in-process, keeping the compiled model (or why it failed) in ``.mlship/compiled/``; modules imported from
the project and additions to ``sys.path`` are dropped afterwards, so a changed file of the user's is read
afresh next time.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mlship import convert_worker as cw


def _idle_s() -> float:
    try:
        return max(1.0, float(os.environ.get(cw.IDLE_ENV) or cw.IDLE_S))
    except ValueError:
        return cw.IDLE_S


def _preload(runtime: str) -> None:
    """Import what a conversion needs, so the first request does not wait for it either."""
    import importlib

    from mlship.compiled import ort_version

    importlib.import_module("mlship.serving.predictor")  # the code path a convert runs
    ort_version()
    if runtime == "pytorch":
        from mlship.runtimes.pytorch import _import_torch

        _import_torch()
        importlib.import_module("torch.onnx")  # the exporter's own imports are a second's worth
    else:
        from mlship.runtimes.tensorflow import _quiet_import
        from mlship.runtimes.tensorflow_onnx import _tf2onnx

        _quiet_import()
        with contextlib.suppress(Exception):  # a missing tf2onnx is reported by the conversion itself
            _tf2onnx()


def _under(path: str | None, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` (resolved); a plain prefix test, cheap over thousands of modules."""
    return isinstance(path, str) and os.path.abspath(path).startswith(str(root) + os.sep)


def _forget_project_code(root: Path, saved_path: list[str]) -> None:
    """Drop the modules imported from the project's folder and the sys.path entries added for it."""
    for name, module in list(sys.modules.items()):
        if _under(getattr(module, "__file__", None), root):
            del sys.modules[name]
    sys.path[:] = saved_path


def _clear_framework_state() -> None:
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        clear = getattr(getattr(module, "backend", None), "clear_session", None)
        if callable(clear):
            with contextlib.suppress(Exception):
                clear()
    gc.collect()


def handle_convert(request: dict[str, Any], root: Path, runtime: str) -> dict[str, Any]:
    """Convert and prove the model of the contract the request names (this worker's project only)."""
    from mlship.contract_io import load_project
    from mlship.errors import MlshipError
    from mlship.serving.predictor import Predictor

    contract = Path(str(request.get("contract", "")))
    if not contract.is_absolute() or not _under(str(contract), root):
        return {"status": "refused", "message": f"{contract} is not in this worker's project {root}"}
    saved_path = list(sys.path)
    try:
        project = load_project(contract)
        if project.root.resolve() != root or project.contract.runtime != runtime:
            return {"status": "refused", "message": f"{contract} is not a {runtime} contract of {root}"}
        predictor = Predictor(project, keep_compiled=True)
        predictor.load()
        versions = (predictor.runtime.saved_versions(predictor.model) if predictor.model is not None else {})
        return {"status": "ok", "compiled": predictor.compiled is not None, "note": predictor.compile_note,
                "versions": dict(versions)}
    except MlshipError as exc:  # the caller converts in-process and reports it the usual way
        return {"status": "error", "message": exc.message}
    except Exception as exc:  # any failure here means: convert in-process instead
        return {"status": "error", "message": f"{exc.__class__.__name__}: {exc}"}
    finally:
        _forget_project_code(root, saved_path)
        _clear_framework_state()


def _answer(conn: socket.socket, root: Path, runtime: str, mine: dict[str, Any]) -> bool:
    """Answer one connection; True when the worker should exit."""
    try:
        request = cw.receive(conn, time.monotonic() + 30.0)
    except cw.WorkerGone:
        return False
    op = request.get("op")
    if op == "ping":
        cw.send(conn, {"status": "ok", "pid": os.getpid()})
        return False
    if op == "stop":
        cw.send(conn, {"status": "ok"})
        return True
    if op != "convert":
        cw.send(conn, {"status": "refused", "message": f"unknown op {op!r}"})
        return False
    if request.get("stamp") != mine:  # another mlship, Python, framework or environment: a fresh worker
        cw.send(conn, {"status": "mismatch"})
        return True
    cw.send(conn, handle_convert(request, root, runtime))
    return False


def _listen(path: Path) -> socket.socket:
    cw.private_folder(path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # the starting caller found nothing listening there (under its lock)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is created 0600: no window where another user could connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(16)
    listener.settimeout(1.0)
    return listener


def serve(root: Path, runtime: str) -> int:
    """Listen on the project's socket until idle, stopped, or the socket or project goes away."""
    root = root.resolve()
    if runtime not in cw.PACKAGES:
        print(f"mlship.convert_server: unknown runtime {runtime!r}", file=sys.stderr)
        return 2
    mine = cw.stamp(runtime)  # before anything else is imported: the code this process runs
    path = cw.socket_path(root, runtime)
    listener = _listen(path)
    inode = path.stat().st_ino
    idle = _idle_s()
    try:
        _preload(runtime)
        print(f"mlship convert worker {os.getpid()}: {runtime} for {root}, idle timeout {idle:g} s", flush=True)
        last = time.monotonic()
        while time.monotonic() - last < idle:
            try:
                if path.stat().st_ino != inode or not (root / ".mlship").is_dir():
                    break
            except FileNotFoundError:
                break
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                _pid, uid = cw.peer(conn)
                if uid != os.getuid():  # only this user's builds
                    continue
                if _answer(conn, root, runtime, mine):
                    break
            last = time.monotonic()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:
                path.unlink()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        return serve(Path(argv[1]), argv[2])
    if argv[:1] == ["stop"] and len(argv) <= 2:
        pids = cw.stop(Path(argv[1] if len(argv) == 2 else ".").resolve())
        print(f"stopped {len(pids)} worker(s)" + (f": {', '.join(map(str, pids))}" if pids else ""))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
