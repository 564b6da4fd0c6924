"""Batch predictions with the contract's model: `mlship batch` (files in, files out, in chunks, resumable) and
:func:`predict_fn` (the contract as a batch function for Spark's ``predict_batch_udf`` and Ray Data's
``map_batches``). docs/batch.md.

The names below load lazily: ``mlship.batch.jobs`` (the batch-job interface the targets import) must not need
pyarrow, which only the batch extra and the batch image install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlship.batch.fn import BatchPredictFn, predict_fn
    from mlship.batch.run import BatchOptions, BatchReport, rejects_path, run_batch

__all__ = ["BatchOptions", "BatchPredictFn", "BatchReport", "predict_fn", "rejects_path", "run_batch"]
_HOME = {"BatchPredictFn": "fn", "predict_fn": "fn", "BatchOptions": "run", "BatchReport": "run",
         "rejects_path": "run", "run_batch": "run"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"mlship.batch.{_HOME[name]}"), name)
    raise AttributeError(f"module 'mlship.batch' has no attribute {name!r}")
