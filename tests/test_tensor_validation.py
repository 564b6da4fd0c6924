"""The TensorValidator: nested lists (shape, dtype, ragged arrays, limits, body shapes, caps), base64 PNGs (decoded,
resized, scaled, layouts, bad images) and fuzzing: nothing but InvalidInput ever escapes.
"""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mlship.serving.validation import (
    MAX_ERRORS,
    InvalidInput,
    TensorValidator,
)
from tensor_helpers import errors, png_b64, spec

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


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
