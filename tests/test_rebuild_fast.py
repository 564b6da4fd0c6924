"""A model-only rebuild of a tensor model without importing its framework in the build (issue 19): the project's
conversion worker (mlship.convert_worker / convert_server) converts and proves the changed model with real torch
and TensorFlow, the build re-checks it; the same record and answers as in-process, every change picked up, a
killed worker, a stale socket, a broken peer and a version mismatch falling back, CI and MLSHIP_CONVERT_WORKER=0
starting none, and no worker left behind by a test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import build_image
from mlship import compiled, convert_worker
from mlship.contract_io import artifact_sha256, load_project
from mlship.serving.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
TORCH_EXAMPLE = REPO / "examples" / "torch-digits"
ARTIFACT = {"pytorch": "model/digits.pt", "tensorflow": "model/digits.keras"}


def save_model(runtime: str, path: Path, seed: int) -> None:
    """A small digits-shaped network with weights from ``seed`` (another seed: the same architecture, new weights)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if runtime == "pytorch":
        import torch

        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                  torch.nn.Linear(16, 10)).eval().requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; the examples still ship TorchScript
            torch.jit.save(torch.jit.trace(net, torch.zeros(1, 8, 8)), str(path))
        return
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TensorFlow's own deprecation warnings
        keras.utils.set_random_seed(seed)
        layers = keras.layers
        model = keras.Sequential([keras.Input((8, 8)), layers.Flatten(), layers.Dense(16, activation="relu"),
                                  layers.Dense(10, activation="softmax")])
        model.save(path)


