"""The ``mlship.yaml`` contract as strict pydantic models.

Every model forbids unknown keys; ``mlship.contract_io`` turns validation errors into messages that
name the YAML path, the line and the nearest valid key. The JSON schema in ``schema/`` is generated
from :class:`Contract` (``python scripts/gen_schema.py``) and checked for staleness by the tests.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlship.contract_base import PORT_MAX, PORT_MIN, Strict, port_problem
from mlship.contract_serve import BuildOptions, ServeOptions, TestOptions

FeatureType = Literal["float", "int", "str", "bool"]
FEATURE_TYPES: tuple[str, ...] = ("float", "int", "str", "bool")
Task = Literal["classification", "regression"]

_DNS_NAME = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
_CODE_REF = re.compile(r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")
#: artifact: values that need artifact_sha256 (a registry or DVC states its own pin)
PINNED_SCHEMES = ("s3://", "gs://", "https://", "http://")
__all__ = ["PORT_MAX", "PORT_MIN", "BuildOptions", "ServeOptions", "Strict", "TestOptions", "port_problem"]
class Feature(Strict):
    """One named input feature. In YAML a bare type (``sepal_length: float``) is shorthand."""

    type: FeatureType = Field(description="Value type: float, int, str or bool.")
    description: str | None = Field(default=None, description="Shown in /docs, the UI and OpenAPI.")
    minimum: float | None = Field(default=None, description="Smallest accepted value (numbers only).")
    maximum: float | None = Field(default=None, description="Largest accepted value (numbers only).")
    enum: list[str | int | float | bool] | None = Field(
        default=None, description="The only accepted values (e.g. the categories of a str feature)."
    )

    @model_validator(mode="after")
    def _bounds_fit_type(self) -> Feature:
        if (self.minimum is not None or self.maximum is not None) and self.type not in ("float", "int"):
            raise ValueError(f"minimum/maximum only apply to float and int features, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is larger than maximum {self.maximum}")
        return self


TensorDtype = Literal["float32", "float64", "int32", "int64", "uint8"]
TENSOR_DTYPES: tuple[str, ...] = ("float32", "float64", "int32", "int64", "uint8")


class ImageSpec(Strict):
    """A tensor that is also accepted as a base64 PNG: decoded, converted, resized and scaled."""

    channels: Literal[1, 3] = Field(description="1: converted to grayscale; 3: converted to RGB.")
    scale: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="[min, max]: pixel values 0..255 are mapped linearly onto this range.",
    )

    @field_validator("scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(v) for v in value) or value[0] >= value[1]:
            raise ValueError(f"scale must be [min, max] with min < max, got {list(value)}")
        return value


class TensorSpec(Strict):
    """One array per instance (an image, a sequence, a fixed-size vector) instead of named features."""

    shape: list[int | None] = Field(
        min_length=2,
        description="The model's input shape; the first entry is the batch dimension and must be null, "
        "e.g. [null, 8, 8] for 8x8 instances.",
    )
    dtype: TensorDtype = Field(default="float32", description="float32, float64, int32, int64 or uint8.")
    image: ImageSpec | None = Field(
        default=None,
        description="Also accept {b64: <base64 PNG>} per instance, converted to `channels`, resized to the "
        "shape's height x width and scaled into `scale`.",
    )

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, value: list[int | None]) -> list[int | None]:
        if value[0] is not None:
            raise ValueError(f"the first dimension is the batch dimension and must be null, got {value[0]}")
        rest = value[1:]
        if any(d is None or d < 1 for d in rest):
            raise ValueError(f"every dimension after the first must be a positive integer, got {shape_text(value)}")
        return value

    @property
    def instance_shape(self) -> tuple[int, ...]:
        """The shape of one instance (the batch dimension removed)."""
        return tuple(int(d) for d in self.shape[1:] if d is not None)

    @model_validator(mode="after")
    def _image_shape(self) -> TensorSpec:
        if self.image is not None and image_layout(self.instance_shape, self.image.channels) is None:
            c = self.image.channels
            raise ValueError(
                f"image.channels {c} needs a shape like [null, H, W, {c}] or [null, {c}, H, W]"
                + (" or [null, H, W]" if c == 1 else "") + f", got {shape_text(self.shape)}"
            )
        return self


def shape_text(shape: Any) -> str:
    """A shape as written in YAML/JSON: [null, 8, 8]."""
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


def image_layout(shape: tuple[int, ...], channels: int) -> tuple[int, int, str] | None:
    """(height, width, layout) of an image tensor: layout "hw", "hwc" or "chw"; None if it cannot hold one."""
    if len(shape) == 2 and channels == 1:
        return shape[0], shape[1], "hw"
    if len(shape) == 3 and shape[2] == channels:
        return shape[0], shape[1], "hwc"
    if len(shape) == 3 and shape[0] == channels:
        return shape[1], shape[2], "chw"
    return None


class InputSpec(Strict):
    """What one instance sent to /predict looks like: named `features`, or one `tensor`."""

    features: dict[str, Feature] = Field(
        default_factory=dict,
        min_length=1,
        description="Named features in the order the model expects them: name -> type or {type, ...}.",
    )
    tensor: TensorSpec | None = Field(
        default=None,
        description="One array per instance: {shape: [null, ...], dtype, image}. Instead of features.",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"type": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> InputSpec:
        has_features = "features" in self.model_fields_set
        if has_features == (self.tensor is not None):
            raise ValueError("give exactly one of `features` (named values) or `tensor` (one array per instance)"
                             + (", not both" if has_features else ""))
        return self


class OutputSpec(Strict):
    """How predictions are presented."""

    labels: list[str] | None = Field(
        default=None,
        description="Class labels, in the order of the model's classes (classification only).",
    )


class Dependencies(Strict):
    """What the model needs at serving time."""

    python: str = Field(default="3.11", pattern=r"^3\.\d{1,2}$", description="Python version, e.g. 3.11.")
    requirements: list[str] | str = Field(
        default_factory=list,
        description="Pip requirement lines, or the path of a requirements file next to mlship.yaml.",
    )


class Example(Strict):
    """One instance and (optionally) the output expected for it; replayed by validate and test."""

    input: dict[str, Any] = Field(
        description="One instance, keyed by feature name; for a tensor input {input: <nested list>}."
    )
    output: dict[str, Any] | None = Field(
        default=None,
        description="Expected output; only the keys given are compared (e.g. {label: setosa}).",
    )
    tolerance: float = Field(default=1e-6, ge=0, description="Absolute tolerance for numbers.")


class Proof(Strict):
    """That the served release predicts the same as the recorded one on probe rows (written by `mlship init`)."""

    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The artifact the proof was made for.")
    rows: int = Field(ge=1, description="Probe rows both releases predicted.")
    labels_equal: bool = Field(description="Every predicted label (or value) equal.")
    max_abs_diff: float = Field(ge=0, description="Largest absolute difference of probabilities (or values).")
    tolerance: float = Field(default=1e-9, ge=0, description="The largest difference the proof accepts.")
    reference: dict[str, str] = Field(default_factory=dict,
                                      description="Package versions of the recorded environment it ran in.")
    checked: str = Field(description="When (UTC, ISO 8601).")


class Provenance(Strict):
    """Where the artifact comes from and what serves it: the versions it records, the Python of their time, and
    the versions the image serves with (another release only with a proof bound to this artifact)."""

    saved_with: dict[str, str] = Field(description="package -> the version the artifact records.")
    python: str = Field(pattern=r"^3\.\d{1,2}$", description="The Python the recorded versions ran in.")
    served_with: dict[str, str] = Field(description="package -> the version the image serves with.")
    proof: Proof | None = Field(default=None, description="Required when a served version differs from the "
                                "recorded one.")

    @model_validator(mode="after")
    def _proven(self) -> Provenance:
        changed = sorted(p for p, v in self.saved_with.items() if self.served_with.get(p, v) != v)
        if changed and (self.proof is None or not self.proof.labels_equal
                        or self.proof.max_abs_diff > self.proof.tolerance):
            raise ValueError(f"served_with changes {', '.join(changed)} from the recorded version without a "
                             "passing proof; run `mlship init` again to make one")
        return self


class Contract(Strict):
    """The whole mlship.yaml."""

    name: str = Field(pattern=_DNS_NAME, max_length=63, description="Service name; DNS-safe.")
    version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Model version; defaults to the first 12 hex digits of the artifact's sha256.",
    )
    runtime: str = Field(description="Runtime plugin: sklearn (built in) or an installed plugin.")
    artifact: str = Field(min_length=1, description="Model file or folder, relative to mlship.yaml; or a URI: "
                          "s3://, gs://, https://, models:/ (MLflow), or a DVC-tracked path (docs/artifacts.md).")
    artifact_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the artifact; required for s3://, gs:// and https:// artifacts and checked on every "
        "fetch (written by `mlship init URI`).")
    task: Task = Field(description="classification (labels + probabilities) or regression (values).")
    predict: str | None = Field(
        default=None, description="Optional user code `file.py:function(model, instances) -> outputs`."
    )
    load: str | None = Field(
        default=None, description="Optional user code `file.py:function(path) -> model`."
    )
    input: InputSpec
    unsafe_deserialization: bool = Field(
        default=False,
        description="Allow loading an artifact that runs its own code when deserialized (e.g. a Keras "
        "Lambda layer). Only for artifacts you trust; formats with a safe mode refuse such models otherwise.",
    )
    trust: list[str] = Field(
        default_factory=list,
        description="Classes and functions a pickle may refer to beyond mlship's allow-list (scikit-learn, numpy, "
        "scipy, pandas, ... and your modules next to mlship.yaml): `module.Name`, or `module.*` for a module and "
        "its submodules. Names that run commands or code cannot be trusted by name (see unsafe_deserialization).",
    )
    output: OutputSpec = Field(default_factory=OutputSpec)
    dependencies: Dependencies = Field(default_factory=Dependencies)
    provenance: Provenance | None = Field(
        default=None, description="Written by `mlship init` for a model saved with releases of another era "
        "(docs/legacy-models.md).")
    docs: str | None = Field(default=None, description="Markdown model card, served at /docs.")
    examples: list[Example] = Field(default_factory=list)
    serve: ServeOptions = Field(default_factory=ServeOptions)
    build: BuildOptions = Field(default_factory=BuildOptions)
    test: TestOptions = Field(default_factory=TestOptions)
    targets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-target options, validated by each target plugin."
    )

    @field_validator("trust")
    @classmethod
    def _trust_entries(cls, value: list[str]) -> list[str]:
        from mlship.trust import entry_problem

        for entry in value:
            problem = entry_problem(entry)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("predict", "load")
    @classmethod
    def _code_ref(cls, value: str | None) -> str | None:
        if value is not None and not _CODE_REF.match(value):
            raise ValueError(f"expected `file.py:function`, got {value!r}")
        return value

    @model_validator(mode="after")
    def _pinned(self) -> Contract:
        if self.artifact.startswith(PINNED_SCHEMES) and self.artifact_sha256 is None:
            raise ValueError(f"artifact {self.artifact} is remote: add `artifact_sha256: <64 hex>` (the digest every "
                             "fetch is checked against; `mlship init URI` writes it)")
        if self.serve.fetch_at_start and "://" not in self.artifact and not self.artifact.startswith("models:/"):
            raise ValueError("serve.fetch_at_start applies to s3://, gs://, https:// and models:/ artifacts only; "
                             "a local artifact is always in the image")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if self.output.labels is not None and self.task != "classification":
            raise ValueError("output.labels only apply to task: classification")
        if self.input.tensor is not None:
            for i, example in enumerate(self.examples):
                if set(example.input) != {"input"}:
                    raise ValueError(
                        f"examples[{i}].input must be the body of one request to a tensor input: "
                        f"{{input: <nested list>}} (or {{input: {{b64: <png>}}}}), got keys {sorted(example.input)}"
                    )
            return self
        names = set(self.input.features)
        for i, example in enumerate(self.examples):
            missing = sorted(names - set(example.input))
            extra = sorted(set(example.input) - names)
            if missing or extra:
                raise ValueError(
                    f"examples[{i}].input does not match input.features"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra}" if extra else "")
                )
        return self

    @property
    def feature_names(self) -> list[str]:
        """The named features in model order; empty for a tensor input."""
        return list(self.input.features)
