"""serve.fetch_at_start: the server fetches the remote artifact when it starts, checks its digest, and only then
reports ready. A real server process (python -m mlship.serving, the image's start command) against the HTTPS
test server, and a built image run on the real engine that fetches from moto (S3) with the identity it is given."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import IRIS, Server, build_image, free_port
from emulators import storage_fixtures
from emulators.storage_fixtures import S3, Https, iris_variant, sha256
from mlship.contract_io import load_project
from mlship.init import init_project

artifact_cache = storage_fixtures.artifact_cache
moto_server, s3 = storage_fixtures.moto_server, storage_fixtures.s3
https_server, https = storage_fixtures.https_server, storage_fixtures.https
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def fetching_project(uri: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(IRIS / "rows.csv", folder / "rows.csv")
    init_project(uri, directory=folder, sample=folder / "rows.csv", name="fetcher")
    with (folder / "mlship.yaml").open("a") as fh:
        fh.write("serve:\n  fetch_at_start: true\n")
    return folder


def readiness(url: str, until: float) -> Iterator[tuple[int, dict[str, Any]]]:
    """/readyz answers until ``until`` (monotonic), every 50 ms."""
    while time.monotonic() < until:
        try:
            reply = httpx.get(f"{url}/readyz", timeout=2)
            yield reply.status_code, reply.json()
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def test_ready_only_after_the_fetched_artifact_is_checked(https: Https, iris_model: Path, tmp_path: Path) -> None:
    data = iris_model.read_bytes()
    https.files.content["/iris.joblib"] = data
    folder = fetching_project(f"{https.url}/iris.joblib", tmp_path / "svc")
    https.files.delay_s = 2.0  # the container's download takes 2 s
    https.files.requests.clear()
    server = Server(folder, env={"MLSHIP_CACHE_DIR": str(tmp_path / "start-cache")})  # a fresh machine
    try:
        server.wait_http()
        seen = []
        for status, body in readiness(server.url, time.monotonic() + 60):
            seen.append((status, body.get("status")))
            if status == 200:
                break
        assert (503, "loading") in seen and seen[-1][0] == 200, seen
        assert any(m == "GET" for m, _p, _r in https.files.requests)  # it did fetch, with nothing cached
        assert httpx.post(f"{server.url}/predict", json=IRIS_ROW, timeout=10).json()["label"] == "setosa"
        meta = httpx.get(f"{server.url}/metadata", timeout=10).json()["artifact"]
        assert meta["uri"] == f"{https.url}/iris.joblib" and meta["sha256"] == sha256(data)
        assert (tmp_path / "start-cache" / "blobs" / sha256(data) / "iris.joblib").read_bytes() == data
    finally:
        server.stop()


def test_a_changed_object_never_becomes_ready(https: Https, iris_model: Path, tmp_path: Path) -> None:
    https.files.content["/iris.joblib"] = iris_model.read_bytes()
    folder = fetching_project(f"{https.url}/iris.joblib", tmp_path / "svc")
    changed = iris_variant(tmp_path / "v2" / "model.joblib", c=0.05)
    https.files.content["/iris.joblib"] = changed  # replaced on the server after the pin was written
    server = Server(folder, env={"MLSHIP_CACHE_DIR": str(tmp_path / "start-cache")})
    try:
        server.wait_http()
        answers = list(readiness(server.url, time.monotonic() + 6))
        assert answers and all(status == 503 for status, _ in answers), answers
    except AssertionError as exc:  # the server may exit after a failed load: that is not ready either
        assert "exited" in str(exc) or "not 200" in str(exc), exc
    finally:
        log = server.stop()
    assert sha256(changed) in log and sha256(iris_model.read_bytes()) in log, log
    assert not any((tmp_path / "start-cache").rglob("*.joblib"))


@pytest.fixture
def container(docker_engine: Any) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for c in made:
        c.remove(force=True)


def test_image_fetches_from_s3_at_start(s3: S3, iris_model: Path, tmp_path: Path, base_image_env: str,
                                        docker_engine: Any, container: list[Any]) -> None:
    data = iris_model.read_bytes()
    version = s3.put("big/iris.joblib", data)
    project = load_project(fetching_project(s3.uri("big/iris.joblib"), tmp_path / "svc"))
    tag = build_image(project)
    labels = docker_engine.images.get(tag).labels
    assert labels["dev.mlship.artifact.version"] == version and labels["dev.mlship.artifact.sha256"] == sha256(data)
    port = free_port()
    env = storage_fixtures.aws_environment(s3.server.endpoint, "us-east-1", "/tmp")
    env.update(PORT=str(port), MLSHIP_HOST="127.0.0.1")  # the host's network: moto listens on loopback only
    started = time.monotonic()
    container.append(docker_engine.containers.run(tag, detach=True, network_mode="host", environment=env))
    url = f"http://127.0.0.1:{port}"
    ready = next((True for status, _ in readiness(url, started + 90) if status == 200), False)
    assert ready, container[0].logs().decode()[-3000:]
    assert httpx.post(f"{url}/predict", json=IRIS_ROW, timeout=10).json()["label"] == "setosa"
    code, out = container[0].exec_run(["ls", f"/tmp/mlship-cache/blobs/{sha256(data)}"])
    assert code == 0 and out.decode().split() == ["iris.joblib"], out  # fetched into the start cache ...
    code, out = container[0].exec_run(["find", "/app", "-name", "*.joblib"])
    assert code == 0 and out.decode().strip() == "", out  # ... and the image carries no model

    # the test gate (`mlship test`, and the gate before every deploy) runs the image without the platform's identity:
    # no credentials, and the engine's bridge network cannot reach a loopback server. It starts it on this machine's
    # checked copy, mounted read-only as the start cache, and passes.
    from mlship.gate import run_gate, start_cache

    report = run_gate(project, tag, timeout_s=60)
    assert report.ok, (report.problems, report.logs[-2000:])
    assert report.examples and all(e["ok"] for e in report.examples)
    with start_cache(project) as volumes:
        (mount,) = volumes.values()
        assert mount == {"bind": "/tmp/mlship-cache", "mode": "ro"}
    assert not Path(next(iter(volumes))).exists()  # the copy is gone afterwards


def test_local_target_serves_from_the_checked_copy_without_credentials(
        s3: S3, iris_model: Path, tmp_path: Path, base_image_env: str, docker_engine: Any) -> None:
    """`mlship deploy --target local` of a fetch_at_start model: the service's containers read this machine's checked
    copy from their start cache (a read-only mount); no AWS credentials enter them; destroy removes the copy."""
    import json

    from typer.testing import CliRunner

    from mlship.cli import app
    from mlship.targets.local_containers import start_cache_root

    data = iris_model.read_bytes()
    s3.put("local/iris.joblib", data)
    folder = fetching_project(s3.uri("local/iris.joblib"), tmp_path / "svc")
    with (folder / "mlship.yaml").open("a") as fh:
        fh.write(f"targets:\n  local:\n    port: {free_port()}\n")
    contract = str(folder / "mlship.yaml")
    root = start_cache_root("fetcher")
    try:
        result = CliRunner().invoke(app, ["deploy", "-f", contract, "--target", "local", "--json"])
        assert result.exit_code == 0, result.output
        url = json.loads(result.stdout)["url"]
        assert httpx.post(f"{url}/predict", json=IRIS_ROW, timeout=10).json()["label"] == "setosa"
        (service,) = docker_engine.containers.list(filters={"label": "dev.mlship.service=fetcher"})
        assert not [e for e in service.attrs["Config"]["Env"] if e.startswith("AWS_")]
        (mount,) = service.attrs["Mounts"]
        assert (mount["Source"], mount["Destination"], mount["RW"]) == (str(root), "/tmp/mlship-cache", False)
        assert (root / "blobs" / sha256(data) / "iris.joblib").read_bytes() == data
        result = CliRunner().invoke(app, ["destroy", "-f", contract, "--target", "local", "--json"])
        assert result.exit_code == 0, result.output
        assert not root.exists() and not docker_engine.containers.list(
            all=True, filters={"label": "dev.mlship.service=fetcher"})
    finally:
        for c in docker_engine.containers.list(all=True, filters={"label": "dev.mlship.service=fetcher"}):
            c.remove(force=True)
