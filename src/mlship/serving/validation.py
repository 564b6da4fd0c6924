"""Validate a /predict body against the contract's input features, with field-path errors.

Hand-written rather than generated so that the hot path is one pass over plain Python objects and
every error says where (``loc``), what was expected and what was received.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

from mlship.contract import Feature

MAX_ERRORS = 20


@dataclass
class Batch:
    """Validated instances: values in the contract's feature order; ``single`` if one was sent bare."""

    rows: list[list[Any]]
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
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class Validator:
    """Checks instances against ``features`` (name -> Feature, in model order)."""

    def __init__(self, features: dict[str, Feature], max_instances: int) -> None:
        self.features = features
        self.names = list(features)
        self.max_instances = max_instances
        self._known = set(features)

    def validate(self, body: Any) -> Batch:
        if isinstance(body, dict) and "instances" in body and "instances" not in self._known:
            extra = sorted(k for k in body if k != "instances")
            if extra:
                raise InvalidInput([_err(["body", extra[0]], "unknown key next to `instances`",
                                         "extra_forbidden", "only `instances`", _got(extra[0]))])
            instances = body["instances"]
            if not isinstance(instances, list):
                raise InvalidInput([_err(["body", "instances"], "`instances` must be an array of objects",
                                         "type_error", "array", _got(instances))])
            if not instances:
                raise InvalidInput([_err(["body", "instances"], "`instances` is empty",
                                         "too_short", "at least 1 instance", "0")])
            if len(instances) > self.max_instances:
                raise InvalidInput([_err(["body", "instances"],
                                         f"too many instances (limit {self.max_instances})", "too_long",
                                         f"at most {self.max_instances}", str(len(instances)))])
            return Batch(rows=self._rows(instances, ["body", "instances"]), single=False)
        if isinstance(body, dict):
            return Batch(rows=self._rows([body], ["body"], indexed=False), single=True)
        raise InvalidInput([_err(["body"], "expected one instance as an object of features, or "
                                 '{"instances": [...]}', "type_error", "object", _got(body))])

    def _rows(self, instances: list[Any], base: list[Any], indexed: bool = True) -> list[list[Any]]:
        errors: list[dict[str, Any]] = []
        rows: list[list[Any]] = []
        for i, inst in enumerate(instances):
            loc = [*base, i] if indexed else base
            if not isinstance(inst, dict):
                errors.append(_err(loc, "each instance must be an object of features", "type_error",
                                   "object", _got(inst)))
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
        if isinstance(value, bool) or not isinstance(value, int | float):
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
    if feature.enum is not None and value not in feature.enum:
        return value, "not one of the allowed values"
    if feature.minimum is not None and value < feature.minimum:
        return value, f"must be >= {feature.minimum:g}"
    if feature.maximum is not None and value > feature.maximum:
        return value, f"must be <= {feature.maximum:g}"
    return value, None


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
