"""What makes `mlship batch` fast, held to the row path's answers: scoring threads sharing one compiled model,
JSON Lines chunks parsed by Arrow into columns, and the writer thread that streams the output (a failure there is
an error that leaves no partial output)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mlship.batch import BatchOptions, formats, rejects_path, run_batch
from mlship.batch.run import _Pool
from mlship.batch.storage import StorageError
from mlship.contract_io import load_project
from mlship.serving.predictor import Predictor

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def project(iris_compiled: Path) -> Path:
    return iris_compiled


def rows(n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    table = pa.table({"id": np.arange(n) * 3 + 1, **{f: rng.uniform(0, 8, n) for f in FEATURES}})
    return table.to_pylist()


def test_scoring_threads_share_the_compiled_model_and_give_the_in_process_bytes(project: Path, tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows(50_000, seed=1)), tmp_path / "rows.parquet")
    with _Pool(project / "mlship.yaml", 4096, 2) as pool:
        assert pool.threads is not None and pool.executor is None  # no process started
    one = run_batch(project, tmp_path / "rows.parquet", tmp_path / "one.parquet", BatchOptions(workers=1,
                                                                                               chunk_rows=4096))
    two = run_batch(project, tmp_path / "rows.parquet", tmp_path / "two.parquet", BatchOptions(workers=2,
                                                                                               chunk_rows=4096))
    assert (one.rows, two.rows, two.chunks) == (50_000, 50_000, 13)
    assert 0 < two.load_seconds < two.seconds
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no parts folder, no temporary file left


def test_jsonl_chunks_parsed_by_arrow_give_the_row_paths_predictions_and_rejects(project: Path,
                                                                                 tmp_path: Path) -> None:
    data = rows(3000, seed=2)
    del data[10]["petal_width"]  # missing
    data[20]["sepal_width"] = None  # null
    data[1500]["sepal_length"] = math.nan  # NaN (Python's json writes and reads it)
    data[2500]["petal_length"] = 2  # an integer: valid, widened
    columnar = "".join(json.dumps(r) + "\n" for r in data)
    # the same rows with a field whose type changes from line to line: Arrow cannot type it, so each chunk keeps its
    # lines and takes the row path, which ignores the field
    row_path = "".join(json.dumps({**r, "note": i if i % 2 else "x"}) + "\n" for i, r in enumerate(data))
    (tmp_path / "columnar.jsonl").write_text(columnar)
    (tmp_path / "rows.jsonl").write_text(row_path)
    first = [ln.encode() + b"\n" for ln in columnar.splitlines()[:1000]]
    assert formats.jsonl_table(first, FEATURES).column_names[:4] == FEATURES
    other = [ln.encode() + b"\n" for ln in row_path.splitlines()[:1000]]
    assert formats.jsonl_table(other, FEATURES).column_names == [formats.JSON_COLUMN]
    opts = BatchOptions(workers=2, chunk_rows=1000)
    for name in ("columnar", "rows"):
        report = run_batch(project, tmp_path / f"{name}.jsonl", tmp_path / f"{name}.parquet", opts)
        assert (report.rows, report.rejects) == (3000, 3)
    got, want = pq.read_table(tmp_path / "columnar.parquet"), pq.read_table(tmp_path / "rows.parquet")
    assert got.equals(want) and got.num_rows == 2997
    bad, bad_want = (pq.read_table(rejects_path(tmp_path / f"{n}.parquet")) for n in ("columnar", "rows"))
    assert bad.equals(bad_want)
    assert bad.column("row").to_pylist() == [10, 20, 1500]
    assert [r.split(":")[0] for r in bad.column("reason").to_pylist()] == ["petal_width", "sepal_width",
                                                                           "sepal_length"]
    predictor = Predictor(load_project(project))
    predictor.load()
    kept = [r for i, r in enumerate(data) if i not in (10, 20, 1500)]
    assert got.column("label").to_pylist() == [p["label"] for p in predictor.predict([[r[f] for f in FEATURES]
                                                                                      for r in kept])]


def test_a_writer_failure_is_an_error_and_leaves_no_partial_output(project: Path, tmp_path: Path) -> None:
    data = pa.Table.from_pylist(rows(5000, seed=3))
    nested = data.set_column(0, "id", pa.StructArray.from_arrays([data.column("id").combine_chunks()], ["n"]))
    pq.write_table(nested, tmp_path / "rows.parquet")  # a struct id: Parquet holds it, CSV cannot
    out = tmp_path / "out" / "preds.csv"
    with pytest.raises(StorageError, match=r"writing .*preds\.csv failed: Unsupported Type") as info:
        run_batch(project, tmp_path / "rows.parquet", out, BatchOptions(workers=2, chunk_rows=1000))
    assert info.value.fix and "CSV" in info.value.fix
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == [".preds.csv.parts"]  # no output, no rejects file, no temporary file; the parts for a resume
    run_batch(project, tmp_path / "rows.parquet", out.with_suffix(".parquet"), BatchOptions(workers=2,
                                                                                          chunk_rows=1000))
    assert pq.read_table(out.with_suffix(".parquet")).column("id").to_pylist() == nested.column("id").to_pylist()
    pacsv.write_csv(data, tmp_path / "flat.csv")
    report = run_batch(project, tmp_path / "flat.csv", out, BatchOptions(workers=2, chunk_rows=1000))
    assert report.rows == 5000 and out.exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up during a run."""
    where = tmp_path / "tiny"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if made.returncode:
        pytest.skip("a full disk is made with a 256 KiB tmpfs, which only root can mount (the suite runs as root, "
                    f"as the README says; here: {made.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("workers", [1, 2])  # parts written by the writer's thread / by the scoring threads
def test_a_full_disk_is_an_error_that_leaves_no_output(project: Path, tmp_path: Path, tiny_disk: Path,
                                                       workers: int) -> None:
    pq.write_table(pa.Table.from_pylist(rows(40_000, seed=5)), tmp_path / "rows.parquet")
    out = tiny_disk / "preds.parquet"
    failed = r"writing \S*(preds\.parquet|(part|rejects)-\d{6}\.arrow) failed: .*No space left"
    with pytest.raises(StorageError, match=failed):
        run_batch(project, tmp_path / "rows.parquet", out, BatchOptions(workers=workers, chunk_rows=2000))
    left = [p.name for p in tiny_disk.iterdir()]
    assert left == [".preds.parquet.parts"], left  # no output, no rejects file, no temporary output file
    assert not [p for p in (tiny_disk / ".preds.parquet.parts").iterdir() if ".tmp" in p.name]


def test_a_chunk_with_a_few_bad_rows_scores_the_rest_as_one_array_with_the_row_paths_answers(
        project: Path, tmp_path: Path) -> None:
    from mlship.batch.score import Scorer

    data = rows(4000, seed=4)
    for i in (0, 7, 1999, 2000, 3999):
        data[i]["petal_length"] = None
    data[123]["sepal_width"] = math.inf
    data[2500]["sepal_length"] = math.nan
    table = pa.Table.from_pylist(data)
    pq.write_table(table, tmp_path / "rows.parquet")
    scorer = Scorer(project / "mlship.yaml", 2000)
    clean = scorer._clean_matrix(table.slice(0, 2000))
    assert clean is not None and list(np.flatnonzero(clean[1])) == [0, 7, 123, 1999]  # only those see the validator
    # the same rows as JSON Lines that Arrow cannot type (a field changing type): every row takes the row path
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({**r, "note": i if i % 2 else "x"}) + "\n"
                                                 for i, r in enumerate(data)))
    for name in ("rows.parquet", "rows.jsonl"):
        report = run_batch(project, tmp_path / name, tmp_path / f"{name}.out.parquet",
                           BatchOptions(workers=2, chunk_rows=2000))
        assert (report.rows, report.rejects) == (4000, 7)
    got, want = (pq.read_table(tmp_path / f"{n}.out.parquet") for n in ("rows.parquet", "rows.jsonl"))
    assert got.equals(want) and got.column("id").to_pylist() == [r["id"] for i, r in enumerate(data)
                                                                 if i not in (0, 7, 123, 1999, 2000, 2500, 3999)]
    bad, bad_want = (pq.read_table(rejects_path(tmp_path / f"{n}.out.parquet")) for n in ("rows.parquet", "rows.jsonl"))
    assert bad.equals(bad_want) and bad.column("row").to_pylist() == [0, 7, 123, 1999, 2000, 2500, 3999]


