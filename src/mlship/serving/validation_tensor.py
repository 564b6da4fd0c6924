"""Validate a tensor input: nested lists of numbers of the contract's shape and dtype (range checked), or
base64 PNGs decoded with Pillow when ``input.tensor.image`` is set. Errors point at the first bad element.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from mlship.contract import TensorSpec, image_layout, shape_text
from mlship.serving.validation_errors import MAX_ERRORS, Batch, InvalidInput, err, got_text, instance_list, only_key

MAX_IMAGE_PIXELS = 4096 * 4096  # a PNG under the body limit can still decode to gigabytes
_INT_RANGES: dict[str, tuple[int, int]] = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1),
                                           "uint8": (0, 255)}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER = (int, float)


class _Problem(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["msg"])
        self.error = error


class TensorValidator:
    """Checks tensor instances: nested lists of numbers of the contract's shape (batch dimension removed),
    or ``{"b64": "<base64 PNG>"}`` when ``input.tensor.image`` is set.

    One instance is ``{"input": <instance>}``, a batch ``{"instances": [<instance>, ...]}``. ``Batch.rows``
    is one numpy array ``(N, *shape[1:])`` in the contract's dtype.
    """

    def __init__(self, spec: TensorSpec, max_instances: int) -> None:
        self.spec = spec
        self.shape = spec.instance_shape
        self.dtype = np.dtype(spec.dtype)
        self.max_instances = max_instances
        self.expected = f"{spec.dtype} array of shape {shape_text(self.shape)}"
        if spec.image is not None:
            self.expected += ' or {"b64": "<base64 PNG>"}'
            self._pil = _import_pillow()

    def validate(self, body: Any) -> Batch:
        if isinstance(body, dict) and "instances" in body:
            only_key(body, "instances")
            instances = instance_list(body["instances"], self.max_instances, "instances")
            return Batch(rows=self._arrays(instances, ["body", "instances"], indexed=True), single=False)
        if isinstance(body, dict) and "input" in body:
            only_key(body, "input")
            return Batch(rows=self._arrays([body["input"]], ["body", "input"], indexed=False), single=True)
        raise InvalidInput([err(["body"], 'expected {"input": <array>} for one instance, or '
                                '{"instances": [<array>, ...]}', "type_error", "object", got_text(body))])

    def _arrays(self, items: list[Any], base: list[Any], indexed: bool) -> Any:
        errors: list[dict[str, Any]] = []
        arrays = []
        for i, item in enumerate(items):
            loc = [*base, i] if indexed else list(base)
            try:
                arrays.append(self._image(item, loc) if isinstance(item, dict) else self._nested(item, loc))
            except _Problem as problem:
                errors.append(problem.error)
                if len(errors) >= MAX_ERRORS:
                    break
        if errors:
            raise InvalidInput(errors)
        return np.stack(arrays)

    # -- nested lists ------------------------------------------------------------------------------
    def _nested(self, item: Any, loc: list[Any]) -> Any:
        if not isinstance(item, list):
            raise _Problem(err(loc, f"expected an array of shape {shape_text(self.shape)}", "type_error",
                               self.expected, got_text(item)))
        bad = _first_mismatch(item, self.shape, [])
        if bad is None:
            return self._values(item, loc)
        path, kind = bad
        sub = _at(item, path)
        if kind == "type":
            raise _Problem(err([*loc, *path], _number_problem(self.spec.dtype), "type_error", self.spec.dtype,
                               got_text(sub)))
        got = _regular_shape(item)
        if got is not None:
            raise _Problem(err(loc, f"expected shape {shape_text(self.shape)}, got {shape_text(got)}",
                               "shape_error", self.expected, f"array of shape {shape_text(got)}"))
        want = f"{self.shape[len(path)]} items" if len(path) < len(self.shape) else "a number"
        raise _Problem(err([*loc, *path], f"expected shape {shape_text(self.shape)}, got a ragged array",
                           "shape_error", want, got_text(sub)))

    def _values(self, item: list[Any], loc: list[Any]) -> Any:
        """Array of the contract's dtype from a well-shaped nested list of int/float (range checked)."""
        name = self.spec.dtype
        if self.dtype.kind == "f":
            try:
                arr = np.array(item, dtype=np.float64)
            except OverflowError:  # a Python int beyond float range
                path = _first_leaf(item, lambda x: not _fits_float(x))
                raise _Problem(err([*loc, *path], f"number out of range for {name}", "value_error", name,
                                   got_text(_at(item, path)))) from None
            bad = ~np.isfinite(arr)
            if bad.any():
                raise self._at_first(bad, arr, loc, "expected a finite number", name)
            if name == "float32":
                bad = np.abs(arr) > _FLOAT32_MAX
                if bad.any():
                    raise self._at_first(bad, arr, loc, "number out of range for float32", name)
            return arr.astype(self.dtype)
        lo, hi = _INT_RANGES[name]
        expected = f"{name} ({lo}..{hi})"
        try:
            arr = np.array(item)
        except (OverflowError, ValueError, TypeError):
            arr = np.array(item, dtype=object)
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr)
            bad[~bad] = arr[~bad] != np.floor(arr[~bad])
            if bad.any():
                raise self._at_first(bad, arr, loc, f"expected an integer ({name})", expected)
            bad = (arr < float(lo)) | (arr >= float(hi) + 1.0)
        elif arr.dtype.kind in "iu":
            bad = (arr < lo) | (arr > hi)
        else:  # object: Python ints beyond 64 bits
            bad = np.vectorize(lambda x: not lo <= x <= hi, otypes=[bool])(arr)
        if bad.any():
            raise self._at_first(bad, arr, loc, f"out of range for {name} ({lo}..{hi})", expected)
        return arr.astype(self.dtype)

    @staticmethod
    def _at_first(bad: Any, arr: Any, loc: list[Any], msg: str, expected: str) -> _Problem:
        index = [int(i) for i in np.argwhere(bad)[0]]
        value = arr[tuple(index)]
        return _Problem(err([*loc, *index], msg, "value_error", expected,
                            got_text(value.item() if isinstance(value, np.generic) else value)))

    # -- images ------------------------------------------------------------------------------------
    def _image(self, item: dict[Any, Any], loc: list[Any]) -> Any:
        image = self.spec.image
        if image is None:
            raise _Problem(err(loc, "this model takes arrays, not images (input.tensor.image is not set)",
                               "type_error", self.expected, got_text(item)))
        unknown = sorted(str(k) for k in item if k != "b64")
        if unknown:
            raise _Problem(err([*loc, unknown[0]], "unknown key next to `b64`", "extra_forbidden",
                               "only `b64`", got_text(unknown[0])))
        if "b64" not in item:
            raise _Problem(err([*loc, "b64"], "field required", "missing", "base64 PNG", "nothing"))
        data = item["b64"]
        loc = [*loc, "b64"]
        if not isinstance(data, str):
            raise _Problem(err(loc, "expected a base64 string", "type_error", "base64 PNG", got_text(data)))
        text = data.partition(",")[2] if data.startswith("data:") else data  # a browser's data: URL
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _Problem(err(loc, "not valid base64", "value_error", "base64 PNG", got_text(data))) from None
        height, width, layout = image_layout(self.shape, image.channels) or (0, 0, "")
        pixels = self._decode(raw, image.channels, width, height, loc)
        lo, hi = image.scale
        arr = lo + pixels.astype(np.float64) * ((hi - lo) / 255.0)
        if layout == "hwc" and arr.ndim == 2:
            arr = arr[..., None]
        elif layout == "chw":
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if self.dtype.kind != "f":
            info = np.iinfo(self.dtype)
            arr = np.clip(np.rint(arr), info.min, info.max)
        return arr.astype(self.dtype)

    def _decode(self, raw: bytes, channels: int, width: int, height: int, loc: list[Any]) -> Any:
        pil = self._pil
        try:
            img = pil.open(io.BytesIO(raw), formats=["PNG"])
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise _Problem(err(loc, f"image too large ({img.width}x{img.height} pixels)", "value_error",
                                   f"at most {MAX_IMAGE_PIXELS} pixels", f"{img.width * img.height} pixels"))
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                img = img.resize((width, height), pil.Resampling.BOX)
            return np.asarray(img)
        except _Problem:
            raise
        except Exception as exc:  # corrupt data raises many kinds (OSError, SyntaxError, zlib.error, ...)
            raise _Problem(err(loc, f"not a readable PNG image ({exc.__class__.__name__})", "value_error",
                               "base64 PNG", f"{len(raw)} bytes")) from None


