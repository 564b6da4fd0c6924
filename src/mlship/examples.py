"""Compare predictions with the contract's expected example outputs (validate, test, smoke tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlship.contract import Example


@dataclass
class ExampleResult:
    index: int
    ok: bool
    got: Any
    problems: list[str]


def compare(expected: Any, got: Any, tolerance: float, path: str = "output") -> list[str]:
    """Differences between ``expected`` and ``got``; dict keys absent from ``expected`` are ignored."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected an object, got {got!r}"]
        problems: list[str] = []
        for key, value in expected.items():
            if key not in got:
                problems.append(f"{path}.{key}: missing from the prediction")
            else:
                problems += compare(value, got[key], tolerance, f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return [f"{path}: expected {expected!r}, got {got!r}"]
        return [p for i, (e, g) in enumerate(zip(expected, got, strict=True))
                for p in compare(e, g, tolerance, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(got, numbers) and not isinstance(expected, bool):
        if math.isclose(float(expected), float(got), rel_tol=0.0, abs_tol=tolerance):
            return []
        return [f"{path}: expected {expected!r} (±{tolerance:g}), got {got!r}"]
    if expected != got:
        return [f"{path}: expected {expected!r}, got {got!r}"]
    return []


def check_example(index: int, example: Example, got: Any) -> ExampleResult:
    problems = [] if example.output is None else compare(example.output, got, example.tolerance)
    return ExampleResult(index=index, ok=not problems, got=got, problems=problems)
