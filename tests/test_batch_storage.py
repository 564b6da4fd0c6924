"""`mlship batch` with object storage in and out, through pyarrow.fs against real servers on loopback: moto in
server mode (S3) and gcp-storage-emulator (GCS). Round trips equal to the in-process run on local files, a job's
tasks writing parts + manifests to a bucket, the --json report, and the errors a user gets (no bucket, no input
files, an S3 server that keeps an empty object)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import make_iris_project
from emulators import storage_fixtures
from mlship.batch import BatchOptions, run_batch
from mlship.batch.jobs import batch_job, manifest_name, part_name
from mlship.batch.remote import JobFlags, run_in_process, run_on_target, storage_checks
from mlship.batch.report import collect
from mlship.batch.storage import StorageError, locate, put_bytes
from mlship.batch.worker import run_task
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.serving.predictor import Predictor

moto_server = storage_fixtures.moto_server
s3 = storage_fixtures.s3
gcs_server = storage_fixtures.gcs_server
gcs = storage_fixtures.gcs
artifact_cache = storage_fixtures.artifact_cache
BUCKET = storage_fixtures.BUCKET
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PRED = ["label", "probabilities_setosa", "probabilities_versicolor", "probabilities_virginica"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Path:
    root = make_iris_project(tmp_path_factory.mktemp("storage"), iris_model)
    Predictor(load_project(root)).load()
    return root


@pytest.fixture
def checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto does not read the checksum trailers the AWS SDK in pyarrow sends by default (it stores an empty object)."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")


def rows_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(n), **{f: rng.uniform(0, 8, n) for f in FEATURES}})


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()


def local_want(project: Path, tmp_path: Path, table: pa.Table) -> pa.Table:
    pq.write_table(table, tmp_path / "rows.parquet")
    run_batch(project, tmp_path / "rows.parquet", tmp_path / "want.parquet", BatchOptions(workers=1))
    return pq.read_table(tmp_path / "want.parquet")


def assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("label").to_pylist() == want.column("label").to_pylist()
    for name in PRED[1:]:  # last-bit differences only: the batches are cut elsewhere (tests/test_batch_worker.py)
        np.testing.assert_allclose(got.column(name).to_numpy(), want.column(name).to_numpy(), rtol=1e-13, atol=0)


def read_s3(s3: Any, key: str) -> bytes:
    return bytes(s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_s3_in_and_out_in_process_with_json_report(project: Path, tmp_path: Path, s3: Any, checksums: None) -> None:
    table = rows_table(3_000, seed=1)
    s3.put("in/a.parquet", parquet_bytes(table.slice(0, 1_800), row_group_size=500))
    s3.put("in/b.parquet", parquet_bytes(table.slice(1_800)))
    result = CliRunner().invoke(app, ["batch", "-f", str(project), "--input", s3.uri("in/"), "--output",
                                      s3.uri("out/"), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "batch" and report["ok"] and report["target"] is None
    assert (report["rows"], report["rejects"], report["tasks"]) == (3_000, 0, 1)
    assert report["outputs"] == [s3.uri("out/" + part_name(0, 1, "parquet"))]
    got = pq.read_table(io.BytesIO(read_s3(s3, "out/" + part_name(0, 1, "parquet"))))
    assert_same(got, local_want(project, tmp_path, table))
    manifest = json.loads(read_s3(s3, "out/" + manifest_name(0)))
    assert manifest["rows"] == 3_000 and [p["file"] for p in manifest["pieces"]] == ["a.parquet", "b.parquet"]
    keys = sorted(o["Key"] for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"])
    assert keys == ["out/_mlship/rejects-00000.parquet", "out/_mlship/task-00000.json",
                    "out/part-00000-of-00001.parquet"]  # no temporary or probe objects left


def test_s3_job_tasks_write_parts_and_manifests_that_the_core_collects(project: Path, tmp_path: Path, s3: Any,
                                                                      checksums: None) -> None:
    table = rows_table(2_500, seed=2)
    csv = "id," + ",".join(FEATURES) + "\n" + "".join(
        ",".join(str(r[c]) for c in ["id", *FEATURES]) + "\n" for r in table.to_pylist())
    s3.put("csv/rows.csv", csv.encode())
    job = batch_job(load_project(project), input_uri=s3.uri("csv/"), output_uri=s3.uri("parts/"), tasks=3)
    assert job.env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_REQUIRED"  # carried into the tasks' env
    assert job.env["AWS_ENDPOINT_URL"] == s3.server.endpoint
    missing = collect(job)
    assert missing.missing == [0, 1, 2] and missing.rows == 0
    for index in range(3):
        run_task({**job.env, "MLSHIP_BATCH_TASK_INDEX": str(index)}, contract=project, workers=1,
                 say=lambda _line: None)
    got = collect(job)
    assert (got.rows, got.rejects, got.finished, got.missing) == (2_500, 0, [0, 1, 2], [])
    parts = [pq.read_table(io.BytesIO(read_s3(s3, f"parts/{part_name(i, 3, 'parquet')}"))) for i in range(3)]
    assert_same(pa.concat_tables(parts), local_want(project, tmp_path, table))


def test_gcs_in_and_out_through_the_emulator(project: Path, tmp_path: Path, gcs: Any) -> None:
    table = rows_table(2_000, seed=3)
    gcs.blob("in/rows.parquet").upload_from_string(parquet_bytes(table, row_group_size=700))
    lines = "".join(json.dumps(r) + "\n" for r in table.slice(0, 10).to_pylist())
    gcs.blob("jsonl/rows.jsonl").upload_from_string(lines.encode())
    report = run_in_process(project, JobFlags(f"gs://{BUCKET}/in/", f"gs://{BUCKET}/out/"), workers=1)
    assert report.ok and report.rows == 2_000 and report.outputs == [f"gs://{BUCKET}/out/{part_name(0, 1, 'parquet')}"]
    got = pq.read_table(io.BytesIO(gcs.blob(f"out/{part_name(0, 1, 'parquet')}").download_as_bytes()))
    assert_same(got, local_want(project, tmp_path, table))
    job = batch_job(load_project(project), input_uri=f"gs://{BUCKET}/jsonl/", output_uri=f"gs://{BUCKET}/j/",
                    tasks=2, fmt="jsonl")
    for index in range(2):  # byte ranges of a JSON Lines object, read as streams
        run_task({**job.env, "MLSHIP_BATCH_TASK_INDEX": str(index)}, contract=project, workers=1,
                 say=lambda _line: None)
    out = [json.loads(line) for i in range(2) for line in
           gcs.blob(f"j/{part_name(i, 2, 'jsonl')}").download_as_bytes().decode().splitlines()]
    assert [o["id"] for o in out] == list(range(10))


def test_storage_errors_name_the_bucket_and_the_fix(project: Path, s3: Any, checksums: None) -> None:
    job = batch_job(load_project(project), input_uri="s3://no-such-bucket/in/", output_uri="s3://no-such-bucket/o/",
                    tasks=2)
    checks = {c.name: c for c in storage_checks(job)}
    assert not checks["input"].ok and "does not exist" in checks["input"].detail
    assert not checks["output"].ok and checks["output"].fix and "Create the bucket" in checks["output"].fix
    s3.put("empty/readme.txt", b"not a batch file")
    with pytest.raises(StorageError, match="holds no batch files") as info:
        run_in_process(project, JobFlags(s3.uri("empty/"), s3.uri("o/")), workers=1)
    assert info.value.fix
    job = batch_job(load_project(project), input_uri=s3.uri("empty/"), output_uri=s3.uri("o/"), tasks=1)
    assert {c.name: c.ok for c in storage_checks(job)} == {"input": False, "output": True}


def test_an_s3_server_that_keeps_an_empty_object_is_an_error(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    with pytest.raises(StorageError, match="holds 0 bytes after an upload of 5") as info:
        put_bytes(b"hello", locate(s3.uri("x/probe")))
    assert info.value.fix and "AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED" in info.value.fix


def test_local_target_tasks_read_and_write_s3_from_their_containers(project: Path, tmp_path: Path, s3: Any,
                                                                   checksums: None, docker_engine: Any,
                                                                   base_image_env: str) -> None:
    table = rows_table(4_000, seed=4)
    s3.put("jobin/rows.parquet", parquet_bytes(table, row_group_size=1_000))
    report = run_on_target(project, "local", JobFlags(s3.uri("jobin/"), s3.uri("jobout/"), tasks=2))
    assert report.ok and (report.rows, report.succeeded, report.failed) == (4_000, 2, 0)
    assert report.outputs == [s3.uri(f"jobout/{part_name(i, 2, 'parquet')}") for i in range(2)]
    parts = [pq.read_table(io.BytesIO(read_s3(s3, f"jobout/{part_name(i, 2, 'parquet')}"))) for i in range(2)]
    assert_same(pa.concat_tables(parts), local_want(project, tmp_path, table))
