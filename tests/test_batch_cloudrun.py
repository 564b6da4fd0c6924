"""``mlship batch --target cloudrun``: the batch job as a Cloud Run Job, against the Cloud Run emulator's jobs
(tests/emulators/cloudrun_jobs.py: executions whose tasks really run as containers on the local engine) with the
real google-cloud-run client (REST) and images pushed to the loopback registry.

The job's semantics (the task index, parallelism, retries, a lost instance, timeouts, logs) are checked with a small
worker image whose behaviour the job's env sets; `mlship batch --target cloudrun` runs the real batch image
(the serving image + pyarrow) end to end in test_batch_cloudrun_worker.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from conftest import TEST_BASE_IMAGE, build_from_files, copy_project
from emulators import cloudrun_fixtures
from emulators.cloudrun import CloudRunEmulator
from emulators.cloudrun_fixtures import delete_job, jobs_client, target_options
from mlship.batch.jobs import BatchJob, JobRun, batch_job
from mlship.contract_io import load_project
from mlship.errors import ContractError, TargetError
from mlship.targets import get_target
from mlship.targets.cloudrun import CloudRunTarget
from mlship.targets.cloudrun.api import Gcp

BASE = {"project": "my-project-123", "region": "europe-west1"}
WORKER = b"""#!/usr/bin/env python3
import os, sys, time
index, attempt = os.environ["CLOUD_RUN_TASK_INDEX"], int(os.environ["CLOUD_RUN_TASK_ATTEMPT"])
print(f"start {index} {attempt} {time.time():.3f} of {os.environ['CLOUD_RUN_TASK_COUNT']} "
      f"job={os.environ['CLOUD_RUN_JOB']} execution={os.environ['CLOUD_RUN_EXECUTION']} "
      f"input={os.environ.get('MLSHIP_BATCH_INPUT')}", flush=True)
time.sleep(float(os.environ.get("SLEEP_S", "0")))
if index in os.environ.get("FAIL_ALWAYS", "").split(","):
    for n in range(30):
        print(f"reading shard {index}: line {n}", flush=True)
    time.sleep(0.3)  # stdout and stderr are separate pipes: the engine stamps each line when it reads it
    print(f"boom: shard {index} cannot be read", file=sys.stderr, flush=True)
    sys.exit(3)
if index in os.environ.get("FAIL_ONCE", "").split(",") and attempt == 0:
    print(f"transient failure of shard {index}", file=sys.stderr, flush=True)
    sys.exit(2)
