"""The compiled path: a model converted to ONNX and served by onnxruntime, used only where it predicts the same.

A runtime that can convert its models (``Runtime.to_onnx``; scikit-learn through skl2onnx) gets a second way
to serve them. Conversion happens once, on the machine that has the framework (`mlship serve`, `validate` or
`build`), and is kept in ``<project>/.mlship/compiled/``:

- ``model.onnx``: the converted model, taking one float64 tensor (rows x features in the model's column order),
  or for a tensor input (``input.tensor``: Keras, PyTorch) one array of instances in the model's dtype;
- ``record.json``: what it was made from (the artifact's sha256, the features, the probe rows' sha256), the
  onnxruntime version that checked it, and the native model's outputs on the probe rows.

The probe rows are the contract's examples plus instances generated from its input schema (near the examples,
across [minimum, maximum] and far outside). The compiled model is used only when, on every probe row, it gives
the same label and probabilities within 1e-5 of the native model (regression values: within 1e-5, relative
for values above 1). Tensor models are probed with the examples plus seeded generated tensors of the
contract's shape and dtype (:mod:`mlship.compiled_tensor`); their raw output goes through the runtime's own
``scores_output`` (softmax, labels) on both paths. A server that finds
a record matching its artifact, contract and onnxruntime re-runs the probe rows against the recorded outputs
and serves without importing the framework at all; that is what makes an image's cold start and memory small.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlship.runtimes.base import ModelOutput, Runtime
from mlship.runtimes.base import NotCompiled as NotCompiled  # the runtimes raise it; re-exported here

FORMAT = 1
FOLDER = ".mlship/compiled"
ONNX_FILE = "model.onnx"
RECORD_FILE = "record.json"
FAILURE_FILE = "not-compiled.json"  # why the last conversion of an artifact failed (copied into images)
TOLERANCE = 1e-5  # labels must be equal; probabilities within this, regression values too (relative above 1)
PROBE_ROWS = 256  # generated instances, on top of the contract's examples


class Missing(NotCompiled):
    """No compiled model has been kept for this project yet (the usual first start)."""


class Unavailable(NotCompiled):
    """The converter or onnxruntime is not installed here (e.g. an image, which has neither the framework nor
    the converter): a reason found where they were installed (`mlship build`) is the better one to show."""


@dataclass
class Record:
    """``record.json``: what the compiled model was made from and what it must predict."""

    format: int
    source_sha256: str
    features: list[str]
    columns: list[int]  # the model's column i is the contract's feature columns[i]
    probe_sha256: str
    probe_count: int
    onnxruntime: str
    converter: str  # e.g. "skl2onnx 1.20.0"
    framework: str  # e.g. "scikit-learn 1.9.1"
    classes: list[Any] | None
    probabilities: bool  # the native model gives probabilities (else labels or values only)
    expected_values: list[Any]
    expected_probabilities: list[list[float]] | None
    max_abs_diff: float
    tensor_shape: list[int] | None = None  # a tensor input: one instance's shape (the batch dimension left out)
    dtype: str | None = None  # a tensor input: the contract's dtype
    scores_kind: str | None = None  # a tensor classifier: its outputs are "probabilities" or "logits"
    load_settings: str = ""  # the contract's opt-ins the original needed to load (see load_settings())


def folder(root: Path) -> Path:
    return root / FOLDER


def probe_sha256(rows: Any) -> str:
    """A digest of the probe rows as the model sees them (float64, rows x features)."""
    x = np.ascontiguousarray(np.asarray(rows, dtype=np.float64))
    return hashlib.sha256(repr(x.shape).encode() + x.tobytes()).hexdigest()


def numeric_rows(rows: Any) -> Any:
    if isinstance(rows, np.ndarray) and rows.ndim > 2:  # a tensor input: (N, *shape), already validated
        return rows
    try:
        x = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise NotCompiled("the input has non-numeric features (the compiled path takes numbers only)") from None
    if x.ndim != 2:
        raise NotCompiled("the input is not a table of rows x features")
    return x


def _onnxruntime() -> Any:
    """Import onnxruntime with its telemetry off: a model server must not send usage events or keep a device id
    (onnxruntime's OneDS telemetry writes ~/.cache/Microsoft/DeveloperTools). ORT_DISABLE_TELEMETRY=0 in the
    environment turns it back on."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install 'mlship[sklearn]' installs it)") from None
    return onnxruntime