def _import_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        from mlship.errors import ContractError

        raise ContractError("input.tensor.image needs Pillow to decode PNG images, and it is not installed.",
                            fix="pip install pillow (`mlship build` adds it to images of image contracts).") from None
    return Image


def _number_problem(dtype: str) -> str:
    return "expected a number" if dtype.startswith("float") else f"expected an integer ({dtype})"


def _first_mismatch(value: Any, shape: tuple[int, ...], path: list[int]) -> tuple[list[int], str] | None:
    """(path, "shape" | "type") of the first place ``value`` is not a ``shape`` array of int/float."""
    if not isinstance(value, list) or len(value) != shape[0]:
        return path, "shape"
    if len(shape) == 1:
        if {type(v) for v in value} <= {int, float}:  # exact types: bool (an int subclass) is refused
            return None
        for j, v in enumerate(value):
            if type(v) not in _NUMBER:
                return [*path, j], ("shape" if isinstance(v, list) else "type")
        return None
    for j, v in enumerate(value):
        found = _first_mismatch(v, shape[1:], [*path, j])
        if found is not None:
            return found
    return None


def _regular_shape(value: Any, depth: int = 0) -> list[int] | None:
    """The shape of a nested list when it is regular (numbers at the same depth), else None."""
    if not isinstance(value, list):
        return []
    if depth >= 32:
        return None
    if not value:
        return [0]
    first = _regular_shape(value[0], depth + 1)
    if first is None:
        return None
    for v in value[1:]:
        if _regular_shape(v, depth + 1) != first:
            return None
    return [len(value), *first]


def _at(value: Any, path: list[int]) -> Any:
    for i in path:
        value = value[i]
    return value


def _first_leaf(value: list[Any], bad: Callable[[Any], bool]) -> list[int]:
    """The path of the first leaf of a nested list for which ``bad(leaf)`` is true ([] if none)."""
    for j, v in enumerate(value):
        if isinstance(v, list):
            sub = _first_leaf(v, bad)
            if sub:
                return [j, *sub]
        elif bad(v):
            return [j]
    return []


def _fits_float(x: int) -> bool:
    try:
        float(x)
    except OverflowError:
        return False
    return True
