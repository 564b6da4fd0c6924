"""`mlship batch` on a model that is not compiled (`serve.compile: 'off'`, or a conversion that failed): clean chunks
go to the runtime's own predict as one array, on threads sharing the one loaded model (scikit-learn's predict runs
in numpy and Cython without the GIL); the answers are the server's, row for row, rejects included."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_iris_project
from mlship.batch import BatchOptions, rejects_path, run_batch
from mlship.batch.columns import native_columns
from mlship.batch.run import _Pool
from mlship.batch.score import Scorer
from mlship.contract_io import load_project
from mlship.serving.predictor import Predictor
from mlship.serving.validation import InvalidInput, make_validator

REPO = Path(__file__).resolve().parents[1]
OFF = "serve:\n  compile: 'off'\n"
PLANTED = {5: None, 4100: math.nan, 8191: math.inf, 11_999: None}  # row -> a bad value of its second feature


@pytest.fixture(scope="module")
def iris_off(tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Path:
    return make_iris_project(tmp_path_factory.mktemp("iris-off"), iris_model, OFF)


@pytest.fixture(scope="module")
def forest_off(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlship.init import init_project

    root = tmp_path_factory.mktemp("forest-off")
    spec = importlib.util.spec_from_file_location("forest_train", REPO / "examples" / "forest-sklearn" / "train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train.train(root / "model" / "forest.joblib")
    shutil.copy(REPO / "examples" / "forest-sklearn" / "rows.csv", root / "rows.csv")
    init_project(root / "model" / "forest.joblib", directory=root, sample=root / "rows.csv")
    with (root / "mlship.yaml").open("a") as fh:
        fh.write(OFF)
    return root


def data(features: list[str], n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    rows: list[dict[str, Any]] = pa.table({"id": np.arange(n) * 7, **{f: rng.uniform(0, 20, n)
                                                                       for f in features}}).to_pylist()
    for i, value in PLANTED.items():
        rows[i][features[1]] = value
    return rows


@pytest.mark.parametrize("which", ["iris_off", "forest_off"])
def test_a_model_not_compiled_scores_arrays_on_threads_with_the_servers_answers(which: str, tmp_path: Path,
                                                                              request: pytest.FixtureRequest) -> None:
    root: Path = request.getfixturevalue(which)
    project = load_project(root)
    features = project.contract.feature_names
    scorer = Scorer(root / "mlship.yaml", 4096)
    assert scorer.predictor.compiled is None and scorer.releases_gil  # the model as it is, one array per chunk
    with _Pool(root / "mlship.yaml", 4096, 2) as pool:
        assert pool.threads is not None and pool.executor is None  # no process started, no chunk pickled
    rows = data(features, 12_000)
    columns = native_columns(scorer.predictor, np.array([[r[f] for f in features] for r in rows[6:20]]))
    assert columns is not None and "label" in columns  # the column path, not Predictor.predict's dicts
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    two = run_batch(root, tmp_path / "rows.parquet", tmp_path / "two.parquet", BatchOptions(workers=2,
                                                                                             chunk_rows=4096))
    one = run_batch(root, tmp_path / "rows.parquet", tmp_path / "one.parquet", BatchOptions(workers=1,
                                                                                             chunk_rows=4096))
    assert (two.rows, two.rejects, two.chunks) == (12_000, len(PLANTED), 3) and one.rejects == len(PLANTED)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()

    # the server: the validator, then Predictor.predict on the validated rows of one request
    predictor = Predictor(project)
    predictor.load()
    validator = make_validator(project.contract.input, 20_000)
    good = [r for i, r in enumerate(rows) if i not in PLANTED]
    answers = predictor.predict(validator.validate({"instances": [{f: r[f] for f in features}
                                                                  for r in good]}).rows)
    out = pq.read_table(tmp_path / "two.parquet")
    assert out.column("id").to_pylist() == [r["id"] for r in good]
    assert out.column("label").to_pylist() == [a["label"] for a in answers]
    names = list(answers[0]["probabilities"])
    assert [c for c in out.column_names if c.startswith("probabilities_")] == [f"probabilities_{n}" for n in names]
    for name in names:
        assert out.column(f"probabilities_{name}").to_pylist() == [a["probabilities"][name] for a in answers]
    assert len({a["label"] for a in answers}) > 1  # the rows reach more than one class

    bad = pq.read_table(rejects_path(tmp_path / "two.parquet"))
    assert bad.column("row").to_pylist() == list(PLANTED) and bad.column("id").to_pylist() == [7 * i for i in PLANTED]
    for i, reason in zip(PLANTED, bad.column("reason").to_pylist(), strict=True):
        assert reason.startswith(f"{features[1]}: ")
        with pytest.raises(InvalidInput):  # the server refuses the same row (422)
            validator.validate({f: rows[i][f] for f in features})


def test_a_regressor_not_compiled_gives_the_servers_values(tmp_path: Path) -> None:
    import joblib
    from sklearn.ensemble import GradientBoostingRegressor

    from mlship.init import init_project

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, (300, 3))
    model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(x, x @ [1.0, -2.0, 0.5])
    (tmp_path / "model").mkdir()
    joblib.dump(model, tmp_path / "model" / "reg.joblib")
    init_project(tmp_path / "model" / "reg.joblib", directory=tmp_path)
    with (tmp_path / "mlship.yaml").open("a") as fh:
        fh.write(OFF)
    project = load_project(tmp_path)
    assert project.contract.task == "regression"
    features = project.contract.feature_names
    rows = data(features, 12_000)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    report = run_batch(tmp_path, tmp_path / "rows.parquet", tmp_path / "out.parquet", BatchOptions(chunk_rows=4096))
    assert (report.rows, report.rejects) == (12_000, len(PLANTED))
    predictor = Predictor(project)
    predictor.load()
    good = [[r[f] for f in features] for i, r in enumerate(rows) if i not in PLANTED]
    assert list(native_columns(predictor, np.array(good[:10]))) == ["value"]  # the column path, not a fallback
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["id", "value"]
    assert out.column("value").to_pylist() == [a["value"] for a in predictor.predict(good)]


def test_labels_are_taken_by_the_argmax_only_when_they_are_the_models(iris_off: Path) -> None:
    """The label column comes from the most probable class when every label the model gave is that class (one list
    comparison); a label that is not (another runtime's, a model's own rule) sends the chunk through np.unique,
    and the column still holds the model's labels."""
    from mlship.batch.columns import _labels_by_argmax

    predictor = Predictor(load_project(iris_off))
    predictor.load()
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    classes = ["setosa", "versicolor", "virginica"]
    by_argmax = _labels_by_argmax(predictor, ["setosa", "virginica", "versicolor"], classes, proba)
    assert by_argmax is not None and by_argmax.to_pylist() == ["setosa", "virginica", "versicolor"]
    assert _labels_by_argmax(predictor, ["setosa", "virginica", "setosa"], classes, proba) is None
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]] * 1000
    columns = native_columns(predictor, rows)
    assert columns is not None
    assert columns["label"].to_pylist() == [p["label"] for p in predictor.predict(rows)]
