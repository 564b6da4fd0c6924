"""A long-lived conversion worker per project and framework, so that a model-only rebuild does not import
TensorFlow or torch again (like Gradle's daemon or Bazel's server).

`mlship build` of a tensor model whose compiled model is missing or stale (the artifact changed) asks the
project's worker for its framework (``pytorch`` or ``tensorflow``) to convert and prove the model: the worker,
a ``python -m mlship.convert_server`` process with the framework imported, runs exactly the in-process code
(``Predictor(project).load()``: the same contract, the same trust checks, the same conversion and proof on the
examples + 256 probe tensors, the framework computing the reference outputs) and keeps the result in
``.mlship/compiled/``; the build then re-checks that model here on the probe tensors against the recorded
outputs, as it does for any kept compiled model. The first such build starts the worker (it lives on in the
background); later builds find it warm.

- The socket: ``.mlship/workers/<runtime>.sock`` (a folder of mode 0700, the socket 0600; under the temp dir
  when the project's path is too long for a socket). Both ends check the other's uid (``SO_PEERCRED``): a
  worker serves only its own user, and only its own project's contract.
- A request carries the caller's stamp (mlship version and a digest of its source files, the Python, the
  framework and converter versions, the environment variables they read): a worker with another stamp answers
  ``mismatch`` and exits; the caller starts a fresh one.
- A missing, crashed or killed worker, a stale socket, an error in the worker: the caller converts in-process
  (the same answer, only slower).
- Off when ``CI`` is true (CI builds are one-shot) or ``MLSHIP_CONVERT_WORKER=0``; a worker exits after
  ``MLSHIP_CONVERT_WORKER_IDLE_S`` seconds without a request (900), when its socket or project folder goes away,
  or on :func:`stop` (``python -m mlship.convert_server stop [PROJECT]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mlship import __version__
from mlship.contract_io import Project

SWITCH_ENV = "MLSHIP_CONVERT_WORKER"
IDLE_ENV = "MLSHIP_CONVERT_WORKER_IDLE_S"
IDLE_S = 900.0  # 15 minutes without a request
START_TIMEOUT_S = 60.0  # a new worker binds its socket before importing the framework
REPLY_TIMEOUT_S = 900.0  # conversion of a large model can take minutes; a dead worker closes the socket at once
FOLDER = ".mlship/workers"
MAX_MESSAGE = 1 << 20
#: the runtimes a worker serves, with the packages whose versions its stamp records
PACKAGES = {
    "pytorch": ("torch", "onnxscript", "onnx"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "keras", "tf-keras", "tf2onnx", "onnx"),
}
COMMON_PACKAGES = ("numpy", "onnxruntime", "pydantic", "pyyaml")
#: environment variables the frameworks, converters and mlship's runtimes read while loading or converting
ENV_PREFIXES = ("KERAS_", "TF_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "OPENBLAS_", "ORT_", "CUDA_VISIBLE",
                "PYTHONPATH", "MLSHIP_TORCH")

_spawned: list[subprocess.Popen[bytes]] = []  # kept (not garbage-collected while running); reaped by stop()


class WorkerGone(Exception):
    """The worker could not be reached, closed the connection, or answered something unreadable."""


def enabled(project: Project) -> bool:
    """Whether a build of ``project`` may use a worker: a tensor runtime, a model mlship loads itself (no
    ``load:`` or ``predict:`` code), not in CI, not switched off, and a platform with peer credentials."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    c = project.contract
    return (c.runtime in PACKAGES and not c.load and not c.predict and c.serve.compile != "off"
            and hasattr(socket, "SO_PEERCRED") and hasattr(socket, "AF_UNIX"))


def folder(root: Path) -> Path:
    return root / FOLDER


def socket_path(root: Path, runtime: str) -> Path:
    """``.mlship/workers/<runtime>.sock``, or a folder of this user's under the temp dir when that path is too
    long for a unix socket (108 bytes on Linux)."""
    path = folder(root.resolve()) / f"{runtime}.sock"
    if len(os.fsencode(path)) < 100:
        return path
    key = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"mlship-workers-{os.getuid()}" / f"{key}-{runtime}.sock"


