"""Bare arrays of instances (objects or arrays of values) through a real server process, the fast validation of
value rows against the slow path, and `mlship init --sample` files that hold several instances or request bodies.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli_helpers import invoke
from conftest import IRIS, Server, make_iris_project, running
from server_processes import post

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}
MAX_INSTANCES = 5


def values(inst: dict[str, Any]) -> list[Any]:
    return [inst[f] for f in FEATURES]


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
