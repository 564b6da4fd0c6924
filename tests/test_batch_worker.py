"""The batch worker (`python -m mlship.batch.worker`, the batch image's command) in-process: the task index from
each platform's variables, shards that cover every row exactly once for 1..7 tasks over one file and over a
folder of mixed formats (output equal to `mlship batch` in-process, in order), rejects with their file and place,
a retried task that finds its manifest and does nothing, and a changed input that is scored again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mlship.batch import BatchOptions, run_batch
from mlship.batch.image import layer_mb
from mlship.batch.jobs import LABEL_JOB, manifest_name, part_name, rejects_name
from mlship.batch.remote import JobFlags, batch_targets, run_on_target
from mlship.batch.worker import run_task, task_slot
from mlship.cli import app
from mlship.errors import ContractError
from mlship.events import Event, Events

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PRED = ["label", "probabilities_setosa", "probabilities_versicolor", "probabilities_virginica"]


@pytest.fixture(scope="module")
def project(iris_compiled: Path) -> Path:
    return iris_compiled  # the iris project with its compiled model (conftest.py)


def rows_table(n: int, seed: int, first_id: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(first_id, first_id + n), **{f: rng.uniform(0, 8, n) for f in FEATURES}})


def write_csv(table: pa.Table, path: Path) -> None:
    lines = ["id," + ",".join(FEATURES)] + [",".join(str(r[c]) for c in ["id", *FEATURES]) for r in table.to_pylist()]
    path.write_text("\n".join(lines) + "\n")


def env_for(source: Path, out: Path, index: int, count: int, **extra: str) -> dict[str, str]:
    return {"MLSHIP_BATCH_INPUT": str(source), "MLSHIP_BATCH_OUTPUT": str(out), "MLSHIP_BATCH_CHUNK_ROWS": "700",
            "MLSHIP_BATCH_TASK_INDEX": str(index), "MLSHIP_BATCH_TASK_COUNT": str(count), **extra}


def assert_same(got: pa.Table, want: pa.Table) -> None:
    """Ids and labels equal, in order; probabilities equal but for the last bit (onnxruntime's vector kernels round
    a row's last bit by its place in the batch, and the tasks cut the batches elsewhere than `mlship batch`)."""
    assert got.column("id").cast(pa.float64()).to_pylist() == want.column("id").cast(pa.float64()).to_pylist()
    assert got.column("label").to_pylist() == want.column("label").to_pylist()
    for name in PRED[1:]:
        np.testing.assert_allclose(got.column(name).to_numpy(), want.column(name).to_numpy(), rtol=1e-13, atol=0)


def run_all(project: Path, source: Path, out: Path, count: int) -> pa.Table:
    """Every task of a ``count``-task job in turn; the parts concatenated in task order."""
    for i in range(count):
        run_task(env_for(source, out, i, count), contract=project, workers=1, say=lambda _line: None)
    parts = [pq.read_table(out / part_name(i, count, "parquet")) for i in range(count)]
    return pa.concat_tables([p for p in parts if p.num_rows], promote_options="permissive")


def test_task_index_from_each_platform_in_order() -> None:
    assert task_slot({"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "5", "MLSHIP_BATCH_TASK_COUNT": "5"}) \
        == (3, 5)
    assert task_slot({"AWS_BATCH_JOB_ARRAY_INDEX": "7", "MLSHIP_BATCH_TASK_COUNT": "8"}) == (7, 8)
    assert task_slot({"MLSHIP_BATCH_TASK_INDEX": "0", "MLSHIP_BATCH_TASK_COUNT": "2"}) == (0, 2)
    assert task_slot({}) == (0, 1)  # one task (an AWS Batch job of size 1 sets no array index)
    assert task_slot({"MLSHIP_BATCH_TASK_COUNT": "1"}) == (0, 1)
    with pytest.raises(ContractError, match="no task index is set") as info:
        task_slot({"MLSHIP_BATCH_TASK_COUNT": "4"})
    assert info.value.fix and "MLSHIP_BATCH_TASK_INDEX" in info.value.fix
    with pytest.raises(ContractError, match="is not a task of"):
        task_slot({"CLOUD_RUN_TASK_INDEX": "5", "CLOUD_RUN_TASK_COUNT": "5"})
    with pytest.raises(ContractError, match="not a whole number"):
        task_slot({"MLSHIP_BATCH_TASK_INDEX": "x", "MLSHIP_BATCH_TASK_COUNT": "2"})


def test_shards_of_one_parquet_file_cover_every_row_once_for_1_to_7_tasks(project: Path, tmp_path: Path) -> None:
    table = rows_table(5_000, seed=1)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=900)
    run_batch(project, tmp_path / "rows.parquet", tmp_path / "want.parquet", BatchOptions(workers=1))
    want = pq.read_table(tmp_path / "want.parquet")
    for count in range(1, 8):
        got = run_all(project, tmp_path / "rows.parquet", tmp_path / f"out{count}", count)
        assert got.column_names == ["id", *PRED]
        assert_same(got, want)
        sizes = [json.loads((tmp_path / f"out{count}" / manifest_name(i)).read_text())["rows"] for i in range(count)]
        assert sum(sizes) == 5_000 and max(sizes) - min(sizes) <= 2, sizes  # near-equal rows


def test_shards_of_a_folder_of_mixed_formats_cover_every_row_once(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    a, b, c, d = rows_table(1_200, 2), rows_table(800, 3, 10_000), rows_table(1_500, 4, 20_000), rows_table(7, 5, 9e4)
    pq.write_table(a, folder / "a.parquet", row_group_size=256)
    write_csv(b, folder / "b.csv")
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in c.to_pylist()))
    pq.write_table(d, folder / "d.parquet")
    (folder / "_SUCCESS").write_text("")  # markers and hidden files are not input
    want = []
    for name in ("a.parquet", "b.csv", "c.jsonl", "d.parquet"):
        run_batch(project, folder / name, tmp_path / "want" / f"{name}.parquet", BatchOptions(workers=1))
        want.append(pq.read_table(tmp_path / "want" / f"{name}.parquet"))
    expected = pa.concat_tables(want, promote_options="permissive")
    for count in (1, 2, 3, 5, 7):
        assert_same(run_all(project, folder, tmp_path / f"out{count}", count), expected)


def test_rejects_name_the_file_and_the_row_or_the_line_offset(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    table = rows_table(400, seed=6)
    write_csv(table, folder / "rows.csv")
    lines = (folder / "rows.csv").read_text().splitlines(keepends=True)
    lines[1 + 100] = "100,abc,3.0,1.4,0.2\n"
    (folder / "rows.csv").write_text("".join(lines))
    bad = table.set_column(3, "petal_length", pa.array([None if i == 7 else v for i, v in
                                                        enumerate(table.column("petal_length").to_pylist())]))
    pq.write_table(bad, folder / "rows.parquet")
    for i in range(3):
        run_task(env_for(folder, tmp_path / "out", i, 3, MLSHIP_BATCH_FORMAT="csv"), contract=project, workers=1,
                 say=lambda _line: None)
    rejects = pa.concat_tables([pacsv.read_csv(tmp_path / "out" / rejects_name(i, "csv")) for i in range(3)
                                if (tmp_path / "out" / rejects_name(i, "csv")).stat().st_size],
                               promote_options="permissive").to_pylist()
    offset = sum(len(ln) for ln in lines[:101])
    assert [(r["file"], r["row"], r["offset"], r["id"]) for r in rejects] == [("rows.csv", None, offset, 100),
                                                                              ("rows.parquet", 7, None, 7)]
    assert "abc" in rejects[0]["reason"] and rejects[1]["reason"].startswith("petal_length: missing")
    manifests = [json.loads((tmp_path / "out" / manifest_name(i)).read_text()) for i in range(3)]
    assert sum(m["rows"] for m in manifests) == 800 and sum(m["rejects"] for m in manifests) == 2


def test_a_retried_task_finds_its_manifest_and_does_nothing(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(2_000, seed=7), tmp_path / "rows.parquet", row_group_size=500)
    env = env_for(tmp_path / "rows.parquet", tmp_path / "out", 1, 2)
    first = run_task(env, contract=project, workers=1, say=lambda _line: None)
    part = tmp_path / "out" / part_name(1, 2, "parquet")
    stamp = part.stat().st_mtime_ns
    lines: list[str] = []
    again = run_task(env, contract=project, workers=1, say=lines.append)
    assert again["skipped"] is True and again["rows"] == first["rows"] == 1_000
    assert part.stat().st_mtime_ns == stamp and "already done" in lines[0]
    pq.write_table(rows_table(2_000, seed=8), tmp_path / "rows.parquet", row_group_size=500)  # a new input
    third = run_task(env, contract=project, workers=1, say=lambda _line: None)
    assert "skipped" not in third and third["fingerprint"] != first["fingerprint"]
    part.write_bytes(b"truncated")  # a part that is not what its manifest says is scored again
    assert "skipped" not in run_task(env, contract=project, workers=1, say=lambda _line: None)


@pytest.mark.parametrize("slot", [{"CLOUD_RUN_TASK_INDEX": "1", "CLOUD_RUN_TASK_COUNT": "2"},
                                  {"AWS_BATCH_JOB_ARRAY_INDEX": "1", "MLSHIP_BATCH_TASK_COUNT": "2"},
                                  {"MLSHIP_BATCH_TASK_INDEX": "1", "MLSHIP_BATCH_TASK_COUNT": "2"}])
def test_each_platforms_task_index_picks_the_same_shard(project: Path, tmp_path: Path, slot: dict[str, str]) -> None:
    pq.write_table(rows_table(1_000, seed=15), tmp_path / "rows.parquet", row_group_size=300)
    env = {"MLSHIP_BATCH_INPUT": str(tmp_path / "rows.parquet"), "MLSHIP_BATCH_OUTPUT": str(tmp_path / "out"), **slot}
    manifest = run_task(env, contract=project, workers=1, say=lambda _line: None)
    rows = manifest["rows"]
    assert (manifest["task"], manifest["count"]) == (1, 2) and abs(rows - 500) <= 1  # the second half
    part = pq.read_table(tmp_path / "out" / part_name(1, 2, "parquet"))
    assert part.column("id").to_pylist() == list(range(1_000 - rows, 1_000))


def test_the_module_runs_as_a_command_and_fails_with_what_why_fix(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(300, seed=9), tmp_path / "rows.parquet")
    env = {"PATH": "/usr/bin:/bin", "CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1",
           "MLSHIP_BATCH_INPUT": str(tmp_path / "rows.parquet"), "MLSHIP_BATCH_OUTPUT": str(tmp_path / "out"),
           "MLSHIP_CONTRACT": str(project / "mlship.yaml"), "MLSHIP_BATCH_WORKERS": "1"}
    done = subprocess.run([sys.executable, "-m", "mlship.batch.worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "out" / part_name(0, 1, "parquet")).num_rows == 300
    env["MLSHIP_BATCH_INPUT"] = str(tmp_path / "missing")
    failed = subprocess.run([sys.executable, "-m", "mlship.batch.worker"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 1 and "holds no batch files" in failed.stderr and "Fix:" in failed.stderr



# --- the core: --json, refusal, dry run (no Docker) ------------------------------------------------------------
def test_in_process_batch_prints_a_json_report(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(1_000, seed=10), tmp_path / "rows.parquet")
    result = CliRunner().invoke(app, ["batch", "-f", str(project), "-i", str(tmp_path / "rows.parquet"), "-o",
                                      str(tmp_path / "preds.parquet"), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["kind"], report["ok"], report["target"], report["rows"], report["rejects"]) == \
        ("batch", True, None, 1_000, 0)
    assert report["outputs"] == [str(tmp_path / "preds.parquet")] and report["rows_per_s"] > 0
    assert report["schema_version"] == 1 and report["tasks"] == 1


def test_a_target_without_batch_support_is_refused_naming_those_with_it(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(10, seed=11), tmp_path / "rows.parquet")
    result = CliRunner().invoke(app, ["batch", "-f", str(project), "-i", str(tmp_path / "rows.parquet"), "-o",
                                      str(tmp_path / "out"), "--target", "heroku", "--tasks", "2", "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["message"] == "The `heroku` target does not run batch jobs."
    assert "--target local" in error["fix"] and "heroku" not in batch_targets()
    assert not (tmp_path / "out").exists()  # nothing was made


def test_dry_run_prints_the_job_without_building(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(10, seed=12), tmp_path / "rows.parquet")
    result = CliRunner().invoke(app, ["batch", "-f", str(project), "-i", str(tmp_path / "rows.parquet"), "-o",
                                      str(tmp_path / "out"), "--target", "local", "--tasks", "4", "--parallelism",
                                      "2", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] and report["image"].endswith("-batch") and report["rows"] == 0
    plan = "\n".join(report["plan"])
    assert "run 4 container(s)" in plan and "at most 2 at once" in plan and "retry a failed task up to 3" in plan
    assert f"mount {tmp_path / 'rows.parquet'} at the same path (ro)" in plan
    assert not (tmp_path / "out").exists()


# --- the local target: task containers of the real batch image -------------------------------------------------
def test_local_target_runs_three_tasks_of_the_batch_image_equal_to_in_process(
        project: Path, tmp_path: Path, docker_engine: Any, base_image_env: str) -> None:
    table = rows_table(30_000, seed=13)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=4_000)
    run_batch(project, tmp_path / "rows.parquet", tmp_path / "want.parquet", BatchOptions(workers=1))
    want = pq.read_table(tmp_path / "want.parquet")
    lines: list[str] = []
    report = run_on_target(project, "local", JobFlags(str(tmp_path / "rows.parquet"), str(tmp_path / "out"),
                                                      tasks=3, parallelism=3),
                           events=Events(lambda e: lines.append(e.message)))
    assert report.ok and (report.rows, report.rejects, report.succeeded, report.failed) == (30_000, 0, 3, 0)
    assert report.outputs == [str(tmp_path / "out" / part_name(i, 3, "parquet")) for i in range(3)]
    assert_same(pa.concat_tables([pq.read_table(p) for p in report.outputs]), want)
    assert any("3/3 tasks done, 0 failed, 0 running" in line for line in lines)
    assert report.image is not None and layer_mb(report.image) > 0
    left = docker_engine.containers.list(all=True, filters={"label": f"{LABEL_JOB}={report.job_id}"})
    assert left == []  # every task container removed
    # every image has `mlship-batch`: the serving image says what is missing, the batch image has it
    serving = docker_engine.containers.run(report.image.removesuffix("-batch"), ["mlship-batch"], detach=True)
    try:
        assert serving.wait(timeout=60)["StatusCode"] == 1
        assert "this image has no pyarrow" in serving.logs().decode()
    finally:
        serving.remove(force=True)
    print(f"\nbatch layer: +{layer_mb(report.image)} MB; 3 local tasks over 30,000 rows: {report.seconds:.1f}s "
          f"(in-process {_in_process_seconds(project, tmp_path):.1f}s)")


def _in_process_seconds(project: Path, tmp_path: Path) -> float:
    started = time.perf_counter()
    run_batch(project, tmp_path / "rows.parquet", tmp_path / "again.parquet", BatchOptions(workers=1))
    return time.perf_counter() - started


def test_a_task_that_fails_once_is_retried_and_the_job_succeeds(
        project: Path, tmp_path: Path, docker_engine: Any, base_image_env: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    tables = [rows_table(2_000, seed=14 + i, first_id=i * 2_000) for i in range(3)]
    for name, table in zip("abc", tables, strict=True):
        pq.write_table(table, folder / f"{name}.parquet")
    good = (folder / "b.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(good[:-4] + b"XXXX")  # same size (same shards), no Parquet footer magic
    fixed: list[str] = []

    def listen(event: Event) -> None:
        if "failed (exit 1)" in event.message and not fixed:  # the first failure: the file is complete again
            fixed.append(event.message)
            (folder / "b.parquet").write_bytes(good)

    report = run_on_target(project, "local", JobFlags(str(folder), str(tmp_path / "out"), tasks=3, max_retries=2),
                           events=Events(listen))
    # the tasks whose shard touches b.parquet fail until it is fixed (task 1's shard is b; a neighbour's may reach a
    # few bytes into it), then succeed on their retry
    assert report.ok and (report.succeeded, report.failed, report.rows) == (3, 0, 6_000) and 1 <= report.retries <= 3
    assert fixed and "b.parquet cannot be read as parquet" in fixed[0] and "retry 1 of 2" in fixed[0]
    got = pa.concat_tables([pq.read_table(p) for p in report.outputs])
    assert got.column("id").to_pylist() == list(range(6_000))

    # a task that fails every time: the job fails, the command exits 1, the report names the task and its lines
    (folder / "b.parquet").write_bytes(good[:-4] + b"XXXX")
    result = CliRunner().invoke(app, ["batch", "-f", str(project), "-i", str(folder), "-o", str(tmp_path / "out2"),
                                      "--target", "local", "--tasks", "3", "--max-retries", "0", "--json"])
    assert result.exit_code == 1, result.output
    failed = json.loads(result.stdout)
    assert failed["kind"] == "batch" and not failed["ok"] and failed["failed"] >= 1 and failed["retries"] == 0
    assert "1" in failed["failed_logs"] and any("b.parquet cannot be read as parquet" in line
                                                for line in failed["failed_logs"]["1"])
    assert failed["rows"] < 6_000 and failed["succeeded"] == 3 - failed["failed"]


def test_more_tasks_than_rows_leaves_empty_parts_with_the_prediction_columns(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(3, seed=16), tmp_path / "rows.parquet")
    got = run_all(project, tmp_path / "rows.parquet", tmp_path / "out", 7)
    assert got.column("id").to_pylist() == [0, 1, 2]
    parts = [pq.read_table(tmp_path / "out" / part_name(i, 7, "parquet")) for i in range(7)]
    assert sum(p.num_rows for p in parts) == 3 and any(p.num_rows == 0 for p in parts)
    assert all(set(PRED) <= set(p.column_names) for p in parts)
