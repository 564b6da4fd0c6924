"""The contract's serving, build and test sections (``serve:``, ``build:``, ``test:``) of mlship.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mlship.contract_base import PORT_MAX, PORT_MIN, Strict, port_problem


class ServeOptions(Strict):
    """Limits and behaviour of the prediction server (the same in `mlship serve` and in images)."""

    port: int = Field(default=8080, description="Port when $PORT is not set.",
                      json_schema_extra={"minimum": PORT_MIN, "maximum": PORT_MAX})
    max_body_bytes: int = Field(default=1_048_576, ge=256, description="Larger request bodies get 413.")
    max_instances: int = Field(default=1000, ge=1, description="Most instances in one request (422 above).")
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request prediction timeout (504).")
    max_concurrency: int = Field(
        default=64, ge=1, description="Predictions in progress before new ones get 503 + Retry-After."
    )
    threads: int = Field(default=4, ge=1, le=64, description="Threads that run the model.")
    batching: bool = Field(
        default=True,
        description="Coalesce concurrent /predict requests into one model call (sklearn and `predict:` "
        "snippets; tensorflow/pytorch runtimes always run one request per call).",
    )
    max_batch_size: int = Field(
        default=1024, ge=1, description="Most rows in one coalesced model call (a larger request runs alone)."
    )
    max_batch_wait_ms: float = Field(
        default=0.0, ge=0, le=1000,
        description="How long an idle model waits for more requests before a call; 0: never waits.",
    )
    compile: Literal["auto", "onnx", "off"] = Field(
        default="auto",
        description="auto: serve a model converted to ONNX (onnxruntime) when it predicts the same as the original "
        "on the examples and generated inputs, else the original with a message; onnx: require it (an error when "
        "it cannot be used); off: always the original. sklearn models without load:/predict: code only.",
    )
    shutdown_grace_s: float = Field(
        default=8.0, gt=0, description="On SIGTERM, time to finish in-flight requests before exiting."
    )
    auth: Literal["none", "api_key"] = Field(
        default="none", description="api_key: require `Authorization: Bearer <key>` on all but health."
    )
    fetch_at_start: bool = Field(
        default=False,
        description="Remote artifacts only: the image does not carry the model; the container fetches it at start "
        "with the platform's identity, checks artifact_sha256, and only then reports ready (for models too large "
        "to bake).",
    )
    api_keys_env: str = Field(
        default="MLSHIP_API_KEYS",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding comma-separated API keys.",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_boolean(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted off/no/false as a boolean: `compile: off` means the value "off"
        if value is False:
            return "off"
        if value is True:
            raise ValueError("YAML read on/yes/true as a boolean; write auto (ONNX when proven equal) or onnx "
                             "(require it)")
        return value

    @field_validator("port")
    @classmethod
    def _port_in_range(cls, value: int) -> int:
        problem = port_problem(value)
        if problem:
            raise ValueError(f"{problem}; set it to a port number in that range, e.g. 8080")
        return value


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
