"""Inputs and outputs as real services use them: text pipelines, (n, 1) regression outputs, bare arrays of
instances (objects or arrays of values) and `mlship init --sample` files that hold several request bodies.

Through real server processes and the CLI (`mlship init`, `validate`, `predict --local`)."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import IRIS, Server, make_iris_project, outcome, running, slow_validator, write_custom_project
from mlship.cli import app
from mlship.contract import Feature
from mlship.serving.validation import Validator

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}
MAX_INSTANCES = 5

TEXTS = ["win money now", "free prize claim now", "cheap pills free offer", "you won a free cruise",
         "meeting at noon", "see you tomorrow", "lunch with the team", "notes from the meeting"]
LABELS = ["spam"] * 4 + ["ham"] * 4
QUERIES = ["free money", "team lunch tomorrow", "", "123", "claim your prize now"]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def values(inst: dict[str, Any]) -> list[Any]:
    return [inst[f] for f in FEATURES]


def post(client: httpx.Client, body: Any) -> httpx.Response:
    return client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})


# -- 1. text pipelines ---------------------------------------------------------------------------------------
def text_pipeline(vectorizer: Any = None, classifier: Any = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    steps = [("tfidf", vectorizer or TfidfVectorizer()), ("clf", classifier or LogisticRegression())]
    return Pipeline(steps).fit(TEXTS, LABELS)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with model.joblib (tfidf + logistic regression on strings, compressed) and mlship.yaml from
    `mlship init`, run in that folder."""
    root = tmp_path_factory.mktemp("text")
    joblib.dump(text_pipeline(), root / "model.joblib", compress=3)
    result = invoke("init", str(root / "model.joblib"), "--dir", str(root))
    assert result.exit_code == 0, result.output
    return root


def in_process(root: Path, texts: list[str]) -> tuple[list[str], Any]:
    model = joblib.load(root / "model.joblib")
    return [str(v) for v in model.predict(texts)], model.predict_proba(texts)


def check_same(predictions: list[dict[str, Any]], root: Path, texts: list[str]) -> None:
    labels, proba = in_process(root, texts)
    assert [p["label"] for p in predictions] == labels
    for p, row in zip(predictions, proba, strict=True):
        assert list(p["probabilities"]) == ["ham", "spam"]
        assert np.allclose(list(p["probabilities"].values()), row, rtol=0, atol=1e-12)


def test_init_text_pipeline_writes_a_text_feature(text_dir: Path) -> None:
    data = yaml.safe_load((text_dir / "mlship.yaml").read_text())
    assert data["input"] == {"features": {"text": "str"}}
    assert data["task"] == "classification"
    assert data["output"] == {"labels": ["ham", "spam"]}
    [example] = data["examples"]
    assert example["input"] == {"text": ""}
    assert example["output"] == {"label": in_process(text_dir, [""])[0][0]}


def test_init_text_sample_csv_keeps_text_and_json_works(tmp_path: Path, text_dir: Path) -> None:
    shutil.copy(text_dir / "model.joblib", tmp_path / "model.joblib")
    (tmp_path / "rows.csv").write_text("text,label\n123,spam\nfree money now,spam\n")
    result = invoke("init", str(tmp_path / "model.joblib"), "--dir", str(tmp_path), "--sample",
                    str(tmp_path / "rows.csv"))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert example["input"] == {"text": "123"}  # a number-like cell of a str feature stays text
    assert example["output"] == {"label": in_process(text_dir, ["123"])[0][0]}
    (tmp_path / "rows.json").write_text(json.dumps([{"text": "claim your free prize"}, {"text": "hi"}]))
    result = invoke("init", str(tmp_path / "model.joblib"), "--dir", str(tmp_path), "--force", "--sample",
                    str(tmp_path / "rows.json"))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert example == {"input": {"text": "claim your free prize"},
                       "output": {"label": in_process(text_dir, ["claim your free prize"])[0][0]}}


