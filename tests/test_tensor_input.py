"""Tensor inputs (`input.tensor`): the contract, the TensorValidator (shape, dtype, base64 PNG), fuzzing, and
the server/CLI around a tensor contract. No framework needed: the model is user code (predict.py).
"""

from __future__ import annotations

import base64
import io
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import running
from mlship.cli import app
from mlship.client import read_tensors
from mlship.contract import TensorSpec
from mlship.contract_io import parse_contract
from mlship.errors import ClientError, ContractError
from mlship.serving import openapi, pages
from mlship.serving.validation import (
    MAX_ERRORS,
    InvalidInput,
    TensorValidator,
    Validator,
    make_validator,
    sample_body,
)

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

HEAD = "name: t\nruntime: sklearn\nartifact: m.pkl\ntask: regression\n"


def spec(shape: list[int | None], dtype: str = "float32", image: dict[str, Any] | None = None) -> TensorSpec:
    return TensorSpec.model_validate({"shape": shape, "dtype": dtype, "image": image})


def errors(validator: TensorValidator, body: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as info:
        validator.validate(body)
    return info.value.errors


def png_b64(pixels: np.ndarray, mode: str = "L") -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


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


# -- the validator: nested lists ------------------------------------------------------------------------
V88 = TensorValidator(spec([None, 8, 8]), max_instances=5)


def test_single_and_batch() -> None:
    one = V88.validate({"input": [[1] * 8] * 8})
    assert one.single and one.rows.shape == (1, 8, 8) and one.rows.dtype == np.float32
    batch = V88.validate({"instances": [[[0.5] * 8] * 8, [[2] * 8] * 8]})
    assert not batch.single and batch.rows.shape == (2, 8, 8)
    assert batch.rows[1, 0, 0] == 2.0


def test_wrong_shape_says_expected_and_got() -> None:
    errs = errors(V88, {"input": [[1] * 7] * 8})
    assert errs == [{"loc": ["body", "input"], "msg": "expected shape [8, 8], got [8, 7]", "type": "shape_error",
                     "expected": "float32 array of shape [8, 8]", "got": "array of shape [8, 7]"}]
    assert errors(V88, {"input": [[[1]] * 8] * 8})[0]["msg"] == "expected shape [8, 8], got [8, 8, 1]"
    assert errors(V88, {"input": []})[0]["msg"] == "expected shape [8, 8], got [0]"


def test_ragged_array_points_at_the_row() -> None:
    value = [[1] * 8] * 3 + [[1] * 7] + [[1] * 8] * 4
    (err,) = errors(V88, {"instances": [[[0] * 8] * 8, value]})
    assert err["loc"] == ["body", "instances", 1, 3]
    assert err["msg"] == "expected shape [8, 8], got a ragged array"
    assert err["expected"] == "8 items"


@pytest.mark.parametrize(("value", "msg"), [
    ("x", "expected a number"), (None, "expected a number"), (True, "expected a number"),
    ({"a": 1}, "expected a number"),
])
def test_non_numbers_are_refused_at_their_position(value: Any, msg: str) -> None:
    rows = [[0.0] * 8 for _ in range(8)]
    rows[2][5] = value
    (err,) = errors(V88, {"input": rows})
    assert err["loc"] == ["body", "input", 2, 5]
    assert err["msg"] == msg


@pytest.mark.parametrize(("dtype", "value", "msg"), [
    ("int32", 1.5, "expected an integer (int32)"),
    ("int32", 2**31, "out of range for int32"),
    ("int64", 2**63, "out of range for int64"),
    ("int64", 2**70, "out of range for int64"),
    ("int64", -(2**63) - 1, "out of range for int64"),
    ("uint8", 300, "out of range for uint8 (0..255)"),
    ("uint8", -1, "out of range for uint8"),
    ("uint8", 2.5, "expected an integer (uint8)"),
    ("float32", math.nan, "expected a finite number"),
    ("float32", math.inf, "expected a finite number"),
    ("float64", -math.inf, "expected a finite number"),
    ("float32", 1e39, "number out of range for float32"),
    ("float64", 10**400, "number out of range for float64"),
])
def test_wrong_dtype_values(dtype: str, value: Any, msg: str) -> None:
    validator = TensorValidator(spec([None, 2, 3], dtype), 10)
    (err,) = errors(validator, {"instances": [[[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, value]]]})
    assert err["loc"] == ["body", "instances", 1, 1, 2]
    assert msg in err["msg"]


@pytest.mark.parametrize(("dtype", "values"), [
    ("uint8", [0, 255, 3.0]), ("int32", [-(2**31), 2**31 - 1, 0]), ("int64", [-(2**63), 2**63 - 1, 5]),
    ("float64", [1e300, -1e-300, 3]), ("float32", [2.0**127, 1, 0.5]),
])
def test_values_at_the_limits_are_kept_exactly(dtype: str, values: list[Any]) -> None:
    rows = TensorValidator(spec([None, 3], dtype), 10).validate({"input": values}).rows
    assert rows.dtype == np.dtype(dtype)
    assert rows[0].tolist() == [type(rows[0][0].item())(v) for v in values]


def test_body_shapes() -> None:
    assert errors(V88, [1, 2])[0]["loc"] == ["body"]
    assert errors(V88, {"x": 1})[0]["msg"].startswith('expected {"input": <array>}')
    assert errors(V88, {"input": [[0] * 8] * 8, "extra": 1})[0] == {
        "loc": ["body", "extra"], "msg": "unknown key next to `input`", "type": "extra_forbidden",
        "expected": "only `input`", "got": "string 'extra'"}
    assert errors(V88, {"instances": []})[0]["type"] == "too_short"
    assert errors(V88, {"instances": {"a": 1}})[0]["type"] == "type_error"
    assert errors(V88, {"instances": [[[0] * 8] * 8] * 6})[0]["msg"] == "too many instances (limit 5)"
    assert errors(V88, {"input": "abc"})[0]["msg"] == "expected an array of shape [8, 8]"
    assert errors(V88, {"input": {"b64": "AAAA"}})[0]["msg"].startswith("this model takes arrays, not images")


def test_errors_are_capped_and_listed_per_instance() -> None:
    v = TensorValidator(spec([None, 2]), 100)
    errs = errors(v, {"instances": [[1, "x"]] * 50})
    assert len(errs) == MAX_ERRORS
    assert [e["loc"] for e in errs[:2]] == [["body", "instances", 0, 1], ["body", "instances", 1, 1]]


# -- the validator: base64 PNG ----------------------------------------------------------------------------
IMG = TensorValidator(spec([None, 8, 8], image={"channels": 1, "scale": [0, 16]}), 10)


def test_png_is_decoded_resized_and_scaled() -> None:
    pixels = np.arange(64).reshape(8, 8) * 4
    rows = IMG.validate({"input": {"b64": png_b64(pixels)}}).rows
    assert rows.shape == (1, 8, 8) and rows.dtype == np.float32
    np.testing.assert_allclose(rows[0], pixels * 16 / 255, rtol=1e-6)
    big = np.kron(pixels, np.ones((4, 4))).astype(np.uint8)  # 32x32, each pixel a 4x4 block
    np.testing.assert_allclose(IMG.validate({"input": {"b64": png_b64(big)}}).rows[0], rows[0], rtol=1e-6)


def test_png_colour_is_converted_and_data_urls_accepted() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    got = IMG.validate({"instances": [{"b64": "data:image/png;base64," + png_b64(rgb, "RGB")}]}).rows[0]
    np.testing.assert_allclose(got, np.full((8, 8), round(255 * 0.299) * 16 / 255), rtol=1e-6)


@pytest.mark.parametrize(("shape", "channels", "dtype", "out_shape"), [
    ([None, 4, 4, 1], 1, "uint8", (4, 4, 1)), ([None, 1, 4, 4], 1, "float32", (1, 4, 4)),
    ([None, 4, 4, 3], 3, "float64", (4, 4, 3)), ([None, 3, 4, 4], 3, "int32", (3, 4, 4)),
])
def test_png_layouts(shape: list[int | None], channels: int, dtype: str, out_shape: tuple[int, ...]) -> None:
    v = TensorValidator(spec(shape, dtype, {"channels": channels, "scale": [0, 255]}), 10)
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[..., 2] = 200
    rows = v.validate({"input": {"b64": png_b64(rgb, "RGB")}}).rows
    assert rows.shape == (1, *out_shape) and rows.dtype == np.dtype(dtype)
    if channels == 3:
        blue = rows[0][..., 2] if out_shape[-1] == 3 else rows[0][2]
        assert float(blue.min()) == 200


@pytest.mark.parametrize(("instance", "msg"), [
    ({"b64": "!!!not base64"}, "not valid base64"),
    ({"b64": base64.b64encode(b"not a png").decode()}, "not a readable PNG image"),
    ({"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()}, "not a readable PNG image"),
    ({"b64": 5}, "expected a base64 string"),
    ({}, "field required"),
    ({"b64": "", "x": 1}, "unknown key next to `b64`"),
])
def test_bad_images_are_422(instance: dict[str, Any], msg: str) -> None:
    (err,) = errors(IMG, {"instances": [instance]})
    assert err["msg"].startswith(msg)
    assert err["loc"][:3] == ["body", "instances", 0]


def test_jpeg_is_refused_and_huge_images_are_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "JPEG")
    (err,) = errors(IMG, {"input": {"b64": base64.b64encode(buf.getvalue()).decode()}})
    assert err["msg"].startswith("not a readable PNG image")
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")  # tiny file, 25 M pixels
    (err,) = errors(IMG, {"input": {"b64": base64.b64encode(buf.getvalue()).decode()}})
    assert err["msg"].startswith("image too large (5000x5000")


# -- fuzzing: nothing but InvalidInput ever escapes --------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.integers(min_value=-(2**70), max_value=2**70))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.sampled_from(["b64", "input", "x"]) | st.text(max_size=4), kids,
                                             max_size=3), max_leaves=30)
