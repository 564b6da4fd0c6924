"""Provenance on every cloud target's revisions (issue 18, scope 3), and a moved MLflow alias seen by a second
library call in the same process.

The pure part: ``artifacts.provenance.record``/``read`` round-trip an image's provenance within each platform's
limits (ECS tag characters and lengths). Then one deploy story per target against its emulator (Cloud Run's
Admin API v2, ECS on moto + the agent, Heroku's Platform API + registry), with the real clients: two builds of an
HTTPS-pinned iris project (model v1, then v2 at the same URL, re-pinned), both deployed; the local names the
deploys used removed; then ``status`` names the serving pair and ``history`` both (read from the platform:
annotations, tags, the registry's labels), and ``rollback`` names the old pair.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound
from typer.testing import CliRunner

import mlship
from conftest import IRIS, build_image, copy_project
from emulators import ecs_fixtures, heroku_fixtures, storage_fixtures
from emulators.cloudrun import CloudRunEmulator
from emulators.mlflow_fixtures import MlflowServer, register, set_alias
from emulators.storage_fixtures import Https, iris_variant, repin, sha256
from mlship.artifacts.provenance import (
    CLOUDRUN,
    ECS,
    LABEL_CONTRACT,
    LABEL_GIT,
    LABEL_PINNED,
    LABEL_SHA,
    LABEL_URI,
    LABEL_VERSION,
    Provenance,
    read,
    record,
    recorded_text,
    serving_text,
)
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.init import init_project
from mlship.targets import get_target
from mlship.targets.base import Target
from mlship.targets.cloudrun import CloudRunTarget
from mlship.targets.heroku import HerokuTarget

https_server = storage_fixtures.https_server
artifact_cache = storage_fixtures.artifact_cache
moto, agent, aws, ecs_env = ecs_fixtures.moto, ecs_fixtures.agent, ecs_fixtures.aws, ecs_fixtures.ecs_env
heroku, heroku_env = heroku_fixtures.heroku, heroku_fixtures.heroku_env

LABELS = {LABEL_URI: "https://models.example.com/iris/model.joblib?token=a1&v=2%20b", LABEL_VERSION: '"9f2c4e8a"',
          LABEL_PINNED: "https://models.example.com/iris/model.joblib?token=a1&v=2%20b", LABEL_SHA: "9f2c" + "0" * 60,
          LABEL_CONTRACT: "ab" * 32, LABEL_GIT: "1a2b3c4d" * 5, "team": "ml"}
ECS_CHARS = re.compile(r"[\w\s+\-=.:/@]*")


# --- the record, within each platform's limits (pure) -------------------------------------------------
def test_record_round_trips_within_each_platforms_limits() -> None:
    want = Provenance.from_labels(LABELS)
    assert want is not None and want.text() == serving_text(LABELS)
    assert want.text() == ('https://models.example.com/iris/model.joblib?token=a1&v=2%20b ("9f2c4e8a", sha256 '
                           '9f2c00000000...), git 1a2b3c4')
    for limits in (CLOUDRUN, ECS):
        kept = record(LABELS, limits)
        assert read({**kept, "managed-by": "mlship", "mlship:service": "iris"}, limits) == want
        assert recorded_text(kept, limits) == want.text()
    assert record(LABELS, CLOUDRUN)["mlship.dev/uri"] == LABELS[LABEL_URI]  # annotations keep any text
    tags = record(LABELS, ECS)
    assert all(len(k) <= 128 and len(v) <= 256 and ECS_CHARS.fullmatch(k) and ECS_CHARS.fullmatch(v)
               for k, v in tags.items()), tags
    assert tags["mlship:provenance.uri"].startswith("b64:")  # ?, & and % are not tag characters
    assert tags["mlship:provenance.sha256"] == LABELS[LABEL_SHA] and "team" not in str(tags)


def test_a_long_value_spreads_over_keys_and_beyond_the_room_is_cut() -> None:
    long_uri = "s3://team-models/" + "iris/" * 100 + "model.joblib"  # 529 tag-safe characters: three tags
    kept = record({**LABELS, LABEL_URI: long_uri}, ECS)
    assert [k for k in kept if k.startswith("mlship:provenance.uri")] == [
        "mlship:provenance.uri", "mlship:provenance.uri.2", "mlship:provenance.uri.3"]
    found = read(kept, ECS)
    assert found is not None and found.uri == long_uri
    huge = record({**LABELS, LABEL_URI: long_uri * 3, LABEL_PINNED: long_uri * 3 + "?versionId=x&y"}, ECS)
    assert len([k for k in huge if k.startswith("mlship:provenance.")]) <= 6 * 4
    cut = read(huge, ECS)
    assert cut is not None and cut.uri is not None and cut.pinned is not None
    assert cut.uri.endswith("...") and (long_uri * 3).startswith(cut.uri[:-3]) and len(cut.uri) == 4 * 256
    assert cut.pinned.endswith("...") and (long_uri * 3).startswith(cut.pinned[:-3])  # cut before it is encoded
    assert read({"team": "ml"}, ECS) is None and record({"team": "ml"}, ECS) == {}
    local = {"dev.mlship.model-sha256": "cd" * 32, LABEL_GIT: "0e9d8c7b" * 5}  # a model file next to mlship.yaml:
    assert record(local, CLOUDRUN) == {}  # named by its version on the platform, as before
    assert serving_text(local) == f"the model baked into the image (sha256 {'cd' * 6}...), git 0e9d8c7"


# --- a moved alias, two library calls in one process ------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    with MlflowServer(folder) as server:
        register(server.url, ["logreg", "nb"], folder / "v12.json", alias="champion")
        yield server.url


def test_two_deploys_in_one_process_each_resolve_a_moved_alias(mlflow_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, artifact_cache: Path,
                                                               base_image_env: str, docker_engine: Any) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    set_alias(mlflow_url, "champion", "1")
    folder = tmp_path / "svc"
    folder.mkdir()
    shutil.copy(IRIS / "rows.csv", folder / "rows.csv")
    init_project("models:/iris@champion", directory=folder, sample=folder / "rows.csv")
    first = mlship.deploy(folder, target="local", dry_run=True)  # resolves, fetches and plans the image
    set_alias(mlflow_url, "champion", "2")
    second = mlship.deploy(folder, target="local", dry_run=True)  # the same process, a new pipeline call
    assert first.build is not None and second.build is not None
    assert "models:/iris/1" in (first.build.dockerfile or "") and "models:/iris/2" not in (first.build.dockerfile or "")
    assert "models:/iris/2" in (second.build.dockerfile or ""), second.build.dockerfile
    assert second.version != first.version  # another model: another version
    set_alias(mlflow_url, "champion", "1")


# --- one deploy story per cloud target ---------------------------------------------------------------
@dataclass
class Pair:
    """Two builds of one service: model v1, then v2 published at the same HTTPS URL and re-pinned."""

    name: str
    folders: tuple[Path, Path]
    images: tuple[str, str]
    texts: tuple[str, str]  # what `serving` must say of each


@pytest.fixture(scope="module")
def pair(https_server: Https, tmp_path_factory: pytest.TempPathFactory, docker_engine: Any) -> Iterator[Pair]:
    root, name = tmp_path_factory.mktemp("prov"), f"prov-{uuid.uuid4().hex[:8]}"
    uri, images = f"{https_server.url}/prov/model.joblib", []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLSHIP_CA_BUNDLE", str(https_server.ca_file))
        patch.setenv("MLSHIP_CACHE_DIR", str(root / "cache"))
        https_server.files.content["/prov/model.joblib"] = iris_variant(root / "m1" / "model.joblib", c=1.0)
        v1, v2 = root / "v1", root / "v2"
        v1.mkdir()
        shutil.copy(IRIS / "rows.csv", v1 / "rows.csv")
        init_project(uri, directory=v1, sample=v1 / "rows.csv", name=name)
        images.append(build_image(load_project(v1)))
        data = iris_variant(root / "m2" / "model.joblib", c=0.05)
        https_server.files.content["/prov/model.joblib"] = data
        shutil.copytree(v1, v2, ignore=shutil.ignore_patterns(".mlship"))
        repin(v2, sha256(data))
        images.append(build_image(load_project(v2)))
        texts = [serving_text(docker_engine.images.get(i).labels) for i in images]
        assert texts[0] and texts[1] and texts[0] != texts[1] and texts[1].startswith(f"{uri} (")
        try:
            yield Pair(name, (v1, v2), (images[0], images[1]), (texts[0], texts[1]))
        finally:
            for image in images:
                with contextlib.suppress(ImageNotFound):
                    docker_engine.images.remove(image)


def deploy_story(pair: Pair, make: Callable[[Path], Target], docker_engine: Any, kind: str) -> Target:
    """Deploy v1 then v2 (each from its own project, under local names of the story's own), remove those names,
    then check status, history and rollback; returns the target of v2's project (for the CLI and destroy)."""
    mark = uuid.uuid4().hex[:4]
    tags, steps = [f"{pair.name}:{kind}-v1-{mark}", f"{pair.name}:{kind}-v2-{mark}"], list[str]()
    for image, tag in zip(pair.images, tags, strict=True):
        docker_engine.images.get(image).tag(*tag.split(":"))
    targets = [make(folder) for folder in pair.folders]
    try:
        first = targets[0].deploy(tags[0], steps.append)
        second = targets[1].deploy(tags[1], steps.append)
    finally:
        for tag in tags:  # from here on the local engine knows nothing under the names deployed
            docker_engine.images.remove(tag)
    assert first.changed and second.changed, steps
    status = targets[1].status()
    assert status.serving == pair.texts[1], (status.serving, status.history)
    new = next(i for i, line in enumerate(status.history) if line.endswith(f": {pair.texts[1]}"))
    old = next(i for i, line in enumerate(status.history) if line.endswith(f": {pair.texts[0]}"))
    assert new < old, status.history  # newest first, each entry annotated with its model
    back = targets[1].rollback(steps.append)
    assert back.serving == pair.texts[0], back
    assert targets[1].status().serving == pair.texts[0]
    targets[0].close()
    return targets[1]


def cli_status(kind: str, project_dir: Path) -> str:
    shown = CliRunner().invoke(app, ["status", "--target", kind, "-f", str(project_dir)])
    assert shown.exit_code == 0, shown.output
    return str(shown.output)


def test_cloudrun_revisions_carry_the_pair(pair: Pair, docker_engine: Any, registry: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CloudRunTarget, "poll_s", 0.05)
    gcp_project = f"mlt-{uuid.uuid4().hex[:8]}"
    with CloudRunEmulator(docker_engine, registry=registry) as emu:
        opts = {"project": gcp_project, "region": "europe-west1", "api_endpoint": emu.endpoint,
                "artifact_registry_endpoint": emu.endpoint, "registry": registry}

        def make(folder: Path) -> Target:
            return get_target("cloudrun", copy_project(folder, tmp_path / uuid.uuid4().hex[:6],
                                                       targets={"cloudrun": opts}))

        target = deploy_story(pair, make, docker_engine, "cr")
        try:
            sent = [r["body"]["template"] for r in emu.requests if r["method"] in ("POST", "PATCH")
                    and r["body"].get("template")]
            assert all(t["annotations"]["mlship.dev/sha256"] for t in sent)  # on each revision template sent
            assert f"serving {pair.texts[0]}" in cli_status("cloudrun", target.project.root)
        finally:
            target.destroy()
            target.close()
            for image in docker_engine.images.list(name=f"{registry}/{gcp_project}/mlship/{pair.name}"):
                for ref in image.tags + image.attrs.get("RepoDigests", []):
                    if ref.startswith(f"{registry}/{gcp_project}/"):
                        with contextlib.suppress(ImageNotFound):
                            docker_engine.images.remove(ref)


def test_ecs_task_definitions_carry_the_pair(pair: Pair, ecs_env: Any, docker_engine: Any, tmp_path: Path) -> None:
    def make(folder: Path) -> Target:
        return get_target("ecs", copy_project(folder, tmp_path / uuid.uuid4().hex[:6], targets={"ecs": {}}))

    target = deploy_story(pair, make, docker_engine, "ecs")
    try:
        registered = [p for _, action, p in ecs_env.calls if action == "RegisterTaskDefinition"]
        tags = {t["key"]: t["value"] for t in registered[-1]["tags"]}  # what the client sent, as ECS checks it
        assert tags["mlship:provenance.sha256"] == load_project(pair.folders[1]).contract.artifact_sha256
        found = {k: v for k, v in tags.items() if k.startswith("mlship:provenance.")}
        assert recorded_text(found, ECS) == pair.texts[1] and all(ECS_CHARS.fullmatch(v) for v in found.values())
        assert f"serving {pair.texts[0]}" in cli_status("ecs", target.project.root)
    finally:
        target.destroy()
        target.close()
        ecs_fixtures.remove_pushed(docker_engine, pair.name)


def test_heroku_releases_show_the_pair_from_the_registry(pair: Pair, heroku_env: Any, docker_engine: Any,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HerokuTarget, "poll_s", 0.2)
    options = {"app": pair.name, "create": True, "region": "eu", "dyno": "standard-1x"}

    def make(folder: Path) -> Target:
        return get_target("heroku", copy_project(folder, tmp_path / uuid.uuid4().hex[:6], targets={"heroku": options}))

    target = deploy_story(pair, make, docker_engine, "hk")
    try:
        shown = cli_status("heroku", target.project.root)
        assert f"serving {pair.texts[0]}" in shown and "Rollback to v" in shown, shown
    finally:
        target.destroy()
        target.close()
        for image in docker_engine.images.list(name=f"{heroku_env.registry}/{pair.name}/web"):
            for ref in image.tags:
                with contextlib.suppress(ImageNotFound):
                    docker_engine.images.remove(ref)


def test_ecs_keeps_your_tags_first_within_its_fifty() -> None:
    from mlship.targets.ecs.options import EcsOptions
    from mlship.targets.ecs.spec import names, task_definition

    for yours, kept in ((0, 6), (42, 1), (47, 0)):  # all six fields; the model's digest alone; no room at all
        opts = EcsOptions(tags={f"team{i}": "ml" for i in range(yours)})
        td = task_definition(opts, names(opts, "iris"), image="r/iris@sha256:" + "a" * 64, region="eu-west-1",
                             execution_role="arn:aws:iam::1:role/x", version="v1", ready_timeout_s=30,
                             provenance=record(LABELS, ECS))
        found = {t["key"]: t["value"] for t in td["tags"]}
        assert len(found) <= 50 and len([k for k in found if k.startswith("mlship:provenance.")]) == kept, found
        assert sum(k.startswith("team") for k in found) == yours