def ort_version() -> str:
    """The onnxruntime version installed here (the one that checks a compiled model)."""
    return str(_onnxruntime().__version__)



def _session(onnx_bytes: bytes) -> Any:
    ort = _onnxruntime()
    options = ort.SessionOptions()
    # the server runs predictions on its own threads (and coalesces requests): one thread per call, no
    # spinning workers competing with the event loop for the same cores
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise NotCompiled(f"onnxruntime cannot load the converted model: {exc}") from None


def loading_problem(onnx_bytes: bytes) -> str | None:
    """Why onnxruntime cannot load a converted model (None: it can); for converters choosing an input type."""
    try:
        _session(onnx_bytes)
    except Unavailable:
        raise
    except NotCompiled as exc:
        return str(exc)
    return None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}


class CompiledModel:
    """An onnxruntime session plus what is needed to turn its outputs into a ModelOutput. A tensor model's raw
    output becomes a ModelOutput through ``scores`` (the runtime's ``scores_output``, numpy only)."""

    def __init__(self, onnx_bytes: bytes, record: Record, scores: Callable[[Any], ModelOutput] | None = None) -> None:
        self.record = record
        self.session = _session(onnx_bytes)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.dtype: Any = _ORT_TYPES.get(first.type, np.float64)
        names = [o.name for o in self.session.get_outputs()]
        self.classes = record.classes
        self.scores = scores
        if record.tensor_shape is not None:
            if scores is None:
                raise NotCompiled("a tensor model's compiled path needs its runtime's scores_output")
            self.outputs = names[:1]
        elif record.classes is not None:
            wanted = "probabilities" if record.probabilities else "label"
            if wanted not in names:
                raise NotCompiled(f"the converted model has no {wanted!r} output (it has {names})")
            self.outputs = [wanted]  # only what is used: onnxruntime skips the rest
        else:
            self.outputs = names[:1]
        self.columns = None if record.columns == list(range(len(record.columns))) else record.columns
        self._class_of = {str(c): c for c in record.classes or []}

    @property
    def tie(self) -> float:
        """Probabilities closer than this count as a tie, won by the first class as in the original model's
        argmax: a forest's 15/30 vs 15/30 is an exact tie in float64 but not in onnxruntime's float32 sums."""
        return 4 * self.record.max_abs_diff

    def best(self, proba: Any) -> Any:
        """Each row's class position: the argmax, ties (within ``tie``) to the first class."""
        tie = self.tie
        if tie > 0 and proba.size:  # column by column: 3-4x faster than reductions along rows of a few classes
            columns = proba.T.copy()
            low = columns.max(axis=0) - tie
            best = np.zeros(len(proba), dtype=np.intp)
            for j in range(len(columns) - 1, -1, -1):  # the first class within the tie wins
                best[columns[j] >= low] = j
            return best
        return proba.argmax(axis=1)

    def run(self, rows: Any) -> Any:
        """The session's output (probabilities, labels or values) for rows of features in the contract's order."""
        x = np.asarray(rows, dtype=np.float64)
        if self.columns is not None:
            x = x[:, self.columns]
        if self.dtype is not np.float64:
            x = x.astype(self.dtype)
        return self.session.run(self.outputs, {self.input_name: x})[0]

    def predict(self, rows: Any) -> ModelOutput:
        if self.scores is not None and self.record.tensor_shape is not None:  # (N, *shape) -> the model's dtype
            x = np.ascontiguousarray(rows, dtype=self.dtype)
            return self.scores(np.asarray(self.session.run(self.outputs, {self.input_name: x})[0]))
        raw = self.run(rows)
        classes = self.classes
        if classes is None:  # regression: one value per row, or a list per row for multi-output models
            values = np.asarray(raw)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            return ModelOutput(values=values.tolist())
        if self.record.probabilities:
            proba = np.asarray(raw)
            best = self.best(proba)
            return ModelOutput(values=[classes[i] for i in best.tolist()], probabilities=proba, classes=list(classes))
        labels = np.asarray(raw).reshape(-1).tolist()
        return ModelOutput(values=[self._class_of.get(str(v), v) for v in labels])


