"""The peer servers: how each one is started, what it is sent and how its answer is read; the process tree.

Every server is one process (plus the helper processes the tool itself starts) pinned to one CPU and bound
to 127.0.0.1 on a free port. A server serves one model; the bench starts it once per model. A Suite is one
table: its models, its points and its peers (scikit-learn here and in suite_sklearn.py; the tensor models in
suite_tensor.py and tensor_servers.py).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from serve_bench import HOST, free_port, http_post, memory_mb, proc_cpu_seconds

APPS = Path(__file__).resolve().parent / "apps"
NATIVE_CONTRACT = "mlship-native.yaml"  # the contract with serve.compile: off (peer `mlship-native`)


@dataclass(frozen=True)
class Model:
    """One trained artifact and the rows the requests are built from."""

    key: str  # "iris", "rf", "torch", "keras"
    title: str
    artifact: Path
    mlship_yaml: Path
    features: list[str]  # [] for a tensor model
    rows: list[Any]  # feature rows (list[float]) or tensor instances (nested lists)


@dataclass(frozen=True)
class Point:
    model: str
    rows: int
    concurrency: int

    @property
    def key(self) -> str:
        return f"{self.model}-{self.rows}-c{self.concurrency}"

    @property
    def title(self) -> str:
        return f"{self.model} {self.rows} row{'s' if self.rows > 1 else ''} c={self.concurrency}"


@dataclass(frozen=True)
class Answer:
    labels: list[str]
    probabilities: list[dict[str, float]] | None  # None where the peer returns labels only


@dataclass(frozen=True)
class Launch:
    cmd: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # added to a copy of this process's environment


def _records(model: Model, batch: list[list[float]]) -> list[dict[str, float]]:
    return [dict(zip(model.features, row, strict=True)) for row in batch]


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def compile_like_build(contract: Path) -> None:
    """Convert and check the model as `mlship build` does, so that the server starts the way it does in an image
    (with the compiled model beside the artifact); also write mlship-native.yaml, the same contract with
    serve.compile: off, served by the `mlship-native` peer."""
    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    predictor = Predictor(load_project(contract))
    predictor.load()
    if predictor.compiled is None:
        raise SystemExit(f"{contract}: {predictor.compile_note}")
    write_native_contract(contract)


def write_native_contract(contract: Path) -> None:
    """mlship-native.yaml beside `contract`: the same contract with serve.compile: off."""
    import yaml

    data = yaml.safe_load(contract.read_text())
    data.setdefault("serve", {})["compile"] = "off"
    contract.with_name(NATIVE_CONTRACT).write_text(yaml.safe_dump(data, sort_keys=False))



class Peer(abc.ABC):
    """A server under test. Subclasses say how to start it, what to send and how to read the answer."""

    name = ""
    venv: str | None = None  # key of the peer's virtual environment; None: this interpreter (mlship)
    config = ""  # how it runs, for the notes under the table

    @abc.abstractmethod
    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        """The command, environment and working folder that start this server on ``port``."""

    def path(self, model: Model) -> str:
        return "/predict"

    def body(self, model: Model, batch: list[list[float]]) -> bytes:
        return _dumps({"instances": _records(model, batch)})

    def parse(self, payload: Any) -> Answer:
        return _answer(payload["predictions"])


def _answer(predictions: list[dict[str, Any]]) -> Answer:
    return Answer([str(p["label"]) for p in predictions],
                  [{str(k): float(v) for k, v in p["probabilities"].items()} for p in predictions])


class Mlship(Peer):
    """``mlship``: the compiled model (ONNX, checked against the original by `mlship build`), as in an image;
    ``mlship-native``: the same contract with serve.compile: off (scikit-learn in the server)."""

    def __init__(self, native: bool = False) -> None:
        self.native = native
        self.name = "mlship-native" if native else "mlship"
        self.config = ("python -m mlship.serving " + ("mlship-native.yaml (serve.compile: off)" if native else
                       "mlship.yaml (compiled to ONNX beforehand, as `mlship build` does)")
                       + "; a bare instance for 1 row, else {instances}")

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        contract = model.mlship_yaml.with_name(NATIVE_CONTRACT) if self.native else model.mlship_yaml
        return Launch([sys.executable, "-m", "mlship.serving", str(contract), "--host", HOST,
                       "--port", str(port)], cwd=work)

    def body(self, model: Model, batch: list[list[float]]) -> bytes:
        records = _records(model, batch)
        return _dumps(records[0] if len(records) == 1 else {"instances": records})

    def parse(self, payload: Any) -> Answer:
        return _answer(payload.get("predictions", [payload]))


class Flask(Peer):
    venv = "flask"

    """gunicorn's default sync worker closes the connection after every response; the gthread worker
    (`--threads N`) keeps connections alive and beat it on every point (10-30%), so `flask` is the
    gthread one and `flask-sync` the other."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads
        self.name = "flask" if threads else "flask-sync"
        worker = f"1 gthread worker, --threads {threads}" if threads else "1 sync worker (closes each connection)"
        self.config = f"Flask app under gunicorn, {worker}; request.get_json() -> DataFrame -> predict_proba"

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        threads = ["--threads", str(self.threads)] if self.threads else []
        # HOME: gunicorn >= 24 opens a control socket under ~/.gunicorn; keep it in the temp dir
        return Launch([str(python), "-m", "gunicorn", "--bind", f"{HOST}:{port}", "--workers", "1", *threads,
                       "flask_app:app"], cwd=work / "apps", env={"PEER_MODEL": str(model.artifact),
                                                                 "HOME": str(work)})


