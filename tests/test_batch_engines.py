"""predict_fn in real cluster engines: a local Spark session (pyspark, the JVM on this machine) running
``pyspark.ml.functions.predict_batch_udf`` over a DataFrame of iris rows, and a local Ray runtime running Ray Data's
``map_batches``; every prediction equal, row for row, to the Predictor's own in-process answer. The snippets of
docs/batch.md ("On a cluster") are these calls. Each engine is started once per module and stopped at the end,
its processes (the JVM, Ray's raylet and GCS) checked gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from mlship.batch import predict_fn
from test_batch import FEATURES, expected, rows_table

pytestmark = [
    # pyspark 4.3 warns that it is not yet validated on pandas 3 (what this environment has); it works, as tested
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    # Ray Data 2.60's DataContext.get_current() warns about the deprecated fields its own defaults set
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]
CLASSES = ("setosa", "versicolor", "virginica")


@pytest.fixture(scope="module")
def project(iris_compiled: Path) -> Path:
    return iris_compiled  # the iris project with its compiled model (conftest.py)


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """2,000 iris-like rows (id + the four features), some far outside the training ranges."""
    return rows_table(2_000, seed=11)


def assert_rows_equal(ids: list[Any], labels: list[Any], proba: dict[str, list[Any]] | None, rows: pa.Table,
                      want: list[dict[str, Any]]) -> None:
    """Predictions keyed by id equal the in-process ones of the same rows, every row."""
    position = {i: k for k, i in enumerate(rows.column("id").to_pylist())}
    assert sorted(ids) == sorted(position)
    order = [position[i] for i in ids]
    assert labels == [want[k]["label"] for k in order]
    for name in CLASSES if proba is not None else ():
        assert proba is not None and proba[name] == [want[k]["probabilities"][name] for k in order]


def java_home() -> str:
    """JAVA_HOME, else the folder of the `java` on PATH (Debian's openjdk-17)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    assert java, "pyspark needs a JVM: install openjdk-17-jre-headless (Debian) or set JAVA_HOME"
    return str(Path(os.path.realpath(java)).parents[1])


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JAVA_HOME", java_home())
        env.setenv("PYSPARK_PYTHON", sys.executable)  # the executors' Python workers: this environment
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (SparkSession.builder.master("local[1]").appName("mlship-predict-fn")
                   .config("spark.ui.enabled", "false")
                   .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.local.dir", str(tmp_path_factory.mktemp("spark")))
                   .config("spark.sql.shuffle.partitions", "1")
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                   .getOrCreate())
        session.sparkContext.setLogLevel("ERROR")
        gateway = SparkContext._gateway
        assert gateway is not None
        jvm = psutil.Process(gateway.proc.pid)
        print(f"spark session started in {time.perf_counter() - started:.1f}s")
        try:
            yield session
        finally:
            session.stop()
            gateway.shutdown()
            gateway.proc.stdin.close()  # the JVM launched by pyspark exits when its stdin closes
            try:
                gateway.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.proc.kill()
                gateway.proc.wait(timeout=10)
            SparkContext._gateway = None
            SparkContext._jvm = None
            assert not jvm.is_running()


def spark_frame(spark: Any, rows: pa.Table) -> Any:
    return spark.createDataFrame(rows.to_pandas()).repartition(2)  # two partitions, several batches each


def test_spark_predict_batch_udf_one_column_per_feature_labels_and_struct(spark: Any, project: Path,
                                                                         rows: pa.Table) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType, StringType, StructType

    contract = str(project / "mlship.yaml")
    want = expected(project, rows)
    df = spark_frame(spark, rows)
    started = time.perf_counter()
    classify = predict_batch_udf(lambda: predict_fn(contract), return_type=StringType(), batch_size=300)
    got = df.withColumn("label", classify(*FEATURES)).select("id", "label").collect()
    assert_rows_equal([r["id"] for r in got], [r["label"] for r in got], None, rows, want)

    return_type = predict_fn(contract, output="columns").spark_return_type()
    assert isinstance(return_type, StructType)
    assert return_type.names == ["label"] + [f"probabilities_{c}" for c in CLASSES]
    assert isinstance(return_type["probabilities_setosa"].dataType, DoubleType)
    scores = predict_batch_udf(lambda: predict_fn(contract, output="columns"), return_type=return_type,
                               batch_size=300)
    got = df.withColumn("pred", scores(*FEATURES)).select("id", "pred.*").collect()
    assert_rows_equal([r["id"] for r in got], [r["label"] for r in got],
                      {c: [r[f"probabilities_{c}"] for r in got] for c in CLASSES}, rows, want)
    print(f"spark: 2 x 2,000 rows in {time.perf_counter() - started:.1f}s (python workers and model load included)")


def test_spark_one_vector_column_with_input_tensor_shapes(spark: Any, project: Path, rows: pa.Table) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.functions import array

    contract = str(project / "mlship.yaml")
    want = expected(project, rows)
    fn = predict_fn(contract, inputs="array")
    classify = predict_batch_udf(lambda: predict_fn(contract, inputs="array"),
                                 return_type=fn.spark_return_type(), batch_size=500,
                                 input_tensor_shapes=[[len(FEATURES)]])
    got = spark_frame(spark, rows).withColumn("label", classify(array(*FEATURES))).select("id", "label").collect()
    assert_rows_equal([r["id"] for r in got], [r["label"] for r in got], None, rows, want)


def test_spark_a_null_feature_fails_the_job_naming_the_row_and_the_feature(spark: Any, project: Path) -> None:
    from pyspark.errors import PythonException
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import StringType

    contract = str(project / "mlship.yaml")
    frame = rows_table(50, seed=12).to_pandas()
    frame.loc[7, "petal_width"] = None
    classify = predict_batch_udf(lambda: predict_fn(contract), return_type=StringType(), batch_size=100)
    with pytest.raises(PythonException, match=r"Row 7 of the batch does not fit the contract: petal_width"):
        spark.createDataFrame(frame).withColumn("label", classify(*FEATURES)).collect()


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    import ray

    started = time.perf_counter()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    others = {p.pid for p in psutil.Process().children(recursive=True)}  # a Spark JVM of this module, say
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
                 _temp_dir=temp, _node_ip_address="127.0.0.1")
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"ray runtime started in {time.perf_counter() - started:.1f}s")
        ours = {p.pid for p in psutil.Process().children(recursive=True)} - others
        try:
            yield ray
        finally:
            ray.shutdown()
            alive = [p for p in map(_process, ours) if p is not None and p.is_running() and p.status() != "zombie"]
            _, alive = psutil.wait_procs(alive, timeout=20)
            shutil.rmtree(temp, ignore_errors=True)
            assert not alive, f"Ray processes left running: {[p.cmdline()[:2] for p in alive]}"


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_ray_map_batches_pandas_format_keeps_the_id(ray_runtime: Any, project: Path, rows: pa.Table) -> None:
    contract = str(project / "mlship.yaml")
    want = expected(project, rows)
    started = time.perf_counter()
    ds = ray_runtime.data.from_arrow(rows)
    out: pd.DataFrame = ds.map_batches(predict_fn(contract), batch_format="pandas", batch_size=300).to_pandas()
    assert list(out.columns) == ["id", "label"] + [f"probabilities_{c}" for c in CLASSES]
    assert_rows_equal(out["id"].tolist(), out["label"].tolist(),
                      {c: out[f"probabilities_{c}"].tolist() for c in CLASSES}, rows, want)
    print(f"ray (pandas): 2,000 rows in {time.perf_counter() - started:.1f}s (worker and model load included)")