print(f"end {index} {attempt} {time.time():.3f}", flush=True)
"""


gcp_project = cloudrun_fixtures.gcp_project
emu = cloudrun_fixtures.emu
fast_polling = cloudrun_fixtures.fast_polling


# --- fixtures: the emulator, a worker image, targets on the emulator ---------------------------------------
@pytest.fixture(scope="module")
def worker_image(docker_engine: Any) -> Iterator[str]:
    """A small image whose command prints its task index and fails or sleeps as its env says."""
    tag = f"crjob-worker:t{uuid.uuid4().hex[:8]}"
    dockerfile = (f"FROM {TEST_BASE_IMAGE}\nLABEL dev.mlship.test=batch-cloudrun\n"
                  "COPY mlship-batch /usr/local/bin/mlship-batch\nRUN chmod 755 /usr/local/bin/mlship-batch\n"
                  'CMD ["mlship-batch"]\n')
    build_from_files(docker_engine, {"Dockerfile": dockerfile.encode(), "mlship-batch": WORKER}, tag)
    yield tag
    with contextlib.suppress(ImageNotFound):
        docker_engine.images.remove(tag, force=True)


@pytest.fixture
def make_target(iris_dir: Path, emu: CloudRunEmulator, gcp_project: str, registry: str,
                tmp_path: Path) -> Iterator[Any]:
    """make_target(**options) -> a CloudRunTarget on the emulator for a uniquely named service; its batch job is
    deleted afterwards."""
    made: list[CloudRunTarget] = []

    def make(**options: Any) -> CloudRunTarget:
        name = f"cb-{uuid.uuid4().hex[:8]}"
        opts = target_options(emu, gcp_project, registry, **options)
        project = copy_project(iris_dir, tmp_path / name, name=name, targets={"cloudrun": opts})
        target = get_target("cloudrun", project)
        assert isinstance(target, CloudRunTarget)
        made.append(target)
        return target

    yield make
    for target in made:
        delete_job(emu, gcp_project, target.service)
        target.close()


def job_for(target: CloudRunTarget, tasks: int = 4, **changes: Any) -> BatchJob:
    env = changes.pop("env", {})
    job = batch_job(target.project, input_uri="gs://models/in/", output_uri="gs://models/out/", tasks=tasks,
                    memory_mib=512, timeout_s=60)
    return dataclasses.replace(job, env={**job.env, **env}, **changes)


def lines_of(emu: CloudRunEmulator, execution: str) -> list[str]:
    short = execution.rsplit("/", 1)[1]
    entries = [e for e in emu.jobs.logs.entries if e["labels"]["run.googleapis.com/execution_name"] == short]
    return [e["textPayload"] for e in sorted(entries, key=lambda e: e["timestamp"])]


def run(target: CloudRunTarget, job: BatchJob, image: str) -> tuple[JobRun, list[str]]:
    progress: list[str] = []
    return target.run_batch(job, image, progress.append), progress


# --- the job on the emulator (the small worker) ----------------------------------------------------------
def test_every_task_runs_once_with_its_index_at_most_parallelism_at_once(make_target: Any, worker_image: str,
                                                                        emu: CloudRunEmulator) -> None:
    target = make_target(labels={"team": "ml"})
    job = job_for(target, tasks=4, parallelism=2, env={"SLEEP_S": "3"})
    result, progress = run(target, job, worker_image)
    assert (result.tasks, result.succeeded, result.failed, result.retries, result.failed_logs) == (4, 4, 0, 0, {})
    assert result.job_id.startswith(f"projects/{target.opts.project}/locations/europe-west1/jobs/{job.name}/"
                                    "executions/")
    assert result.console is not None and result.job_id.rsplit("/", 1)[1] in result.console
    lines = lines_of(emu, result.job_id)
    starts = sorted(line.split()[1] for line in lines if line.startswith("start "))
    assert starts == ["0", "1", "2", "3"]  # each shard once, no retries
    assert all(f"of 4 job={job.name} execution={result.job_id.rsplit('/', 1)[1]} input=gs://models/in/" in line
               for line in lines if line.startswith("start "))
    spans = {line.split()[1]: float(line.split()[3]) for line in lines if line.startswith("start ")}
    ends = {line.split()[1]: float(line.split()[3]) for line in lines if line.startswith("end ")}
    overlap = max(sum(spans[o] <= spans[i] < ends[o] for o in spans) for i in spans)
    assert overlap == 2, f"tasks ran {overlap} at once with parallelism 2: {spans} {ends}"
    assert any(re.fullmatch(r"\d/4 tasks done, 0 failed, [12] running", p) for p in progress), progress
    assert progress[-1].startswith(f"execution {result.job_id.rsplit('/', 1)[1]} succeeded in ")
    # the job: labelled, the image by digest, the limits asked for; each task billed ~3 s at 1 vCPU / 0.5 GiB
    job_resource = emu.jobs.jobs[result.job_id.rsplit("/executions/", 1)[0]].spec
    assert {"managed-by": "mlship", "team": "ml", "mlship-service": target.service,
            "mlship-batch-job": job.job_id}.items() <= job_resource["labels"].items()
    container = job_resource["template"]["template"]["containers"][0]
    assert re.search(r"@sha256:[0-9a-f]{64}$", container["image"]) and "command" not in container  # the CMD runs
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert job_resource["template"]["taskCount"] == 4 and job_resource["template"]["parallelism"] == 2
    rate = 0.000018 + 0.5 * 0.000002  # 1 vCPU, 512 MiB at the list prices
    assert result.cost_usd is not None and 4 * 3 * rate <= result.cost_usd < 4 * 10 * rate
    assert emu.containers() == []  # every task container removed


def test_a_task_that_fails_once_is_retried_by_the_platform(make_target: Any, worker_image: str,
                                                           emu: CloudRunEmulator) -> None:
    target = make_target()
    result, progress = run(target, job_for(target, tasks=3, env={"FAIL_ONCE": "1"}), worker_image)
    assert (result.succeeded, result.failed, result.retries, result.failed_logs) == (3, 0, 1, {})
    starts = [line.split()[1:3] for line in lines_of(emu, result.job_id) if line.startswith("start ")]
    assert sorted(starts) == [["0", "0"], ["1", "0"], ["1", "1"], ["2", "0"]]  # shard 1: attempts 0 and 1
    assert any(p.endswith(", 1 retried") for p in progress)


def test_a_task_that_always_fails_reports_its_last_log_lines(make_target: Any, worker_image: str) -> None:
    target = make_target()
    job = job_for(target, tasks=3, max_retries=1, env={"FAIL_ALWAYS": "2"})
    result, progress = run(target, job, worker_image)
    assert (result.tasks, result.succeeded, result.failed, result.retries) == (3, 2, 1, 1)
    assert list(result.failed_logs) == [2]
    lines = result.failed_logs[2]
    assert len(lines) == 20 and lines[-1] == "boom: shard 2 cannot be read"  # the last 20, oldest first
    assert lines[-2] == "reading shard 2: line 29"
    assert " failed in " in progress[-1] and "2/3 tasks were a success" in progress[-1]


def test_a_task_past_its_timeout_is_stopped_and_fails(make_target: Any, worker_image: str) -> None:
    target = make_target()
    started = time.monotonic()
    result, _ = run(target, job_for(target, tasks=1, max_retries=0, timeout_s=2, env={"SLEEP_S": "60"}), worker_image)
    assert (result.succeeded, result.failed) == (0, 1) and time.monotonic() - started < 30
    assert result.failed_logs[0][0].startswith("start 0 0 ")


def test_fan_out_overhead_against_the_emulator(make_target: Any, worker_image: str) -> None:
    """Submit -> all tasks done for 8 tasks that do nothing (4 at once): the platform's share of a batch job."""
    target = make_target()
    result, _ = run(target, job_for(target, tasks=8, parallelism=4), worker_image)
    assert result.succeeded == 8
    print(f"\ncloud run jobs emulator: 8 no-op tasks, 4 at once: submit -> all done {result.seconds:.2f}s "
          f"({result.seconds / 2:.2f}s per round of 4 containers)")
    assert result.seconds < 120


