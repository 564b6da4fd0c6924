"""Tensor inputs (`input.tensor`): the contract, OpenAPI, pages and the warm-up body, and the server/CLI around
a tensor contract. No framework needed: the model is user code (predict.py). The TensorValidator:
test_tensor_validation.py.
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import running
from mlship.cli import app
from mlship.client import read_tensors
from mlship.contract_io import parse_contract
from mlship.errors import ClientError, ContractError
from mlship.serving import openapi, pages
from mlship.serving.validation import (
    Validator,
    make_validator,
    sample_body,
)
from tensor_helpers import png_b64, spec

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

HEAD = "name: t\nruntime: sklearn\nartifact: m.pkl\ntask: regression\n"


# -- the contract -----------------------------------------------------------------------------------------
def test_tensor_contract_parses() -> None:
    c = parse_contract(HEAD + "input: {tensor: {shape: [null, 8, 8], image: {channels: 1, scale: [0, 16]}}}\n")
    assert c.input.tensor is not None
    assert c.input.tensor.instance_shape == (8, 8)
    assert c.input.tensor.dtype == "float32"
    assert c.feature_names == []
    assert c.input.features == {}


@pytest.mark.parametrize(("text", "message"), [
    ("input: {tensor: {shape: [3, 8, 8]}}", "input.tensor.shape: the first dimension is the batch dimension"),
    ("input: {tensor: {shape: [null, 8, 0]}}", "input.tensor.shape: every dimension after the first"),
    ("input: {tensor: {shape: [null, 8, null]}}", "got [null, 8, null]"),
    ("input: {tensor: {shape: [null]}}", "input.tensor.shape"),
    ("input: {tensor: {shape: [null, 8], dtype: float16}}", "input.tensor.dtype"),
    ("input: {tensor: {shape: [null, 8, 8], image: {channels: 3}}}", "image.channels 3 needs a shape like"),
    ("input: {tensor: {shape: [null, 8, 8], image: {channels: 2}}}", "input.tensor.image.channels"),
    ("input: {tensor: {shape: [null, 8, 8], image: {channels: 1, scale: [1, 0]}}}", "min < max"),
    ("input: {tensor: {shape: [null, 8, 8], imag: {}}}", "did you mean `image`?"),
    ("input: {}", "input: give exactly one of `features`"),
    ("input: {features: {x: float}, tensor: {shape: [null, 2]}}", "not both"),
])
def test_bad_tensor_contracts_name_the_path(text: str, message: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_contract(HEAD + text + "\n")
    assert message in info.value.message


@pytest.mark.parametrize(("shape", "channels"), [
    ([None, 8, 8], 1), ([None, 8, 8, 1], 1), ([None, 1, 8, 8], 1), ([None, 28, 28, 3], 3), ([None, 3, 28, 28], 3),
])
def test_image_layouts(shape: list[int | None], channels: int) -> None:
    spec(shape, image={"channels": channels})


def test_tensor_examples_are_request_bodies() -> None:
    base = HEAD + "input: {tensor: {shape: [null, 2]}}\n"
    assert parse_contract(base + "examples: [{input: {input: [1, 2]}}]\n").examples[0].input == {"input": [1, 2]}
    with pytest.raises(ContractError, match=r"examples\[0\].input must be the body of one request"):
        parse_contract(base + "examples: [{input: {x: [1, 2]}}]\n")


def test_features_contract_unchanged() -> None:
    c = parse_contract(HEAD + "input: {features: {x: float}}\n")
    assert c.input.tensor is None
    assert c.feature_names == ["x"]
    assert isinstance(make_validator(c.input, 10), Validator)


# -- OpenAPI, pages, metadata, warm-up instance ------------------------------------------------------------
IMAGE_CONTRACT = HEAD + textwrap.dedent("""\
    input:
      tensor: {shape: [null, 2, 2], dtype: uint8, image: {channels: 1, scale: [0, 255]}}
    examples:
      - input: {input: [[1, 2], [3, 4]]}
    """)


def test_openapi_for_tensors() -> None:
    c = parse_contract(IMAGE_CONTRACT)
    doc = openapi.openapi(c, "v1", auth=False)
    schemas = doc["components"]["schemas"]
    array, png = schemas["Tensor"]["oneOf"]
    assert array["items"]["items"] == {"type": "integer", "minimum": 0, "maximum": 255}
    assert array["minItems"] == array["maxItems"] == 2
    assert png["properties"]["b64"]["contentMediaType"] == "image/png"
    assert schemas["Instance"]["required"] == ["input"]
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["batch"]["value"] == {"instances": [[[1, 2], [3, 4]]]}
    batch = body["schema"]["oneOf"][1]["properties"]["instances"]
    assert batch["items"] == {"$ref": "#/components/schemas/Tensor"}


def test_pages_for_tensors() -> None:
    c = parse_contract(IMAGE_CONTRACT)
    index = pages.index_page(c, "v1", auth=False)
    assert '<textarea id="tensor"' in index and "[[1, 2], [3, 4]]" in index
    assert 'type="file" accept="image/png"' in index
    docs = pages.docs_page(c, "v1", None)
    assert "uint8 [null, 2, 2]" in docs


def test_sample_body_is_valid() -> None:
    c = parse_contract(IMAGE_CONTRACT)
    body = sample_body(c.input)
    assert body == {"input": [[0, 0], [0, 0]]}
    assert make_validator(c.input, 1).validate(body).rows.shape == (1, 2, 2)


def test_read_tensors(tmp_path: Path) -> None:
    assert read_tensors('{"instances": [[1], [2]]}') == [[1], [2]]
    assert read_tensors('{"input": [1]}') == [[1]]
    assert read_tensors('[{"input": [1]}, {"input": [2]}]') == [[1], [2]]
    png = tmp_path / "d.png"
    Image.new("L", (2, 2)).save(png)
    (one,) = read_tensors(png)
    assert base64.b64decode(one["b64"]) == png.read_bytes()
    with pytest.raises(ClientError, match="CSV cannot hold"):
        read_tensors(tmp_path / "rows.csv")
    with pytest.raises(ClientError, match="expected"):
        read_tensors("[1, 2]")


# -- a tensor project served for real (user code, no framework) ---------------------------------------------
PREDICT_PY = """\
    import numpy as np

    def load(path):
        return "sum"

    def predict(model, instances):
        assert isinstance(instances, np.ndarray), type(instances)
        return [float(x.sum()) for x in instances]
    """


@pytest.fixture(scope="module")
def tensor_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tensor-project")
    (root / "model.bin").write_bytes(b"unused")
    (root / "predict.py").write_text(textwrap.dedent(PREDICT_PY))
    (root / "mlship.yaml").write_text(textwrap.dedent("""\
        name: summer
        runtime: sklearn
        artifact: model.bin
        task: regression
        load: predict.py:load
        predict: predict.py:predict
        input:
          tensor: {shape: [null, 2, 2], dtype: uint8, image: {channels: 1, scale: [0, 255]}}
        examples:
          - input: {input: [[1, 2], [3, 4]]}
            output: {value: 10}
        """))
    return root


def test_tensor_project_over_http(tensor_project: Path) -> None:
    with running(tensor_project) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/predict", json={"input": [[1, 2], [3, 4]]})
        assert r.status_code == 200 and r.json() == {"value": 10.0}
        white = png_b64(np.full((4, 4), 255))
        r = http.post("/predict", json={"instances": [[[0, 0], [0, 1]], {"b64": white}]})
        assert r.json() == {"predictions": [{"value": 1.0}, {"value": 1020.0}]}
        r = http.post("/predict", json={"input": [[1, 2, 3], [3, 4, 5]]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["msg"] == "expected shape [2, 2], got [2, 3]"
        r = http.post("/predict", json={"input": [[1, 2], [3, 300]]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", 1, 1]
        r = http.post("/predict", json={"input": {"b64": "bad!"}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "b64"]
        r = http.post("/predict", content=b'{"input": [[1, 2], [3, NaN]]}')
        assert r.status_code == 422
        meta = http.get("/metadata").json()
        assert meta["tensor"] == {"shape": [None, 2, 2], "dtype": "uint8",
                                  "image": {"channels": 1, "scale": [0.0, 255.0]}}
        assert "textarea" in http.get("/").text
        assert http.get("/openapi.json").json()["components"]["schemas"]["Tensor"]["oneOf"]
        runner = CliRunner()
        sample = tensor_project / "batch.json"
        sample.write_text(json.dumps({"instances": [[[1, 1], [1, 1]], [[2, 2], [2, 2]]]}))
        result = runner.invoke(app, ["predict", "--url", server.url, "--input", str(sample), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["predictions"] == [{"value": 4.0}, {"value": 8.0}]
        png = tensor_project / "white.png"
        Image.new("L", (2, 2), 255).save(png)
        result = runner.invoke(app, ["predict", "--url", server.url, "--input", str(png), "--json"])
        assert json.loads(result.output)["predictions"] == [{"value": 1020.0}]


def test_tensor_project_cli(tensor_project: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["validate", "--file", str(tensor_project)])
    assert result.exit_code == 0, result.output
    assert "tensor uint8 [null, 2, 2] (+ PNG)" in result.output
    result = runner.invoke(app, ["predict", "--local", "--file", str(tensor_project), "--data",
                                 '{"instances": [[[1, 1], [1, 1]]]}', "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["predictions"] == [{"value": 4.0}]
    result = runner.invoke(app, ["predict", "--local", "--file", str(tensor_project), "--data",
                                 '{"input": [[1, 1]]}'])
    assert result.exit_code == 1
    assert "expected shape [2, 2], got [1, 2]" in result.output
    result = runner.invoke(app, ["info", "--file", str(tensor_project)])
    assert "input: tensor uint8 [null, 2, 2] (+ PNG)" in result.output


def test_invalid_tensor_example_is_a_contract_error(tmp_path: Path, tensor_project: Path) -> None:
    for name in ("model.bin", "predict.py"):
        (tmp_path / name).write_bytes((tensor_project / name).read_bytes())
    text = (tensor_project / "mlship.yaml").read_text().replace("[[1, 2], [3, 4]]", "[[1, 2], [3, 4, 5]]")
    (tmp_path / "mlship.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", "--file", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "examples[0].input does not fit the input schema" in result.output
