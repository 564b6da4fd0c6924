"""Probe tensors for the compiled path of a tensor input (``input.tensor``: Keras, PyTorch; see :mod:`mlship.compiled`).

The converted model is proven on the contract's examples plus generated instances of the contract's shape and
dtype, made the same way on every machine (seeded): a quarter uniform across the value range (``image.scale``
when the input is an image, else the examples' range, else [0, 1]), a quarter the examples with noise, a quarter
sparse (most values at the range's low end, like dark pixels) and a quarter wider than the range (twice it, on
either side). Integers are rounded and clipped to their dtype. Nothing here imports a framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlship.contract import TensorSpec

SEED = 20261206


def value_range(spec: TensorSpec, examples: Any) -> tuple[float, float]:
    """The range the model sees values in: ``image.scale``, else the examples' range, else [0, 1]."""
    if spec.image is not None:
        low, high = spec.image.scale
        return float(low), float(high)
    x = np.asarray(examples, dtype=np.float64)
    if x.size and np.isfinite(x).all() and float(x.max()) > float(x.min()):
        return float(x.min()), float(x.max())
    return 0.0, 1.0


def probe_tensors(spec: TensorSpec, examples: Any, n: int) -> Any:
    """``n`` generated instances ``(n, *shape)`` in the contract's dtype (see the module's docstring)."""
    shape = spec.instance_shape
    rng = np.random.default_rng(SEED)
    low, high = value_range(spec, examples)
    span = high - low
    q = max(1, n // 4)
    parts = [rng.uniform(low, high, (q, *shape))]
    base = np.asarray(examples, dtype=np.float64).reshape(-1, *shape) if np.size(examples) else None
    if base is not None and len(base):
        picked = base[rng.integers(0, len(base), q)]
        parts.append(np.clip(picked + rng.normal(0.0, span / 8, picked.shape), low, high))
    else:
        parts.append(rng.uniform(low, high, (q, *shape)))
    parts.append(np.where(rng.random((q, *shape)) < 0.7, low, rng.uniform(low, high, (q, *shape))))
    parts.append(rng.uniform(low - 2 * span, high + 2 * span, (n - 3 * q, *shape)))
    x = np.concatenate(parts)[:n]
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return x.astype(dtype)
