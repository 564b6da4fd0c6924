"""Batch predictions with the contract's model: `mlship batch` (files in, files out, in chunks, resumable) and
:func:`predict_fn` (the contract as a batch function for Spark's ``predict_batch_udf`` and Ray Data's
``map_batches``). docs/batch.md.
"""

from __future__ import annotations

from mlship.batch.fn import BatchPredictFn, predict_fn
from mlship.batch.run import BatchOptions, BatchReport, rejects_path, run_batch

__all__ = ["BatchOptions", "BatchPredictFn", "BatchReport", "predict_fn", "rejects_path", "run_batch"]
