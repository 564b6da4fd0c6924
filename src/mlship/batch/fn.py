"""The contract as a batch function for cluster engines: Spark's ``pyspark.ml.functions.predict_batch_udf`` and
Ray Data's ``map_batches``. The model loads lazily, once per process (the function pickles as its contract path and
options; every copy in one worker process shares one loaded model). A batch goes through the path of `mlship batch`
(:meth:`mlship.batch.score.Scorer.score`): every row validated, clean float batches to the compiled model as one
array, the same output columns.
"""

from __future__ import annotations

import inspect
import keyword
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mlship.errors import ContractError, PredictionError

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]
    from pyspark.sql.types import DataType

    from mlship.batch.score import Scorer

Inputs = Literal["columns", "array"]
Output = Literal["label", "columns"]

_SCORERS: dict[tuple[str, int], Scorer] = {}  # (contract file, its mtime) -> the process's loaded model
_LOCK = threading.Lock()


def _scorer(contract: Path) -> Scorer:
    from mlship.batch.score import Scorer

    key = (str(contract.resolve()), contract.stat().st_mtime_ns)
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = Scorer(contract, 1 << 20)
        return _SCORERS[key]


def _features(contract: Path) -> list[str]:
    from mlship.contract_io import find_contract, parse_contract

    path = find_contract(contract)
    parsed = parse_contract(path.read_text(encoding="utf-8"), path.name)
    if parsed.input.tensor is not None:
        raise ContractError(f"{path}: predict_fn scores rows of named features; this contract's input is a tensor.",
                            fix="Send tensors to the HTTP server (`mlship serve`: concurrent requests are batched "
                            "into model calls), or call the model's own framework on the cluster.")
    return list(parsed.feature_names)


