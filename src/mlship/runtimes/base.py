"""The Runtime interface every framework plugin implements.

A complete plugin (register it under the ``mlship.runtimes`` entry-point group)::

    import numpy as np, pickle
    from mlship.runtimes.base import ArtifactInfo, ModelOutput, Runtime

    class PickleRegressor(Runtime):
        name = "pickle-regressor"
        extensions = (".pkl",)

        def load(self, path):
            with open(path, "rb") as fh:
                return pickle.load(fh)

        def inspect(self, model, path):
            n = model.n_features_in_
            return ArtifactInfo(task="regression", features={f"x{i}": "float" for i in range(n)})

        def predict(self, model, rows, features):
            return ModelOutput(values=list(model.predict(np.asarray(rows, dtype=float))))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mlship.contract import Task


@dataclass
class ArtifactInfo:
    """What `mlship init` learns from an artifact to fill in mlship.yaml."""

    task: Task
    features: dict[str, str]
    labels: list[str] | None = None
    requirements: list[str] = field(default_factory=list)
    framework_version: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelOutput:
    """Raw model output for a batch: one value per row, plus class probabilities when known."""

    values: list[Any]
    probabilities: Any = None  # 2-D array-like, rows x classes
    classes: list[Any] | None = None


class Runtime(ABC):
    """Loads, inspects and calls models of one framework. Frameworks are imported lazily."""

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def can_load(cls, path: Path) -> bool:
        """Whether ``path`` looks like an artifact of this runtime (used by `mlship init`)."""
        return path.suffix.lower() in cls.extensions

    @abstractmethod
    def load(self, path: Path) -> Any:
        """Load the artifact; raise :class:`mlship.errors.ArtifactError` with a fix on failure."""

    @abstractmethod
    def inspect(self, model: Any, path: Path) -> ArtifactInfo:
        """Describe a loaded model: task, input features, labels, pinned requirements."""

    @abstractmethod
    def predict(self, model: Any, rows: list[list[Any]], features: list[str]) -> ModelOutput:
        """Predict a batch; ``rows`` are validated values in the order of ``features``."""

    def check(self, model: Any, features: list[str]) -> list[str]:
        """Problems between the model and the contract's features (empty when they agree)."""
        return []

    def saved_versions(self, model: Any) -> dict[str, str]:
        """Packages whose exact version the artifact needs (e.g. the pickle's scikit-learn version)."""
        return {}

    def load_warnings(self) -> list[str]:
        """Warnings raised while loading (e.g. a framework version mismatch)."""
        return []