cells = st.integers(-300, 300) | st.floats() | scalars


def near(shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """Arrays of about the right shape, mostly numbers: the interesting part of the input space."""
    if not shape:
        return cells
    sizes = st.sampled_from([shape[0], shape[0], shape[0], max(shape[0] - 1, 0), shape[0] + 1])
    return sizes.flatmap(lambda n: st.lists(near(shape[1:]), min_size=n, max_size=n)) | json_values


b64s = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=12) | st.sampled_from(
    [png_b64(np.zeros((3, 5))), png_b64(np.full((9, 2, 3), 7), "RGB")])
instances = near((2, 3)) | st.fixed_dictionaries({"b64": b64s}) | json_values
bodies = (st.fixed_dictionaries({"input": instances}, optional={"x": json_values})
          | st.fixed_dictionaries({"instances": st.lists(instances, max_size=4) | json_values})
          | json_values)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALIDATORS = [TensorValidator(spec([None, 2, 3], dtype, image), 3)
              for dtype in ("float32", "float64", "int32", "int64", "uint8")
              for image in (None, {"channels": 1, "scale": [-1, 1]})]


@FUZZ
@given(body=bodies, which=st.integers(0, len(VALIDATORS) - 1))
def test_fuzz_tensor_validator(body: Any, which: int) -> None:
    validator = VALIDATORS[which]
    try:
        batch = validator.validate(body)
    except InvalidInput as exc:
        assert 1 <= len(exc.errors) <= MAX_ERRORS
        for err in exc.errors:
            assert set(err) == {"loc", "msg", "type", "expected", "got"}
            assert err["loc"][0] == "body"
        json.dumps(exc.errors)  # JSON-ready
        return
    rows = batch.rows
    assert rows.dtype == validator.dtype
    assert rows.shape[1:] == (2, 3)
    assert 1 <= rows.shape[0] <= 3
    if rows.dtype.kind == "f":
        assert np.isfinite(rows).all()


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
