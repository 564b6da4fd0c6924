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

from mlship.contract import Contract, InputSpec, Task


@dataclass
class ArtifactInfo:
    """What `mlship init` learns from an artifact to fill in mlship.yaml.

    A model that takes one array per instance leaves ``features`` empty and sets ``tensor`` to the
    contract's ``input.tensor`` mapping, e.g. ``{"shape": [None, 8, 8], "dtype": "float32"}``.
    """

    task: Task
    features: dict[str, str]
    labels: list[str] | None = None
    requirements: list[str] = field(default_factory=list)
    framework_version: str | None = None
    notes: list[str] = field(default_factory=list)
    tensor: dict[str, Any] | None = None


@dataclass
class ModelOutput:
    """Raw model output for a batch: one value per row, plus class probabilities when known."""

    values: list[Any]
    probabilities: Any = None  # 2-D array-like, rows x classes
    classes: list[Any] | None = None


class NotCompiled(Exception):
    """The compiled path (:mod:`mlship.compiled`) cannot be used; the message says why (shown as-is)."""


class Runtime(ABC):
    """Loads, inspects and calls models of one framework. Frameworks are imported lazily."""

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Folders or files (globs relative to site-packages) removed from the image after installing the
    #: requirements, e.g. C headers that are only needed to compile extensions.
    image_prune: ClassVar[tuple[str, ...]] = ()
    #: Folders or files (relative to site-packages) whose shared libraries lose their symbol tables in the
    #: image (what `strip` does; the loader never reads them), e.g. a framework's unstripped .so files.
    image_strip: ClassVar[tuple[str, ...]] = ()

    #: Packages only the original model needs (the framework and what it loads with): an image that serves the
    #: compiled model (:meth:`to_onnx`, serve.compile) leaves them out.
    framework_packages: ClassVar[tuple[str, ...]] = ()

    #: Settings from mlship.yaml, set by :meth:`configure` before :meth:`load` (`mlship init` sets
    #: ``unsafe_deserialization`` from its flag). A format with a safe mode may run code stored in the
    #: artifact only when ``unsafe_deserialization`` is True.
    unsafe_deserialization: bool = False
    #: The contract's ``trust:`` entries (``module.Name`` / ``module.*``): names a pickle may refer to beyond the
    #: allow-list of :mod:`mlship.trust`.
    trust: tuple[str, ...] = ()
    task: Task | None = None
    #: Whether a row's prediction depends on that row alone, so that the server may join the rows of
    #: concurrent requests into one :meth:`predict` call (``serve.batching``). A runtime opts in.
    batchable: ClassVar[bool] = False
    #: A tensor classifier's outputs: "probabilities" or "logits" (softmax applied), decided once from the first
    #: batch it predicts (the probe rows, see :meth:`prepare`) so that an answer never depends on which other
    #: requests shared its call; recorded with a compiled model (:mod:`mlship.compiled`).
    scores_kind: str | None = None

    def configure(self, contract: Contract) -> None:
        """Take the contract's settings; called before :meth:`load` by the server, validate and build."""
        self.unsafe_deserialization = contract.unsafe_deserialization
        self.trust = tuple(contract.trust)
        self.task = contract.task

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
    def predict(self, model: Any, rows: Any, features: list[str]) -> ModelOutput:
        """Predict a batch.

        ``rows`` are validated values in the order of ``features`` (a list of lists); for a tensor input
        (``input.tensor``) they are one numpy array of shape ``(N, *shape[1:])`` in the declared dtype, and
        ``features`` is empty.
        """

    def prepare(self, model: Any, samples: Any, features: list[str]) -> str | None:
        """Called by the server once after :meth:`load` with validated sample rows (the contract's examples and
        rows made from its input schema). A runtime may choose a faster way to build the model's input here,
        after checking on ``samples`` that it predicts the same. Returns the input path's name for the log and
        /metadata (None: nothing to report)."""
        return None

    def to_onnx(self, model: Any, features: list[str]) -> tuple[bytes, list[int], str]:
        """Convert the model for the compiled path (see :mod:`mlship.compiled`): returns (the ONNX model, taking
        one float64 tensor of rows x the model's columns; the contract feature index of each model column; the
        converter's name and version). Raise :class:`NotCompiled` saying why when it cannot. A tensor runtime
        (``features`` empty) returns a model taking the instances array in its dtype, no columns, and implements
        :meth:`scores_output` for the model's raw output."""
        raise NotCompiled(f"the {self.name} runtime has no compiled path")

    def scores_output(self, out: Any) -> ModelOutput:
        """A tensor runtime's predictions from its model's raw output array (batch first): what :meth:`predict`
        does after calling the model, so that the compiled path (which calls onnxruntime instead) answers the
        same way. Must not import the framework (a compiled image does not have it)."""
        raise NotCompiled(f"the {self.name} runtime has no compiled path for tensor inputs")

    def check(self, model: Any, features: list[str]) -> list[str]:
        """Problems between the model and the contract's features (empty when they agree)."""
        return []

    def check_input(self, model: Any, spec: InputSpec) -> list[str]:
        """Problems between the model and the contract's input; tensor runtimes compare shape and dtype."""
        return self.check(model, list(spec.features)) if spec.tensor is None else []

    def classes(self, model: Any) -> list[Any] | None:
        """The model's classes in output order (mapped onto ``output.labels`` by position)."""
        return getattr(model, "classes_", None)

    def saved_versions(self, model: Any) -> dict[str, str]:
        """Packages whose exact version the artifact needs (e.g. the pickle's scikit-learn version)."""
        return {}

    def load_warnings(self) -> list[str]:
        """Warnings raised while loading (e.g. a framework version mismatch)."""
        return []
