"""The pytorch runtime's outputs as numpy: the model's tensor out of whatever it returned, and class probabilities
from scores. No torch import here: the compiled path (onnxruntime) uses :func:`_probabilities` too."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlship.errors import ArtifactError


def _to_numpy(torch: Any, out: Any) -> Any:
    """The first tensor of a model's output (a tensor, a tuple/list, or a dict with logits) as numpy."""
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values()), None))
    if isinstance(out, list | tuple):
        out = out[0] if out else None
    if not isinstance(out, torch.Tensor):
        raise ArtifactError(f"The model returned a {type(out).__name__}, not a tensor.",
                            fix="Return a tensor (or a tuple whose first item is the prediction), or wrap the "
                            "output with a `predict: predict.py:predict` function.")
    array = out.detach().cpu()
    if array.dtype in (torch.float16, torch.bfloat16):
        array = array.float()
    return array.numpy()


def scores_kind(out: Any) -> str:
    """"probabilities" when every row of a model's output is probabilities (see :func:`_probabilities`)."""
    scores = np.asarray(out, dtype=np.float64)
    if scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        inside = scores.min(initial=0.0) >= 0.0 and scores.max(initial=0.0) <= 1.0
    else:
        inside = (scores.min(initial=0.0) >= 0.0 and scores.max(initial=0.0) <= 1.0
                  and bool(np.all(np.abs(scores.sum(axis=-1) - 1.0) <= 1e-3)))
    return "probabilities" if inside else "logits"


def _probabilities(out: Any, kind: str | None = None) -> Any:
    """Class probabilities from a (N, K) output: softmax of logits unless rows already are probabilities.

    A row counts as probabilities when every value is in [0, 1] and the row sums to 1 (within 1e-3); a
    single score per instance (N,) or (N, 1) is a binary classifier: sigmoid unless it is in [0, 1]. ``kind``
    (see :func:`scores_kind`) is decided from ``out`` when not given.
    """
    scores = np.asarray(out, dtype=np.float64)
    logits = (kind or scores_kind(scores)) == "logits"
    if scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        p = scores.reshape(-1)
        if logits:
            p = 1.0 / (1.0 + np.exp(-p))
        return np.stack([1.0 - p, p], axis=1)
    if scores.ndim != 2:
        raise ArtifactError(f"The model returned scores of shape {list(scores.shape)}; a classifier returns "
                            "(batch, classes).",
                            fix="Return one row of scores per instance, or set task: regression.")
    if not logits:
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