def test_ray_map_batches_numpy_format(ray_runtime: Any, project: Path, rows: pa.Table) -> None:
    contract = str(project / "mlship.yaml")
    want = expected(project, rows)
    ds = ray_runtime.data.from_arrow(rows)
    batches = list(ds.map_batches(predict_fn(contract), batch_format="numpy", batch_size=300)
                   .iter_batches(batch_format="numpy", batch_size=None))
    out = {k: np.concatenate([b[k] for b in batches]).tolist() for k in batches[0]}
    assert_rows_equal(out["id"], out["label"], {c: out[f"probabilities_{c}"] for c in CLASSES}, rows, want)


def test_predict_fn_refuses_a_tensor_contract_bad_options_and_shapes_before_any_engine(project: Path) -> None:
    from mlship.errors import ContractError, PredictionError

    with pytest.raises(ContractError, match="predict_fn scores rows of named features") as info:
        predict_fn(Path(__file__).resolve().parents[1] / "examples" / "torch-digits" / "mlship.yaml")
    assert "mlship serve" in str(info.value.fix)
    with pytest.raises(ContractError, match=r"predict_fn\(inputs='rows', output='label'\) is not an option"):
        predict_fn(project / "mlship.yaml", inputs="rows")  # type: ignore[arg-type]
    fn = predict_fn(project / "mlship.yaml", inputs="array")
    assert list(inspect_params(fn)) == ["features"]
    assert list(inspect_params(predict_fn(project / "mlship.yaml"))) == FEATURES  # what Spark counts
    with pytest.raises(PredictionError, match=r"got 1 input\(s\) of shapes \[\(5, 3\)\]; the contract has 4"):
        fn(np.zeros((5, 3)))
    mixed = {**{f: np.full(3, 1.0) for f in FEATURES}, "sepal_width": np.array([1.0, "wide", 2.0], dtype=object)}
    with pytest.raises(PredictionError, match="Row 1 of the batch does not fit the contract: sepal_width"):
        predict_fn(project / "mlship.yaml")(mixed)


def inspect_params(fn: Any) -> list[str]:
    import inspect

    return list(inspect.signature(fn).parameters)
