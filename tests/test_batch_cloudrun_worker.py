"""``mlship batch --target cloudrun`` end to end: the real batch image (the serving image + pyarrow) built by the
command, pushed to the loopback registry and run as a Cloud Run Job by the emulator (tests/emulators/cloudrun_jobs.py),
reading and writing gs:// on the GCS emulator (the tasks reach it on loopback: host networking). The job's mechanics
with a small worker image: test_batch_cloudrun.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from docker.errors import ImageNotFound
from typer.testing import CliRunner

from conftest import TEST_BASE_IMAGE, copy_project, make_iris_project
from emulators import cloudrun_fixtures, storage_fixtures
from emulators.cloudrun import CloudRunEmulator
from emulators.cloudrun_fixtures import delete_job, target_options
from mlship.cli import app

gcp_project = cloudrun_fixtures.gcp_project
emu = cloudrun_fixtures.emu
fast_polling = cloudrun_fixtures.fast_polling
gcs_server = storage_fixtures.gcs_server
gcs = storage_fixtures.gcs
artifact_cache = storage_fixtures.artifact_cache
BASE = {"project": "my-project-123", "region": "europe-west1"}
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def batch_project(iris_model: Path, emu: CloudRunEmulator, gcp_project: str, registry: str, docker_engine: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An iris project whose targets.cloudrun is the emulator (one per module: its images build once); its batch
    job and the images built for it are removed afterwards."""
    name = f"cb-{uuid.uuid4().hex[:8]}"
    opts = target_options(emu, gcp_project, registry)
    source = make_iris_project(tmp_path_factory.mktemp("iris"), iris_model)
    root = copy_project(source, tmp_path_factory.mktemp("batch") / name, name=name, targets={"cloudrun": opts}).root
    yield root
    delete_job(emu, gcp_project, name)
    for image in docker_engine.images.list(name=name):  # the serving and batch images and their cache tags
        for tag in image.tags:
            with contextlib.suppress(ImageNotFound):
                docker_engine.images.remove(tag, force=True)


def batch(project: Path, *args: str) -> Any:
    return invoke("batch", "-f", str(project), "--base-image", TEST_BASE_IMAGE, *args)


def upload_rows(bucket: Any, prefix: str, tmp_path: Path, rows: int) -> Path:
    """``rows`` iris rows as gs://models/<prefix>/in/rows.parquet (row groups of 2,500); the local copy's path."""
    rng = np.random.default_rng(7)
    table = pa.table({"id": np.arange(rows) * 3 + 1, **{f: rng.uniform(0.1, 7.9, rows) for f in FEATURES}})
    local = tmp_path / "rows.parquet"
    pq.write_table(table, local, row_group_size=2500)
    bucket.blob(f"{prefix}/in/rows.parquet").upload_from_filename(str(local))
    return local


def read_parts(bucket: Any, prefix: str) -> pa.Table:
    names = sorted(b.name for b in bucket.list_blobs(prefix=f"{prefix}/out/part-"))
    return pa.concat_tables([pq.read_table(io.BytesIO(bucket.blob(n).download_as_bytes())) for n in names])


def test_cli_batch_on_cloud_run_jobs_equals_the_in_process_run(batch_project: Path, gcs: Any, emu: CloudRunEmulator,
                                                                 tmp_path: Path) -> None:
    prefix = f"t-{uuid.uuid4().hex[:6]}"
    local = upload_rows(gcs, prefix, tmp_path, 20_000)
    emu.jobs.kill_task(1, times=1, after_s=0.2)  # shard 1's first attempt loses its instance: Cloud Run retries it
    result = batch(batch_project, "--target", "cloudrun", "--tasks", "4", "--memory", "1024", "--json",
                   "-i", f"gs://models/{prefix}/in/", "-o", f"gs://models/{prefix}/out/")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["tasks"], report["succeeded"], report["failed"], report["retries"]) == \
        (20_000, 4, 4, 0, 1)
    assert report["cost_usd"] > 0 and report["console"].startswith("https://console.cloud.google.com/run/jobs/")
    got = read_parts(gcs, prefix)
    assert [n.split("/")[-1] for n in sorted(b.name for b in gcs.list_blobs(prefix=f"{prefix}/out/part-"))] == \
        [f"part-{i:05d}-of-00004.parquet" for i in range(4)]
    here = batch(batch_project, "-i", str(local), "-o", str(tmp_path / "here.parquet"), "--workers", "1")
    assert here.exit_code == 0, here.output
    want = pq.read_table(tmp_path / "here.parquet")
    assert got.column_names == want.column_names and got.equals(want)  # same rows, same order, same values
    print(f"\ncloud run jobs emulator, real batch image: 20,000 rows in 4 tasks (one retried) in "
          f"{report['seconds']:.1f}s submit -> done")


def test_cli_batch_a_shard_that_always_fails_exits_1_with_its_last_lines(batch_project: Path, gcs: Any,
                                                                          tmp_path: Path) -> None:
    prefix = f"t-{uuid.uuid4().hex[:6]}"
    upload_rows(gcs, prefix, tmp_path, 4_000)
    gcs.blob(f"{prefix}/in/z-broken.parquet").upload_from_string(b"PAR1 this is not parquet " * 40)
    result = batch(batch_project, "--target", "cloudrun", "--tasks", "4", "--max-retries", "1", "--memory", "1024",
                   "-i", f"gs://models/{prefix}/in/", "-o", f"gs://models/{prefix}/out/")
    assert result.exit_code == 1, result.output
    assert "tasks: 3/4 done, 1 failed, 1 retries" in result.stdout
    assert "task 3 failed; its last lines:" in result.stderr and "z-broken.parquet" in result.stderr


def test_cli_dry_run_prints_the_job_without_credentials(iris_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.delenv("MLSHIP_GCP_ANONYMOUS", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    copy_project(iris_dir, tmp_path / "p", targets={"cloudrun": BASE})
    result = invoke("batch", "--target", "cloudrun", "--tasks", "50", "--dry-run", "-f", str(tmp_path / "p"),
                    "-i", "gs://b/in/", "-o", "gs://b/out/")
    assert result.exit_code == 0, result.output
    assert "Cloud Run job projects/my-project-123/locations/europe-west1/jobs/iris-batch" in result.stdout
    assert "50 task(s), at most 50 at once, up to 3 retries per task" in result.stdout


def test_cli_preflight_without_credentials_fails_before_any_build(iris_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from mlship.image import engine

    monkeypatch.delenv("MLSHIP_GCP_ANONYMOUS", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setattr(engine, "build", lambda *a, **k: pytest.fail("preflight must stop the run before a build"))
    copy_project(iris_dir, tmp_path / "p", targets={"cloudrun": BASE})
    (tmp_path / "out").mkdir()
    result = invoke("batch", "--target", "cloudrun", "--tasks", "2", "-f", str(tmp_path / "p"),
                    "-i", str(tmp_path / "p" / "rows.csv"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 4, result.output
    assert "No Google Cloud credentials" in result.output and "gcloud auth application-default login" in result.output
    assert "is not a gs:// URI" in result.output