def test_a_compiled_run_imports_no_pandas_and_writes_statistics_where_readers_use_them(project: Path,
                                                                                      tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows(5000, seed=5)), tmp_path / "rows.parquet")
    code = ("import sys; from pathlib import Path; from mlship.batch import BatchOptions, run_batch; "
            "run_batch(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), BatchOptions(workers=1)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'sklearn')))")
    done = subprocess.run([sys.executable, "-c", code, str(project), str(tmp_path / "rows.parquet"),
                           str(tmp_path / "out.parquet")], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"  # pa.array / to_numpy would import pandas: 0.2 s of a short run
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0)
    column = {meta.column(j).path_in_schema: meta.column(j) for j in range(meta.num_columns)}
    assert column["id"].is_stats_set and column["id"].statistics.min == 1 and column["id"].compression == "SNAPPY"
    assert column["label"].is_stats_set and column["label"].compression == "SNAPPY"
    assert not column["probabilities_setosa"].is_stats_set
    assert column["probabilities_setosa"].compression == "UNCOMPRESSED"  # computed floats do not compress
    want = Predictor(load_project(project))
    want.load()
    got = pq.read_table(tmp_path / "out.parquet")
    first = pa.Table.from_pylist(rows(5000, seed=5)).slice(0, 100).to_pylist()
    answers = want.predict([[r[f] for f in FEATURES] for r in first])
    assert got.column("label").to_pylist()[:100] == [a["label"] for a in answers]
    assert got.column("probabilities_setosa").to_pylist()[:100] == [a["probabilities"]["setosa"] for a in answers]


def test_arrow_columns_without_pa_array_equal_pa_arrays() -> None:
    from mlship.batch.columns import arrow, arrow_table, float_matrix

    cases = [(np.arange(5.0), pa.float64()), (np.arange(5), pa.int64()), ([3, 1, 2], pa.int64()),
             ([1.5, -0.0], pa.float64()), (["setosa", "", "é"], pa.string()), ([], pa.string()), ([], pa.int64()),
             ([None, 1.0], pa.float64()), ([True, False], pa.bool_())]
    for values, kind in cases:
        assert arrow(values, kind).equals(pa.array(values, kind)), (values, kind)
    flat = {"label": ["a"], "p": [0.5], "n": [1], "b": [True], "none": [None]}
    assert arrow_table(flat).equals(pa.table(flat))
    chunked = pa.chunked_array([pa.array([1.0, None, 3.0]).slice(1), pa.array([4.0])])
    matrix = float_matrix([chunked, pa.array([5.0, 6.0, 7.0])])
    assert matrix.shape == (3, 2) and matrix[0, 1] == 5.0 and list(matrix[1:, 0]) == [3.0, 4.0]
