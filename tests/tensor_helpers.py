"""Helpers of the tensor input tests (test_tensor_input.py, test_tensor_validation.py): a TensorSpec from a shape,
the errors a body gets, a PNG as base64."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mlship.contract import TensorSpec
from mlship.serving.validation import InvalidInput, TensorValidator


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
