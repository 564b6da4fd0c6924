"""Trust and recovery on the real Docker engine: content tags, the gate running with the target's environment
(API keys), labels on every container, and deploys killed at each step and run again.

Every service gets a unique name and a free port; containers and the images tagged with the service's name are
removed afterwards, pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import mlship
from conftest import TEST_BASE_IMAGE, copy_project, free_port
from mlship import pipeline
from mlship.errors import GateError, PreflightError
from mlship.events import Events

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
SERVICE = "dev.mlship.service"


def service_containers(engine: Any, name: str) -> list[Any]:
    from docker.errors import NotFound

    for attempt in range(3):  # a container the engine is still removing (for a killed deploy) may vanish
        try:
            return list(engine.containers.list(all=True, filters={"label": f"{SERVICE}={name}"}))
        except NotFound:
            if attempt == 2:
                raise
    return []


@pytest.fixture
def names(docker_engine: Any) -> Iterator[list[str]]:
    """Service names a test deploys: their containers and images are removed afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        for container in service_containers(docker_engine, name):
            container.remove(force=True)
        for image in docker_engine.images.list(name=name):
            for tag in image.tags:
                if tag.startswith(f"{name}:"):
                    docker_engine.images.remove(tag, force=True)


def project(iris_image: tuple[Path, str], tmp_path: Path, names: list[str], **changes: Any) -> Path:
    name = f"rc-{uuid.uuid4().hex[:8]}"
    names.append(name)
    targets = changes.pop("targets", {"local": {"port": free_port()}})
    return copy_project(iris_image[0], tmp_path / name, name=name, targets=targets, **changes).root


def edit(folder: Path, **changes: Any) -> None:
    path = folder / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def content_tag(name: str, version: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}:{re.escape(version)}-[0-9a-f]{{12}}$")


# --- 2. immutable image identity ------------------------------------------------------------------
def test_gate_failure_moves_no_tag_and_removes_the_candidate(iris_image: tuple[Path, str], tmp_path: Path,
                                                             base_image_env: str, names: list[str],
                                                             docker_engine: Any) -> None:
    folder = project(iris_image, tmp_path, names, version="rc-v1")
    name = names[0]
    first = mlship.deploy(folder, target="local")
    assert first.image is not None and content_tag(name, "rc-v1").match(first.image), first.image
    served_id = docker_engine.images.get(first.image).id
    assert docker_engine.images.get(f"{name}:rc-v1").id == served_id  # the human tag, for test/push

    # the same artifact and version, a contract change that fails only inside the container
    edit(folder, examples=[{"input": IRIS_ROW, "output": {"label": "virginica"}}])
    events: list[Any] = []
    with pytest.raises(GateError):
        mlship.deploy(folder, target="local", events=Events(events.append))
    candidate = next(e.message.split("content tag ")[1] for e in events if "content tag " in e.message)
    assert candidate != first.image and content_tag(name, "rc-v1").match(candidate)
    assert not docker_engine.images.list(name=candidate)  # removed: nothing used it
    assert docker_engine.images.get(first.image).id == served_id  # no tag a deployment uses moved
    assert docker_engine.images.get(f"{name}:rc-v1").id == served_id
    status = mlship.status(folder, target="local")
    assert status.image == first.image and status.history == [first.image] and status.ready
    gates = [c for c in service_containers(docker_engine, name) if c.labels.get("dev.mlship.role") != "service"]
    assert gates == []
    assert len(mlship.destroy(folder, target="local").removed) == 1


