"""The pytorch runtime's compiled path: a loaded model converted to ONNX (see :mod:`mlship.compiled`).

TorchScript modules go through ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter, nothing extra to
install); ``torch.export`` programs and plain modules through ``torch.onnx.export(..., dynamo=True)`` (built on
torch.export; needs onnxscript), with the TorchScript exporter as the second try for a module torch.export cannot
capture. The example input is zeros of the contract's instance shape and dtype; the batch dimension stays dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from mlship.compiled import NotCompiled, Unavailable


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress, warn about deprecations and log missing torchvision ops: none of it is news."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:300] if text else ''}"


def convert(torch: Any, module: Any, kind: str, shape: list[int], dtype: str) -> tuple[bytes, str]:
    """(the ONNX model, the exporter's name) for ``module`` (a loaded TorchModel's module, of format ``kind``)
    taking instances of ``shape`` (without the batch dimension) in ``dtype``; NotCompiled saying why not."""
    example = (torch.from_numpy(np.zeros([2, *shape], dtype=dtype)),)
    script = f"torch.onnx {_version('torch').split('+')[0]} (TorchScript exporter)"
    dynamo = f"torch.onnx {_version('torch').split('+')[0]} (torch.export, onnxscript {_version('onnxscript')})"
    if kind == "torchscript":
        return _script(torch, module, example), script
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; say so rather than fail inside torch
    except ImportError:
        raise Unavailable("onnxscript is not installed (pip install onnxscript: torch.onnx's exporter for "
                          "torch.export programs)") from None
    try:
        with _quiet(), torch.inference_mode(False):
            program = torch.onnx.export(module, example, dynamo=True, input_names=["x"], output_names=["y"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        return program.model_proto.SerializeToString(), dynamo
    except Exception as exc:  # torch.export could not capture the module: the TorchScript exporter may
        first = _why(exc)
    if kind == "export":
        raise NotCompiled(f"{dynamo} cannot convert the program: {first}")
    try:
        return _script(torch, module, example), script
    except NotCompiled as exc:
        raise NotCompiled(f"{dynamo} cannot convert the model ({first}), nor can {exc}") from None


def _script(torch: Any, module: Any, example: tuple[Any, ...]) -> bytes:
    buffer = io.BytesIO()
    try:  # under no_grad: a TorchScript module run with autograd on keeps a differentiable plan, which then
        # fails under inference_mode ("Inference tensors cannot be saved for backward") when it is served
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, example, buffer, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    except Exception as exc:  # unsupported operators, data-dependent control flow, ...
        raise NotCompiled(f"the TorchScript exporter: {_why(exc)}") from None
    return buffer.getvalue()