def test_a_job_mlship_did_not_create_is_left_alone(make_target: Any, worker_image: str,
                                                   emu: CloudRunEmulator) -> None:
    target = make_target()
    job = job_for(target, tasks=1)
    from google.cloud import run_v2

    image = f"{emu.registry}/{target.opts.project}/other/app:1"
    client = jobs_client(emu)
    client.create_job(parent=f"projects/{target.opts.project}/locations/europe-west1", job_id=job.name,
                      job=run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(
                          containers=[run_v2.Container(image=image)])))).result()
    client.transport.close()
    checks = {c.name: c for c in target.batch_preflight(job)}
    assert not checks["cloud run jobs api"].ok and "mlship did not create it" in checks["cloud run jobs api"].detail
    with pytest.raises(TargetError, match="exists, but mlship did not create it"):
        target.run_batch(job, worker_image, lambda line: None)
    assert not any(p.endswith(f"/jobs/{job.name}:run") for _, p in emu.calls)
    assert target.destroy() == [f"kept Cloud Run job projects/{target.opts.project}/locations/europe-west1/jobs/"
                                f"{job.name}: mlship did not create it (no label managed-by=mlship)"]


# --- plan, limits and preflight (no platform) --------------------------------------------------------------
def test_plan_needs_no_credentials(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Gcp, "credentials", property(lambda self: pytest.fail("plan must not get credentials")))
    target = CloudRunTarget(load_project(iris_dir), {**BASE, "service_account":
                                                     "runner@my-project-123.iam.gserviceaccount.com"})
    job = batch_job(target.project, input_uri="gs://b/in/", output_uri="gs://b/out/", tasks=50, parallelism=10,
                    cpu=2, memory_mib=4096, timeout_s=1800)
    text = "\n".join(target.batch_plan(job, "iris-batch:v1"))
    assert "jobs/iris-batch via https://run.googleapis.com: create it, or update it" in text
    assert "push iris-batch:v1 to europe-west1-docker.pkg.dev/my-project-123/mlship/iris-batch:v1" in text
    assert ("50 task(s), at most 10 at once, up to 3 retries per task, task timeout 1800s, cpu 2, memory 4096Mi, "
            "service account runner@my-project-123.iam.gserviceaccount.com") in text
    assert "MLSHIP_BATCH_INPUT" in text and "input gs://b/in/, output gs://b/out/" in text
    assert f"mlship-batch-job={job.job_id}" in text and "POST projects/my-project-123/locations/europe-west1/" \
        "jobs/iris-batch:run" in text


