"""``models:/`` artifacts against a real MLflow tracking server (``mlflow server``, SQLite store, proxied local
artifact store) holding the registered model ``iris``: versions 1 (logistic regression) and 2 (naive Bayes),
alias ``champion``. MLflow's own client resolves and downloads; nothing of mlship is mocked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import mlship
from conftest import IRIS, free_port, running
from emulators import storage_fixtures
from emulators.mlflow_fixtures import FEATURES, MlflowServer, register, set_alias
from emulators.storage_fixtures import cached_files
from mlship.artifacts import fetcher_for
from mlship.artifacts.checks import artifact_checks
from mlship.artifacts.mlflow import MlflowFetcher, model_file, parse
from mlship.artifacts.mlflow_registry import list_versions, moved_note, record_deployment
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.errors import ArtifactError
from mlship.init import init_project
from mlship.reports import DeployReport

artifact_cache = storage_fixtures.artifact_cache


class Registry:
    """The module's server and what each registered version predicts on rows.csv."""

    def __init__(self, server: MlflowServer, versions: dict[str, Any]) -> None:
        self.server, self.versions, self.url = server, versions, server.url


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("mlflow")
    with MlflowServer(folder) as server:
        yield Registry(server, register(server.url, ["logreg", "nb"], folder / "v12.json", alias="champion"))


