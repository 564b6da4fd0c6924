"""Load a project's model and turn validated rows into JSON-ready predictions.

Used by the server, by `mlship predict --local` and by `mlship validate`: one code path.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mlship import compiled, plugins
from mlship.compiled_tensor import probe_tensors
from mlship.contract_io import Project, artifact_sha256
from mlship.errors import ArtifactError, ContractError, MlshipError, PredictionError, UserCodeError
from mlship.runtimes.base import ModelOutput, Runtime
from mlship.serving.batcher import concat_rows
from mlship.serving.validation import InvalidInput, make_validator, probe_instances, sample_body
from mlship.usercode import load_function, short_traceback
from mlship.userpkg import make_importable


class Predictor:
    """The model plus everything needed to call it. ``load()`` is slow; the rest is thread-safe."""

    def __init__(self, project: Project, *, keep_compiled: bool = True, worker: bool = False) -> None:
        self.project = project
        #: write the compiled model (or why it failed) to .mlship/compiled/ for the next start (not in dry runs)
        self.keep_compiled = keep_compiled
        #: a changed tensor model is converted by the project's long-lived worker (mlship.convert_worker)
        self.worker = worker and keep_compiled
        self.worker_versions: dict[str, str] | None = None  # the versions the worker's runtime read, if it ran
        contract = project.contract
        self.features = contract.feature_names
        self.validator = make_validator(contract.input, contract.serve.max_instances)
        self.runtime: Runtime = plugins.get_runtime(contract.runtime)()
        self.runtime.configure(contract)
        self.model: Any = None
        self.warnings: list[str] = []
        #: rows of concurrent requests may share one predict() call: a `predict:` snippet gets a list of
        #: instances anyway; runtimes opt in (Runtime.batchable; tensor instances all have the contract's shape)
        self.batchable = bool(contract.predict) or type(self.runtime).batchable
        self.input_path: str | None = None  # how the runtime builds the model's input (Runtime.prepare)
        #: the model converted to ONNX, when serve.compile allows and it predicts the same (mlship.compiled)
        self.compiled: compiled.CompiledModel | None = None
        self.compile_note: str | None = None  # why the compiled path is not used (serve.compile: auto)
        self._compile_probe: Any = None
        self._source_sha: str | None = None
        self._user_predict: Callable[..., Any] | None = None
        self._label_of: dict[Any, str] = {}
        self._label_text: dict[Any, str] = {}  # class -> label string, filled as classes are seen

    def load(self) -> None:
        """Load the artifact (through the user's `load` hook when given) and check it fits.

        With serve.compile (see :mod:`mlship.compiled`), a compiled model kept for this artifact is used without
        loading the original at all; otherwise the original is loaded, converted and checked on probe rows.
        """
        c = self.project.contract
        compiling = self._compile_mode()
        reason = "serve.compile is off"
        kept = False  # a compiled model was kept for this project but cannot be used
        if c.load:
            if compiling:  # a tensor model your load function builds: its compiled model needs none of your code
                reason, kept = self._load_compiled()
            if self.compiled is None:
                self._call_loader()
        else:
            if compiling:
                reason, kept = self._load_compiled()
                if self.compiled is None and self.worker:
                    reason, kept = self._compile_in_worker(reason, kept)
            if self.compiled is None:
                make_importable(self.project.root)  # a pickle of your own classes: their package is there
                try:
                    self.model = self.runtime.load(self.project.artifact_path)
                except MlshipError as exc:
                    if not kept:
                        raise
                    name = self.project.artifact_path.name
                    raise ArtifactError(
                        f"{name} cannot be served: the compiled model kept for it does not fit ({reason}), and "
                        f"loading the original failed: {exc.message}",
                        why=exc.why,
                        fix=f"In an image (which has no {self.runtime.name} framework when it serves a compiled "
                        "model): rebuild it with `mlship build`, which converts and checks the model again. "
                        + (exc.fix or ""),
                    ) from None
                self.warnings = self.runtime.load_warnings()
        if c.predict:
            self._user_predict = load_function(self.project.root, c.predict, "predict")
        elif self.compiled is None:
            problems = self.runtime.check_input(self.model, c.input)
            if problems:
                raise ArtifactError(
                    f"The model does not match mlship.yaml: {'; '.join(problems)}.",
                    fix="Run `mlship init` again for this model, or fix "
                    f"{'input.tensor' if c.input.tensor is not None else 'input.features'}.",
                )
            if compiling:
                reason = self._compile()
            if self.compiled is None:  # the compiled path's probe rows start with the same examples and rows
                samples = self._compile_probe if self._compile_probe is not None else self._probe_rows()
                if c.input.tensor is not None and self.runtime.scores_kind is None and len(samples):
                    self._settle_scores(samples)
                self.input_path = self.runtime.prepare(self.model, samples, self.features)
        if compiling and self.compiled is None:
            self._not_compiled(reason)
        self._label_of = self._label_map()
        self._label_text = {}

    def _call_loader(self) -> None:
        c = self.project.contract
        assert c.load is not None
        loader = load_function(self.project.root, c.load, "load")
        try:
            self.model = loader(self.project.artifact_path)
        except Exception as exc:
            raise UserCodeError(
                f"{c.load} raised {exc.__class__.__name__}: {exc}",
                why=short_traceback(exc),
                fix="Fix the load function; it receives the artifact path and returns the model.",
            ) from None

    def _source_digest(self) -> str:
        """What a compiled model is made from: the artifact, and where your load function builds the model, the
        load module and the build.include files (a changed network class makes the compiled model stale)."""
        sha = artifact_sha256(self.project.artifact_path)
        c = self.project.contract
        if not c.load:
            return sha
        root = self.project.root
        paths = {root / c.load.split(":")[0]}
        for pattern in c.build.include:
            for match in root.glob(pattern):
                paths.update(match.rglob("*") if match.is_dir() else [match])
        digest = hashlib.sha256(sha.encode())
        for path in sorted(p for p in paths if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def _compile_mode(self) -> bool:
        """Whether to try the compiled path; serve.compile: onnx where it cannot apply is a contract error."""
        c = self.project.contract
        if c.serve.compile == "off":
            return False
        tensor_runtime = type(self.runtime).scores_output is not Runtime.scores_output
        why = ("the model is loaded or called by your code (predict:)" if c.predict
               else "the model is loaded or called by your code (load:)" if c.load and not tensor_runtime
               else f"the {self.runtime.name} runtime has no compiled path"
               if type(self.runtime).to_onnx is Runtime.to_onnx else None)
        if why is None:
            return True
        if c.serve.compile == "onnx":
            raise ContractError(f"serve.compile is onnx, but {why}.",
                                fix="Set serve.compile to auto (or remove it) to serve the model as it is.")
        return False

    def _load_compiled(self) -> tuple[str, bool]:
        """Use the compiled model kept for this artifact, if it is current. Returns why not, and whether one was
        kept (stale or broken) rather than missing."""
        rows = self._probe_rows(compiled.PROBE_ROWS)
        self._compile_probe = rows
        self._source_sha = self._source_digest()
        try:
            self.compiled = compiled.load(self.project.root, rows, self.features, self._source_sha, self.runtime,
                                          self._settings())
        except compiled.Missing as exc:
            return str(exc), False
        except compiled.NotCompiled as exc:
            return str(exc), True
        self.input_path = compiled.describe(self.compiled)
        return "", False

    def _compile_in_worker(self, reason: str, kept: bool) -> tuple[str, bool]:
        """The worker converts, proves and keeps the model; it is then re-checked here like any kept compiled
        model. When the worker cannot be used the caller converts in-process (the same answer)."""
        from mlship import convert_worker

        self.worker_versions = convert_worker.convert(self.project)
        if self.worker_versions is None:
            return reason, kept
        reason, kept = self._load_compiled()
        if self.compiled is not None:  # `mlship build` says so: the worker lives on (docs/compiled-tensors.md)
            self.input_path = f"{self.input_path}; converted by this project's conversion worker"
        return reason, kept

    def _compile(self) -> str:
        """Convert the loaded model and check it; keep it for the next start. Returns why not on failure."""
        rows = self._compile_probe  # set by _load_compiled, which always runs first
        assert rows is not None and self._source_sha is not None
        versions = self.runtime.saved_versions(self.model)
        framework = ", ".join(f"{k} {v}" for k, v in versions.items()) or self.runtime.name
        try:
            onnx_bytes, record, model = compiled.compile_model(self.runtime, self.model, rows, self.features,
                                                               self._source_sha, framework, self._settings())
        except compiled.NotCompiled as exc:
            return compiled.remember_failure(self.project.root, self._source_sha, exc, write=self.keep_compiled)
        except Exception as exc:  # the model itself failed on a probe row: the native path will say so
            return f"the original model failed on the probe rows ({exc.__class__.__name__}: {exc})"
        if self.keep_compiled:
            compiled.save(self.project.root, onnx_bytes, record)
        self.compiled = model
        self.input_path = compiled.describe(model)
        return ""

    def _settle_scores(self, samples: Any) -> None:
        """A tensor classifier's outputs are decided probabilities or logits once, on the probe rows
        (Runtime.scores_kind), not per call: a request's answer must not depend on the requests it is batched with."""
        try:
            self.runtime.predict(self.model, samples, self.features)
        except Exception:  # the model fails on these rows: warm-up and validate say how
            return

    def _settings(self) -> str:
        c = self.project.contract
        return compiled.load_settings(c.unsafe_deserialization, c.trust)

    def _not_compiled(self, reason: str) -> None:
        if self.project.contract.serve.compile == "onnx":
            raise ArtifactError(f"serve.compile is onnx, but the compiled model cannot be used: {reason}.",
                                fix="Set serve.compile to auto to serve the original model when this happens, "
                                "or change the model (`mlship validate` shows the reason again).")
        self.compile_note = f"compiled path not used: {reason}; serving the {self.runtime.name} model as it is"

    def _probe_rows(self, n: int = 64) -> Any:
        """Validated rows for Runtime.prepare and the compiled path's checks: the examples, and ``n`` rows made
        from the schema (named features), or ``n`` seeded tensors of the contract's shape (mlship.compiled_tensor)."""
        c = self.project.contract
        bodies = [e.input for e in c.examples]
        if c.input.tensor is None:
            bodies += probe_instances(c.input.features, bodies, n)
        elif not bodies:
            bodies.append(sample_body(c.input))
        parts = []
        for body in bodies:
            try:
                parts.append(self.validator.validate(body).rows)
            except InvalidInput:  # an invalid example fails warm-up or `mlship validate`, not this
                continue
        if c.input.tensor is not None:
            base = concat_rows(parts) if parts else np.zeros((0, *c.input.tensor.instance_shape))
            return concat_rows([np.asarray(base, dtype=c.input.tensor.dtype),
                                probe_tensors(c.input.tensor, base, n)])
        return concat_rows(parts) if parts else []

    def _label_map(self) -> dict[Any, str]:
        labels = self.project.contract.output.labels
        classes = self.compiled.classes if self.compiled is not None else self.runtime.classes(self.model)
        if labels is None or classes is None:
            return {}
        classes = list(classes)
        if [str(c) for c in classes] == labels:
            return {}
        if len(classes) != len(labels):
            raise ArtifactError(
                f"output.labels has {len(labels)} labels but the model has {len(classes)} classes "
                f"({', '.join(map(str, classes))}).",
                fix="List one label per class, in the order of the model's classes_.",
            )
        return dict(zip(classes, labels))  # noqa: B905 - lengths checked above; 3.9: no strict=

    def warm_up(self) -> list[dict[str, Any]]:
        """One prediction on the first example (or a schema-made instance); proves the model works."""
        examples = self.project.contract.examples
        instance = examples[0].input if examples else sample_body(self.project.contract.input)
        return self.predict(self.example_rows(instance, 0 if examples else None))

    def example_rows(self, instance: dict[str, Any], index: int | None) -> Any:
        """Validated rows of one example's input; an invalid example is a contract error."""
        try:
            return self.validator.validate(instance).rows
        except InvalidInput as exc:
            where = f"examples[{index}].input" if index is not None else "the warm-up instance"
            problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'input'}: {e['msg']}" for e in exc.errors)
            raise ContractError(f"{where} does not fit the input schema: {problems}.",
                                fix="Fix the example in mlship.yaml (`mlship info` shows the input).") from None

    def predict(self, rows: Any) -> list[dict[str, Any]]:
        """Predictions for validated rows, one JSON-ready dict per row."""
        try:
            if self._user_predict is not None:
                return self._call_user(rows)
            if self.compiled is not None:
                out = self.compiled.predict(rows)
            else:
                out = self.runtime.predict(self.model, rows, self.features)
        except (PredictionError, UserCodeError):
            raise
        except Exception as exc:
            raise PredictionError(
                f"The model raised {exc.__class__.__name__}: {exc}", why=short_traceback(exc)
            ) from None
        return self._format(out, len(rows))

    def _call_user(self, rows: Any) -> list[dict[str, Any]]:
        assert self._user_predict is not None
        if self.project.contract.input.tensor is not None:
            instances: Any = rows  # one array (N, *shape), in the contract's dtype
        else:
            instances = [dict(zip(self.features, row)) for row in rows]  # noqa: B905 - validated rows; 3.9: no strict=
        try:
            result = list(self._user_predict(self.model, instances))
        except Exception as exc:
            raise UserCodeError(
                f"{self.project.contract.predict} raised {exc.__class__.__name__}: {exc}",
                why=short_traceback(exc),
            ) from None
        result = _column(result)
        if len(result) != len(rows):
            raise UserCodeError(
                f"{self.project.contract.predict} returned {len(result)} outputs for {len(rows)} instances.",
                fix="Return one output (a value or a dict) per instance, in order.",
            )
        key = "label" if self.project.contract.task == "classification" else "value"
        return [_jsonable(r) if isinstance(r, dict) else {key: _jsonable(r)} for r in result]

    def _format(self, out: ModelOutput, n: int) -> list[dict[str, Any]]:
        if len(out.values) != n:
            raise PredictionError(f"The model returned {len(out.values)} predictions for {n} rows.")
        if self.project.contract.task == "regression":
            return [{"value": _jsonable(v)} for v in out.values]  # a NaN value is answered as null
        text = self._label_text
        try:  # labels are strings (as in OpenAPI and output.labels), also for models with int classes
            labels = [text[v] for v in out.values]
        except (KeyError, TypeError):  # a value not seen yet (or unhashable): the slow way, remembered
            labels = [self._label_str(v) for v in out.values]
        if out.probabilities is None or out.classes is None:
            return [{"label": v} for v in labels]
        names = [self._label_str(c) for c in out.classes]
        proba = np.asarray(out.probabilities, dtype=np.float64)
        if proba.shape != (n, len(names)):
            raise PredictionError(f"The model returned probabilities of shape {list(proba.shape)} for {n} rows "
                                  f"and {len(names)} classes.")
        if not np.isfinite(proba).all():
            raise _non_finite("probabilities", proba)
        # lengths checked above: zip without strict= (a third faster on large batches)
        return [{"label": label, "probabilities": dict(zip(names, row))}  # noqa: B905
                for label, row in zip(labels, proba.tolist())]  # noqa: B905

    def _label_str(self, value: Any) -> str:
        """The label string for a model's class or output value (output.labels mapping applied)."""
        label_of = self._label_of
        label = str(_jsonable(label_of.get(value, value) if label_of else value))
        try:
            if len(self._label_text) < 10_000:  # a regression-like "classifier" must not grow it forever
                self._label_text[value] = label
        except TypeError:  # unhashable
            pass
        return label


def _non_finite(what: str, array: Any) -> PredictionError:
    """The error for class probabilities that are NaN or infinite: the label would be meaningless, so they are
    never answered as 200 with nulls."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(array, dtype=np.float64).reshape(len(array), -1)).all(axis=1))
    return PredictionError(
        f"The model returned {what} that are not finite numbers (NaN or infinity) for instance {int(bad[0])}"
        + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") + ".",
        why="An input value far outside the range the model was trained on overflowed inside the model (the "
        "compiled path computes in float32, where values beyond about 3.4e38 are infinite).",
        fix="Send values in the range of the training data, and bound them in mlship.yaml (a feature's minimum / "
        "maximum) so that such values are rejected with 422 and the field's name.",
    )


def _column(result: list[Any]) -> list[Any]:
    """One output per instance from a column: items that are all one-item arrays or lists (``predict`` of an
    ``(n, 1)`` array, or its ``tolist()``) become their item; anything else is returned as it is."""
    if result and all((isinstance(r, (list, tuple)) or (isinstance(r, np.ndarray) and r.ndim == 1))
                      and len(r) == 1 and not isinstance(r[0], dict) for r in result):
        return [r[0] for r in result]
    return result


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
