"""Valid instances made from the input schema alone: one for warm-up and `mlship init` (``sample_body``),
many for the compiled path's parity check (``probe_instances``: near the examples, across the bounds, far out).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from mlship.contract import Feature, InputSpec


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