@pytest.mark.parametrize(("changes", "expected"), [
    ({"max_retries": 11}, "--max-retries 11 is more than Cloud Run's 10 retries per task."),
    ({"memory_mib": 256}, "256 MiB per task is outside Cloud Run Jobs' 512 to 32768 MiB."),
    ({"cpu": 3.0}, "3 CPUs per task is not a Cloud Run size."),
    ({"tasks": 10001, "parallelism": 10}, "--tasks 10001 is more than Cloud Run's 10000 tasks per job."),
    ({"timeout_s": 90000}, "A task timeout of 90000s is more than Cloud Run's 86400s (24 hours)."),
])
def test_limits_fail_before_anything_runs(iris_dir: Path, changes: dict[str, Any], expected: str) -> None:
    target = CloudRunTarget(load_project(iris_dir), BASE)
    job = dataclasses.replace(batch_job(target.project, input_uri="gs://b/in/", output_uri="gs://b/out/",
                                        tasks=4), **changes)
    with pytest.raises(ContractError) as info:
        target.batch_plan(job, "iris-batch:v1")
    assert expected in info.value.message and info.value.fix
    checks = {c.name: c for c in target.batch_preflight(job)}
    assert not checks["job limits"].ok and expected in checks["job limits"].detail


def test_preflight_without_credentials_fails_and_says_how(iris_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.delenv("MLSHIP_GCP_ANONYMOUS", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    target = CloudRunTarget(load_project(iris_dir), BASE)
    job = batch_job(target.project, input_uri="rows.parquet", output_uri="gs://b/out/", tasks=2)
    checks = {c.name: c for c in target.batch_preflight(job)}
    assert not checks["credentials"].ok and "gcloud auth application-default login" in (checks["credentials"].fix
                                                                                        or "")
    assert not checks["storage"].ok and "rows.parquet is not a gs:// URI" in checks["storage"].detail
    assert "cloud run jobs api" not in checks  # nothing is asked of Google without credentials


def test_a_lost_instance_is_retried_and_the_job_succeeds(make_target: Any, worker_image: str,
                                                         emu: CloudRunEmulator) -> None:
    target = make_target()
    emu.jobs.kill_task(0, times=1, after_s=0.3)
    result, _ = run(target, job_for(target, tasks=2, env={"SLEEP_S": "3"}), worker_image)
    assert (result.succeeded, result.failed, result.retries) == (2, 0, 1)
    starts = sorted(line.split()[1:3] for line in lines_of(emu, result.job_id) if line.startswith("start "))
    ends = sorted(line.split()[1:3] for line in lines_of(emu, result.job_id) if line.startswith("end "))
    assert starts == [["0", "0"], ["0", "1"], ["1", "0"]] and ends == [["0", "1"], ["1", "0"]]


def test_a_second_run_updates_the_job_and_adds_an_execution(make_target: Any, worker_image: str,
                                                            emu: CloudRunEmulator) -> None:
    target = make_target()
    first, _ = run(target, job_for(target, tasks=1), worker_image)
    second, progress = run(target, job_for(target, tasks=2, env={"SLEEP_S": "0.1"}), worker_image)
    assert (first.succeeded, second.succeeded) == (1, 2) and first.job_id != second.job_id
    assert any(p.startswith("updating Cloud Run job ") for p in progress)
    job = emu.jobs.jobs[second.job_id.rsplit("/executions/", 1)[0]]
    assert job.generation == 2 and job.executions == [first.job_id, second.job_id]
    assert job.spec["template"]["taskCount"] == 2
    # `mlship destroy` (here without a service) removes the batch job mlship made, its executions with it
    name = second.job_id.rsplit("/executions/", 1)[0]
    assert target.destroy() == [f"Cloud Run job {name} (batch) and its executions"]
    assert name not in emu.jobs.jobs and second.job_id not in emu.jobs.executions
    assert target.destroy() == []