def make_project(directory: Path, runtime: str, seed: int = 1) -> Path:
    """The torch-digits contract (keras: with the tensorflow runtime) over a small network."""
    data = yaml.safe_load((TORCH_EXAMPLE / "mlship.yaml").read_text())
    data.pop("docs", None)
    data.update(name=f"rebuild-{runtime}", runtime=runtime, artifact=ARTIFACT[runtime])
    if runtime == "tensorflow":
        data["dependencies"]["requirements"] = []
    directory.mkdir(parents=True)
    (directory / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    save_model(runtime, directory / ARTIFACT[runtime], seed)
    return directory


def worker_pids(root: Path) -> list[int]:
    """Processes of a conversion worker for ``root`` (read from /proc: whoever started them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mlship.convert_server" in argv and os.fsencode(root.resolve()) in argv:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Workers on (not in CI mode); every project listed is stopped after the test, and none may be left."""
    monkeypatch.setenv("MLSHIP_CONVERT_WORKER", "1")
    monkeypatch.delenv("CI", raising=False)
    roots: list[Path] = []
    yield roots
    for root in roots:
        convert_worker.stop(root)
    for root in roots:
        deadline = time.monotonic() + 15
        while worker_pids(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_pids(root) == [], f"a conversion worker for {root} is still running"


def load(directory: Path, worker: bool = True) -> Predictor:
    predictor = Predictor(load_project(directory), worker=worker)
    predictor.load()
    assert predictor.compiled is not None, predictor.compile_note
    return predictor


def record(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((compiled.folder(directory) / compiled.RECORD_FILE).read_text())
    return data


def inputs(n: int = 32) -> Any:
    return np.random.default_rng(11).uniform(0, 16, (n, 8, 8)).astype(np.float32)


def native(directory: Path, x: Any) -> list[dict[str, Any]]:
    """What the framework itself answers (serve.compile: off, in this process)."""
    copy = directory.with_name(directory.name + "-native")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns(".mlship"))
    data = yaml.safe_load((copy / "mlship.yaml").read_text())
    data.setdefault("serve", {})["compile"] = "off"
    (copy / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    predictor = Predictor(load_project(copy))
    predictor.load()
    return predictor.predict(x)


def assert_same_answers(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    worst = max(abs(g["probabilities"][k] - w["probabilities"][k]) for g, w in zip(got, want, strict=True)
                for k in w["probabilities"])
    assert worst <= compiled.TOLERANCE, worst


BUILD_LOAD = ("import json, sys; from pathlib import Path; from mlship.contract_io import load_project; "
              "from mlship.serving.predictor import Predictor; p = Predictor(load_project(Path(sys.argv[1])), "
              "worker=True); p.load(); print(json.dumps([p.compiled is not None, p.worker_versions, "
              "sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules), p.input_path]))")


def build_load(directory: Path) -> list[Any]:
    """[compiled?, the versions the worker read, the frameworks imported, the build's note] of a fresh process
    loading as a build."""
    out = subprocess.run([sys.executable, "-c", BUILD_LOAD, str(directory)], capture_output=True, text=True,
                         timeout=300, check=True, env=os.environ)
    result: list[Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("runtime", ["pytorch", "tensorflow"])
def test_worker_converts_like_in_process(runtime: str, tmp_path: Path, workers: list[Path]) -> None:
    warm, cold = make_project(tmp_path / "warm", runtime), make_project(tmp_path / "cold", runtime)
    workers.append(warm)
    save_model(runtime, warm / ARTIFACT[runtime], 2)  # a model-only change after the first build
    shutil.copy(warm / ARTIFACT[runtime], cold / ARTIFACT[runtime])
    ok, versions, imported, note = build_load(warm)
    assert ok and imported == [], imported  # the build itself imported no framework
    assert note.endswith("; converted by this project's conversion worker"), note
    here = load(cold, worker=False)  # in-process: loads the original, converts and proves it here
    assert versions and versions == here.runtime.saved_versions(here.model)  # the image's pins
    assert len(worker_pids(warm)) == 1 and not (cold / convert_worker.FOLDER).exists()
    assert record(warm) == record(cold)  # the same proof: outputs, max difference, converter, versions
    x = inputs()
    assert load(warm).predict(x) == load(cold, worker=False).predict(x)


def test_every_model_change_is_converted_afresh(tmp_path: Path, workers: list[Path]) -> None:
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    pids = set()
    x = inputs()
    for seed in (2, 3, 4):
        save_model("pytorch", project / ARTIFACT["pytorch"], seed)
        predictor = load(project)
        assert predictor.worker_versions is not None  # the worker converted it
        assert record(project)["source_sha256"] == artifact_sha256(project / ARTIFACT["pytorch"])
        assert_same_answers(predictor.predict(x), native(project, x))
        pids.update(worker_pids(project))
    assert len(pids) == 1  # one warm worker served all three changes


def test_two_builds_at_once_share_one_worker(tmp_path: Path, workers: list[Path]) -> None:
    """Two builds of one project at the same time: one worker is started (the lock), both get its answer."""
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    save_model("pytorch", project / ARTIFACT["pytorch"], 2)
    results: list[dict[str, str] | None] = []
    threads = [threading.Thread(target=lambda: results.append(convert_worker.convert(load_project(project))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    # the second found the first's model current (as an unchanged model's build does: nothing re-read)
    assert len(results) == 2 and None not in results and any("torch" in r for r in results if r), results
    assert len(worker_pids(project)) == 1
    assert record(project)["source_sha256"] == artifact_sha256(project / ARTIFACT["pytorch"])


def test_killed_worker_and_stale_socket_fall_back(tmp_path: Path, workers: list[Path]) -> None:
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    save_model("pytorch", project / ARTIFACT["pytorch"], 2)
    load(project)
    [first] = worker_pids(project)
    os.kill(first, signal.SIGKILL)
    sock = convert_worker.socket_path(project, "pytorch")
    deadline = time.monotonic() + 10
    while first in worker_pids(project) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sock.exists()  # the killed worker's socket file stays: nothing listens on it
    save_model("pytorch", project / ARTIFACT["pytorch"], 3)
    x = inputs()
    predictor = load(project)
    assert predictor.worker_versions is not None  # a fresh worker converted it
    assert len(worker_pids(project)) == 1 and first not in worker_pids(project)
    assert_same_answers(predictor.predict(x), native(project, x))


def test_a_peer_that_hangs_up_means_in_process(tmp_path: Path, workers: list[Path]) -> None:
    """Something listening on the socket that closes every connection unanswered (a worker crashing mid-request):
    the build converts in-process, with the same result."""
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    sock = convert_worker.socket_path(project, "pytorch")
    convert_worker.private_folder(sock.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(4)
    stop = threading.Event()

    def hang_up() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        save_model("pytorch", project / ARTIFACT["pytorch"], 2)
        predictor = load(project)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert predictor.worker_versions is None  # converted here
    assert record(project)["source_sha256"] == artifact_sha256(project / ARTIFACT["pytorch"])
    assert worker_pids(project) == []


def test_a_version_mismatch_starts_a_fresh_worker(tmp_path: Path, workers: list[Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    monkeypatch.setenv("TORCH_MLSHIP_TEST_STAMP", "a")  # an environment variable torch reads is in the stamp
    save_model("pytorch", project / ARTIFACT["pytorch"], 2)
    load(project)
    [first] = worker_pids(project)
    monkeypatch.setenv("TORCH_MLSHIP_TEST_STAMP", "b")
    save_model("pytorch", project / ARTIFACT["pytorch"], 3)
    predictor = load(project)
    assert predictor.worker_versions is not None
    [second] = worker_pids(project)
    assert second != first  # the old worker answered "mismatch" and exited
    x = inputs()
    assert_same_answers(predictor.predict(x), native(project, x))


@pytest.mark.parametrize("env", [{"CI": "true"}, {"MLSHIP_CONVERT_WORKER": "0"}])
def test_ci_and_the_switch_start_no_worker(env: dict[str, str], tmp_path: Path, workers: list[Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    save_model("pytorch", project / ARTIFACT["pytorch"], 2)
    predictor = load(project)
    assert predictor.worker_versions is None and not (project / convert_worker.FOLDER).exists()
    assert worker_pids(project) == []


def test_worker_exits_when_idle_or_its_project_goes(tmp_path: Path, workers: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    idle, gone = make_project(tmp_path / "idle", "pytorch"), make_project(tmp_path / "gone", "pytorch")
    workers += [idle, gone]
    save_model("pytorch", gone / ARTIFACT["pytorch"], 2)
    load(gone)
    assert len(worker_pids(gone)) == 1
    shutil.rmtree(gone / ".mlship")  # e.g. `rm -rf` of the project: its worker leaves within a second or two
    wait_until_no_worker(gone, 15)
    monkeypatch.setenv(convert_worker.IDLE_ENV, "2")
    save_model("pytorch", idle / ARTIFACT["pytorch"], 2)
    assert load(idle).worker_versions is not None
    wait_until_no_worker(idle, 30)


def wait_until_no_worker(root: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while worker_pids(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker_pids(root) == []


def test_worker_serves_only_its_user_and_project(tmp_path: Path, workers: list[Path]) -> None:
    project, other = make_project(tmp_path / "p", "pytorch"), make_project(tmp_path / "q", "pytorch")
    workers.append(project)
    save_model("pytorch", project / ARTIFACT["pytorch"], 2)
    load(project)
    sock = convert_worker.socket_path(project, "pytorch")
    conn, pid = convert_worker.connect(sock)
    with conn:  # another project's contract: refused, nothing converted
        convert_worker.send(conn, {"op": "convert", "contract": str((other / "mlship.yaml").resolve()),
                                   "stamp": convert_worker.stamp("pytorch")})
        reply = convert_worker.receive(conn, time.monotonic() + 60)
    assert reply["status"] == "refused" and not (other / ".mlship").exists(), reply
    assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct(sock.parent.stat().st_mode & 0o777) == "0o700"
    if os.getuid() == 0:  # a socket another user owns is never talked to
        os.chown(sock, 12345, 12345)
        with pytest.raises(convert_worker.WorkerGone, match="another user"):
            convert_worker.connect(sock)
        os.chown(sock, 0, 0)
    assert worker_pids(project) == [pid]


def test_the_image_serves_the_second_change(tmp_path: Path, workers: list[Path], docker_engine: Any) -> None:
    """Two model-only rebuilds through the worker: the second image answers as the framework does on the second
    model (no stale graph)."""
    project = make_project(tmp_path / "p", "pytorch")
    workers.append(project)
    build_image(load_project(project))
    x = inputs(8)
    for seed in (2, 3):
        save_model("pytorch", project / ARTIFACT["pytorch"], seed)
        tag = build_image(load_project(project))
    assert docker_engine.images.get(tag).labels["dev.mlship.model-sha256"] == artifact_sha256(
        project / ARTIFACT["pytorch"])
    code = ("import json, sys; import numpy as np; from pathlib import Path; from mlship.contract_io import "
            "load_project; from mlship.serving.predictor import Predictor; p = Predictor(load_project("
            "Path('/app/mlship.yaml'))); p.load(); print(json.dumps([p.compiled is not None, "
            "p.predict(np.asarray(json.loads(sys.argv[1]), dtype=np.float32))]))")
    out = docker_engine.containers.run(tag, entrypoint=["/opt/venv/bin/python", "-c", code, json.dumps(x.tolist())],
                                       remove=True).decode()
    served, got = json.loads(out.strip().splitlines()[-1])
    assert served
    assert_same_answers(got, native(project, x))
