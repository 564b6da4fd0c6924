"""Validate a /predict body against the contract's input (named features or a tensor), with field-path
errors.

Hand-written rather than generated so that the hot path is one pass over plain Python objects and
every error says where (``loc``), what was expected and what was received. This module checks named
features (``Validator``) and picks the validator for an input (``make_validator``); the tensor checks are in
validation_tensor.py, the error shapes in validation_errors.py, the schema-made instances in
validation_samples.py. Every name stays importable from here.
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

from mlship.contract import Feature, InputSpec
from mlship.serving.validation_errors import MAX_ERRORS, Batch, InvalidInput, err, got_text, instance_list
from mlship.serving.validation_samples import probe_instances, sample_body, sample_instance
from mlship.serving.validation_tensor import MAX_IMAGE_PIXELS, TensorValidator

__all__ = ["MAX_ERRORS", "MAX_IMAGE_PIXELS", "Batch", "InvalidInput", "TensorValidator", "Validator",
           "instance_list", "make_validator", "probe_instances", "sample_body", "sample_instance"]


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
                raise InvalidInput([err(["body", extra[0]], "unknown key next to `instances`",
                                        "extra_forbidden", "only `instances`", got_text(extra[0]))])
            instances = instance_list(body["instances"], self.max_instances, "objects or arrays")
            return Batch(rows=self._rows(instances, ["body", "instances"]), single=False)
        if isinstance(body, dict):
            return Batch(rows=self._rows([body], ["body"], indexed=False), single=True)
        if isinstance(body, list):  # a bare array of instances: the same as {"instances": [...]}
            instances = instance_list(body, self.max_instances, "objects or arrays", ("body",))
            return Batch(rows=self._rows(instances, ["body"]), single=False)
        raise InvalidInput([err(["body"], "expected one instance as an object of features, "
                                '{"instances": [...]} or an array of instances', "type_error", "object",
                                got_text(body))])

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
                errors.append(err(loc, "each instance must be an object of features or an array of values",
                                  "type_error", "object or array", got_text(inst)))
                continue
            row = []
            for name in self.names:
                if name not in inst:
                    errors.append(err([*loc, name], "field required", "missing",
                                      self.features[name].type, "nothing"))
                    continue
                value, problem = _check(self.features[name], inst[name])
                if problem:
                    errors.append(err([*loc, name], problem, "value_error",
                                      _expected(self.features[name]), got_text(inst[name])))
                row.append(value)
            if len(inst) != len(row):  # row holds one value per known feature present
                for key in inst:
                    if key not in self._known:
                        errors.append(err([*loc, str(key)], "unknown feature", "extra_forbidden",
                                          "one of " + ", ".join(self.names), got_text(inst[key])))
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
            errors.append(err(loc, f"expected {len(self.names)} values (the features in order: "
                              f"{', '.join(self.names)})", "length_error", f"{len(self.names)} values",
                              f"{len(inst)} values"))
            return []
        row = []
        for j, (name, value) in enumerate(zip(self.names, inst)):  # noqa: B905 - length checked above; 3.9
            value, problem = _check(self.features[name], value)
            if problem:
                errors.append(err([*loc, j], problem, "value_error",
                                  _expected(self.features[name]), got_text(inst[j])))
            row.append(value)
        return row


_PY_TYPES: dict[str, type] = {"float": float, "int": int, "str": str, "bool": bool}


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

