"""The ``mlship.yaml`` contract as strict pydantic models.

Every model forbids unknown keys; ``mlship.contract_io`` turns validation errors into messages that
name the YAML path, the line and the nearest valid key. The JSON schema in ``schema/`` is generated
from :class:`Contract` (``python scripts/gen_schema.py``) and checked for staleness by the tests.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FeatureType = Literal["float", "int", "str", "bool"]
FEATURE_TYPES: tuple[str, ...] = ("float", "int", "str", "bool")
Task = Literal["classification", "regression"]

_DNS_NAME = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
_CODE_REF = re.compile(r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    """Base for every contract section: unknown keys are errors, values are not coerced loosely."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class InputSpec(Strict):
    """What one instance sent to /predict looks like."""

    features: dict[str, Feature] = Field(
        min_length=1,
        description="Named features in the order the model expects them: name -> type or {type, ...}.",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"type": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value


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

    input: dict[str, Any] = Field(description="One instance, keyed by feature name.")
    output: dict[str, Any] | None = Field(
        default=None,
        description="Expected output; only the keys given are compared (e.g. {label: setosa}).",
    )
    tolerance: float = Field(default=1e-6, ge=0, description="Absolute tolerance for numbers.")


class ServeOptions(Strict):
    """Limits and behaviour of the prediction server (the same in `mlship serve` and in images)."""

    port: int = Field(default=8080, ge=1, le=65535, description="Port when $PORT is not set.")
    max_body_bytes: int = Field(default=1_048_576, ge=256, description="Larger request bodies get 413.")
    max_instances: int = Field(default=1000, ge=1, description="Most instances in one request (422 above).")
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request prediction timeout (504).")
    max_concurrency: int = Field(
        default=64, ge=1, description="Predictions in progress before new ones get 503 + Retry-After."
    )
    threads: int = Field(default=4, ge=1, le=64, description="Threads that run the model.")
    shutdown_grace_s: float = Field(
        default=8.0, gt=0, description="On SIGTERM, time to finish in-flight requests before exiting."
    )
    auth: Literal["none", "api_key"] = Field(
        default="none", description="api_key: require `Authorization: Bearer <key>` on all but health."
    )
    api_keys_env: str = Field(
        default="MLSHIP_API_KEYS",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding comma-separated API keys.",
    )


class BuildOptions(Strict):
    """How the image is built (`mlship build`)."""

    base_image: str | None = Field(
        default=None,
        description="Base image; default python:<dependencies.python>-slim. $MLSHIP_BASE_IMAGE and "
        "--base-image override it.",
    )
    include: list[str] = Field(
        default_factory=list,
        description="Extra files (globs relative to mlship.yaml) copied next to the contract, e.g. modules "
        "that predict.py imports.",
    )


class TestOptions(Strict):
    """Budgets checked by `mlship test` on the built image."""

    ready_timeout_s: float = Field(default=60.0, gt=0, description="Fail if /readyz is not 200 by then.")
    max_cold_start_s: float | None = Field(
        default=None, gt=0, description="Budget for container start -> first successful prediction."
    )
    max_image_mb: float | None = Field(default=None, gt=0, description="Budget for the image size (MB).")


class Contract(Strict):
    """The whole mlship.yaml."""

    name: str = Field(pattern=_DNS_NAME, max_length=63, description="Service name; DNS-safe.")
    version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Model version; defaults to the first 12 hex digits of the artifact's sha256.",
    )
    runtime: str = Field(description="Runtime plugin: sklearn (built in) or an installed plugin.")
    artifact: str = Field(min_length=1, description="Model file or folder, relative to mlship.yaml.")
    task: Task = Field(description="classification (labels + probabilities) or regression (values).")
    predict: str | None = Field(
        default=None, description="Optional user code `file.py:function(model, instances) -> outputs`."
    )
    load: str | None = Field(
        default=None, description="Optional user code `file.py:function(path) -> model`."
    )
    input: InputSpec
    output: OutputSpec = Field(default_factory=OutputSpec)
    dependencies: Dependencies = Field(default_factory=Dependencies)
    docs: str | None = Field(default=None, description="Markdown model card, served at /docs.")
    examples: list[Example] = Field(default_factory=list)
    serve: ServeOptions = Field(default_factory=ServeOptions)
    build: BuildOptions = Field(default_factory=BuildOptions)
    test: TestOptions = Field(default_factory=TestOptions)
    targets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-target options, validated by each target plugin."
    )

    @field_validator("predict", "load")
    @classmethod
    def _code_ref(cls, value: str | None) -> str | None:
        if value is not None and not _CODE_REF.match(value):
            raise ValueError(f"expected `file.py:function`, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if self.output.labels is not None and self.task != "classification":
            raise ValueError("output.labels only apply to task: classification")
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
        return list(self.input.features)
