"""Validate a /predict body against the contract's input (named features or a tensor), with field-path
errors.

Hand-written rather than generated so that the hot path is one pass over plain Python objects and
every error says where (``loc``), what was expected and what was received.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import math
import operator
import random
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlship.contract import Feature, InputSpec, TensorSpec, image_layout, shape_text

MAX_ERRORS = 20
MAX_IMAGE_PIXELS = 4096 * 4096  # a PNG under the body limit can still decode to gigabytes


@dataclass
class Batch:
    """Validated instances; ``single`` if one was sent bare.

    ``rows``: for named features a list of rows (values in the contract's feature order); for a tensor
    input one numpy array of shape ``(N, *shape[1:])`` in the contract's dtype.
    """

    rows: Any
    single: bool


class InvalidInput(Exception):
    """The body does not match the input schema; ``errors`` are JSON-ready dicts with ``loc``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid input")
        self.errors = errors


def _got(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:  # arrays/objects nested deeper than the recursion limit
        text = reprlib.repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{_json_type(value)} {text}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def instance_list(instances: Any, limit: int, of: str, loc: tuple[Any, ...] = ("body", "instances")) -> list[Any]:
    """``body["instances"]`` (or the body, a bare array: ``loc`` ("body",)) once it is a non-empty array of at
    most ``limit`` items (else 422)."""
    what = "`instances`" if loc[-1] == "instances" else "the array of instances"
    if not isinstance(instances, list):
        raise InvalidInput([_err(list(loc), f"{what} must be an array of {of}",
                                 "type_error", "array", _got(instances))])
    if not instances:
        raise InvalidInput([_err(list(loc), f"{what} is empty", "too_short", "at least 1 instance", "0")])
    if len(instances) > limit:
        raise InvalidInput([_err(list(loc), f"too many instances (limit {limit})", "too_long",
                                 f"at most {limit}", str(len(instances)))])
    return instances


def make_validator(spec: InputSpec, max_instances: int) -> Validator | TensorValidator:
    """The validator for a contract's input: named features or one tensor per instance."""
    if spec.tensor is not None:
        return TensorValidator(spec.tensor, max_instances)
    return Validator(spec.features, max_instances)


class Validator:
    """Checks instances against ``features`` (name -> Feature, in model order)."""

    def __init__(self, features: dict[str, Feature], max_instances: int) -> None:
        self.features = features
        self.names = list(features)
        self.max_instances = max_instances
        self._known = set(features)
        # the fast path: each value of exactly the Python type the feature takes (then it needs no conversion)
        self._types = tuple(_PY_TYPES[f.type] for f in features.values())
        self._floats = [j for j, f in enumerate(features.values()) if f.type == "float"]
        self._bounded = [(j, f) for j, f in enumerate(features.values())
                         if f.enum is not None or f.minimum is not None or f.maximum is not None]
        # faster still, a whole batch at once: every feature of one type and none bounded (e.g. all floats)
        self._getter = operator.itemgetter(*self.names) if self.names else None
        self._uniform = self._types[0] if len(set(self._types)) == 1 and not self._bounded else None

    def validate(self, body: Any) -> Batch:
        if isinstance(body, dict) and "instances" in body and "instances" not in self._known:
            extra = sorted(k for k in body if k != "instances")
            if extra:
                raise InvalidInput([_err(["body", extra[0]], "unknown key next to `instances`",
                                         "extra_forbidden", "only `instances`", _got(extra[0]))])
            instances = instance_list(body["instances"], self.max_instances, "objects or arrays")
            return Batch(rows=self._rows(instances, ["body", "instances"]), single=False)
        if isinstance(body, dict):
            return Batch(rows=self._rows([body], ["body"], indexed=False), single=True)
        if isinstance(body, list):  # a bare array of instances: the same as {"instances": [...]}
            instances = instance_list(body, self.max_instances, "objects or arrays", ("body",))
            return Batch(rows=self._rows(instances, ["body"]), single=False)
        raise InvalidInput([_err(["body"], "expected one instance as an object of features, "
                                 '{"instances": [...]} or an array of instances', "type_error", "object",
                                 _got(body))])

    def _rows(self, instances: list[Any], base: list[Any], indexed: bool = True) -> list[list[Any]]:
        if self._uniform is not None:
            uniform = self._uniform_rows(instances)
            if uniform is not None:
                return uniform
        errors: list[dict[str, Any]] = []
        rows: list[list[Any]] = []
        n = len(self.names)
        for i, inst in enumerate(instances):
            if type(inst) is dict and len(inst) == n:
                fast = self._fast_row(inst)
                if fast is not None:
                    rows.append(fast)
                    continue
            elif type(inst) is list and len(inst) == n:  # values in feature order
                fast = self._fast_values(list(inst))
                if fast is not None:
                    rows.append(fast)
                    continue
            loc = [*base, i] if indexed else base  # the slow path: finds every problem of the instance
            if isinstance(inst, list):
                rows.append(self._list_row(inst, loc, errors))
                if len(errors) >= MAX_ERRORS:
                    break
                continue
            if not isinstance(inst, dict):
                errors.append(_err(loc, "each instance must be an object of features or an array of values",
                                   "type_error", "object or array", _got(inst)))
                continue
            row = []
            for name in self.names:
                if name not in inst:
                    errors.append(_err([*loc, name], "field required", "missing",
                                       self.features[name].type, "nothing"))
                    continue
                value, problem = _check(self.features[name], inst[name])
                if problem:
                    errors.append(_err([*loc, name], problem, "value_error",
                                       _expected(self.features[name]), _got(inst[name])))
                row.append(value)
            if len(inst) != len(row):  # row holds one value per known feature present
                for key in inst:
                    if key not in self._known:
                        errors.append(_err([*loc, str(key)], "unknown feature", "extra_forbidden",
                                           "one of " + ", ".join(self.names), _got(inst[key])))
            if len(errors) >= MAX_ERRORS:
                break
            rows.append(row)
        if errors:
            raise InvalidInput(errors[:MAX_ERRORS])
        return rows

    def _uniform_rows(self, instances: list[Any]) -> list[list[Any]] | None:
        """The rows when every instance holds exactly the features, each of the one type they all take and
        finite; else None. Checks run in C (map, set), which matters for requests of many instances."""
        n = len(self.names)
        if n > 1 and all(type(inst) is list and len(inst) == n for inst in instances):
            picked: list[Any] = instances  # arrays of values in feature order
        elif not all(type(inst) is dict and len(inst) == n for inst in instances):
            return None
        else:
            try:
                picked = list(map(self._getter, instances))  # type: ignore[arg-type]
            except KeyError:
                return None
        if n == 1:  # itemgetter of one key returns the value itself
            if set(map(type, picked)) != {self._uniform}:
                return None
            if self._uniform is float and not all(map(math.isfinite, picked)):
                return None
            return [[v] for v in picked]
        if set(map(type, itertools.chain.from_iterable(picked))) != {self._uniform}:
            return None
        if self._uniform is float and not all(map(math.isfinite, itertools.chain.from_iterable(picked))):
            return None
        return list(map(list, picked))

    def _fast_row(self, inst: dict[Any, Any]) -> list[Any] | None:
        """The row of an instance with exactly the features, each of its exact type and valid; else None."""
        try:
            row = [inst[name] for name in self.names]
        except KeyError:
            return None
        return self._fast_values(row)

    def _fast_values(self, row: list[Any]) -> list[Any] | None:
        """``row`` when each value has the exact type of its feature and is valid; else None."""
        if tuple(map(type, row)) != self._types:  # also refuses bool for numbers (bool is not int here)
            return None
        for j in self._floats:
            if not math.isfinite(row[j]):
                return None
        for j, feature in self._bounded:
            if _out_of_bounds(feature, row[j]) is not None:
                return None
        return row

    def _list_row(self, inst: list[Any], loc: list[Any], errors: list[dict[str, Any]]) -> list[Any]:
        """The row of an instance sent as an array of values in feature order; problems go to ``errors``."""
        if len(inst) != len(self.names):
            errors.append(_err(loc, f"expected {len(self.names)} values (the features in order: "
                               f"{', '.join(self.names)})", "length_error", f"{len(self.names)} values",
                               f"{len(inst)} values"))
            return []
        row = []
        for j, (name, value) in enumerate(zip(self.names, inst)):  # noqa: B905 - length checked above; 3.9
            value, problem = _check(self.features[name], value)
            if problem:
                errors.append(_err([*loc, j], problem, "value_error",
                                   _expected(self.features[name]), _got(inst[j])))
            row.append(value)
        return row


_PY_TYPES: dict[str, type] = {"float": float, "int": int, "str": str, "bool": bool}


def _err(loc: list[Any], msg: str, kind: str, expected: str, got: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind, "expected": expected, "got": got}


def _expected(feature: Feature) -> str:
    text: str = feature.type
    if feature.enum is not None:
        text = f"{text} in " + ", ".join(map(str, feature.enum))
    if feature.minimum is not None:
        text += f" >= {feature.minimum:g}"
    if feature.maximum is not None:
        text += f" <= {feature.maximum:g}"
    return text


def _check(feature: Feature, value: Any) -> tuple[Any, str | None]:
    """(the value to pass to the model, a problem or None)."""
    kind = feature.type
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, "expected a number"
        value = float(value)
        if not math.isfinite(value):
            return value, "expected a finite number"
    elif kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return value, "expected an integer"
    elif kind == "str":
        if not isinstance(value, str):
            return value, "expected a string"
    elif not isinstance(value, bool):
        return value, "expected true or false"
    return value, _out_of_bounds(feature, value)


def _out_of_bounds(feature: Feature, value: Any) -> str | None:
    if feature.enum is not None and value not in feature.enum:
        return "not one of the allowed values"
    if feature.minimum is not None and value < feature.minimum:
        return f"must be >= {feature.minimum:g}"
    if feature.maximum is not None and value > feature.maximum:
        return f"must be <= {feature.maximum:g}"
    return None


def sample_instance(features: dict[str, Feature]) -> dict[str, Any]:
    """A valid instance built from the schema alone (used for warm-up when there is no example)."""
    out: dict[str, Any] = {}
    for name, f in features.items():
        if f.enum:
            out[name] = f.enum[0]
        elif f.type in ("float", "int"):
            if f.minimum is not None:  # an int rounds towards the inside of [minimum, maximum]
                base, whole = f.minimum, math.ceil(f.minimum)
            else:
                base = 0.0 if f.maximum is None else min(0.0, f.maximum)
                whole = math.floor(base)
            out[name] = whole if f.type == "int" else float(base)
        else:
            out[name] = "" if f.type == "str" else False
    return out


def probe_instances(features: dict[str, Feature], seen: list[dict[str, Any]], n: int = 64,
                    seed: int = 0) -> list[dict[str, Any]]:
    """``n`` valid instances made from the schema and the values in ``seen`` (the contract's examples):
    near the seen values, across [minimum, maximum] and far outside them. Deterministic for a seed."""
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    out = []
    for i in range(n):
        inst: dict[str, Any] = {}
        for name, f in features.items():
            known = [s[name] for s in seen if name in s]
            inst[name] = _probe_value(f, known, rng, wide=i % 2 == 1)
        out.append(inst)
    return out


def _probe_value(f: Feature, known: list[Any], rng: random.Random, wide: bool) -> Any:
    if f.enum:
        return rng.choice(f.enum)
    if f.type == "bool":
        return rng.random() < 0.5
    if f.type == "str":
        return rng.choice([k for k in known if isinstance(k, str)] or ["", "a", "b"])
    numbers = [float(k) for k in known if isinstance(k, (int, float)) and not isinstance(k, bool)]
    if numbers and not wide:
        value = rng.choice(numbers) * rng.uniform(0.8, 1.2) + rng.gauss(0.0, 0.1)
    elif f.minimum is not None and f.maximum is not None:
        value = rng.uniform(f.minimum, f.maximum)
    else:
        value = rng.gauss(0.0, 10.0) * 10 ** rng.randint(0, 3)
    if f.minimum is not None:
        value = max(value, f.minimum)
    if f.maximum is not None:
        value = min(value, f.maximum)
    if f.type == "int":
        whole = round(value)
        if f.minimum is not None and whole < f.minimum:
            whole = math.ceil(f.minimum)
        if f.maximum is not None and whole > f.maximum:
            whole = math.floor(f.maximum)
        return whole
    return value


def sample_body(spec: InputSpec) -> dict[str, Any]:
    """A valid single-instance request body built from the input spec alone (warm-up, `mlship init`)."""
    if spec.tensor is None:
        return sample_instance(spec.features)
    return {"input": np.zeros(spec.tensor.instance_shape, dtype=np.dtype(spec.tensor.dtype)).tolist()}


# --- tensor inputs ---------------------------------------------------------------------------------
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
            _only(body, "instances")
            instances = instance_list(body["instances"], self.max_instances, "instances")
            return Batch(rows=self._arrays(instances, ["body", "instances"], indexed=True), single=False)
        if isinstance(body, dict) and "input" in body:
            _only(body, "input")
            return Batch(rows=self._arrays([body["input"]], ["body", "input"], indexed=False), single=True)
        raise InvalidInput([_err(["body"], 'expected {"input": <array>} for one instance, or '
                                 '{"instances": [<array>, ...]}', "type_error", "object", _got(body))])

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
            raise _Problem(_err(loc, f"expected an array of shape {shape_text(self.shape)}", "type_error",
                                self.expected, _got(item)))
        bad = _first_mismatch(item, self.shape, [])
        if bad is None:
            return self._values(item, loc)
        path, kind = bad
        sub = _at(item, path)
        if kind == "type":
            raise _Problem(_err([*loc, *path], _number_problem(self.spec.dtype), "type_error", self.spec.dtype,
                                _got(sub)))
        got = _regular_shape(item)
        if got is not None:
            raise _Problem(_err(loc, f"expected shape {shape_text(self.shape)}, got {shape_text(got)}",
                                "shape_error", self.expected, f"array of shape {shape_text(got)}"))
        want = f"{self.shape[len(path)]} items" if len(path) < len(self.shape) else "a number"
        raise _Problem(_err([*loc, *path], f"expected shape {shape_text(self.shape)}, got a ragged array",
                            "shape_error", want, _got(sub)))

    def _values(self, item: list[Any], loc: list[Any]) -> Any:
        """Array of the contract's dtype from a well-shaped nested list of int/float (range checked)."""
        name = self.spec.dtype
        if self.dtype.kind == "f":
            try:
                arr = np.array(item, dtype=np.float64)
            except OverflowError:  # a Python int beyond float range
                path = _first_leaf(item, lambda x: not _fits_float(x))
                raise _Problem(_err([*loc, *path], f"number out of range for {name}", "value_error", name,
                                    _got(_at(item, path)))) from None
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
        return _Problem(_err([*loc, *index], msg, "value_error", expected,
                             _got(value.item() if isinstance(value, np.generic) else value)))

    # -- images ------------------------------------------------------------------------------------
    def _image(self, item: dict[Any, Any], loc: list[Any]) -> Any:
        image = self.spec.image
        if image is None:
            raise _Problem(_err(loc, "this model takes arrays, not images (input.tensor.image is not set)",
                                "type_error", self.expected, _got(item)))
        unknown = sorted(str(k) for k in item if k != "b64")
        if unknown:
            raise _Problem(_err([*loc, unknown[0]], "unknown key next to `b64`", "extra_forbidden",
                                "only `b64`", _got(unknown[0])))
        if "b64" not in item:
            raise _Problem(_err([*loc, "b64"], "field required", "missing", "base64 PNG", "nothing"))
        data = item["b64"]
        loc = [*loc, "b64"]
        if not isinstance(data, str):
            raise _Problem(_err(loc, "expected a base64 string", "type_error", "base64 PNG", _got(data)))
        text = data.partition(",")[2] if data.startswith("data:") else data  # a browser's data: URL
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise _Problem(_err(loc, "not valid base64", "value_error", "base64 PNG", _got(data))) from None
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
                raise _Problem(_err(loc, f"image too large ({img.width}x{img.height} pixels)", "value_error",
                                    f"at most {MAX_IMAGE_PIXELS} pixels", f"{img.width * img.height} pixels"))
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                img = img.resize((width, height), pil.Resampling.BOX)
            return np.asarray(img)
        except _Problem:
            raise
        except Exception as exc:  # corrupt data raises many kinds (OSError, SyntaxError, zlib.error, ...)
            raise _Problem(_err(loc, f"not a readable PNG image ({exc.__class__.__name__})", "value_error",
                                "base64 PNG", f"{len(raw)} bytes")) from None


def _import_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        from mlship.errors import ContractError

        raise ContractError("input.tensor.image needs Pillow to decode PNG images, and it is not installed.",
                            fix="pip install pillow (`mlship build` adds it to images of image contracts).") from None
    return Image


def _only(body: dict[Any, Any], key: str) -> None:
    extra = sorted(str(k) for k in body if k != key)
    if extra:
        raise InvalidInput([_err(["body", extra[0]], f"unknown key next to `{key}`", "extra_forbidden",
                                 f"only `{key}`", _got(extra[0]))])


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
