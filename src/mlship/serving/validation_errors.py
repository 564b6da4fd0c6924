"""What a failed validation raises and how each error reads: ``loc`` (where), ``msg``, ``type``, ``expected``
and ``got`` (a JSON type and a short repr), plus the checks every input kind shares (the instances array, the
one key a body may hold). The validators are in validation.py (named features) and validation_tensor.py.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

MAX_ERRORS = 20


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


def got_text(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:  # arrays/objects nested deeper than the recursion limit
        text = reprlib.repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{json_type(value)} {text}"


def json_type(value: Any) -> str:
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
        raise InvalidInput([err(list(loc), f"{what} must be an array of {of}",
                                "type_error", "array", got_text(instances))])
    if not instances:
        raise InvalidInput([err(list(loc), f"{what} is empty", "too_short", "at least 1 instance", "0")])
    if len(instances) > limit:
        raise InvalidInput([err(list(loc), f"too many instances (limit {limit})", "too_long",
                                f"at most {limit}", str(len(instances)))])
    return instances


def err(loc: list[Any], msg: str, kind: str, expected: str, got: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind, "expected": expected, "got": got}


def only_key(body: dict[Any, Any], key: str) -> None:
    extra = sorted(str(k) for k in body if k != key)
    if extra:
        raise InvalidInput([err(["body", extra[0]], f"unknown key next to `{key}`", "extra_forbidden",
                                f"only `{key}`", got_text(extra[0]))])

