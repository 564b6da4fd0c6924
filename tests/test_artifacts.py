"""Remote artifacts without Docker: the fetchers against real servers on loopback (moto for S3,
gcp-storage-emulator for GCS, a TLS server with a test CA for HTTPS), the content-addressed cache, `mlship init`
on a URI, the contract's pin, and the preflight check that runs before any build."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import IRIS
from emulators import storage_fixtures
from emulators.storage_fixtures import S3, Https, no_aws_credentials, sha256
from mlship.artifacts import cache
from mlship.artifacts.https import HttpsFetcher
from mlship.artifacts.resolve import fetch_uri
from mlship.cli import app
from mlship.contract_io import load_project, parse_contract
from mlship.errors import ArtifactError, ContractError
from mlship.events import Events
from mlship.init import init_project
from mlship.preflight import run_core_checks

artifact_cache = storage_fixtures.artifact_cache
moto_server, s3 = storage_fixtures.moto_server, storage_fixtures.s3
gcs_server, gcs = storage_fixtures.gcs_server, storage_fixtures.gcs
https_server, https = storage_fixtures.https_server, storage_fixtures.https


def cached_blobs(root: Path) -> list[str]:
    """Every file under the cache's blobs/ and tmp/ (what a failed fetch must not leave)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and p.relative_to(root).parts[0] in ("blobs", "tmp"))


def init_remote(uri: str, directory: Path) -> dict[str, object]:
    shutil.copy(IRIS / "rows.csv", directory / "rows.csv")
    init_project(uri, directory=directory, sample=directory / "rows.csv")
    data: dict[str, object] = yaml.safe_load((directory / "mlship.yaml").read_text())
    return data


# --- S3 --------------------------------------------------------------------------------------------
def test_init_from_s3_writes_the_uri_and_its_pin_and_a_rebuild_downloads_nothing(
        s3: S3, iris_model: Path, tmp_path: Path, artifact_cache: Path) -> None:
    data = iris_model.read_bytes()
    version = s3.put("iris/model.joblib", data)
    project_dir = tmp_path / "svc"
    project_dir.mkdir()
    shutil.copy(IRIS / "rows.csv", project_dir / "rows.csv")
    shown = CliRunner().invoke(app, ["init", s3.uri("iris/model.joblib"), "--dir", str(project_dir),
                                     "--sample", str(project_dir / "rows.csv")])
    assert shown.exit_code == 0, shown.output
    contract = yaml.safe_load((project_dir / "mlship.yaml").read_text())
    assert contract["artifact"] == "s3://models/iris/model.joblib"
    assert contract["artifact_sha256"] == sha256(data)
    assert contract["name"] == "model" and contract["output"] == {"labels": ["setosa", "versicolor", "virginica"]}
    assert (artifact_cache / "blobs" / sha256(data) / "model.joblib").read_bytes() == data
    # a new process (no memo) with the pin: the cache answers, moto sees no S3 call at all
    from mlship.artifacts import resolve

    resolve._memo.clear()
    before, calls = cache.downloaded_bytes[0], len(s3.server.calls)
    project = load_project(project_dir)
    assert project.artifact_path.read_bytes() == data
    assert cache.downloaded_bytes[0] == before and len(s3.server.calls) == calls
    art = resolve.resolve_artifact(project)
    assert art.resolved is not None and art.resolved.version == version
    assert art.resolved.pinned == f"s3://models/iris/model.joblib?versionId={version}"


def test_s3_digest_mismatch_names_both_digests_and_keeps_nothing(s3: S3, tmp_path: Path,
                                                                artifact_cache: Path) -> None:
    s3.put("m.joblib", b"the pinned bytes")
    s3.put("m.joblib", b"someone overwrote the key")  # a new version under the same key
    with pytest.raises(ArtifactError) as err:
        fetch_uri(s3.uri("m.joblib"), tmp_path, pin=sha256(b"the pinned bytes"))
    text = err.value.render()
    assert sha256(b"the pinned bytes") in text and sha256(b"someone overwrote the key") in text
    assert "artifact_sha256" in (err.value.fix or "")
    assert cached_blobs(artifact_cache) == []


def test_s3_pinned_version_reads_the_old_bytes_after_an_overwrite(s3: S3, tmp_path: Path) -> None:
    old = s3.put("m.joblib", b"version one")
    s3.put("m.joblib", b"version two")
    art = fetch_uri(f"{s3.uri('m.joblib')}?versionId={old}", tmp_path, pin=sha256(b"version one"))
    assert art.path.read_bytes() == b"version one" and art.resolved is not None and art.resolved.version == old


def test_s3_missing_object_and_missing_credentials_are_clear(s3: S3, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArtifactError, match="no such object") as err:
        fetch_uri(s3.uri("nope.joblib"), tmp_path)
    assert "aws s3 ls s3://models/" in (err.value.fix or "")
    no_aws_credentials(monkeypatch)
    with pytest.raises(ArtifactError, match="no AWS credentials found") as err:
        fetch_uri(s3.uri("nope.joblib"), tmp_path)
    assert "aws configure" in (err.value.fix or "")