def difference(native: ModelOutput, compiled: ModelOutput) -> float:
    """The largest absolute difference between the probabilities (or regression values) of two outputs;
    NotCompiled when their shapes differ."""
    if len(native.values) != len(compiled.values):
        raise NotCompiled(f"the ONNX model returned {len(compiled.values)} predictions for {len(native.values)} rows")
    if native.probabilities is not None:
        a = np.asarray(native.probabilities, dtype=np.float64)
        b = np.asarray(compiled.probabilities, dtype=np.float64)
        if a.shape != b.shape:
            raise NotCompiled(f"the ONNX model returned probabilities of shape {list(b.shape)}, not {list(a.shape)}")
        return _max_diff(a, b)
    if native.classes is not None or not _numeric(native.values):
        return 0.0
    va, vb = np.asarray(native.values, dtype=np.float64), np.asarray(compiled.values, dtype=np.float64)
    if va.shape != vb.shape:
        raise NotCompiled(f"the ONNX model returned values of shape {list(vb.shape)}, not {list(va.shape)}")
    # regression values: relative above 1 (a price of 250,000 is not held to 1e-5 absolute)
    scale = np.maximum(1.0, np.abs(np.nan_to_num(va)))
    return _max_diff(va / scale, vb / scale)


def compare(native: ModelOutput, compiled: ModelOutput) -> float:
    """:func:`difference`, plus labels: NotCompiled unless every label is the same and the difference is within
    TOLERANCE. Returns the difference."""
    worst = difference(native, compiled)
    if native.classes is not None or not _numeric(native.values):
        for i, (x, y) in enumerate(zip(native.values, compiled.values, strict=True)):
            if str(x) != str(y):
                raise NotCompiled(f"on probe row {i} the ONNX model says {_plain(y)!r} where the original model "
                                  f"says {_plain(x)!r}")
    if worst > TOLERANCE:
        raise NotCompiled(f"the ONNX model differs from the original by up to {worst:.3g} (more than {TOLERANCE:g})")
    return worst


def _numeric(values: list[Any]) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _max_diff(a: Any, b: Any) -> float:
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    both = ~np.isnan(a)
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


def load_settings(unsafe_deserialization: bool, trust: list[str] | tuple[str, ...]) -> str:
    """The contract's loading opt-ins, as recorded with a compiled model: a model converted while
    ``unsafe_deserialization`` (or a ``trust:`` entry) allowed its file to load is not served once the contract
    withdraws it (the original is loaded again, and refused). Empty without opt-ins."""
    if not unsafe_deserialization and not trust:
        return ""
    return json.dumps({"unsafe_deserialization": unsafe_deserialization, "trust": sorted(trust)}, sort_keys=True)


def compile_model(runtime: Runtime, model: Any, rows: Any, features: list[str], source_sha256: str,
                  framework: str, settings: str = "") -> tuple[bytes, Record, CompiledModel]:
    """Convert ``model`` with ``runtime.to_onnx`` and check it on ``rows`` (validated probe rows; for a tensor
    input one array of probe instances)."""
    x = numeric_rows(rows)
    tensor = x.ndim > 2 or not features
    ort = ort_version()
    onnx_bytes, columns, converter = runtime.to_onnx(model, features)
    native = runtime.predict(model, rows, features)
    classes = None if native.classes is None and runtime.task == "regression" else runtime.classes(model)
    if classes is not None:
        classes = [_plain(c) for c in classes]
    probabilities = native.probabilities is not None
    values = [_plain(v) for v in native.values]
    record = Record(
        format=FORMAT, source_sha256=source_sha256, features=list(features), columns=columns,
        probe_sha256=probe_sha256(x), probe_count=len(x), onnxruntime=ort, converter=converter,
        framework=framework, classes=classes, probabilities=probabilities, expected_values=values,
        expected_probabilities=np.asarray(native.probabilities, dtype=np.float64).tolist() if probabilities else None,
        max_abs_diff=0.0,
        tensor_shape=[int(d) for d in x.shape[1:]] if tensor else None, dtype=str(x.dtype) if tensor else None,
        scores_kind=runtime.scores_kind if tensor else None, load_settings=settings,
    )
    compiled = CompiledModel(onnx_bytes, record, runtime.scores_output if tensor else None)
    record.max_abs_diff = difference(native, compiled.predict(x))  # sets the tie tolerance, then labels count
    compare(native, compiled.predict(x))
    return onnx_bytes, record, compiled