def private_folder(path: Path) -> None:
    """Create ``path`` (mode 0700) and refuse one that another user owns or others can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WorkerGone(f"{path} is not a private folder of this user")


def stamp(runtime: str) -> dict[str, Any]:
    """What must be equal between a caller and the worker it asks (see the module's docstring)."""
    import mlship

    package = Path(mlship.__file__).parent
    code = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        code.update(f"{path.relative_to(package)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    versions: dict[str, str | None] = {}
    for name in (*PACKAGES[runtime], *COMMON_PACKAGES):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    return {"mlship": __version__, "code": code.hexdigest(), "python": sys.version, "executable": sys.executable,
            "runtime": runtime, "packages": versions, "env": env}


def peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid


def send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def receive(conn: socket.socket, deadline: float) -> dict[str, Any]:
    """One newline-terminated JSON object; WorkerGone on EOF, timeout or anything unreadable."""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerGone("no answer in time")
        conn.settimeout(min(left, 5.0))
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except OSError as exc:
            raise WorkerGone(str(exc)) from None
        if not chunk:
            raise WorkerGone("the connection closed before an answer")
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise WorkerGone("the message is too long")
    try:
        message = json.loads(data)
    except ValueError:
        raise WorkerGone("an unreadable message") from None
    if not isinstance(message, dict):
        raise WorkerGone("an unreadable message")
    return message


def connect(path: Path) -> tuple[socket.socket, int]:
    """A connection to the worker listening at ``path`` (its pid); WorkerGone when none listens there or it is
    another user's."""
    try:
        if path.lstat().st_uid != os.getuid():
            raise WorkerGone(f"{path} belongs to another user")
    except FileNotFoundError:
        raise WorkerGone("no worker") from None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        pid, uid = peer(conn)
    except OSError as exc:
        conn.close()
        raise WorkerGone(f"no worker listens at {path} ({exc.__class__.__name__})") from None
    if uid != os.getuid():
        conn.close()
        raise WorkerGone(f"the process at {path} runs as another user")
    return conn, pid


@contextlib.contextmanager
def _locked(root: Path, runtime: str) -> Iterator[None]:
    """One caller at a time decides whether to start this project's worker (two builds start one worker)."""
    import fcntl

    private_folder(folder(root))
    (folder(root) / ".gitignore").write_text("*\n")
    with open(folder(root) / f"{runtime}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _spawn(root: Path, runtime: str, path: Path) -> tuple[socket.socket, int]:
    """Start a worker for ``root`` and connect to it (it binds its socket before importing the framework)."""
    private_folder(path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket: nothing listened there (checked by the caller under the lock)
    log = open(folder(root) / f"{runtime}.log", "wb")  # noqa: SIM115 - handed to the child, closed here
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mlship.convert_server", "serve", str(root), runtime],
                                cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()
    _spawned.append(proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerGone(f"the worker exited with {proc.returncode} (see {folder(root) / (runtime + '.log')})")
        try:
            return connect(path)
        except WorkerGone:
            time.sleep(0.02)
    proc.kill()
    raise WorkerGone("the worker did not start in time")


def _worker(root: Path, runtime: str) -> tuple[socket.socket, int]:
    for proc in [p for p in _spawned if p.poll() is not None]:  # reap workers this process started that exited
        _spawned.remove(proc)
    path = socket_path(root, runtime)
    with _locked(root, runtime):
        try:
            return connect(path)
        except WorkerGone:
            return _spawn(root, runtime, path)


def convert(project: Project) -> dict[str, str] | None:
    """Have the project's worker convert, prove and keep the compiled model (starting the worker if none
    runs). Returns the framework versions the artifact records (for the image's pins), or None when the caller
    must convert in-process: the worker could not be used, or the model did not compile there."""
    if not enabled(project):
        return None
    runtime = project.contract.runtime
    mine = stamp(runtime)
    request = {"op": "convert", "contract": str(project.contract_path.resolve()), "stamp": mine}
    for _attempt in range(2):  # a worker of another stamp exits; a fresh one is started once
        try:
            conn, _pid = _worker(project.root, runtime)
        except (WorkerGone, OSError):
            return None
        with conn:
            try:
                send(conn, request)
                reply = receive(conn, time.monotonic() + REPLY_TIMEOUT_S)
            except (WorkerGone, OSError):
                return None
        if reply.get("status") == "mismatch":
            _wait_gone(socket_path(project.root, runtime), 10.0)
            continue
        if reply.get("status") == "ok" and reply.get("compiled"):
            versions = reply.get("versions")
            return {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {}
        return None
    return None


def _wait_gone(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def running(root: Path, runtime: str) -> int | None:
    """The pid of the worker serving ``root`` for ``runtime``, or None."""
    try:
        conn, pid = connect(socket_path(root, runtime))
    except WorkerGone:
        return None
    with conn:
        try:
            send(conn, {"op": "ping"})
            reply = receive(conn, time.monotonic() + 10.0)
        except (WorkerGone, OSError):
            return None
    return pid if reply.get("status") == "ok" else None


def stop(root: Path, runtimes: tuple[str, ...] = tuple(PACKAGES), wait_s: float = 10.0) -> list[int]:
    """Stop the project's workers (waiting up to ``wait_s`` for each to exit); returns their pids."""
    stopped = []
    for runtime in runtimes:
        try:
            conn, pid = connect(socket_path(root, runtime))
        except WorkerGone:
            continue
        with conn, contextlib.suppress(WorkerGone, OSError):
            send(conn, {"op": "stop"})
            receive(conn, time.monotonic() + wait_s)
        _wait_exit(pid, wait_s)
        stopped.append(pid)
    return stopped


def _wait_exit(pid: int, seconds: float) -> None:
    """Wait for ``pid`` to exit (reaping it when this process started it)."""
    deadline = time.monotonic() + seconds
    for proc in [p for p in _spawned if p.pid == pid]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        _spawned.remove(proc)
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
