"""`mlship batch --target ecs --job-queue NAME_OR_ARN`: an AWS Batch array job on the queue the flag names, for this
run, in place of `targets.ecs.batch.job_queue` (mlship.yaml is not written); refused with any other target or without
one, and an invalid name refused by the validator of the yaml key. The dry runs need no credentials; the preflight
runs against moto; the real run is the cheapest end-to-end shape of test_batch_ecs_array.py (the real batch image of
the iris model, 2 children run by the test-side AWS Batch agent on the local Docker engine).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import test_batch_ecs_cli
from conftest import copy_project
from emulators import ecs_batch_fixtures, ecs_fixtures
from emulators.aws_batch import BatchAgent
from emulators.ecs_fixtures import REGION
from emulators.ecs_moto import MotoServer
from test_batch_ecs_array import calls
from test_batch_ecs_cli import invoke, upload_rows

aws = ecs_fixtures.aws
moto = ecs_fixtures.moto
runner = ecs_batch_fixtures.runner
batch_agent = ecs_batch_fixtures.batch_agent
batch_env = ecs_batch_fixtures.batch_env
bucket = ecs_batch_fixtures.bucket
job_queues = ecs_batch_fixtures.job_queues
batch_project = test_batch_ecs_cli.batch_project  # an iris project with `targets: {ecs: {}}`, destroyed afterwards

VALIDATOR = "expected a job queue name (letters, digits, hyphens and underscores, at most 128) or its ARN"


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


def project(iris_dir: Path, tmp_path: Path, ecs: dict[str, Any]) -> Path:
    """A copy of the iris project with ``targets: {ecs: ecs}``."""
    return copy_project(iris_dir, tmp_path / f"p-{uuid.uuid4().hex[:6]}", targets={"ecs": ecs}).root


def batch(root: Path, *flags: str) -> Any:
    return invoke("batch", "-f", str(root), "-i", "s3://b/in/", "-o", "s3://b/out/", *flags)


def words(text: str) -> str:
    return " ".join(text.split())


# --- dry runs (no credentials) ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_credentials")
def test_dry_run_shows_the_array_job_on_the_flags_queue_and_says_where_it_came_from(iris_dir: Path,
                                                                                     tmp_path: Path) -> None:
    root = project(iris_dir, tmp_path, {"region": REGION})
    before = (root / "mlship.yaml").read_text()
    result = batch(root, "--target", "ecs", "--tasks", "4", "--job-queue", "ci-queue", "--dry-run")
    assert result.exit_code == 0, result.output
    text = words(result.stdout)
    assert "engine: AWS Batch array job on job queue ci-queue (from --job-queue, for this run" in text
    assert "job queue ci-queue exists, is ENABLED and VALID" in text
    assert "SubmitJob an array job of 4 children (AWS_BATCH_JOB_ARRAY_INDEX 0..3" in text and "to ci-queue;" in text
    assert "RunTask 4 task(s)" not in text and "DescribeTasks" not in text  # not the fan-out engine
    assert (root / "mlship.yaml").read_text() == before  # the flag is for this run: the contract is not written
    fan_out = batch(root, "--target", "ecs", "--tasks", "4", "--dry-run")  # the next run without the flag
    assert "engine: ECS RunTask fan-out on Fargate" in words(fan_out.stdout), fan_out.output
    arn = f"arn:aws:batch:{REGION}:123456789012:job-queue/ci-queue"
    by_arn = batch(root, "--target", "ecs", "--tasks", "2", "--job-queue", arn, "--dry-run", "--json")
    assert by_arn.exit_code == 0, by_arn.output
    assert f"engine: AWS Batch array job on job queue {arn} (from --job-queue" in json.loads(by_arn.stdout)["plan"][1]


@pytest.mark.usefixtures("no_credentials")
def test_the_flag_takes_the_place_of_the_yaml_queue(iris_dir: Path, tmp_path: Path) -> None:
    root = project(iris_dir, tmp_path, {"region": REGION, "batch": {"job_queue": "yaml-queue"}})
    result = batch(root, "--target", "ecs", "--tasks", "3", "--job-queue", "flag-queue", "--dry-run")
    assert result.exit_code == 0, result.output
    text = words(result.stdout)
    assert "engine: AWS Batch array job on job queue flag-queue (from --job-queue, for this run: it takes the place " \
        "of targets.ecs.batch.job_queue" in text
    assert "yaml-queue" not in text and "SubmitJob an array job of 3 children" in text and "to flag-queue;" in text
    yaml_only = batch(root, "--target", "ecs", "--tasks", "3", "--dry-run")
    assert "engine: AWS Batch array job on job queue yaml-queue (targets.ecs.batch.job_queue is set" in \
        words(yaml_only.stdout), yaml_only.output
    assert yaml.safe_load((root / "mlship.yaml").read_text())["targets"]["ecs"]["batch"] == {"job_queue": "yaml-queue"}


# --- refusals (exit 2, before any call or build) ----------------------------------------------------------------
@pytest.mark.parametrize(("flags", "message", "fix"), [
    (("--target", "cloudrun"), "--job-queue does not apply to --target cloudrun.", "pass --target ecs with it"),
    (("--target", "local"), "--job-queue does not apply to --target local.", "pass --target ecs with it"),
    ((), "--job-queue needs --target ecs.", "Pass --target ecs --job-queue q1, or leave --job-queue out."),
])
@pytest.mark.usefixtures("no_credentials")
def test_job_queue_without_the_ecs_target_is_refused(flags: tuple[str, ...], message: str, fix: str, iris_dir: Path,
                                                     tmp_path: Path) -> None:
    from mlship.errors import EXIT_BAD_INPUT

    cloudrun = {"project": "proj-123456", "region": "us-central1"}
    root = copy_project(iris_dir, tmp_path / "p", targets={"cloudrun": cloudrun}).root
    out = tmp_path / "out"
    result = invoke("batch", "-f", str(root), "-i", str(root / "rows.csv"), "-o", str(out), "--job-queue", "q1",
                    *flags, "--dry-run", "--json")
    assert result.exit_code == EXIT_BAD_INPUT == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["message"] == message and fix in error["fix"], error
    assert "job queue" in error["why"] and not out.exists()  # nothing scored, nothing made
    plain = invoke("batch", "-f", str(root), "-i", str(root / "rows.csv"), "-o", str(out), "--job-queue", "q1",
                   *flags)  # not a dry run: refused the same, before the preflight
    assert plain.exit_code == 2 and message in words(plain.output), plain.output


@pytest.mark.usefixtures("no_credentials")
def test_an_invalid_queue_is_refused_as_the_yaml_key_is(iris_dir: Path, tmp_path: Path) -> None:
    bad = "my queue!"
    flag = batch(project(iris_dir, tmp_path, {"region": REGION}), "--target", "ecs", "--job-queue", bad, "--json")
    assert flag.exit_code == 2, flag.output  # refused before the preflight: no credentials were asked for
    error = json.loads(flag.stdout)["error"]
    assert error["message"] == f"--job-queue: {VALIDATOR} (arn:aws:batch:REGION:ACCOUNT:job-queue/NAME), got {bad!r}"
    assert "describe-job-queues" in error["fix"] and "leave --job-queue out" in error["fix"]
    in_yaml = batch(project(iris_dir, tmp_path, {"region": REGION, "batch": {"job_queue": bad}}), "--target", "ecs",
                    "--dry-run", "--json")
    assert in_yaml.exit_code == 2, in_yaml.output
    assert f"targets.ecs.batch.job_queue: {VALIDATOR}" in json.loads(in_yaml.stdout)["error"]["message"]
    too_long = batch(project(iris_dir, tmp_path, {}), "--target", "ecs", "--job-queue", "q" * 129, "--dry-run")
    assert too_long.exit_code == 2 and VALIDATOR in words(too_long.output), too_long.output


# --- against moto -------------------------------------------------------------------------------------------------
def test_preflight_names_the_flag_for_a_queue_that_does_not_exist(aws: MotoServer, iris_dir: Path,
                                                                  tmp_path: Path) -> None:
    missing = f"missing-{uuid.uuid4().hex[:6]}"
    mark = aws.mark()
    result = batch(project(iris_dir, tmp_path, {}), "--target", "ecs", "--tasks", "2", "--job-queue", missing)
    assert result.exit_code == 4, result.output
    text = words(result.output)
    assert f"AWS Batch job queue {missing} does not exist in" in text and "Fix --job-queue" in text
    assert "leave --job-queue out" in text and "remove targets.ecs.batch.job_queue" not in text
    assert aws.since(mark, mutating=True) == []


def test_cli_runs_an_array_job_on_the_flags_queue(batch_project: Path, batch_env: MotoServer, batch_agent: BatchAgent,
                                                  job_queues: Callable[..., str], bucket: str,
                                                  tmp_path: Path) -> None:
    queue = job_queues()
    local = upload_rows(bucket, tmp_path, 3_000)
    mark = batch_env.mark()
    result = invoke("batch", "--target", "ecs", "--tasks", "2", "--memory", "1024", "--job-queue", queue,
                    "-f", str(batch_project), "-i", f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["tasks"], report["succeeded"], report["failed"]) == (3_000, 2, 2, 0), report
    [submitted] = calls(batch_env, mark, "SubmitJob")  # what the emulator saw: one array job on the flag's queue
    assert submitted["jobQueue"] == queue and submitted["arrayProperties"] == {"size": 2}, submitted
    assert calls(batch_env, mark, "RunTask") == []  # not the fan-out engine
    assert "console.aws.amazon.com/batch/" in report["console"]
    ecs_batch_fixtures.assert_parts_equal_in_process(bucket, batch_project, local, tmp_path, 2)
    assert "batch" not in yaml.safe_load((batch_project / "mlship.yaml").read_text())["targets"]["ecs"]