def save(root: Path, onnx_bytes: bytes, record: Record) -> Path | None:
    """Write the compiled model next to the project; None when the folder is not writable (e.g. in an image)."""
    target = folder(root)
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / ".gitignore").write_text("*\n")
        tmp = target / (ONNX_FILE + ".tmp")
        tmp.write_bytes(onnx_bytes)
        tmp.replace(target / ONNX_FILE)  # the record last: a record always describes the model beside it
        tmp = target / (RECORD_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(record), separators=(",", ":")))
        tmp.replace(target / RECORD_FILE)
        (target / FAILURE_FILE).unlink(missing_ok=True)
    except OSError:
        return None
    return target


def remember_failure(root: Path, source_sha256: str, exc: NotCompiled, write: bool = True) -> str:
    """The reason to report for a failed conversion, kept beside the project when ``write`` (the build copies
    it into the image). Where the converter is missing, a reason kept earlier for the same artifact is more
    useful."""
    target = folder(root)
    if isinstance(exc, Unavailable):
        try:
            data = json.loads((target / FAILURE_FILE).read_text())
        except (OSError, ValueError):
            return str(exc)
        if isinstance(data, dict) and data.get("source_sha256") == source_sha256 and data.get("reason"):
            return f"{data['reason']} (found by mlship build)"
        return str(exc)
    if not write:
        return str(exc)
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / ".gitignore").write_text("*\n")
        for name in (RECORD_FILE, ONNX_FILE):  # a failed conversion leaves no older model to be copied
            (target / name).unlink(missing_ok=True)
        (target / FAILURE_FILE).write_text(json.dumps({"source_sha256": source_sha256, "reason": str(exc)}))
    except OSError:
        pass
    return str(exc)


def load(root: Path, rows: Any, features: list[str], source_sha256: str,
         runtime: Runtime | None = None, settings: str = "") -> CompiledModel:
    """The compiled model kept for this artifact and contract, re-checked on ``rows`` against the recorded
    outputs; NotCompiled (saying why) when there is none, it is stale or it no longer predicts the same.
    A tensor model needs ``runtime`` (configured: its ``scores_output`` turns raw outputs into predictions)."""
    target = folder(root)
    try:
        data = json.loads((target / RECORD_FILE).read_text())
        record = Record(**data)
    except FileNotFoundError:
        raise Missing("no compiled model yet") from None
    except (OSError, ValueError, TypeError) as exc:
        raise NotCompiled(f"{target / RECORD_FILE} is unreadable ({exc})") from None
    x = numeric_rows(rows)
    ort = ort_version()
    stale = [what for what, ok in (
        ("its format", record.format == FORMAT),
        ("the artifact", record.source_sha256 == source_sha256),
        ("unsafe_deserialization or trust", record.load_settings == settings),
        ("input.features", record.features == list(features)),
        ("input.tensor", record.tensor_shape is None or (record.tensor_shape == [int(d) for d in x.shape[1:]]
                                                         and record.dtype == str(x.dtype))),
        ("the probe rows (examples or input schema)", record.probe_sha256 == probe_sha256(x)),
        (f"onnxruntime (checked with {record.onnxruntime}, {ort} here)", record.onnxruntime == ort),
    ) if not ok]
    if stale:
        raise NotCompiled("the compiled model is stale: " + ", ".join(stale) + " changed")
    try:
        onnx_bytes = (target / ONNX_FILE).read_bytes()
    except OSError as exc:
        raise NotCompiled(f"{target / ONNX_FILE} is unreadable ({exc})") from None
    tensor = record.tensor_shape is not None
    if tensor and runtime is None:
        raise NotCompiled("a tensor model's compiled path needs its runtime")
    if tensor and runtime is not None:
        runtime.scores_kind = record.scores_kind
    compiled = CompiledModel(onnx_bytes, record, runtime.scores_output if tensor and runtime else None)
    expected = ModelOutput(values=record.expected_values, probabilities=record.expected_probabilities,
                           classes=record.classes if record.probabilities else None)
    compare(expected, compiled.predict(x))
    return compiled


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def describe(compiled: CompiledModel) -> str:
    r = compiled.record
    probes = "probe tensors" if r.tensor_shape is not None else "probe rows"
    return (f"onnxruntime {r.onnxruntime} (compiled with {r.converter} from {r.framework}; same labels, "
            f"max difference {r.max_abs_diff:.1g} on {r.probe_count} {probes})")
