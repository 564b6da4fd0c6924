"""mlship: turn a trained model into a tested prediction service on your own cloud.

The Python API is the pipeline the CLI runs (:mod:`mlship.pipeline`), importable from here::

    import mlship
    report = mlship.deploy("examples/iris-sklearn", target="local")   # preflight -> build -> test -> deploy
    print(report.url)
    mlship.status("examples/iris-sklearn", target="local")
    mlship.destroy("examples/iris-sklearn", target="local")

These names are imported on first use, so ``import mlship`` (and the serving container) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("deploy", "build", "test", "preflight", "status", "logs", "rollback", "destroy")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        import importlib

        return getattr(importlib.import_module("mlship.pipeline"), name)
    raise AttributeError(f"module 'mlship' has no attribute {name!r}")