def test_text_pipeline_validate_and_predict_local(text_dir: Path) -> None:
    result = invoke("validate", "-f", str(text_dir))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ok examples[0]" in text
    # skl2onnx is never given strings: the compiled path declines and says why; the pipeline itself serves
    assert "compiled path not used: the input has non-numeric features" in text
    body = json.dumps({"instances": [{"text": t} for t in QUERIES]})
    result = invoke("predict", "--local", "-f", str(text_dir), "--json", "-d", body)
    assert result.exit_code == 0, result.output
    check_same(json.loads(result.stdout)["predictions"], text_dir, QUERIES)


def test_text_pipeline_serves_the_same_as_in_process(text_dir: Path) -> None:
    with running(text_dir, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        one = post(http, {"text": "free money"})
        assert one.status_code == 200, one.text
        check_same([one.json()], text_dir, ["free money"])
        for body in ({"instances": [{"text": t} for t in QUERIES]}, [{"text": t} for t in QUERIES],
                     [[t] for t in QUERIES]):
            r = post(http, body)
            assert r.status_code == 200, r.text
            check_same(r.json()["predictions"], text_dir, QUERIES)
        bad = post(http, {"text": 3})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "text"]
        meta = http.get("/metadata").json()
        assert meta["compiled"] is False
        assert meta["model_input"] == "text (a list of strings)"
        assert "Traceback" not in server.output()


@pytest.mark.parametrize("kind", ["count", "hashing", "nested", "regressor"])
def test_other_text_pipelines(tmp_path: Path, kind: str) -> None:
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    if kind == "count":
        model = text_pipeline(CountVectorizer())
    elif kind == "hashing":
        model = text_pipeline(HashingVectorizer(n_features=64))
    elif kind == "nested":
        model = Pipeline([("features", Pipeline([("counts", CountVectorizer())])), ("clf", Ridge())])
        model.fit(TEXTS, [float(len(t)) for t in TEXTS])
    else:
        model = Pipeline([("counts", CountVectorizer()), ("reg", Ridge())]).fit(TEXTS, [float(len(t)) for t in TEXTS])
    joblib.dump(model, tmp_path / "m.joblib")
    result = invoke("init", str(tmp_path / "m.joblib"), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "mlship.yaml").read_text())
    assert data["input"] == {"features": {"text": "str"}}
    assert data["task"] == ("classification" if kind in ("count", "hashing") else "regression")
    predictor = Predictor(load_project(tmp_path), keep_compiled=False)
    predictor.load()
    got = predictor.predict([[t] for t in QUERIES])
    expected = model.predict(QUERIES)
    key = "label" if data["task"] == "classification" else "value"
    assert [g[key] for g in got] == [v if key == "value" else str(v) for v in expected.tolist()]


def test_text_vectorizer_reading_files_is_refused(tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    files = []
    for i, t in enumerate(TEXTS):
        files.append(str(tmp_path / f"doc{i}.txt"))
        Path(files[-1]).write_text(t)
    model = Pipeline([("v", CountVectorizer(input="filename")), ("c", LogisticRegression())]).fit(files, LABELS)
    joblib.dump(model, tmp_path / "m.joblib")
    result = invoke("init", str(tmp_path / "m.joblib"), "--dir", str(tmp_path))
    assert result.exit_code != 0
    assert "input='filename'" in " ".join(result.output.split())
    assert not (tmp_path / "mlship.yaml").exists()


def test_text_model_with_wrong_features_is_a_clear_error(tmp_path: Path, text_dir: Path) -> None:
    for name in ("model.joblib", "MODEL.md"):
        shutil.copy(text_dir / name, tmp_path / name)
    data = yaml.safe_load((text_dir / "mlship.yaml").read_text())
    data["input"] = {"features": {"title": "str", "body": "str"}}
    data["examples"] = [{"input": {"title": "a", "body": "b"}}]
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(data))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code != 0
    assert "takes one text per instance" in " ".join(result.output.split())


def test_text_model_with_compile_onnx_says_why(tmp_path: Path, text_dir: Path) -> None:
    for name in ("model.joblib", "MODEL.md"):
        shutil.copy(text_dir / name, tmp_path / name)
    data = yaml.safe_load((text_dir / "mlship.yaml").read_text())
    data["serve"] = {"compile": "onnx"}
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(data))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code != 0
    assert "non-numeric features" in " ".join(result.output.split())


