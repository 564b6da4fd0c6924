"""`mlship batch --target ecs` end to end: the real batch image (the iris model's serving image + pyarrow) run as
ECS RunTask fan-out against moto in server mode, the tasks on the local engine through the test-side agent
(tests/emulators/ecs_runtask.py), input and output in moto's S3. The fan-out's mechanics: test_batch_ecs.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import copy_project
from emulators import ecs_batch_fixtures, ecs_fixtures
from emulators.ecs_batch_fixtures import left_after
from emulators.ecs_fixtures import REGION, remove_pushed
from emulators.ecs_moto import MotoServer
from emulators.ecs_runtask import RunTaskAgent
from mlship.cli import app
from mlship.contract_io import load_project
from mlship.targets.ecs import EcsTarget

aws = ecs_fixtures.aws
moto = ecs_fixtures.moto
runner = ecs_batch_fixtures.runner
batch_env = ecs_batch_fixtures.batch_env
bucket = ecs_batch_fixtures.bucket


FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def batch_project(batch_env: MotoServer, iris_dir: Path, tmp_path: Path, base_image_env: str,
                  docker_engine: Any) -> Iterator[Path]:
    """An iris project of its own service name; what its jobs made is destroyed afterwards (nothing tagged left)."""
    name = f"eb-{uuid.uuid4().hex[:8]}"
    root = copy_project(iris_dir, tmp_path / name, name=name, targets={"ecs": {}}).root
    yield root
    with EcsTarget(load_project(root), {}) as target:
        removed = target.destroy()
    remove_pushed(docker_engine, name)
    assert left_after(name) == [], removed


def upload_rows(bucket: str, tmp_path: Path, rows: int) -> Path:
    """``rows`` iris rows as s3://<bucket>/in/rows.parquet (row groups of 2,500); the local copy's path."""
    import boto3

    rng = np.random.default_rng(7)
    table = pa.table({"id": np.arange(rows) * 3 + 1, **{f: rng.uniform(0.1, 7.9, rows) for f in FEATURES}})
    local = tmp_path / "rows.parquet"
    pq.write_table(table, local, row_group_size=2500)
    s3 = boto3.client("s3", region_name=REGION)
    s3.delete_object(Bucket=bucket, Key="in/rows.csv")
    s3.upload_file(str(local), bucket, "in/rows.parquet")
    s3.close()
    return local


def test_cli_batch_on_ecs_equals_the_in_process_run(batch_project: Path, bucket: str, runner: RunTaskAgent,
                                                     tmp_path: Path) -> None:
    local = upload_rows(bucket, tmp_path, 20_000)
    runner.interrupt_next(1, after_s=0.2)  # shard 1's first task loses its host: mlship runs it again
    result = invoke("batch", "--target", "ecs", "--tasks", "4", "--parallelism", "2", "--memory", "1024", "-f",
                    str(batch_project), "-i", f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["tasks"], report["succeeded"], report["failed"], report["retries"]) == \
        (20_000, 4, 4, 0, 1)
    assert report["cost_usd"] > 0 and report["console"].startswith(f"https://{REGION}.console.aws.amazon.com/ecs/")
    ecs_batch_fixtures.assert_parts_equal_in_process(bucket, batch_project, local, tmp_path, 4)
    print(f"\necs RunTask fan-out on moto, real batch image: 20,000 rows in 4 tasks (2 at once, one run again) in "
          f"{report['seconds']:.1f}s submit -> done")


def test_cli_batch_a_shard_that_always_fails_exits_1_with_its_last_lines(batch_project: Path, bucket: str,
                                                                          tmp_path: Path) -> None:
    upload_rows(bucket, tmp_path, 4_000)
    ecs_batch_fixtures.put_broken(bucket)
    result = invoke("batch", "--target", "ecs", "--tasks", "4", "--max-retries", "1", "--memory", "1024",
                    "-f", str(batch_project), "-i", f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/")
    assert result.exit_code == 1, result.output
    assert "tasks: 3/4 done, 1 failed, 1 retries" in result.stdout, result.stderr[-3000:]
    assert "task 3 failed; its last lines:" in result.stderr and "z-broken.parquet" in result.stderr
    assert "after 2 attempt(s): Essential container in task exited (exit code 1)" in result.stderr


def test_cli_dry_run_prints_the_job_without_credentials(iris_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    copy_project(iris_dir, tmp_path / "p", targets={"ecs": {"region": REGION}})
    result = invoke("batch", "--target", "ecs", "--tasks", "50", "--dry-run", "-f", str(tmp_path / "p"),
                    "-i", "s3://b/in/", "-o", "s3://b/out/")
    assert result.exit_code == 0, result.output
    assert "task definition family mlship-iris-batch" in result.stdout
    assert "RunTask 50 task(s), one call each" in result.stdout


def test_cli_preflight_without_credentials_fails_before_any_build(iris_dir: Path, aws: MotoServer,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from mlship.image import engine

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setattr(engine, "build", lambda *a, **k: pytest.fail("preflight must stop the run before a build"))
    copy_project(iris_dir, tmp_path / "p", targets={"ecs": {}})
    mark = aws.mark()
    result = invoke("batch", "--target", "ecs", "--tasks", "2", "-f", str(tmp_path / "p"),
                    "-i", "s3://b/in/", "-o", "s3://b/out/")
    assert result.exit_code == 4, result.output
    assert "No AWS credentials found." in result.output and "aws configure" in result.output
    assert aws.since(mark, mutating=True) == []
