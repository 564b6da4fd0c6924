"""Remote artifacts end to end on the real Docker engine: `mlship init` on an s3://, a gs:// and an https:// URI,
deploy to the local target, predict, a new object version, deploy again (a model-only rebuild), status naming the
model each image serves, and rollback returning to the old code+model pair; preflight failing before any build."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from conftest import IRIS, TEST_BASE_IMAGE, free_port
from emulators import storage_fixtures
from emulators.storage_fixtures import S3, Https, iris_variant, no_aws_credentials, repin, sha256
from mlship import pipeline
from mlship.artifacts import cache
from mlship.cli import app
from mlship.errors import PreflightError
from mlship.init import init_project

artifact_cache = storage_fixtures.artifact_cache
moto_server, s3 = storage_fixtures.moto_server, storage_fixtures.s3
gcs_server, gcs = storage_fixtures.gcs_server, storage_fixtures.gcs
https_server, https = storage_fixtures.https_server, storage_fixtures.https
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def service(docker_engine: Any, tmp_path: Path, base_image_env: str) -> Iterator[Path]:
    """A project folder for a uniquely named service; its containers are removed afterwards, pass or fail."""
    name = f"art-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(IRIS / "rows.csv", folder / "rows.csv")
    yield folder
    for container in docker_engine.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}):
        container.remove(force=True)


def init_service(uri: str, folder: Path) -> None:
    init_project(uri, directory=folder, sample=folder / "rows.csv", name=folder.name)
    with (folder / "mlship.yaml").open("a") as fh:
        fh.write(yaml.safe_dump({"targets": {"local": {"port": free_port()}}}))


def predict(url: str) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=IRIS_ROW, timeout=10)


def round_trip(folder: Path, uri: str, publish: Any, docker_engine: Any) -> dict[str, Any]:
    """init -> deploy -> predict -> a new object version -> deploy -> status -> rollback; what it measured."""
    v1 = publish(iris_variant(folder / "v1" / "model.joblib", c=1.0))
    init_service(uri, folder)
    first = pipeline.deploy(folder, "local", base_image=TEST_BASE_IMAGE)
    assert first.url and predict(first.url).json()["label"] == "setosa"
    sha1 = sha256((folder / "v1" / "model.joblib").read_bytes())
    status = pipeline.status(folder, "local")
    assert status.serving is not None and status.serving.startswith(f"{uri} ({v1}, sha256 {sha1[:12]}")

    data2 = iris_variant(folder / "v2" / "model.joblib", c=0.05)
    v2 = publish(data2)
    repin(folder, sha256(data2))
    before = cache.downloaded_bytes[0]
    started = time.perf_counter()
    second = pipeline.deploy(folder, "local", base_image=TEST_BASE_IMAGE)
    seconds = time.perf_counter() - started
    assert cache.downloaded_bytes[0] - before == len(data2)  # the new version, once
    assert second.changed and second.previous == first.image and second.version == sha256(data2)[:12]
    status = pipeline.status(folder, "local")
    assert status.serving is not None and f"({v2}, sha256 {sha256(data2)[:12]}" in status.serving
    body = httpx.get(f"{second.url}/metadata", timeout=10).json()["artifact"]
    assert body["uri"] == uri and body["version"] == v2 and body["sha256"] == sha256(data2)
    labels = docker_engine.images.get(second.image).labels
    assert body["contract_sha256"] == labels["dev.mlship.contract-sha256"]

    back = pipeline.rollback(folder, "local")
    assert back.image == first.image and back.serving is not None
    assert back.serving.startswith(f"{uri} ({v1}, sha256 {sha1[:12]}")  # the old code+model pair
    assert predict(back.url or "").json()["label"] == "setosa"

    shown = CliRunner().invoke(app, ["status", "--file", str(folder)])
    assert shown.exit_code == 0 and f"serving {uri} ({v1}, sha256 {sha1[:12]}" in shown.output, shown.output
    listed = CliRunner().invoke(app, ["models", "--file", str(folder)])
    assert listed.exit_code == 0 and f"local: serving {uri} ({v1}" in listed.output, listed.output

    before = cache.downloaded_bytes[0]  # a rebuild with the pin in the contract: zero bytes downloaded
    pipeline.build(folder, base_image=TEST_BASE_IMAGE)
    assert cache.downloaded_bytes[0] == before
    pipeline.destroy(folder, "local")
    return {"deploy_s": seconds}


def test_s3_init_deploy_new_version_rollback(s3: S3, service: Path, docker_engine: Any) -> None:
    measured = round_trip(service, s3.uri("iris/model.joblib"), lambda data: s3.put("iris/model.joblib", data),
                          docker_engine)
    print(f"model-only redeploy (build + gate + deploy): {measured['deploy_s']:.1f}s")


def test_gcs_init_deploy_new_version_rollback(gcs: Any, service: Path, docker_engine: Any) -> None:
    def publish(data: bytes) -> str:
        blob = gcs.blob("iris/model.joblib")
        blob.upload_from_string(data)
        blob.reload()
        return str(blob.generation)

    round_trip(service, "gs://models/iris/model.joblib", publish, docker_engine)


def test_https_init_deploy_new_version_rollback(https: Https, service: Path, docker_engine: Any) -> None:
    def publish(data: bytes) -> str:  # a new file at the same URL; the server's ETag is the version mlship records
        https.files.content["/iris/model.joblib"] = data
        return sha256(data)[:16]

    round_trip(service, f"{https.url}/iris/model.joblib", publish, docker_engine)


def test_missing_credentials_fail_in_preflight_before_any_build(s3: S3, service: Path, docker_engine: Any,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                artifact_cache: Path) -> None:
    s3.put("iris.joblib", iris_variant(service / "m" / "model.joblib"))
    init_service(s3.uri("iris.joblib"), service)
    shutil.rmtree(artifact_cache)  # a machine that never fetched it
    from mlship.artifacts import resolve

    resolve._memo.clear()
    no_aws_credentials(monkeypatch)
    with pytest.raises(PreflightError) as err:
        pipeline.deploy(service, "local", base_image=TEST_BASE_IMAGE)
    assert "artifact: Cannot read s3://models/iris.joblib: no AWS credentials found" in err.value.message
    assert "aws configure" in (err.value.fix or "")
    assert docker_engine.images.list(name=service.name) == []  # nothing was built
    assert not artifact_cache.exists() or not any(artifact_cache.rglob("*.joblib"))
