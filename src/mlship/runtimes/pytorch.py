"""PyTorch runtime: TorchScript and ``torch.export`` files with no user code, ``nn.Module`` pickles on opt-in.

Formats, told apart by the entries of the zip archive (nothing is executed to find out):

- TorchScript (``torch.jit.script/trace(model).save(...)``): ``<root>/constants.pkl``, ``<root>/code/``;
  loaded with ``torch.jit.load``. A traced module keeps its example input, so ``mlship init`` learns the
  input shape and dtype from it.
- ``torch.export`` programs (``torch.export.save(ep, "model.pt2")``): ``<root>/archive_format``,
  ``<root>/models/*.json`` (older releases: ``serialized_exported_program.json``); loaded with
  ``torch.export.load``; the input shape and dtype come from the program's input spec.
- ``torch.save`` files (``<root>/data.pkl``): a ``state_dict`` is weights only and needs the model's
  class, so it is served through ``load: predict.py:load``. A pickled ``nn.Module`` (``torch.save(model)``)
  runs code from the file when it is unpickled: it is refused unless mlship.yaml says
  ``unsafe_deserialization: true``. Every other ``torch.load`` uses ``weights_only=True``.

Threads: ``torch.set_num_threads`` is set once per process from ``$MLSHIP_TORCH_THREADS`` (default 1):
the server already runs ``serve.threads`` predictions in parallel, and one intra-op thread per model
thread keeps them from fighting over the cores.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlship.contract import Contract, InputSpec, Task, shape_text
from mlship.errors import ArtifactError
from mlship.runtimes.base import ArtifactInfo, ModelOutput, Runtime
from mlship.runtimes.pytorch_cpu import CPU_INDEX_ENV as CPU_INDEX_ENV  # re-exported: tests and docs name it here
from mlship.runtimes.pytorch_cpu import cpu_requirements
from mlship.runtimes.pytorch_files import (
    detect_format,
    export_input,
    pickle_globals,
    public_version,
    traced_input,
    unreadable,
)
from mlship.runtimes.pytorch_scores import _probabilities as _probabilities  # re-exported: tests call it here
from mlship.runtimes.pytorch_scores import _to_numpy, scores_kind

THREADS_ENV = "MLSHIP_TORCH_THREADS"
_DTYPES = {"float32", "float64", "int32", "int64", "uint8"}
_threads_lock = threading.Lock()
_threads_set = False

SAFER_FORMATS = ("Save the model as TorchScript (`torch.jit.trace(model, example).save('model.pt')` or "
                 "`torch.jit.script(model).save('model.pt')`) or as a torch.export program "
                 "(`torch.export.save(torch.export.export(model, (example,)), 'model.pt2')`)")


@dataclass
class TorchModel:
    """A loaded artifact: the module to call and what the file says about its input."""

    module: Any
    format: str  # "torchscript" | "export" | "pickle"
    shape: list[int | None] | None = None  # with the batch dimension first (None: dynamic)
    dtype: str | None = None
    fixed_batch: int | None = None  # a program exported with a static batch size takes only that many rows


def torch_threads() -> int:
    """Intra-op threads per process: ``$MLSHIP_TORCH_THREADS`` or 1."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ArtifactError(f"${THREADS_ENV}={raw!r} is not a positive integer.",
                            fix=f"Set {THREADS_ENV} to the number of threads each prediction may use, e.g. 2.")
    return value


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ArtifactError(f"The pytorch runtime needs torch: {exc}.",
                            fix="pip install 'mlship[pytorch]' (or torch==<the version you trained with>).") from None
    global _threads_set
    if not _threads_set:
        with _threads_lock:
            if not _threads_set:
                torch.set_num_threads(torch_threads())
                _threads_set = True
    return torch