# --- 3. the gate runs what will run ---------------------------------------------------------------
def test_api_key_contract_deploys_through_the_gate_without_leaking_the_key(
        iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str, names: list[str], docker_engine: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLSHIP_API_KEYS", f"{secret},other-{uuid.uuid4().hex[:6]}")
    port = free_port()
    folder = project(iris_image, tmp_path, names, serve={"auth": "api_key"},
                     targets={"local": {"port": port, "env": {"RC_PLAIN": "yes"}}})
    name = names[0]
    seen: list[Any] = []
    run_labels: list[dict[str, str]] = []
    envs: list[dict[str, str]] = []
    real_run = docker_engine.containers.__class__.run

    def spy(self: Any, image: str, *args: Any, **kwargs: Any) -> Any:
        run_labels.append(dict(kwargs.get("labels") or {}))
        envs.append(dict(kwargs.get("environment") or {}))
        return real_run(self, image, *args, **kwargs)

    monkeypatch.setattr(docker_engine.containers.__class__, "run", spy)
    report = mlship.deploy(folder, target="local", events=Events(seen.append))
    assert report.gate is not None and report.gate.ok and len(report.gate.examples) >= 1
    # the gate container got the target's environment and the deploy's labels
    assert envs and envs[0]["RC_PLAIN"] == "yes" and secret in envs[0]["MLSHIP_API_KEYS"]
    assert run_labels[0]["dev.mlship.service"] == name and run_labels[0]["dev.mlship.role"] == "test"
    assert re.fullmatch(r"[0-9a-f]{12}", run_labels[0]["dev.mlship.deploy"])
    assert run_labels[0]["dev.mlship.owner"].startswith(f"{os.getpid()}@")
    serving = docker_engine.containers.get(f"mlship-{name}")
    assert serving.labels["dev.mlship.owner"].startswith(f"{os.getpid()}@") and serving.labels["dev.mlship.deploy"]
    with httpx.Client(timeout=10) as client:
        assert client.post(f"http://127.0.0.1:{port}/predict", json=IRIS_ROW).status_code == 401
        answer = client.post(f"http://127.0.0.1:{port}/predict", json=IRIS_ROW,
                             headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 200, answer.text
    # the key is in no image, label, layer, report, event or log
    assert report.image is not None
    image = docker_engine.images.get(report.image)
    history = json.dumps(docker_engine.api.history(image.id))
    places = {"Config.Env": json.dumps(image.attrs["Config"].get("Env")), "labels": json.dumps(image.labels),
              "history": history, "report": report.model_dump_json(),
              "events": "\n".join(e.message for e in seen), "build.log": (folder / ".mlship" / "build.log").read_text(),
              "service labels": json.dumps(serving.labels), "logs": mlship.logs(folder, target="local")}
    for where, text in places.items():
        assert secret not in text, where
    assert len(mlship.destroy(folder, target="local").removed) == 1


def test_api_key_contract_without_keys_fails_in_the_preflight(iris_image: tuple[Path, str], tmp_path: Path,
                                                     base_image_env: str, names: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without keys in the shell an api_key contract fails in the preflight, before anything is built."""
    monkeypatch.delenv("MLSHIP_API_KEYS", raising=False)
    folder = project(iris_image, tmp_path, names, serve={"auth": "api_key"})
    with pytest.raises(PreflightError) as info:
        mlship.deploy(folder, target="local")
    assert any(c.name == "api keys" and not c.ok for c in info.value.report.checks)


# --- 4. local target convergence: kill a deploy at each step, run it again -------------------------
@dataclass
class Interrupted:
    lines: list[str]  # stderr, line by line
    returncode: int
    stdout: str


When = str | Callable[[], bool]  # a stderr line containing this, or a condition polled every 50 ms


def deploy_signalled_at(folder: Path, when: When, sig: int = signal.SIGKILL, *args: str) -> Interrupted:
    """`python -m mlship deploy` in a subprocess, sent ``sig`` once ``when`` holds; then read to its end (what it
    prints while it exits). At most 300 s."""
    env = {**os.environ, "MLSHIP_BASE_IMAGE": TEST_BASE_IMAGE}
    lines: list[str] = []
    sent = threading.Event()
    with subprocess.Popen([sys.executable, "-m", "mlship", "deploy", "--target", "local", "-f", str(folder), *args],
                          stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        stderr = proc.stderr

        def read() -> None:
            for line in stderr:
                lines.append(line.rstrip("\n"))
                if isinstance(when, str) and when in line and not sent.is_set():
                    sent.set()
                    proc.send_signal(sig)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 300
            while not isinstance(when, str) and not sent.is_set() and proc.poll() is None \
                    and time.monotonic() < deadline:
                if when():
                    sent.set()
                    proc.send_signal(sig)
                time.sleep(0.05)
            stdout = proc.stdout.read()
            proc.wait(timeout=300)
        finally:  # also when the condition raised: no deploy left running, no reader on a closed pipe
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
            reader.join(timeout=30)
    assert sent.is_set(), f"never saw {when!r}:\n" + "\n".join(lines)
    return Interrupted(lines, proc.returncode, stdout)


def interrupt_points(engine: Any, name: str) -> list[tuple[str, When]]:
    """Where the interrupt matrix stops a deploy: after the build, as the gate starts and while it runs, as the
    candidate starts and while it runs, at the stop of the old container, at the final start."""
    def running(role: str) -> Callable[[], bool]:
        # sparse: one listing, no inspect of a container the deploy removes meanwhile
        return lambda: any((c.attrs.get("Labels") or {}).get("dev.mlship.role") == role
                           and c.attrs.get("State") == "running"
                           for c in engine.containers.list(all=True, sparse=True,
                                                           filters={"label": f"{SERVICE}={name}"}))

    return [("build done", "[build] done"), ("gate starts", "[test] "), ("gate runs", running("test")),
            ("candidate starts", "starting candidate"), ("candidate runs", running("candidate")),
            ("stop", f"stopping mlship-{name} "), ("final start", f"starting mlship-{name} from")]


def deploy_killed_at(folder: Path, when: When) -> list[str]:
    """`python -m mlship deploy` in a subprocess, SIGKILLed once ``when`` holds."""
    run = deploy_signalled_at(folder, when)
    assert run.returncode == -signal.SIGKILL, "\n".join(run.lines)
    return run.lines


def orphans(engine: Any, name: str) -> list[str]:
    """The service's containers besides one running `mlship-<name>` (gate, candidate, -previous, stopped ones)."""
    return [c.name for c in service_containers(engine, name)
            if (c.name, c.status, c.labels.get("dev.mlship.role")) != (f"mlship-{name}", "running", "service")]


def assert_converged(engine: Any, name: str, history: list[str]) -> None:
    found = service_containers(engine, name)
    assert [(c.name, c.status, c.labels.get("dev.mlship.role")) for c in found] == \
        [(f"mlship-{name}", "running", "service")], [c.name for c in found]
    assert found[0].labels.get("dev.mlship.image") == history[0]


@pytest.mark.timeout(900)  # seven deploys killed and seven re-runs
def test_deploy_killed_at_each_step_converges_on_rerun(iris_image: tuple[Path, str], tmp_path: Path,
                                                       base_image_env: str, names: list[str],
                                                       docker_engine: Any) -> None:
    folder = project(iris_image, tmp_path, names, version="rc-v1")
    name = names[0]
    v1 = mlship.deploy(folder, target="local").image
    edit(folder, version="rc-v2")
    v2 = mlship.build(folder).image  # build v2 once (cached after)
    assert v1 is not None and v2 != v1
    debris: dict[str, list[str]] = {}
    for step, when in interrupt_points(docker_engine, name):
        lines = deploy_killed_at(folder, when)
        debris[step] = orphans(docker_engine, name)  # what the kill left for the re-run to clear
        report = mlship.deploy(folder, target="local")  # the re-run
        assert orphans(docker_engine, name) == [], (step, lines[-2:])
        # the same content tag, unless mlship's own source changed meanwhile (its wheel is a build input)
        assert report.image is not None and content_tag(name, "rc-v2").match(report.image), (step, lines[-2:])
        v2 = report.image
        assert_converged(docker_engine, name, [v2, v1])
        status = mlship.status(folder, target="local")
        assert status.history == [v2, v1] and status.ready, (step, status)
        with httpx.Client(timeout=10) as client:
            assert client.post(f"{report.url}/predict", json=IRIS_ROW).status_code == 200
        back = mlship.rollback(folder, target="local")  # v1 serves again, for the next step
        assert back.image == v1 and mlship.status(folder, target="local").history == [v1, v2]
    print(f"SIGKILL matrix: left by the kills {debris}; orphans after the re-runs 0")
    assert debris["gate runs"] and debris["candidate runs"], debris  # the matrix did catch them running
    removed = mlship.destroy(folder, target="local").removed
    assert len(removed) == 1 and service_containers(docker_engine, name) == []


def test_leftovers_of_a_dead_deploy_are_cleared_and_a_live_one_blocks(iris_image: tuple[Path, str],
                                                                      tmp_path: Path, base_image_env: str,
                                                                      names: list[str],
                                                                      docker_engine: Any) -> None:
    """A candidate whose owner PID is gone is stale at once; one whose owner lives blocks the next deploy."""
    import socket

    folder = project(iris_image, tmp_path, names)
    name = names[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for owner, role in ((f"{dead.pid}@{host}", "candidate"), (f"{os.getpid()}@{host}", "test")):
        docker_engine.containers.run(
            iris_image[1], detach=True, name=f"mlship-{name}-{role}-x",
            labels={SERVICE: name, "dev.mlship.target": "local", "dev.mlship.role": role,
                    "dev.mlship.deploy": "0123456789ab", "dev.mlship.owner": owner})
        checks = pipeline.preflight(folder, target="local").checks
        busy = [c for c in checks if c.name == "no other deploy"]
        assert bool(busy) == (role == "test"), (role, checks)
    # the live owner's gate blocks; once it is gone the deploy clears both and converges
    docker_engine.containers.get(f"mlship-{name}-test-x").remove(force=True)
    report = mlship.deploy(folder, target="local")
    assert_converged(docker_engine, name, [str(report.image)])
    assert len(mlship.destroy(folder, target="local").removed) == 1
    assert service_containers(docker_engine, name) == []