def test_preflight_fails_on_missing_credentials_before_any_build(
        s3: S3, iris_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifact_cache: Path) -> None:
    s3.put("iris.joblib", iris_model.read_bytes())
    project_dir = tmp_path / "svc"
    project_dir.mkdir()
    init_remote(s3.uri("iris.joblib"), project_dir)
    shutil.rmtree(artifact_cache)  # another machine: nothing cached
    from mlship.artifacts import resolve

    resolve._memo.clear()
    no_aws_credentials(monkeypatch)
    report = run_core_checks(load_project(project_dir), "local", base_image=None, events=Events())
    failed = {c.name: c for c in report.checks if not c.ok}
    assert "artifact" in failed, report.checks
    assert "no AWS credentials" in failed["artifact"].detail and "aws configure" in (failed["artifact"].fix or "")


# --- GCS -------------------------------------------------------------------------------------------
def test_init_from_gcs_pins_the_generation_and_checks_the_digest(gcs: object, iris_model: Path, tmp_path: Path,
                                                                 artifact_cache: Path) -> None:
    data = iris_model.read_bytes()
    blob = gcs.blob("iris/model.joblib")  # type: ignore[attr-defined]
    blob.upload_from_string(data)
    project_dir = tmp_path / "svc"
    project_dir.mkdir()
    contract = init_remote("gs://models/iris/model.joblib", project_dir)
    assert contract["artifact"] == "gs://models/iris/model.joblib"
    assert contract["artifact_sha256"] == sha256(data)
    from mlship.artifacts.resolve import resolve_artifact

    art = resolve_artifact(load_project(project_dir))
    assert art.resolved is not None and art.resolved.pinned.startswith("gs://models/iris/model.joblib#")
    gcs.blob("other.joblib").upload_from_string(b"not the pinned bytes")  # type: ignore[attr-defined]
    with pytest.raises(ArtifactError, match="sha256") as err:  # a pin the cache does not hold: fetched, checked
        fetch_uri("gs://models/other.joblib", tmp_path, pin=sha256(b"the pinned bytes"))
    assert sha256(b"not the pinned bytes") in err.value.message
    assert cached_blobs(artifact_cache) == [f"blobs/{sha256(data)}/model.joblib"]
    with pytest.raises(ArtifactError, match="no such object"):
        fetch_uri("gs://models/absent.joblib", tmp_path)


# --- HTTPS -----------------------------------------------------------------------------------------
def test_https_follows_redirects_over_verified_tls(https: Https, tmp_path: Path) -> None:
    https.files.content["/m.bin"] = b"x" * 5000
    art = fetch_uri(f"{https.url}/redirect/m.bin", tmp_path, pin=sha256(b"x" * 5000))
    assert art.path.read_bytes() == b"x" * 5000 and art.path.name == "m.bin"


def test_https_resumes_a_cut_download_with_range(https: Https, tmp_path: Path, artifact_cache: Path) -> None:
    data = bytes(range(256)) * 4000
    https.files.content["/big.bin"] = data
    https.files.cut = 2  # the first two GETs stop half-way
    art = fetch_uri(f"{https.url}/big.bin", tmp_path, pin=sha256(data))
    assert art.path.read_bytes() == data
    ranges = [r for m, _p, r in https.files.requests if m == "GET" and r]
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges]
    assert len(starts) == 2 and 0 < starts[0] < starts[1] < len(data), ranges  # resumed twice, where it stopped
    assert cached_blobs(artifact_cache) == [f"blobs/{sha256(data)}/big.bin"]


def test_https_cut_that_cannot_resume_leaves_nothing(https: Https, tmp_path: Path, artifact_cache: Path) -> None:
    https.files.content["/big.bin"] = b"y" * 100_000
    https.files.ranges, https.files.cut = False, 100  # every answer cut, and Range is ignored
    with pytest.raises(ArtifactError, match="connection was cut") as err:
        fetch_uri(f"{https.url}/big.bin", tmp_path, pin=sha256(b"y" * 100_000))
    assert "nothing was kept" in (err.value.why or "")
    assert cached_blobs(artifact_cache) == []


def test_https_untrusted_certificate_names_the_ca_bundle(https: Https, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    https.files.content["/m.bin"] = b"z"
    monkeypatch.delenv("MLSHIP_CA_BUNDLE")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ArtifactError, match="not trusted") as err:
        HttpsFetcher().resolve(f"{https.url}/m.bin", tmp_path)
    assert "MLSHIP_CA_BUNDLE" in (err.value.fix or "")


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="plain HTTP"):
        HttpsFetcher().resolve("http://models.example/m.joblib", tmp_path)


# --- the contract ------------------------------------------------------------------------------------
BASE = "name: m\nruntime: sklearn\ntask: regression\ninput: {features: {x: float}}\n"


def test_a_remote_artifact_needs_its_pin_and_fetch_at_start_a_remote_artifact() -> None:
    with pytest.raises(ContractError, match="artifact_sha256"):
        parse_contract(BASE + "artifact: s3://b/m.joblib\n")
    with pytest.raises(ContractError, match="artifact_sha256"):
        parse_contract(BASE + "artifact: s3://b/m.joblib\nartifact_sha256: 9f2c\n")
    assert parse_contract(BASE + f"artifact: gs://b/m.joblib\nartifact_sha256: {'a' * 64}\n").artifact_sha256
    with pytest.raises(ContractError, match="fetch_at_start"):
        parse_contract(BASE + "artifact: m.joblib\nserve: {fetch_at_start: true}\n")