class PytorchRuntime(Runtime):
    """TorchScript, torch.export programs, state_dicts (through a loader) and, on opt-in, pickled modules."""

    name = "pytorch"
    extensions = (".pt", ".pth", ".pt2", ".ts")
    # C++ headers, CMake files and C++ test binaries (only for building extensions or testing torch), and a
    # test helper written in Python 3.12 syntax that would fail the image's compileall on 3.10/3.11
    # (torch/bin/torch_shm_manager stays: `import torch` looks for it)
    image_prune = ("torch/include", "torch/share", "torch/test", "torch/bin/test_*", "torch/bin/*Test",
                   "torch/bin/protoc*", "torch/testing/_internal/py312_intrinsics.py")
    # an image serving the compiled model (model.onnx, see mlship.compiled) installs onnxruntime instead
    framework_packages = ("torch",)
    batchable = True  # one instance's output depends on that instance alone (stateful models: serve.batching)

    def __init__(self) -> None:
        self.labels: list[str] | None = None
        self.tensor: tuple[list[int], str] | None = None  # the contract's instance shape and dtype
        self._warnings: list[str] = []

    @contextmanager
    def _recording(self) -> Iterator[None]:
        """Keep the framework's warnings (e.g. TorchScript's deprecation) as load warnings, not log noise."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
            if "torch.jit" in text and "deprecated" in text:
                text = ("TorchScript is deprecated in this torch release; it still loads, but torch.export "
                        "(torch.export.save -> .pt2) is the format with a future")
            if text:
                self._warnings.append(text)

    def load_warnings(self) -> list[str]:
        return list(dict.fromkeys(self._warnings))

    def configure(self, contract: Contract) -> None:
        super().configure(contract)
        self.labels = contract.output.labels
        t = contract.input.tensor
        self.tensor = ([int(d) for d in t.instance_shape], t.dtype) if t is not None else None

    # -- loading -----------------------------------------------------------------------------------
    def load(self, path: Path) -> Any:
        torch = _import_torch()
        if not path.is_file():
            raise ArtifactError(f"Model file not found: {path}.", fix="Train the model or fix `artifact`.")
        kind = detect_format(path)
        if kind == "torchscript":
            try:
                with self._recording():
                    module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise unreadable(path, "TorchScript", exc) from None
            module.eval()
            shape, dtype = traced_input(path)
            return TorchModel(module, "torchscript", shape, dtype)
        if kind == "export":
            try:
                with self._recording():
                    program = torch.export.load(str(path))
            except Exception as exc:
                raise unreadable(path, "torch.export", exc) from None
            shape, dtype = export_input(program)
            fixed = shape[0] if shape and isinstance(shape[0], int) else None
            if shape:
                shape = [None, *shape[1:]]
            return TorchModel(program.module(), "export", shape, dtype, fixed)
        if kind == "torch.save":
            return self._load_pickle(torch, path)
        if kind == "aoti":
            raise ArtifactError(
                f"{path.name} is an AOTInductor package (compiled code), which the pytorch runtime does not run.",
                fix="Save the exported program itself: torch.export.save(torch.export.export(model, (example,)), "
                "'model.pt2').")
        raise ArtifactError(
            f"{path.name} is not a TorchScript, torch.export or torch.save file.",
            why="The pytorch runtime recognises its formats by the entries of the zip archive torch writes.",
            fix=SAFER_FORMATS + ", or choose the runtime that matches the file.")

    def _load_pickle(self, torch: Any, path: Path) -> TorchModel:
        try:
            with self._recording():
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            obj = self._load_unsafe(torch, path)
        except Exception as exc:
            raise unreadable(path, "torch.save", exc) from None
        if isinstance(obj, torch.nn.Module):
            return TorchModel(obj.eval(), "pickle")
        if isinstance(obj, dict):
            tensors = sum(1 for v in obj.values() if isinstance(v, torch.Tensor))
            what = "a state_dict" if tensors else "a dict"
            keys = ", ".join(list(map(str, obj))[:4]) + (", ..." if len(obj) > 4 else "")
            raise ArtifactError(
                f"{path.name} holds {what} ({len(obj)} entries: {keys}), not a model.",
                why="A state_dict has the weights but not the model's code; mlship cannot build the network "
                "from it.",
                fix="Add `load: predict.py:load` to mlship.yaml with a function that builds your model class and "
                "loads the weights: `model = Net(); model.load_state_dict(torch.load(path, weights_only=True)); "
                "return model.eval()` (see the README, PyTorch). Or: " + SAFER_FORMATS + ".")
        raise ArtifactError(f"{path.name} holds a {type(obj).__name__}, not a model.",
                            fix=SAFER_FORMATS + ".")

    def _load_unsafe(self, torch: Any, path: Path) -> Any:
        """A pickle that refers to classes (torch.save(model)): only with unsafe_deserialization."""
        classes = pickle_globals(path)
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        what = f"a pickled object ({shown})" if shown else "a pickled object"
        if not self.unsafe_deserialization:
            raise ArtifactError(
                f"{path.name} is {what}, saved with torch.save(model); mlship does not unpickle it by default.",
                why="Unpickling runs arbitrary code stored in the file (a pickle can call any function), so "
                "torch files are loaded with weights_only=True, which refuses whole nn.Module objects.",
                fix="If you trust the file, opt in by adding `unsafe_deserialization: true` to mlship.yaml "
                "(`mlship init --unsafe-deserialization` for a new contract); the model's classes must be "
                "importable where it is served. Safer: " + SAFER_FORMATS + ", or save "
                "model.state_dict() and load it from `load: predict.py:load`.")
        try:
            with self._recording():
                return torch.load(str(path), map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as exc:
            raise ArtifactError(
                f"{path.name} refers to a class or module that cannot be imported: {exc}.",
                why="A pickle stores references to the classes it contains, not their code.",
                fix="Make the model's module importable (install its package, or put the file next to "
                "mlship.yaml, list it in build.include and load the model from a `load:` function in "
                "predict.py that imports it). Safer: " + SAFER_FORMATS + ".") from None
        except Exception as exc:
            raise unreadable(path, "torch.save", exc) from None

    def saved_versions(self, model: Any) -> dict[str, str]:
        import torch

        return {"torch": public_version(torch.__version__)}

    @classmethod
    def image_requirements(cls, requirements: list[str]) -> tuple[list[str], list[str], list[str]]:
        """The requirements as the image installs them: torch's CPU build, never CUDA (see
        :func:`mlship.runtimes.pytorch_cpu.cpu_requirements`)."""
        return cpu_requirements(requirements)

    # -- inspecting --------------------------------------------------------------------------------
    def inspect(self, model: Any, path: Path) -> ArtifactInfo:
        import torch

        version = public_version(torch.__version__)
        notes: list[str] = []
        tm = model if isinstance(model, TorchModel) else TorchModel(model, "module")
        if tm.shape is None or tm.dtype is None:
            raise ArtifactError(
                f"{path.name} does not record the shape of its input, so mlship init cannot write input.tensor.",
                why="A scripted TorchScript module or a pickled module keeps no example input; a traced "
                "module (torch.jit.trace) and a torch.export program do.",
                fix="Save with torch.jit.trace(model, example) or torch.export, or write the contract by hand "
                "with the input's shape (batch dimension first, null) and dtype, e.g.\n"
                "input:\n  tensor: {shape: [null, 8, 8], dtype: float32}")
        if tm.dtype not in _DTYPES:
            raise ArtifactError(f"{path.name} takes {tm.dtype} input; mlship accepts "
                                f"{', '.join(sorted(_DTYPES))}.",
                                fix="Cast inside the model (e.g. x.half() in forward) and take float32 input.")
        if any(d is None for d in tm.shape[1:]):
            raise ArtifactError(
                f"{path.name} takes input of shape {shape_text(tm.shape)}: a dimension after the batch is dynamic.",
                why="input.tensor describes one fixed-size array per instance, which the server checks.",
                fix="Write mlship.yaml by hand with the size you serve, e.g. input: {tensor: {shape: "
                f"{shape_text([None, *[d or 128 for d in tm.shape[1:]]])}, dtype: {tm.dtype}}}}}.")
        if tm.fixed_batch is not None:
            notes.append(f"The program was exported with a fixed batch size of {tm.fixed_batch}; batches are "
                         "padded to it. Export with dynamic_shapes={'x': {0: torch.export.Dim('batch')}} to "
                         "take any batch size.")
        tensor: dict[str, Any] = {"shape": list(tm.shape), "dtype": tm.dtype}
        instance = np.zeros([2, *[int(d) for d in tm.shape[1:] if d is not None]], dtype=tm.dtype)
        try:
            out = self._forward(tm, instance)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(
                f"{path.name} fails on an all-zeros input of shape {shape_text([None, *tm.shape[1:]])} "
                f"({tm.dtype}): {exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}",
                fix="Check that the model takes one tensor (batch first), or write mlship.yaml by hand with a "
                "`predict: predict.py:predict` function that calls it.") from None
        task: Task
        labels: list[str] | None
        if out.ndim == 2 and out.shape[1] > 1:
            task, labels = "classification", [str(i) for i in range(out.shape[1])]
            notes.append(f"The model returns {out.shape[1]} scores per instance: task is classification with "
                         f"labels 0..{out.shape[1] - 1}. Name them in output.labels (in output order), or set "
                         "task: regression if the scores are values.")
        else:
            task, labels = "regression", None
            notes.append("The model returns one number per instance: task is regression. For a binary "
                         "classifier with one logit/probability, set task: classification and two output.labels.")
        return ArtifactInfo(task=task, features={}, labels=labels, requirements=[f"torch=={version}"],
                            framework_version=version, notes=notes, tensor=tensor)

    def check_input(self, model: Any, spec: InputSpec) -> list[str]:
        if spec.tensor is None:  # named numeric features: one (N, F) row per instance, like a tabular MLP
            text = [n for n, f in spec.features.items() if f.type == "str"]
            if text:
                return [f"the pytorch runtime takes numbers; input.features {', '.join(text)} are strings "
                        "(encode them in a `predict:` function, or describe the input as input.tensor)"]
            if isinstance(model, TorchModel) and model.shape is not None and model.shape[1:] != [len(spec.features)]:
                return [f"the model takes input of shape {shape_text(model.shape)}, not {len(spec.features)} "
                        "named features; describe it in input.tensor ({shape: [null, ...], dtype})"]
            return []
        if not isinstance(model, TorchModel) or model.shape is None:
            return []
        problems = []
        want = model.shape[1:]
        got = spec.tensor.shape[1:]
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
            problems.append(f"input.tensor.shape is {shape_text(spec.tensor.shape)} but the model takes "
                            f"{shape_text([None, *want])}")
        if model.dtype is not None and model.dtype != spec.tensor.dtype:
            problems.append(f"input.tensor.dtype is {spec.tensor.dtype} but the model takes {model.dtype}")
        return problems

    def classes(self, model: Any) -> list[Any] | None:
        """Outputs are scores by position: class i is output.labels[i]."""
        return list(range(len(self.labels))) if self.labels else None

    # -- predicting --------------------------------------------------------------------------------
    def predict(self, model: Any, rows: Any, features: list[str]) -> ModelOutput:
        tm = model if isinstance(model, TorchModel) else TorchModel(model, "module")
        # a tensor input arrives as one array; named features as rows of numbers -> (N, F), the model's dtype
        x = rows if isinstance(rows, np.ndarray) else np.asarray(rows, dtype=np.dtype(tm.dtype or "float32"))
        return self.scores_output(self._forward(tm, x))

    def scores_output(self, out: Any) -> ModelOutput:
        """Predictions from the model's output (values, or softmax of logits unless they are probabilities);
        the compiled path gives onnxruntime's output the same treatment."""
        if self.task == "regression":
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            return ModelOutput(values=out.tolist() if out.ndim == 1 else [row.tolist() for row in out])
        if self.scores_kind is None:  # settled once, on the first batch (the probe rows): never per request
            self.scores_kind = scores_kind(out)
        proba = _probabilities(out, self.scores_kind)
        if self.labels and proba.shape[1] != len(self.labels):
            raise ArtifactError(
                f"The model returns {proba.shape[1]} class scores per instance but output.labels lists "
                f"{len(self.labels)} labels.",
                fix="List one label per model output, in output order (a single score is a binary classifier "
                "with two labels: negative, positive).")
        classes: list[Any] = list(range(proba.shape[1]))
        return ModelOutput(values=[classes[i] for i in proba.argmax(axis=1)], probabilities=proba,
                           classes=classes)

    def to_onnx(self, model: Any, features: list[str]) -> tuple[bytes, list[int], str]:
        """The model as ONNX (see :mod:`mlship.runtimes.pytorch_onnx`), for a tensor input."""
        from mlship.compiled import NotCompiled
        from mlship.runtimes.pytorch_onnx import convert

        tm = model if isinstance(model, TorchModel) else TorchModel(model, "module")
        if self.tensor is None or tm.fixed_batch is not None:
            raise NotCompiled("the input is named features, not input.tensor" if self.tensor is None else
                              f"the program was exported with a fixed batch size of {tm.fixed_batch}")
        onnx_bytes, converter = convert(_import_torch(), tm.module, tm.format, *self.tensor)
        return onnx_bytes, [], converter

    def _forward(self, tm: TorchModel, x: Any) -> Any:
        torch = _import_torch()
        if tm.fixed_batch is not None and len(x) != tm.fixed_batch:
            parts = [self._forward_padded(tm, x[i:i + tm.fixed_batch]) for i in range(0, len(x), tm.fixed_batch)]
            return np.concatenate(parts)
        # TorchScript: no_grad, not inference_mode: a scripted module whose parameters require grad (the default
        # for a traced nn.Module) that was once run with autograd on (by the user's code or an exporter) fails
        # under inference_mode with "Inference tensors cannot be saved for backward"
        with torch.no_grad() if tm.format == "torchscript" else torch.inference_mode():
            out = tm.module(torch.from_numpy(np.ascontiguousarray(x)))
        return _to_numpy(torch, out)

    def _forward_padded(self, tm: TorchModel, x: Any) -> Any:
        n = len(x)
        assert tm.fixed_batch is not None
        if n < tm.fixed_batch:
            x = np.concatenate([x, np.zeros((tm.fixed_batch - n, *x.shape[1:]), dtype=x.dtype)])
        return self._forward(TorchModel(tm.module, tm.format, tm.shape, tm.dtype), x)[:n]
