"""`mlship batch` in-process on the iris example: Parquet / CSV / JSON Lines in, predictions equal to the
Predictor's own (in input order, id carried through), rejects with row numbers and reasons, --max-rejects,
worker processes, a SIGKILLed run resumed to the same bytes, and predict_fn on pandas / numpy batches
(no Spark or Ray session here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import make_iris_project
from mlship.batch import BatchOptions, predict_fn, rejects_path, run_batch
from mlship.contract_io import load_project
from mlship.errors import ContractError, PredictionError
from mlship.serving.predictor import Predictor

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def project(iris_compiled: Path) -> Path:
    return iris_compiled  # the iris project with its compiled model (conftest.py)


def rows_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(n) * 7 + 3, **{f: rng.uniform(0, 8, n) for f in FEATURES}})


def expected(project: Path, table: pa.Table) -> list[dict[str, object]]:
    predictor = Predictor(load_project(project))
    predictor.load()
    rows = np.column_stack([table.column(f).to_numpy() for f in FEATURES]).tolist()
    return predictor.predict(rows)


def assert_same(out: pa.Table, want: list[dict[str, object]]) -> None:
    assert out.column("label").to_pylist() == [p["label"] for p in want]
    for name in ("setosa", "versicolor", "virginica"):
        got = out.column(f"probabilities_{name}").to_pylist()
        assert got == [p["probabilities"][name] for p in want]  # type: ignore[index]


def test_million_rows_parquet_in_process_equal_to_the_predictor_in_order(project: Path, tmp_path: Path) -> None:
    table = rows_table(1_000_000)
    pq.write_table(table, tmp_path / "rows.parquet")
    seen: list[tuple[int, int | None]] = []
    started = time.perf_counter()
    report = run_batch(project, tmp_path / "rows.parquet", tmp_path / "preds.parquet",
                       BatchOptions(workers=1, progress=lambda done, total, s: seen.append((done, total))))
    seconds = time.perf_counter() - started
    out = pq.read_table(tmp_path / "preds.parquet")
    assert out.num_rows == report.rows == 1_000_000 and report.rejects == 0
    assert out.column_names == ["id", "label", "probabilities_setosa", "probabilities_versicolor",
                                "probabilities_virginica"]
    assert out.column("id").equals(table.column("id"))
    assert_same(out, expected(project, table))
    assert pq.read_table(rejects_path(tmp_path / "preds.parquet")).num_rows == 0
    assert seen[-1] == (1_000_000, 1_000_000) and len(seen) == report.chunks == 16
    assert not (tmp_path / ".preds.parquet.parts").exists()  # assembled, parts removed
    assert seconds < 60


def test_csv_rejects_planted_bad_rows_with_row_number_and_reason(project: Path, tmp_path: Path) -> None:
    good = rows_table(300, seed=1)
    lines = ["id,sepal_length,sepal_width,petal_length,petal_width"]
    for row in good.to_pylist():
        lines.append(",".join(str(row[c]) for c in ["id", *FEATURES]))
    lines[1 + 10] = "73,abc,3.0,1.4,0.2"  # wrong type
    lines[1 + 250] = "1753,5.0,,1.4,0.2"  # missing feature
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    report = run_batch(project, tmp_path / "rows.csv", tmp_path / "preds.csv", BatchOptions(workers=1, chunk_rows=64))
    assert (report.rows, report.rejects, report.chunks) == (300, 2, 5)
    rejects = pacsv.read_csv(rejects_path(tmp_path / "preds.csv")).to_pylist()
    assert [(r["row"], r["id"]) for r in rejects] == [(10, 73), (250, 1753)]
    assert "sepal_length" in rejects[0]["reason"] and "abc" in rejects[0]["reason"]
    assert rejects[1]["reason"].startswith("sepal_width: missing")
    out = pacsv.read_csv(tmp_path / "preds.csv")
    kept = good.filter(pa.array([i not in (10, 250) for i in range(300)]))
    assert out.column("id").to_pylist() == kept.column("id").to_pylist()
    assert out.column("label").to_pylist() == [p["label"] for p in expected(project, kept)]


def test_jsonl_in_and_out_with_a_missing_feature_and_an_unknown_format(project: Path, tmp_path: Path) -> None:
    rows = rows_table(50, seed=2).to_pylist()
    del rows[5]["petal_width"]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")
    report = run_batch(project, tmp_path / "rows.jsonl", tmp_path / "out" / "preds.jsonl", BatchOptions(workers=1))
    assert (report.rows, report.rejects) == (51, 2)
    out = [json.loads(line) for line in (tmp_path / "out" / "preds.jsonl").read_text().splitlines()]
    kept = [r for i, r in enumerate(rows) if i != 5]
    assert [o["id"] for o in out] == [r["id"] for r in kept]
    want = expected(project, pa.Table.from_pylist(kept))
    assert [o["label"] for o in out] == [p["label"] for p in want]
    rejects = [json.loads(line) for line in rejects_path(tmp_path / "out" / "preds.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"].split(":")[0]) for r in rejects] == [(5, "petal_width"),
                                                                         (50, "the line is not a JSON object")]
    with pytest.raises(ContractError, match="does not know the format") as info:
        run_batch(project, tmp_path / "rows.jsonl", tmp_path / "preds.xlsx", BatchOptions(workers=1))
    assert info.value.fix


def test_max_rejects_stops_with_exit_1_naming_the_count(project: Path, tmp_path: Path) -> None:
    table = rows_table(200, seed=3)
    bad = pa.array([None if i % 20 == 0 else v for i, v in enumerate(table.column("petal_length").to_pylist())])
    pq.write_table(table.set_column(3, "petal_length", bad), tmp_path / "rows.parquet")
    with pytest.raises(PredictionError, match="10 rows were rejected, more than --max-rejects 3"):
        run_batch(project, tmp_path / "rows.parquet", tmp_path / "p.parquet", BatchOptions(workers=1, max_rejects=3))
    result = subprocess.run([sys.executable, "-m", "mlship", "batch", "-f", str(project), "-i",
                             str(tmp_path / "rows.parquet"), "-o", str(tmp_path / "p.parquet"), "--workers", "1",
                             "--max-rejects", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "10 rows were rejected" in result.stderr and "fix:" in result.stderr


def test_max_rejects_leaves_the_rejects_so_far_and_a_part_cut_short_is_scored_again(project: Path,
                                                                                      tmp_path: Path) -> None:
    table = rows_table(200, seed=3)
    bad = pa.array([None if i % 20 == 0 else v for i, v in enumerate(table.column("petal_length").to_pylist())])
    pq.write_table(table.set_column(3, "petal_length", bad), tmp_path / "rows.parquet")
    out, opts = tmp_path / "p.parquet", BatchOptions(workers=1, chunk_rows=50)
    with pytest.raises(PredictionError, match="5 rows were rejected, more than --max-rejects 3"):
        run_batch(project, tmp_path / "rows.parquet", out, BatchOptions(workers=1, chunk_rows=50, max_rejects=3))
    assert pq.read_table(rejects_path(out)).column("row").to_pylist() == [0, 20, 40, 60, 80]
    part = tmp_path / ".p.parquet.parts" / "part-000000.arrow"  # parts are not fsynced: a crash may cut one short
    part.write_bytes(part.read_bytes()[:100])
    report = run_batch(project, tmp_path / "rows.parquet", out, opts)
    assert (report.resumed_chunks, report.rows, report.rejects) == (1, 200, 10)
    run_batch(project, tmp_path / "rows.parquet", tmp_path / "fresh.parquet", opts)
    assert out.read_bytes() == (tmp_path / "fresh.parquet").read_bytes()


def test_worker_processes_and_a_folder_give_the_in_process_result(project: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(rows_table(5000, seed=4), tmp_path / "in" / "a.parquet")
    pacsv.write_csv(rows_table(3000, seed=5), tmp_path / "in" / "b.csv")
    run_batch(project, tmp_path / "in", tmp_path / "one", BatchOptions(workers=1, chunk_rows=1000))
    report = run_batch(project, tmp_path / "in", tmp_path / "two", BatchOptions(workers=2, chunk_rows=1000))
    assert (report.rows, report.chunks) == (8000, 8)
    for name in ("a.parquet", "b.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_clean_csv_and_float32_chunks_take_the_column_path_with_the_row_paths_values(project: Path,
                                                                                   tmp_path: Path) -> None:
    table = rows_table(100_000, seed=10)
    pacsv.write_csv(table, tmp_path / "rows.csv")  # shortest round-trip text: the same doubles read back
    narrow = table.cast(pa.schema([("id", pa.int64())] + [(f, pa.float32()) for f in FEATURES]))
    pq.write_table(narrow, tmp_path / "narrow.parquet")
    opts = BatchOptions(workers=1)
    for name in ("rows.csv", "narrow.parquet"):
        run_batch(project, tmp_path / name, tmp_path / f"{name}.out.parquet", opts)
    assert_same(pq.read_table(tmp_path / "rows.csv.out.parquet"), expected(project, table))
    widened = narrow.cast(table.schema)
    assert_same(pq.read_table(tmp_path / "narrow.parquet.out.parquet"), expected(project, widened))


def test_the_pool_gives_chunks_to_ready_workers_and_scores_the_rest_itself(tmp_path: Path, iris_model: Path) -> None:
    from mlship.batch.run import _Pool

    native = make_iris_project(tmp_path, iris_model, "serve:\n  compile: 'off'\n")
    contract = native / "mlship.yaml"  # a bounded feature: rows go through the validator, in processes
    contract.write_text(contract.read_text().replace("sepal_length: float", "sepal_length: {type: float, minimum: 0}"))
    table = rows_table(6000, seed=9)
    with _Pool(native / "mlship.yaml", 1000, 3) as pool:  # this process + 2 spawned workers
        assert pool.threads is None
        local = pool.first.score(0, 0, table, "id").predictions
        for ready in pool.starting:
            ready.result(timeout=120)
        futures, at_once = [], []
        for i in range(6):
            futures.append(pool.submit(i, i * 1000, table.slice(i * 1000, 1000), "id"))
            at_once.append(futures[-1].done())  # a chunk scored here is done on return; a worker's is not
        got = pa.concat_tables([f.result(timeout=120).predictions for f in futures])
    assert at_once.count(False) >= 2  # handed to the ready workers
    assert got.equals(local)


def test_a_killed_run_resumes_to_an_identical_result(project: Path, tmp_path: Path) -> None:
    pq.write_table(rows_table(600_000, seed=6), tmp_path / "rows.parquet")
    args = [sys.executable, "-m", "mlship", "batch", "-f", str(project), "-i", str(tmp_path / "rows.parquet"),
            "--workers", "1", "--chunk-rows", "3000"]
    subprocess.run([*args, "-o", str(tmp_path / "whole.parquet")], check=True, capture_output=True, timeout=120)
    parts = tmp_path / ".killed.parquet.parts"
    proc = subprocess.Popen([*args, "-o", str(tmp_path / "killed.parquet")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("part-*"))) < 5 if parts.exists() else \
            time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    done = len(list(parts.glob("part-*")))
    assert 5 <= done < 200 and not (tmp_path / "killed.parquet").exists(), done
    result = subprocess.run([*args, "-o", str(tmp_path / "killed.parquet")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{done} chunks kept from an earlier run" in result.stdout
    assert pq.read_table(tmp_path / "killed.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


def test_predict_fn_on_pandas_dict_and_numpy_batches(project: Path) -> None:
    table = rows_table(500, seed=7)
    want = expected(project, table)
    fn = predict_fn(project / "mlship.yaml")
    frame = table.to_pandas()
    out = fn(frame)
    assert list(out.index) == list(frame.index) and out["label"].tolist() == [p["label"] for p in want]
    assert out["probabilities_virginica"].tolist() == [p["probabilities"]["virginica"] for p in want]  # type: ignore[index]
    columns = {f: frame[f].to_numpy() for f in FEATURES}
    assert fn(columns)["label"].tolist() == [p["label"] for p in want]
    assert fn(frame[FEATURES].to_numpy()).tolist() == [p["label"] for p in want]  # Spark: one array column
    assert fn(*columns.values()).tolist() == [p["label"] for p in want]  # Spark: one array per column
    frame.loc[3, "sepal_width"] = float("nan")
    with pytest.raises(PredictionError, match="Row 3 of the batch does not fit the contract: sepal_width"):
        fn(frame)


def test_a_chunk_of_only_rejected_rows_keeps_the_output_columns(project: Path, tmp_path: Path) -> None:
    rows = rows_table(30, seed=8).to_pylist()
    for row in rows[:10]:
        row["sepal_length"] = "x"
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run_batch(project, tmp_path / "rows.jsonl", tmp_path / "p.parquet", BatchOptions(workers=1, chunk_rows=10))
    assert (report.rows, report.rejects) == (30, 10)
    out = pq.read_table(tmp_path / "p.parquet")
    assert out.column("id").to_pylist() == [r["id"] for r in rows[10:]]
    assert out.schema.field("probabilities_setosa").type == pa.float64()
    assert pq.read_table(rejects_path(tmp_path / "p.parquet")).column("row").to_pylist() == list(range(10))