# -- 2. (n, 1) regression outputs ----------------------------------------------------------------------------
def column_regressor(kind: str) -> Any:
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x @ np.array([1.0, 2.0, -3.0]) + 0.5).reshape(-1, 1)  # a 2-D target: predict returns (n, 1)
    model = (LinearRegression() if kind == "linear" else PLSRegression(n_components=2)).fit(x, y)
    assert model.predict(x[:2]).shape == (2, 1)
    return model


@pytest.mark.parametrize("kind", ["linear", "pls"])
def test_column_regressor_answers_one_value(tmp_path: Path, kind: str) -> None:
    model = column_regressor(kind)
    joblib.dump(model, tmp_path / "reg.joblib")
    result = invoke("init", str(tmp_path / "reg.joblib"), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert isinstance(example["output"]["value"], float)
    rows = [[0.1, 0.2, 0.3], [1.0, -1.0, 2.0]]
    expected = model.predict(np.asarray(rows))[:, 0]
    with running(tmp_path, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        one = post(http, {"x0": 0.1, "x1": 0.2, "x2": 0.3})
        assert one.status_code == 200, one.text
        assert set(one.json()) == {"value"}
        assert isinstance(one.json()["value"], float)
        assert math.isclose(one.json()["value"], expected[0], rel_tol=1e-5)
        batch = post(http, rows).json()["predictions"]
        assert [set(p) for p in batch] == [{"value"}, {"value"}]
        assert np.allclose([p["value"] for p in batch], expected, rtol=1e-5)
        assert http.get("/metadata").json()["compiled"] is True  # the ONNX model's (n, 1) output agrees too
    # the original model (no compiled path) answers the same way
    (tmp_path / "mlship.yaml").write_text((tmp_path / "mlship.yaml").read_text() + "serve:\n  compile: \"off\"\n")
    result = invoke("predict", "--local", "-f", str(tmp_path), "--json", "-d", json.dumps({"instances": rows}))
    assert result.exit_code == 0, result.output
    got = [p["value"] for p in json.loads(result.stdout)["predictions"]]
    assert np.allclose(got, expected, rtol=0, atol=1e-12)


CUSTOM_ESTIMATOR = """
import numpy as np

class Column:
    \"\"\"A user's model whose predict returns an (n, 1) array.\"\"\"
    n_features_in_ = 2

    def predict(self, x):
        return np.asarray(x, dtype=float).sum(axis=1, keepdims=True)

def load(path):
    return Column()
"""


def test_custom_estimator_with_a_column_output(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"unused")
    (tmp_path / "custom.py").write_text(CUSTOM_ESTIMATOR)
    (tmp_path / "mlship.yaml").write_text(textwrap.dedent("""\
        name: column
        runtime: sklearn
        artifact: model.pkl
        task: regression
        load: custom.py:load
        input:
          features: {a: float, b: float}
        examples:
          - input: {a: 1.0, b: 2.0}
            output: {value: 3.0}
        """))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output
    result = invoke("predict", "--local", "-f", str(tmp_path), "--json", "-d", '{"a": 1.5, "b": 2.0}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"predictions": [{"value": 3.5}]}


@pytest.mark.parametrize("returns", ["np.asarray(xs).reshape(-1, 1) * model",
                                     "(np.asarray(xs).reshape(-1, 1) * model).tolist()"])
def test_predict_snippet_returning_a_column(tmp_path: Path, returns: str) -> None:
    write_custom_project(tmp_path, f"""
        import numpy as np

        def load(path):
            return 2.0

        def predict(model, instances):
            xs = [i["x"] for i in instances]
            return {returns}
        """)
    with running(tmp_path, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        assert post(http, {"x": 1.5}).json() == {"value": 3.0}
        assert post(http, [{"x": 1.0}, [2.0]]).json() == {"predictions": [{"value": 2.0}, {"value": 4.0}]}


# -- 3. bare arrays of instances, and instances as arrays of values ------------------------------------------
@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Iterator[Server]:
    project = make_iris_project(tmp_path_factory.mktemp("iris-shapes"), iris_model,
                                f"serve:\n  max_instances: {MAX_INSTANCES}\n")
    with running(project, env={"MLSHIP_API_KEYS": ""}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(iris: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=iris.url, timeout=10.0) as c:
        yield c


@pytest.mark.parametrize("body", [
    [SETOSA, VIRGINICA],
    [values(SETOSA), values(VIRGINICA)],
    [values(SETOSA), VIRGINICA],
    {"instances": [values(SETOSA), values(VIRGINICA)]},
    [[5, 3.5, 1.4, 0.2], [7.7, 3, 6.1, 2.3]],  # integers for floats: the slow path converts them
], ids=["objects", "arrays", "mixed", "instances-of-arrays", "ints"])
def test_bare_arrays_and_value_rows_predict_like_objects(client: httpx.Client, body: Any) -> None:
    expected = post(client, {"instances": [SETOSA, VIRGINICA]}).json()
    r = post(client, body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"predictions"}
    assert [p["label"] for p in got["predictions"]] == ["setosa", "virginica"]
    if body != [[5, 3.5, 1.4, 0.2], [7.7, 3, 6.1, 2.3]]:
        assert got == expected


@pytest.mark.parametrize(("body", "loc", "kind", "msg"), [
    ([SETOSA, [5.1, 3.5, "x", 0.2]], ["body", 1, 2], "value_error", "expected a number"),
    ([SETOSA, [5.1, 3.5, True, 0.2]], ["body", 1, 2], "value_error", "expected a number"),
    ({"instances": [[5.1, 3.5, 1.4]]}, ["body", "instances", 0], "length_error",
     "expected 4 values (the features in order: sepal_length, sepal_width, petal_length, petal_width)"),
    ([SETOSA, {**SETOSA, "petal_width": "wide"}], ["body", 1, "petal_width"], "value_error", "expected a number"),
    ([SETOSA, 3], ["body", 1], "type_error", "each instance must be an object of features or an array of values"),
    ([], ["body"], "too_short", "the array of instances is empty"),
    ([SETOSA] * (MAX_INSTANCES + 1), ["body"], "too_long", f"too many instances (limit {MAX_INSTANCES})"),
    ([values(SETOSA)] * (MAX_INSTANCES + 1), ["body"], "too_long", f"too many instances (limit {MAX_INSTANCES})"),
])
def test_bare_array_errors_are_422_with_paths(client: httpx.Client, body: Any, loc: list[Any], kind: str,
                                              msg: str) -> None:
    r = post(client, body)
    assert r.status_code == 422, r.text
    payload = r.json()
    assert payload["error"] == "invalid_input"
    first = payload["detail"][0]
    assert (first["loc"], first["type"], first["msg"]) == (loc, kind, msg)
    assert payload["message"] == msg


def test_openapi_documents_the_bare_array(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    single, batch, bare = body["schema"]["oneOf"]
    assert single == {"$ref": "#/components/schemas/Instance"}
    assert bare["type"] == "array" and bare["maxItems"] == MAX_INSTANCES and bare["minItems"] == 1
    assert bare["items"] == batch["properties"]["instances"]["items"]
    row = doc["components"]["schemas"]["Row"]
    assert row["minItems"] == row["maxItems"] == 4
    assert [item["type"] for item in row["prefixItems"]] == ["number"] * 4
    assert body["examples"]["rows"]["value"] == [values(SETOSA)]
    assert post(client, body["examples"]["rows"]["value"]).status_code == 200


TENSOR_PREDICT = """\
    def load(path):
        return None

    def predict(model, instances):
        return [float(x.sum()) for x in instances]
    """


def test_tensor_contract_still_refuses_a_bare_array(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"unused")
    (tmp_path / "predict.py").write_text(textwrap.dedent(TENSOR_PREDICT))
    (tmp_path / "mlship.yaml").write_text(textwrap.dedent("""\
        name: summer
        runtime: sklearn
        artifact: model.bin
        task: regression
        load: predict.py:load
        predict: predict.py:predict
        input:
          tensor: {shape: [null, 2], dtype: float32}
        examples:
          - input: {input: [1, 2]}
            output: {value: 3}
        """))
    with running(tmp_path, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        assert post(http, {"instances": [[1, 2], [3, 4]]}).json() == {"predictions": [{"value": 3.0},
                                                                                      {"value": 7.0}]}
        r = post(http, [[1, 2], [3, 4]])
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert detail[0]["loc"] == ["body"]
        assert '{"instances": [<array>, ...]}' in detail[0]["msg"]
        doc = http.get("/openapi.json").json()
        forms = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        assert len(forms) == 2  # no bare array form for tensors


UNIFORM = {"a": Feature(type="float"), "b": Feature(type="float"), "c": Feature(type="float")}
MIXED = {"x": Feature(type="float", minimum=0, maximum=10), "n": Feature(type="int", enum=[1, 2, 3]),
         "s": Feature(type="str"), "f": Feature(type="bool")}
field_values = (st.none() | st.booleans() | st.integers(-5, 15) | st.text(max_size=2)
                | st.floats(allow_nan=True, allow_infinity=True))


@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(data=st.data(), mixed=st.booleans(), bare=st.booleans())
def test_fast_validation_of_value_rows_agrees_with_the_slow_path(data: st.DataObject, mixed: bool,
                                                                 bare: bool) -> None:
    features = MIXED if mixed else UNIFORM
    valid = (st.tuples(st.floats(-1, 11), st.sampled_from([1, 2, 3, 4]), st.text(max_size=2), st.booleans())
             if mixed else st.tuples(*(st.floats(allow_nan=False) for _ in features)))
    rows = (valid.map(list) | valid.map(list)
            | st.lists(field_values, min_size=len(features), max_size=len(features))
            | st.lists(field_values, max_size=5))
    instances = data.draw(st.lists(rows, min_size=1, max_size=4))
    body = instances if bare else {"instances": instances}
    fast, slow = outcome(Validator(features, 50), body), outcome(slow_validator(features), body)
    assert repr(fast) == repr(slow)


# -- 4. mlship init --sample with several instances or request bodies ----------------------------------------
ROWS = [{"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}, SETOSA]


@pytest.mark.parametrize("content", [
    ROWS,
    {"instances": ROWS},
    [{"instances": ROWS}, {"instances": [SETOSA]}],
    [values(r) for r in ROWS],
    {"instances": [values(r) for r in ROWS]},
    [{**ROWS[0], "species": "virginica"}, SETOSA],  # a key that is not a feature is left out, as in a CSV
    ROWS[0],
], ids=["list", "instances", "bodies", "arrays", "instances-of-arrays", "extra-key", "one"])
def test_init_sample_json_forms(tmp_path: Path, iris_model: Path, content: Any) -> None:
    (tmp_path / "model").mkdir()
    shutil.copy(iris_model, tmp_path / "model" / "iris.joblib")
    (tmp_path / "sample.json").write_text(json.dumps(content))
    result = invoke("init", str(tmp_path / "model" / "iris.joblib"), "--dir", str(tmp_path), "--sample",
                    str(tmp_path / "sample.json"))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert example == {"input": ROWS[0], "output": {"label": "virginica"}}


@pytest.mark.parametrize("content", [[], [[5.1, 3.5]], "text", [1, 2, 3]])
def test_init_sample_json_without_an_instance(tmp_path: Path, iris_model: Path, content: Any) -> None:
    (tmp_path / "model").mkdir()
    shutil.copy(iris_model, tmp_path / "model" / "iris.joblib")
    (tmp_path / "sample.json").write_text(json.dumps(content))
    result = invoke("init", str(tmp_path / "model" / "iris.joblib"), "--dir", str(tmp_path), "--sample",
                    str(tmp_path / "sample.json"))
    assert result.exit_code == 2, result.output
    assert "expected an object of features, an array of 4 values" in " ".join(result.output.split())
    assert not (tmp_path / "mlship.yaml").exists()


def test_read_tensor_sample_takes_the_first_body_of_a_list(tmp_path: Path) -> None:
    from mlship.init import read_tensor_sample

    path = tmp_path / "bodies.json"
    path.write_text(json.dumps([{"instances": [[1, 2], [3, 4]]}, {"instances": [[5, 6]]}]))
    assert read_tensor_sample(path) == {"input": [1, 2]}
    path.write_text(json.dumps({"instances": [[7, 8]]}))
    assert read_tensor_sample(path) == {"input": [7, 8]}


def test_iris_example_rows_csv_still_gives_the_first_row() -> None:
    from mlship.init import read_sample

    assert read_sample(IRIS / "rows.csv", FEATURES) == SETOSA