@pytest.fixture
def mlflow_env(registry: Registry, monkeypatch: pytest.MonkeyPatch, artifact_cache: Path) -> Registry:
    """MLflow's client pointed at the module's server; ``champion`` back on version 1."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    set_alias(registry.url, "champion", "1")
    return registry


def init_models(uri: str, directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(IRIS / "rows.csv", directory / "rows.csv")
    init_project(uri, directory=directory, sample=directory / "rows.csv")
    data: dict[str, Any] = yaml.safe_load((directory / "mlship.yaml").read_text())
    return data


def rows() -> list[dict[str, float]]:
    records: list[dict[str, float]] = pd.read_csv(IRIS / "rows.csv")[FEATURES].to_dict("records")
    return records


def predictions(url: str) -> tuple[list[str], list[list[float]]]:
    answer = httpx.post(f"{url}/predict", json={"instances": rows()}, timeout=10)
    assert answer.status_code == 200, answer.text
    out = answer.json()["predictions"]
    return [p["label"] for p in out], [[p["probabilities"][c] for c in sorted(p["probabilities"])] for p in out]


def assert_serves(url: str, expected: dict[str, Any]) -> None:
    """The service predicts what the registered model itself predicted (labels equal, probabilities to 1e-6)."""
    labels, probabilities = predictions(url)
    assert labels == expected["labels"]
    order = sorted(range(len(expected["classes"])), key=lambda i: expected["classes"][i])
    for got, want in zip(probabilities, expected["probabilities"], strict=True):
        assert got == pytest.approx([want[i] for i in order], abs=1e-6)


# --- resolve -----------------------------------------------------------------------------------
def test_parse_accepts_versions_aliases_and_latest_and_explains_the_rest() -> None:
    assert parse("models:/iris/3").version == "3" and parse("models:/iris@champion").alias == "champion"
    assert parse("models:/iris/latest").alias == "latest" and parse("models:/team.iris/2").name == "team.iris"
    with pytest.raises(ArtifactError) as err:
        parse("models:/iris/Production")
    assert "deprecated" in (err.value.why or "") and "models:/iris@ALIAS" in (err.value.fix or "")
    with pytest.raises(ArtifactError) as err:
        parse("models:/iris")
    assert "models:/NAME/VERSION" in (err.value.fix or "")


def test_resolve_a_version_an_alias_and_latest(mlflow_env: Registry) -> None:
    fetcher = fetcher_for("models:/iris/2", Path("."))
    assert isinstance(fetcher, MlflowFetcher)
    two = fetcher.resolve("models:/iris/2", Path("."))
    assert (two.pinned, two.version, two.filename) == ("models:/iris/2", "2", "model.skops")
    assert two.size is not None and two.size > 1000 and two.sha256 is None
    champion = fetcher.resolve("models:/iris@champion", Path("."))
    assert (champion.uri, champion.pinned, champion.version) == ("models:/iris@champion", "models:/iris/1", "1")
    newest = max(mlflow_env.versions, key=int)
    assert fetcher.resolve("models:/iris/latest", Path(".")).pinned == f"models:/iris/{newest}"


def test_a_moved_alias_resolves_to_its_new_version_and_says_so(mlflow_env: Registry) -> None:
    fetcher = MlflowFetcher()
    before = fetcher.resolve("models:/iris@champion", Path("."))
    set_alias(mlflow_env.url, "champion", "2")
    after = fetcher.resolve("models:/iris@champion", Path("."))
    assert after.pinned == "models:/iris/2"
    note = moved_note(after, before.pinned)
    assert note is not None and "models:/iris@champion now resolves to version 2" in note and "had version 1" in note
    assert moved_note(after, after.pinned) is None and moved_note(before, None) is None


def test_fetch_writes_the_served_file_and_a_server_predicts_like_the_model(mlflow_env: Registry,
                                                                          artifact_cache: Path, tmp_path: Path,
                                                                          capfd: pytest.CaptureFixture[str]) -> None:
    contract = init_models("models:/iris/2", tmp_path / "svc")
    assert "Downloading artifacts" not in capfd.readouterr().err  # no tqdm bar amid mlship's progress
    assert contract["artifact"] == "models:/iris/2" and contract["output"]["labels"] == [
        "setosa", "versicolor", "virginica"]
    [blob] = cached_files(artifact_cache)
    assert blob.startswith("blobs/") and blob.endswith("/model.skops")
    assert contract["artifact_sha256"] == blob.split("/")[1]
    with running(tmp_path / "svc") as server:
        assert_serves(server.url, mlflow_env.versions["2"])


def test_the_file_served_is_the_one_the_flavor_names() -> None:
    sk = {"flavors": {"python_function": {}, "sklearn": {"pickled_model": "model.pkl",
                                                          "serialization_format": "cloudpickle"}}}
    assert model_file("u", sk, [("MLmodel", 1), ("model.pkl", 99)]) == ("model.pkl", 99)
    keras = {"flavors": {"keras": {"data": "data"}}}
    listing = [("MLmodel", 1), ("data/model.keras", 7), ("data/notes.txt", 3)]
    assert model_file("u", keras, listing) == ("data/model.keras", 7)
    torch = {"flavors": {"pytorch": {"model_data": "data"}}}
    with pytest.raises(ArtifactError) as err:
        model_file("models:/t/1", torch, [("data/a.pth", 1), ("data/b.pth", 1)])
    assert "not one file mlship reads" in err.value.message and "mlflow.sklearn.log_model" in (err.value.fix or "")
    with pytest.raises(ArtifactError) as err:
        model_file("models:/x/1", {"flavors": {"python_function": {}, "xgboost": {}}}, [("MLmodel", 1)])
    assert "python_function, xgboost" in err.value.message and "pyfunc" in (err.value.why or "")


# --- errors and preflight ------------------------------------------------------------------------
def test_a_missing_model_version_or_alias_names_what_the_registry_holds(mlflow_env: Registry) -> None:
    fetcher = MlflowFetcher()
    for uri, what in [("models:/iris/9", "no version 9"), ("models:/iris@nope", "no alias `nope`")]:
        with pytest.raises(ArtifactError) as err:
            fetcher.resolve(uri, Path("."))
        assert what in err.value.message and "holds versions 1, 2" in (err.value.why or "")  # (, 3 after e2e)
        assert "champion -> 1" in (err.value.why or "") and "mlship models" in (err.value.fix or "")
    with pytest.raises(ArtifactError) as err:
        fetcher.resolve("models:/nope/1", Path("."))
    assert "No registered model is named `nope`" in (err.value.why or "")


def test_preflight_fails_fast_naming_the_fix_before_any_build(mlflow_env: Registry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              artifact_cache: Path) -> None:
    init_models("models:/iris@champion", tmp_path / "svc")
    shutil.rmtree(artifact_cache)  # another machine: nothing cached, the registry must answer
    project = load_project(tmp_path / "svc")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    [check] = artifact_checks(project)
    assert not check.ok and "does not answer" in check.detail and "MLFLOW_TRACKING_URI" in (check.fix or "")
    assert time.monotonic() - started < 4.5  # inside preflight's deadline
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    [check] = artifact_checks(project)
    assert not check.ok and "export MLFLOW_TRACKING_URI=" in (check.fix or "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_env.url)
    (tmp_path / "svc" / "mlship.yaml").write_text(
        (tmp_path / "svc" / "mlship.yaml").read_text().replace("models:/iris@champion", "models:/iris@gone"))
    [check] = artifact_checks(load_project(tmp_path / "svc"))
    assert not check.ok and "no alias `gone`" in check.detail


# --- the registry round trip -----------------------------------------------------------------------
def test_record_deployment_tags_the_version_and_the_listing_shows_it(mlflow_env: Registry) -> None:
    resolved = MlflowFetcher().resolve("models:/iris@champion", Path("."))
    key = record_deployment(resolved, "local", "http://127.0.0.1:8080", "sha256:" + "a" * 64)
    assert key == "mlship.deploy.local"
    listing = {v.version: v for v in list_versions("models:/iris@champion")}
    assert sorted(listing)[:2] == ["1", "2"] and listing["1"].aliases == ["champion"]
    recorded = listing["1"].deployments["local"]
    assert recorded["url"] == "http://127.0.0.1:8080" and recorded["image_digest"] == "sha256:" + "a" * 64
    assert recorded["time"].endswith("Z") and "local" not in listing["2"].deployments
    assert listing["1"].status == "READY" and listing["1"].run_id


# --- end to end: an alias deployed, moved, deployed, rolled back ------------------------------------
def test_alias_deploy_move_redeploy_and_rollback_return_the_old_pair(
        mlflow_env: Registry, tmp_path: Path, base_image_env: str, docker_engine: Any, artifact_cache: Path) -> None:
    name = f"mlf-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    contract = init_models("models:/iris@champion", folder)
    assert "artifact_sha256" not in contract  # an alias follows the registry: each build resolves it
    contract.update(name=name, targets={"local": {"port": free_port()}})
    (folder / "mlship.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    try:
        first = mlship.deploy(folder, target="local")
        assert first.url is not None and first.digest is not None
        assert_serves(first.url, mlflow_env.versions["1"])
        assert list_versions("models:/iris")[-1].deployments["local"]["image_digest"] == first.digest

        three = register(mlflow_env.url, ["logreg-c01"], tmp_path / "v3.json")
        assert list(three) == ["3"]
        mlflow_env.versions.update(three)
        set_alias(mlflow_env.url, "champion", "3")
        # as a user runs it: a new process resolves the alias again
        done = subprocess.run([sys.executable, "-m", "mlship", "deploy", "-f", str(folder), "--json"],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        second = DeployReport.model_validate_json(done.stdout)
        assert "models:/iris@champion now resolves to version 3 (models:/iris/3); the last deploy had version 1" \
            in done.stderr, done.stderr[-3000:]
        assert second.changed and second.url is not None and second.previous == first.image
        assert_serves(second.url, three["3"])
        assert docker_engine.images.get(second.image).labels["dev.mlship.artifact.pinned"] == "models:/iris/3"
        assert list_versions("models:/iris")[0].deployments["local"]["image_digest"] == second.digest

        back = mlship.rollback(folder, target="local")
        assert back.image == first.image and back.url is not None
        assert back.serving is not None and back.serving.startswith("models:/iris@champion (1, sha256 "), back.serving
        assert_serves(back.url, mlflow_env.versions["1"])
        listing = CliRunner().invoke(app, ["models", "-f", str(folder), "-t", "local"])
        assert listing.exit_code == 0, listing.output
        assert "local: serving models:/iris@champion (1, sha256 " in listing.output, listing.output
        assert "iris version 3 @champion (READY); deployed on: local" in listing.output, listing.output
    finally:
        mlship.destroy(folder, target="local")
        for image in docker_engine.images.list(name=name):  # the CLI's build ran in a process of its own
            for tag in image.tags:
                docker_engine.images.remove(tag, force=True)