class BatchPredictFn:
    """``fn(batch)``: a pandas DataFrame -> the DataFrame's columns that are not features (an id, a key) and the
    prediction columns (same index); a dict of numpy columns (Ray's numpy format) -> the same as a dict; numpy
    arrays as Spark's ``predict_batch_udf`` passes them -> an array of labels (``output="label"``, for a
    ``StringType``/``DoubleType`` return) or a dict of columns (``output="columns"``, for the ``StructType`` of
    :meth:`spark_return_type`).

    Spark reads how many inputs the function takes from its signature: one per feature (``inputs="columns"``,
    ``udf(*features)``), or one 2-D array (``inputs="array"``, ``udf(array(*features))`` with
    ``input_tensor_shapes=[[number of features]]``)."""

    def __init__(self, contract_path: str | Path, inputs: Inputs = "columns", output: Output = "label") -> None:
        if inputs not in ("columns", "array") or output not in ("label", "columns"):
            raise ContractError(f"predict_fn(inputs={inputs!r}, output={output!r}) is not an option.",
                                fix='Pass inputs="columns" (one Spark column per feature) or "array" (one array '
                                'column), and output="label" or "columns".')
        self.contract_path = Path(contract_path)
        self.inputs: Inputs = inputs
        self.output: Output = output
        self.features = _features(self.contract_path)
        names = self.features if all(f.isidentifier() and not keyword.iskeyword(f) for f in self.features) else [
            f"x{i}" for i in range(len(self.features))]
        kind = inspect.Parameter.POSITIONAL_ONLY
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("features", kind)] if inputs == "array" else [inspect.Parameter(n, kind) for n in names])

    def __getstate__(self) -> dict[str, Any]:
        return {"contract_path": self.contract_path, "inputs": self.inputs, "output": self.output,
                "features": self.features, "__signature__": self.__signature__}

    def spark_return_type(self) -> DataType:
        """The Spark type of what the function returns for Spark's numpy inputs: ``StringType`` (labels) or
        ``DoubleType`` (a regression's values) for ``output="label"``, else a ``StructType`` of the prediction
        columns. Loads the model (in this process) to learn the columns."""
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(_scorer(self.contract_path).empty.schema)
        if self.output == "columns":
            return schema
        return schema[self._label_key(schema.names)].dataType

    def table(self, columns: dict[str, Any], n: int) -> pa.Table:
        """The predictions of ``n`` rows given as columns (feature name -> array-like), as a pyarrow table; a row
        that does not fit the contract raises :class:`PredictionError` naming it."""
        import pyarrow as pa

        scorer = _scorer(self.contract_path)
        missing = [f for f in scorer.features if f not in columns]
        if missing:
            raise PredictionError(f"The batch has no column {missing[0]!r} (the contract's features: "
                                  f"{', '.join(scorer.features)}).", fix="Select the contract's feature columns.")
        lengths = {f: len(columns[f]) for f in scorer.features}
        if any(k != n for k in lengths.values()):
            raise PredictionError(f"The batch's columns differ in length ({lengths}); it has {n} rows.",
                                  fix="Pass columns of the same length.")
        try:
            table = pa.table({f: columns[f] for f in scorer.features})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return self._mixed(scorer, columns, n)  # values pyarrow cannot type (numbers and text in one column)
        scored = scorer.score(0, 0, table, None)
        _raise_rejects([(r["row"], r["reason"]) for r in scored.rejects.slice(0, 1).to_pylist()],
                       scored.rejects.num_rows)
        return scored.predictions

    @staticmethod
    def _mixed(scorer: Scorer, columns: dict[str, Any], n: int) -> pa.Table:
        """The row-by-row path, on Python values as they are (the validator words what does not fit)."""
        import pyarrow as pa

        from mlship.batch.score import flatten

        _, rows, bad = scorer.rows({f: np.asarray(columns[f]).tolist() for f in scorer.features}, n, [None] * n)
        _raise_rejects(bad[:1], len(bad))
        flat = flatten(scorer.predictor.predict(rows) if rows else [])
        return pa.table({f.name: pa.array(flat.get(f.name, []), f.type) for f in scorer.empty.schema})

    def predictions(self, columns: dict[str, Any], n: int) -> dict[str, list[Any]]:
        """Predictions of ``n`` rows given as columns, as columns of Python values."""
        return {name: list(values) for name, values in self.table(columns, n).to_pydict().items()}

    def _kept(self, names: list[str], predicted: Any) -> list[str]:
        """The input's columns that are not features (an id, a key), carried through next to the predictions."""
        kept = [c for c in names if c not in self.features]
        clash = [c for c in kept if c in set(predicted)]
        if clash:
            raise PredictionError(f"The batch's column {clash[0]!r} has the name of a prediction column.",
                                  fix=f"Rename or drop {clash[0]!r} before scoring.")
        return kept

    @staticmethod
    def _label_key(names: list[str]) -> str:
        return "label" if "label" in names else "value" if "value" in names else names[0]

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) == 1 and hasattr(inputs[0], "columns") and hasattr(inputs[0], "to_dict"):
            frame = inputs[0]
            predicted = self.table({c: frame[c] for c in frame.columns}, len(frame)).to_pandas()
            predicted.index = frame.index
            return frame[self._kept(list(frame.columns), predicted.columns)].join(predicted)
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            batch = inputs[0]
            n = len(next(iter(batch.values()))) if batch else 0
            out = _numpy_columns(self.table(batch, n))
            return {**{c: batch[c] for c in self._kept(list(batch), out)}, **out}
        features = self.features
        columns: dict[str, Any] = {}
        if len(inputs) == 1 and np.ndim(inputs[0]) == 2:
            matrix = np.asarray(inputs[0])
            if matrix.shape[1] == len(features):
                columns = {f: matrix[:, j] for j, f in enumerate(features)}
        elif len(inputs) == len(features) and all(np.ndim(i) == 1 for i in inputs):
            columns = dict(zip(features, inputs, strict=True))
        if not columns:
            raise PredictionError(f"predict_fn got {len(inputs)} input(s) of shapes "
                                  f"{[np.shape(i) for i in inputs]}; the contract has {len(features)} features.",
                                  fix="Pass one 2-D array with the features in the contract's order, one array per "
                                  "feature, a pandas DataFrame or a dict of columns.")
        out = _numpy_columns(self.table(columns, len(next(iter(columns.values())))))
        return out if self.output == "columns" else out[self._label_key(list(out))]


def _raise_rejects(first: list[tuple[int, str]], count: int) -> None:
    if count:
        row, reason = first[0]
        raise PredictionError(f"Row {row} of the batch does not fit the contract: {reason}"
                              + (f" ({count - 1} more rows do not either)." if count > 1 else "."),
                              fix="Filter or fix those rows before scoring (`mlship batch` writes such rows to a "
                              "rejects file instead).")


def _numpy_columns(table: pa.Table) -> dict[str, Any]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def predict_fn(contract_path: str | Path = "mlship.yaml", inputs: Inputs = "columns",
               output: Output = "label") -> BatchPredictFn:
    """The contract's model as a batch function (see :class:`BatchPredictFn`); every row is validated against the
    contract first. Spark: ``predict_batch_udf(lambda: predict_fn(path), return_type=StringType(),
    batch_size=4096)(*features)``; Ray: ``ds.map_batches(predict_fn(path), batch_format="pandas")``."""
    return BatchPredictFn(contract_path, inputs, output)
