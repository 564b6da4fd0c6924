"""``targets.cloudrun`` in mlship.yaml: the options of the ``cloudrun`` target, validated strictly (errors
name the key, e.g. ``targets.cloudrun.memory: expected e.g. 512Mi or 1Gi, got '1GB'``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mlship.targets.common import env_name, env_strings, plain_env_name

OWN_LABELS = ("managed-by", "dev-mlship-version", "model-version", "model-sha")
RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


def _env_name(key: str) -> str:
    return env_name(key, RESERVED_ENV, "Cloud Run")


def _plain_env_name(key: str) -> str:
    return plain_env_name(_env_name(key), readers="view the service", store="Secret Manager",
                          example="SECRET_NAME:latest")


EnvName = Annotated[str, AfterValidator(_env_name)]
PlainEnvName = Annotated[str, AfterValidator(_plain_env_name)]


class CloudRunOptions(BaseModel):
    """``targets.cloudrun`` in mlship.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(description="Google Cloud project ID.")
    region: str = Field(description="Cloud Run region, e.g. europe-west1.")
    repository: str = Field(default="mlship", description="Artifact Registry repository (created if missing).")
    memory: str = Field(default="512Mi", description="Memory limit per instance, e.g. 512Mi or 1Gi.")
    cpu: str = Field(default="1", description="CPUs per instance: 1, 2, 4, 6, 8, or millicpu such as 500m.")
    concurrency: int = Field(default=80, ge=1, le=1000, description="Requests one instance serves at once.")
    min_instances: int = Field(default=0, ge=0, le=1000, description="Instances kept warm (0: scale to zero).")
    max_instances: int = Field(default=10, ge=1, le=1000, description="Upper bound on instances.")
    timeout_s: int = Field(default=300, ge=1, le=3600, description="Request timeout in seconds.")
    env: dict[PlainEnvName, str | int | float | bool] = Field(
        default_factory=dict, description="Plain environment variables (never secrets: use `secrets`).")
    secrets: dict[EnvName, str] = Field(
        default_factory=dict, description="Environment variables from Secret Manager: NAME: SECRET:VERSION.")
    service_account: str | None = Field(default=None, description="Service account the service runs as.")
    grant_artifact_access: bool = Field(default=False, description="serve.fetch_at_start with a gs:// artifact: "
                                        "grant the service account roles/storage.objectViewer on the bucket "
                                        "(default: preflight checks it and names the command).")
    public: bool = Field(default=False, description="Grant roles/run.invoker to allUsers (default: private).")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the service.")
    api_endpoint: str | None = Field(default=None, description="Cloud Run Admin API endpoint (default Google's).")
    registry: str | None = Field(default=None, description="Registry host (default REGION-docker.pkg.dev).")
    artifact_registry_endpoint: str | None = Field(
        default=None, description="Artifact Registry API endpoint (default https://artifactregistry.googleapis.com).")
    logging_endpoint: str | None = Field(
        default=None, description="Cloud Logging API endpoint (default https://logging.googleapis.com): where "
        "`mlship batch` reads a failed task's last lines.")
    batch_vcpu_second_usd: float = Field(default=0.000018, ge=0, description="Batch cost estimate: USD per "
                                         "vCPU-second (Cloud Run jobs' Tier 1 list price).")
    batch_gib_second_usd: float = Field(default=0.000002, ge=0, description="Batch cost estimate: USD per "
                                        "GiB-second (Cloud Run jobs' Tier 1 list price).")

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not re.match(r"^([a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$", value):
            raise ValueError("expected a project ID such as my-project-123 (6 to 30 lowercase letters, digits "
                             "and hyphens; `gcloud projects list` shows yours)")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.match(r"^[a-z]+-[a-z]+[0-9]+$", value):
            raise ValueError("expected a region such as europe-west1 or us-central1")
        return value

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not re.match(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", value):
            raise ValueError("expected an Artifact Registry repository ID (lowercase letters, digits, hyphens)")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not re.match(r"^[1-9][0-9]*(Mi|Gi)$", value):
            raise ValueError("expected e.g. 512Mi or 1Gi")
        return value

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: Any) -> Any:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not (text in ("1", "2", "4", "6", "8")
                                             or (re.match(r"^[1-9][0-9]*m$", text) and int(text[:-1]) <= 8000)):
            raise ValueError('expected "1", "2", "4", "6", "8", or millicpu such as "500m"')
        return text

    @field_validator("max_instances")
    @classmethod
    def _max_instances(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_instances")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_instances ({low})")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key, ref in value.items():
            if key in (info.data.get("env") or {}):
                raise ValueError(f"{key!r} is in both env and secrets; keep one")
            if not re.match(r"^[A-Za-z0-9_-]{1,255}:(latest|[1-9][0-9]*)$", str(ref)):
                raise ValueError(f"{key}: expected SECRET_NAME:VERSION such as api-keys:latest or api-keys:3")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z0-9-]+@[a-z0-9.-]+\.gserviceaccount\.com$", value):
            raise ValueError("expected a service account email such as runner@my-project.iam.gserviceaccount.com")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if key in OWN_LABELS:
                raise ValueError(f"{key!r} is set by mlship; choose another key")
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(label)):
                raise ValueError(f"{key}: label keys and values are lowercase letters, digits, _ and -, at most "
                                 "63 characters (keys start with a letter)")
        return value

    @field_validator("api_endpoint", "artifact_registry_endpoint", "logging_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("expected a URL such as https://run.googleapis.com")
        return value.rstrip("/") if value else value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", value):
            raise ValueError("expected a registry host such as europe-west1-docker.pkg.dev")
        return value

    # --- derived -----------------------------------------------------------------------------------
    @property
    def registry_host(self) -> str:
        return self.registry or f"{self.region}-docker.pkg.dev"

    @property
    def registry_path(self) -> str:
        """Where images go: REGISTRY/PROJECT/REPOSITORY (an image is REGISTRY_PATH/NAME:VERSION)."""
        return f"{self.registry_host}/{self.project.replace(':', '/')}/{self.repository}"

    def environment(self) -> dict[str, str]:
        return env_strings(self.env)