class FastAPI(Peer):
    name = "fastapi"
    venv = "fastapi"
    config = ("async FastAPI endpoint under uvicorn (1 worker, uvloop + httptools, --no-access-log); "
              "pydantic request model -> DataFrame -> predict_proba")

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        return Launch([str(python), "-m", "uvicorn", "fastapi_app:app", "--host", HOST, "--port", str(port),
                       "--workers", "1", "--no-access-log"],
                      cwd=work / "apps", env={"PEER_MODEL": str(model.artifact)})


class BentoML(Peer):
    venv = "bentoml"
    service = "bentoml_service:PeerService"  # the app in apps/

    def __init__(self, batchable: bool = False) -> None:
        self.batchable = batchable
        self.name = "bentoml-batch" if batchable else "bentoml"
        how = "batchable=True (adaptive batching, default limits)" if batchable else "no batching"
        self.config = (f"bentoml serve, @bentoml.service(workers=1), sync @bentoml.api, {how}; "
                       "access log off")

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        env = {"PEER_MODEL": str(model.artifact), "PEER_BATCHABLE": "1" if self.batchable else "0",
               "BENTOML_HOME": str(work / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}
        return Launch([str(python), "-m", "bentoml", "serve", self.service, "--host", HOST,
                       "--port", str(port)], cwd=work / "apps", env=env)

    def parse(self, payload: Any) -> Answer:
        return _answer(payload)


class MLServer(Peer):
    """mlserver-sklearn behind the V2 inference protocol. It answers `predict` only: asking for
    `predict_proba` as well would call the model twice per request."""

    venv = "mlserver"

    def __init__(self, parallel_workers: int | None = None) -> None:
        self.parallel_workers = parallel_workers
        self.name = "mlserver" if parallel_workers is None else f"mlserver-pw{parallel_workers}"
        how = ("default parallel_workers (1: inference in a worker process)" if parallel_workers is None
               else f"parallel_workers: {parallel_workers}" + (" (inference in the HTTP process)"
                                                               if parallel_workers == 0 else ""))
        self.config = (f"mlserver start, mlserver_sklearn.SKLearnModel, {how}; V2 JSON, content_type pd "
                       "(one input per feature), label only; debug off (no access log)")

    def launch(self, python: Path, model: Model, port: int, work: Path) -> Launch:
        repo = work / f"{self.name}-{model.key}"
        (repo / model.key).mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {"host": HOST, "http_port": port, "grpc_port": free_port(),
                                    "metrics_port": free_port(), "debug": False}
        if self.parallel_workers is not None:
            settings["parallel_workers"] = self.parallel_workers
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        model_settings = {"name": model.key, "implementation": "mlserver_sklearn.SKLearnModel",
                          "parameters": {"uri": str(model.artifact), "version": "v1"}}
        (repo / model.key / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        return Launch([str(python.parent / "mlserver"), "start", str(repo)], cwd=repo)

    def path(self, model: Model) -> str:
        return f"/v2/models/{model.key}/infer"

    def body(self, model: Model, batch: list[list[float]]) -> bytes:
        columns = list(zip(*batch, strict=True))
        inputs = [{"name": name, "shape": [len(batch)], "datatype": "FP64", "data": list(col)}
                  for name, col in zip(model.features, columns, strict=True)]
        return _dumps({"parameters": {"content_type": "pd"}, "inputs": inputs})

    def parse(self, payload: Any) -> Answer:
        (output,) = [o for o in payload["outputs"] if o["name"] == "predict"]
        return Answer([str(v) for v in output["data"]], None)


class Reference(Protocol):
    """The models loaded in the bench's own process: expected answers and what the framework does without HTTP."""

    def expected(self, key: str, batch: list[Any]) -> Answer: ...

    def ceilings(self, seconds: float, windows: int = 1, model: str | None = None) -> dict[str, float]:
        """Rows/s of the model's own call per point key (of `model`, or all), on this core."""
        ...

    def latency_ms(self, seconds: float) -> dict[str, float]:
        """Median ms of the model's own call on one instance, per model key, on this core."""
        ...


@dataclass(frozen=True)
class Suite:
    name: str
    points: list[Point]
    peers: dict[str, Peer]
    default: list[str]
    ceiling: str  # what the in-process row of the table measures
    # train the models of these keys into a temp dir; the reference loaded in this process
    prepare: Callable[[Path, list[str]], tuple[dict[str, Model], Reference]]


ALL_PEERS: dict[str, Peer] = {p.name: p for p in (
    Mlship(), Mlship(native=True), Flask(threads=4), Flask(), FastAPI(), BentoML(), BentoML(batchable=True), MLServer(),
    MLServer(parallel_workers=0),
)}
DEFAULT_PEERS = ["mlship", "mlship-native", "flask", "fastapi", "bentoml", "bentoml-batch", "mlserver", "mlserver-pw0"]


# -- process tree ----------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], session [3])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


class ServerProcess:
    """A peer server started in its own session, pinned to one CPU, logging to a file.

    Its processes are the root, its descendants and anything else in its session (workers a supervisor
    started and then lost track of): CPU time and PSS are summed over all of them, and stop() ends all.
    """

    def __init__(self, launch: Launch, log_path: Path, cpu: int | None) -> None:
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in ("MLSHIP_API_KEYS", "PORT", "PYTHONPATH")}
        env.update(launch.env)
        preexec: Callable[[], None] | None = None
        if cpu is not None:
            def preexec() -> None:
                os.sched_setaffinity(0, {cpu})
        with log_path.open("wb") as log:
            self.started = time.perf_counter()
            # own session: a Ctrl-C in the terminal reaches only the bench, which then stops the server
            self.proc = subprocess.Popen(launch.cmd, cwd=launch.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=preexec, start_new_session=True)
        self.pid = self.proc.pid

    def members(self) -> list[int]:
        children: dict[int, list[int]] = {}
        session: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            fields = _stat(int(entry.name))
            if fields is None or fields[0] in ("Z", "X"):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            if int(fields[3]) == self.pid:
                session.add(int(entry.name))
        found = {self.pid} if _alive(self.pid) else set()
        todo = [self.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return sorted(found | session)

    def cpu_seconds(self) -> float | None:
        """user+system CPU seconds of every process of the server (all threads)."""
        values = [proc_cpu_seconds(pid) for pid in self.members()]
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    def pss_mb(self) -> float | None:
        """Proportional set size of every process of the server, summed, in MB (10^6 bytes)."""
        values = [memory_mb(pid) for pid in self.members()]
        known = [v["pss_mb"] for v in values if v is not None]
        return sum(known) if known else None

    def exited(self) -> int | None:
        return self.proc.poll()

    def failure(self, what: str) -> RuntimeError:
        """`what`, the last line of the server's log (usually the error) and then its tail."""
        tail = self.log_tail()
        last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "empty log")
        return RuntimeError(f"{what} (log: {last[:200]})\n{tail}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def first_answer(self, port: int, path: str, body: bytes, timeout: float) -> tuple[float, int, bytes]:
        """Poll with a prediction request until one is answered with 200: (seconds since start, status, body)."""
        deadline = self.started + timeout
        last = "no answer"
        while True:
            if self.exited() is not None:
                raise self.failure(f"exited with {self.proc.returncode} before answering")
            if time.perf_counter() > deadline:
                raise self.failure(f"no 200 prediction {timeout:g} s after the start (last: {last})")
            try:
                status, payload = http_post(port, body, timeout=5.0, path=path)
            except OSError as exc:
                last = type(exc).__name__
            else:
                if status == 200:
                    return time.perf_counter() - self.started, status, payload
                last = f"HTTP {status} {payload[:120]!r}"
            time.sleep(0.02)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the root and `grace` seconds to exit, then SIGKILL to whatever of the server is left."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace)
            deadline = time.perf_counter() + min(grace, 3.0)  # its workers may still be exiting
            while time.perf_counter() < deadline and set(self.members()) - {self.pid}:
                time.sleep(0.05)
        finally:
            for pid in set(self.members()) - {self.pid}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
