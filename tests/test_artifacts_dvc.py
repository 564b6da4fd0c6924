"""DVC-tracked artifacts: a real DVC repository (git + dvc CLI) with a local remote; the model's workspace copy
and DVC's cache are gone, so every read goes through DVC's API to the remote. init pins it, a server process
serves it, a corrupted remote object or a wrong pin keeps nothing, and preflight names the fix before any build."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import joblib
import pandas as pd
import pytest
import yaml
from sklearn.naive_bayes import GaussianNB

import mlship
from conftest import IRIS, free_port, running
from emulators import storage_fixtures
from emulators.dvc_fixtures import DvcRepo, dvc_repo
from emulators.storage_fixtures import cached_files, sha256
from mlship.artifacts import cache, fetcher_for
from mlship.artifacts.checks import artifact_checks
from mlship.artifacts.dvc import DvcFetcher
from mlship.contract_io import load_project
from mlship.errors import ArtifactError
from mlship.init import init_project
from mlship.reports import DeployReport

__all__ = ["dvc_repo"]
artifact_cache = storage_fixtures.artifact_cache
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def init_dvc(repo: DvcRepo) -> dict[str, object]:
    shutil.copy(IRIS / "rows.csv", repo.project / "rows.csv")
    init_project(repo.name, directory=repo.project, sample=repo.project / "rows.csv")
    data: dict[str, object] = yaml.safe_load((repo.project / "mlship.yaml").read_text())
    return data


def test_resolve_reads_the_dvc_file_only(dvc_repo: DvcRepo, artifact_cache: Path) -> None:
    fetcher = fetcher_for(dvc_repo.name, dvc_repo.project)
    assert isinstance(fetcher, DvcFetcher)
    resolved = fetcher.resolve(dvc_repo.name, dvc_repo.project)
    assert resolved.version == dvc_repo.md5 and resolved.size == len(dvc_repo.data)
    assert resolved.pinned == f"model.joblib@md5:{dvc_repo.md5}" and resolved.filename == "model.joblib"
    assert resolved.sha256 is None and cached_files(artifact_cache) == []  # metadata only: nothing downloaded
    assert not DvcFetcher.claims("rows.csv", dvc_repo.project) and not DvcFetcher.claims("s3://b/k", dvc_repo.project)


def test_absent_file_is_fetched_by_dvc_pinned_and_served(dvc_repo: DvcRepo, artifact_cache: Path,
                                                         iris_model: Path) -> None:
    contract = init_dvc(dvc_repo)
    assert contract["artifact"] == "model.joblib" and "artifact_sha256" not in contract  # the .dvc file pins it
    assert contract["output"] == {"labels": ["setosa", "versicolor", "virginica"]}
    assert not (dvc_repo.project / "model.joblib").exists()  # fetched into the cache, not the workspace
    assert cached_files(artifact_cache) == [f"blobs/{sha256(dvc_repo.data)}/model.joblib"]
    rows = pd.read_csv(IRIS / "rows.csv")[FEATURES]
    expected = [str(v) for v in joblib.load(iris_model).predict(rows)]
    with running(dvc_repo.project) as server:
        answer = httpx.post(f"{server.url}/predict", json={"instances": rows.to_dict("records")}, timeout=10)
        metadata = httpx.get(f"{server.url}/metadata", timeout=10).json()
    assert answer.status_code == 200, answer.text
    assert [p["label"] for p in answer.json()["predictions"]] == expected
    assert metadata["artifact"]["sha256"] == sha256(dvc_repo.data), metadata
    # a rebuild: the md5 the .dvc file records is in the cache, so resolve states its sha256 and nothing downloads
    fetcher, before = DvcFetcher(), cache.downloaded_bytes[0]
    again = fetcher.resolve(dvc_repo.name, dvc_repo.project)
    assert again.sha256 == sha256(dvc_repo.data)
    assert cache.fetch(fetcher, again, None).read_bytes() == dvc_repo.data
    assert cache.downloaded_bytes[0] == before


def test_remote_bytes_that_are_not_the_recorded_md5_keep_nothing(dvc_repo: DvcRepo, artifact_cache: Path) -> None:
    obj = dvc_repo.remote_object()
    obj.chmod(0o644)
    obj.write_bytes(dvc_repo.data[:-8] + b"tampered")
    fetcher = DvcFetcher()
    resolved = fetcher.resolve(dvc_repo.name, dvc_repo.project)
    with pytest.raises(ArtifactError) as err:
        cache.fetch(fetcher, resolved, None)
    assert f"records {dvc_repo.md5}" in err.value.message and "Nothing was kept" in err.value.message
    assert "dvc push" in (err.value.fix or "")
    assert cached_files(artifact_cache) == []


def test_a_wrong_sha256_pin_names_both_digests_and_keeps_nothing(dvc_repo: DvcRepo, artifact_cache: Path) -> None:
    fetcher = DvcFetcher()
    resolved = fetcher.resolve(dvc_repo.name, dvc_repo.project)
    with pytest.raises(ArtifactError) as err:
        cache.fetch(fetcher, resolved, "0" * 64)
    assert sha256(dvc_repo.data) in err.value.message and "0" * 64 in err.value.message
    assert cached_files(artifact_cache) == []


def test_preflight_names_dvc_push_when_the_remote_lacks_the_object(dvc_repo: DvcRepo, artifact_cache: Path,
                                                                  tmp_path: Path) -> None:
    init_dvc(dvc_repo)
    shutil.rmtree(artifact_cache)  # a fresh machine: nothing cached
    dvc_repo.remote_object().unlink()
    [check] = artifact_checks(load_project(dvc_repo.project))
    assert not check.ok and dvc_repo.md5 in check.detail and "does not hold" in check.detail
    assert check.fix is not None and "dvc push model.joblib" in check.fix
    with pytest.raises(ArtifactError) as err:  # the fetch itself says the same, not DVC's "no such path"
        fetcher = DvcFetcher()
        cache.fetch(fetcher, fetcher.resolve(dvc_repo.name, dvc_repo.project), None)
    assert "does not hold" in err.value.message and cached_files(artifact_cache) == []


def test_preflight_names_dvc_remote_add_without_a_remote(dvc_repo: DvcRepo, artifact_cache: Path) -> None:
    dvc_repo.dvc("remote", "remove", "storage")
    checks = DvcFetcher().checks(dvc_repo.name, dvc_repo.project)
    assert [c.ok for c in checks] == [False]
    assert "dvc remote add" in (checks[0].fix or ""), checks


def test_a_dvc_file_outside_a_dvc_repository_is_explained(tmp_path: Path, artifact_cache: Path) -> None:
    (tmp_path / "model.joblib.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  path: model.joblib\n")
    with pytest.raises(ArtifactError) as err:
        DvcFetcher().resolve("model.joblib", tmp_path)
    assert "not inside a DVC repository" in err.value.message and "dvc init" in (err.value.fix or "")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "model.joblib.dvc").write_text("outs: []\n")
    with pytest.raises(ArtifactError) as err:
        DvcFetcher().resolve("model.joblib", tmp_path)
    assert "exactly one output" in err.value.message and "dvc add model.joblib" in (err.value.fix or "")


def test_deploy_a_dvc_tracked_model_then_a_new_version_then_rollback(
        dvc_repo: DvcRepo, artifact_cache: Path, iris_model: Path, tmp_path: Path, base_image_env: str,
        docker_engine: Any) -> None:
    name = f"dvc-{uuid.uuid4().hex[:8]}"
    contract = init_dvc(dvc_repo)
    contract.update(name=name, targets={"local": {"port": free_port()}})
    (dvc_repo.project / "mlship.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    rows = pd.read_csv(IRIS / "rows.csv")[FEATURES]
    try:
        first = mlship.deploy(dvc_repo.project, target="local")
        assert first.url is not None
        assert served(first.url, rows) == [str(v) for v in joblib.load(iris_model).predict(rows)]
        labels = docker_engine.images.get(first.image).labels
        assert labels["dev.mlship.artifact.version"] == dvc_repo.md5, labels

        # a new model version: dvc add + push; the workspace copy gone again (a fresh clone of the new commit)
        newer = tmp_path / "newer.joblib"
        joblib.dump(GaussianNB().fit(rows, joblib.load(iris_model).predict(rows)), newer)
        new_md5 = add_version(dvc_repo, newer)
        done = subprocess.run([sys.executable, "-m", "mlship", "deploy", "-f", str(dvc_repo.project), "--json"],
                              capture_output=True, text=True, timeout=600, check=False)  # as a user runs it
        assert done.returncode == 0, done.stderr[-3000:]
        second = DeployReport.model_validate_json(done.stdout)
        assert second.changed and second.url is not None and second.previous == first.image
        assert docker_engine.images.get(second.image).labels["dev.mlship.artifact.version"] == new_md5
        assert served(second.url, rows) == [str(v) for v in joblib.load(newer).predict(rows)]

        back = mlship.rollback(dvc_repo.project, target="local")
        assert back.image == first.image and back.url is not None
        assert back.serving is not None and back.serving.startswith(f"model.joblib ({dvc_repo.md5}, sha256 ")
        assert served(back.url, rows) == [str(v) for v in joblib.load(iris_model).predict(rows)]
    finally:
        mlship.destroy(dvc_repo.project, target="local")
        for image in docker_engine.images.list(name=name):
            for tag in image.tags:
                docker_engine.images.remove(tag, force=True)


def add_version(repo: DvcRepo, model: Path) -> str:
    """``dvc add`` + ``dvc push`` a new model file; the workspace copy and DVC's cache removed; its md5."""
    shutil.copy(model, repo.project / repo.name)
    repo.dvc("add", "-q", f"svc/{repo.name}")
    repo.dvc("push", "-q")
    (repo.project / repo.name).unlink()
    shutil.rmtree(repo.root / ".dvc" / "cache", ignore_errors=True)
    md5: str = yaml.safe_load((repo.project / f"{repo.name}.dvc").read_text())["outs"][0]["md5"]
    return md5


def served(url: str, rows: pd.DataFrame) -> list[str]:
    answer = httpx.post(f"{url}/predict", json={"instances": rows.to_dict("records")}, timeout=10)
    assert answer.status_code == 200, answer.text
    return [p["label"] for p in answer.json()["predictions"]]
