"""``targets.ecs`` in mlship.yaml: the options of the ``ecs`` target (AWS ECS on Fargate behind an ALB),
validated strictly: errors name the key, e.g. ``targets.ecs.memory: Fargate does not offer 512 MiB with
cpu 1024; with cpu 1024 choose memory 2048, 3072, ..., 8192``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mlship.errors import ContractError
from mlship.targets.common import env_name, env_strings, plain_env_name

RESERVED_ENV = ("PORT",)
OWN_TAGS = ("mlship:service", "mlship:managed-by", "mlship:model-version")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+"
                         r"|ssm:[a-z0-9-]+:\d{12}:parameter/[A-Za-z0-9/_.-]+)$")
_LISTENER_ARN = re.compile(r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:listener/app/[A-Za-z0-9-]{1,32}/"
                           r"[0-9a-f]+/[0-9a-f]+$")
_HOST = re.compile(r"^(\*\.)?([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
_PATH_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
_JOB_QUEUE = re.compile(r"^(arn:aws[a-z-]*:batch:[a-z0-9-]+:\d{12}:job-queue/)?[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def _memory_steps(low: int, high: int, step: int) -> tuple[int, ...]:
    return tuple(range(low, high + 1, step))


#: Fargate's valid task sizes (Linux): CPU units -> the memory sizes (MiB) it can be paired with.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: _memory_steps(1024, 4096, 1024),
    1024: _memory_steps(2048, 8192, 1024),
    2048: _memory_steps(4096, 16384, 1024),
    4096: _memory_steps(8192, 30720, 1024),
    8192: _memory_steps(16384, 61440, 4096),
    16384: _memory_steps(32768, 122880, 8192),
}


def _sizes_text(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 4 else f"{values[0]}, {values[1]}, ..., {values[-1]}"


def _env_name(key: str) -> str:
    return env_name(key, RESERVED_ENV, "mlship (the container listens on 8080)")


def _plain_env_name(key: str) -> str:
    return plain_env_name(_env_name(key), readers="describe the task definition",
                          store="Secrets Manager (or SSM Parameter Store)",
                          example="arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME")


EnvName = Annotated[str, AfterValidator(_env_name)]
PlainEnvName = Annotated[str, AfterValidator(_plain_env_name)]


class ListenerRule(BaseModel):
    """``targets.ecs.listener_rule``: which requests of your listener (``listener_arn``) go to the service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = Field(default=None, description="Host header to match, e.g. api.example.com (a leading *. "
                             "matches any subdomain).")
    path: str | None = Field(default=None, description="Path prefix, e.g. /iris: /iris/* goes to the service, which "
                             "sees it without the prefix (/iris/predict arrives as /predict).")
    priority: int | None = Field(default=None, ge=1, le=50000, description="Rule priority (default: after every "
                                 "rule the listener has, so none of yours is shadowed).")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.match(value):
            raise ValueError("expected a host name such as api.example.com or *.example.com")
        return value.lower() if value else value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        prefix = value.removesuffix("/*").rstrip("/")
        if not _PATH_PREFIX.match(prefix):
            raise ValueError("expected a path prefix such as /iris (or /iris/*): letters, digits and . _ ~ - between "
                             "slashes, no other wildcard")
        return prefix

    @model_validator(mode="after")
    def _some_condition(self) -> ListenerRule:
        if self.host is None and self.path is None:
            raise ValueError("a rule needs a host, a path or both: without a condition it would take every request "
                             "of your listener (e.g. `listener_rule: {host: api.example.com}` or `{path: /iris}`)")
        return self


class EcsBatchOptions(BaseModel):
    """``targets.ecs.batch``: where ``mlship batch --target ecs`` runs (``job_queue``: an AWS Batch array job on
    your Fargate queue; without it ECS RunTask fan-out) and the prices of its cost estimate (Fargate Linux/x86 list
    prices of us-east-1 by default; set your region's or your discounted ones)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_queue: str | None = Field(default=None, description="An AWS Batch job queue (name or ARN) whose compute "
                                  "environments are FARGATE or FARGATE_SPOT: the job runs as an AWS Batch array job "
                                  "there (default: ECS RunTask fan-out on the cluster).")
    vcpu_hour_usd: float = Field(default=0.04048, ge=0, description="Price of one vCPU for one hour, in USD.")
    gb_hour_usd: float = Field(default=0.004445, ge=0, description="Price of one GB of memory for one hour, in USD.")

    @field_validator("job_queue")
    @classmethod
    def _job_queue(cls, value: str | None) -> str | None:
        return None if value is None else job_queue_name(value)


def with_job_queue(opts: EcsOptions, queue: str | None) -> EcsOptions:
    """The options of one batch run: ``--job-queue`` (when given) over ``targets.ecs.batch.job_queue``; the
    contract's own options are left as they are."""
    if queue is None:
        return opts
    return opts.model_copy(update={"batch": opts.batch.model_copy(update={"job_queue": job_queue_flag(queue)})})


def job_queue_flag(value: str) -> str:
    """``--job-queue``, checked as ``targets.ecs.batch.job_queue`` is (:func:`job_queue_name`): a ContractError."""
    try:
        return job_queue_name(value)
    except ValueError as exc:
        raise ContractError(f"--job-queue: {exc}, got {value!r}",
                            why="AWS Batch names a job queue by its name or its ARN; SubmitJob takes nothing else.",
                            fix="Pass the queue's name or ARN (`aws batch describe-job-queues --query "
                            "'jobQueues[].[jobQueueName,jobQueueArn]'` lists yours), or leave --job-queue out."
                            ) from None


def job_queue_name(value: str) -> str:
    """An AWS Batch job queue's name or ARN (``targets.ecs.batch.job_queue`` and ``--job-queue``), else ValueError."""
    if not _JOB_QUEUE.match(value):
        raise ValueError("expected a job queue name (letters, digits, hyphens and underscores, at most 128) or "
                         "its ARN (arn:aws:batch:REGION:ACCOUNT:job-queue/NAME)")
    return value


class EcsOptions(BaseModel):
    """``targets.ecs`` in mlship.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = Field(default=None, description="AWS region, e.g. eu-west-1 (default: AWS_REGION or your "
                                                         "profile's region).")
    cluster: str = Field(default="mlship", description="ECS cluster (created if missing).")
    cpu: int = Field(default=512, description="Fargate CPU units per task: 256, 512, 1024, 2048, 4096, 8192, 16384.")
    memory: int = Field(default=1024, description="Fargate memory per task in MiB (a valid pair with cpu).")
    desired_count: int = Field(default=1, ge=1, le=100, description="Tasks to run.")
    subnets: list[str] = Field(default_factory=list, description="Subnets of the tasks and the load balancer "
                                                                 "(default: the default VPC's default subnets).")
    security_groups: list[str] = Field(default_factory=list, description="Security groups of the tasks and the load "
                                       "balancer (default: one mlship creates).")
    execution_role_arn: str | None = Field(default=None, description="Task execution role (default: one mlship "
                                           "creates, with AmazonECSTaskExecutionRolePolicy).")
    task_role_arn: str | None = Field(default=None, description="Role the container runs as (default: none).")
    public: bool = Field(default=False, description="Internet-facing load balancer (default: internal).")
    listener_arn: str | None = Field(default=None, description="Your ALB listener: mlship adds a rule (listener_rule) "
                                     "and a target group to it instead of creating a load balancer.")
    listener_rule: ListenerRule | None = Field(default=None, validate_default=True, description="With listener_arn: "
                                               "the requests that go to the service (host and/or path).")
    repository: str | None = Field(default=None, description="ECR repository (default: the service name; created "
                                                             "if missing).")
    log_retention_days: int = Field(default=30, description="CloudWatch Logs retention of the service's log group.")
    env: dict[PlainEnvName, str | int | float | bool] = Field(
        default_factory=dict, description="Plain environment variables (never secrets: use `secrets`).")
    secrets: dict[EnvName, str] = Field(
        default_factory=dict, description="Environment variables from Secrets Manager or SSM: NAME: ARN.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags on every resource mlship creates.")
    min_count: int | None = Field(default=None, ge=1, le=1000, description="Auto scaling: fewest tasks (with "
                                  "max_count; default: no auto scaling).")
    max_count: int | None = Field(default=None, ge=1, le=1000, validate_default=True,
                                  description="Auto scaling: most tasks.")
    scale_on: Literal["cpu", "memory", "requests"] = Field(
        default="cpu", description="Auto scaling's target tracking metric: average CPU or memory utilisation, or "
        "load balancer requests per task.")
    scale_target: int = Field(default=60, ge=1, le=100000, description="The metric's target: percent for cpu and "
                              "memory, requests per task per minute for requests.")
    batch: EcsBatchOptions = Field(default_factory=EcsBatchOptions, description="mlship batch --target ecs: the "
                                   "cost estimate's prices.")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$", value):
            raise ValueError("expected a region such as eu-west-1 or us-east-1")
        return value

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,255}$", value):
            raise ValueError("expected a cluster name (letters, digits, hyphens and underscores, at most 255)")
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: int) -> int:
        if value not in FARGATE_SIZES:
            raise ValueError(f"Fargate offers cpu {', '.join(map(str, FARGATE_SIZES))} (1024 = one vCPU)")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int, info: ValidationInfo) -> int:
        cpu = info.data.get("cpu")
        if cpu is None:  # cpu itself was invalid: its error says so
            return value
        valid = FARGATE_SIZES[cpu]
        if value not in valid:
            raise ValueError(f"Fargate does not offer {value} MiB with cpu {cpu}; with cpu {cpu} choose memory "
                             f"{_sizes_text(valid)}")
        return value

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not re.match(r"^subnet-[0-9a-f]{8,17}$", s)]
        if bad:
            raise ValueError(f"expected subnet IDs such as subnet-0abc1234, got {', '.join(map(repr, bad))}")
        if value and len(value) < 2:
            raise ValueError("an Application Load Balancer needs subnets in at least two Availability Zones")
        return value

    @field_validator("security_groups")
    @classmethod
    def _security_groups(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not re.match(r"^sg-[0-9a-f]{8,17}$", s)]
        if bad:
            raise ValueError(f"expected security group IDs such as sg-0abc1234, got {', '.join(map(repr, bad))}")
        return value

    @field_validator("execution_role_arn", "task_role_arn")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_ARN.match(value):
            raise ValueError("expected a role ARN such as arn:aws:iam::123456789012:role/ecsTaskExecutionRole")
        return value

    @field_validator("listener_arn")
    @classmethod
    def _listener(cls, value: str | None) -> str | None:
        if value is not None and not _LISTENER_ARN.match(value):
            raise ValueError("expected an Application Load Balancer listener ARN such as arn:aws:elasticloadbalancing:"
                             "eu-west-1:123456789012:listener/app/my-alb/50dc6c495c0c9188/f2f7dc8efc522ab2")
        return value

    @field_validator("listener_rule")
    @classmethod
    def _listener_rule(cls, value: ListenerRule | None, info: ValidationInfo) -> ListenerRule | None:
        listener = info.data.get("listener_arn")
        if listener is not None and value is None:
            raise ValueError("with listener_arn, say which requests go to the service: `listener_rule: {host: "
                             "api.example.com}` and/or `{path: /iris}` (a rule without a condition would take every "
                             "request of your listener)")
        if value is not None and "listener_arn" in info.data and listener is None:  # (absent: it was invalid)
            raise ValueError("listener_rule goes with listener_arn (your listener); without one mlship creates a load "
                             "balancer of the service's own and needs no rule")
        if listener is not None and info.data.get("public"):
            raise ValueError("public applies to a load balancer mlship creates; with listener_arn your load "
                             "balancer's scheme decides: remove public")
        return value

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$", value):
            raise ValueError("expected an ECR repository name (lowercase letters, digits, . _ - and /)")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch Logs keeps logs {', '.join(map(str, LOG_RETENTION_DAYS[:8]))}, ... or "
                             f"{LOG_RETENTION_DAYS[-1]} days")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key, ref in value.items():
            if key in (info.data.get("env") or {}):
                raise ValueError(f"{key!r} is in both env and secrets; keep one")
            if not _SECRET_ARN.match(str(ref)):
                raise ValueError(f"{key}: expected the ARN of a Secrets Manager secret or an SSM parameter, such as "
                                 "arn:aws:secretsmanager:eu-west-1:123456789012:secret:api-keys")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50 - len(OWN_TAGS):
            raise ValueError(f"{len(value)} tags: AWS keeps at most 50 tags on a resource and mlship sets "
                             f"{len(OWN_TAGS)} ({', '.join(OWN_TAGS)}); keep at most {50 - len(OWN_TAGS)} of yours")
        for key, tag in value.items():
            if key in OWN_TAGS or key.startswith("aws:"):
                raise ValueError(f"{key!r} is set by mlship or AWS; choose another key")
            if not (0 < len(key) <= 128 and len(str(tag)) <= 256):
                raise ValueError(f"{key}: tag keys have 1 to 128 characters, values at most 256")
        return value

    @field_validator("max_count")
    @classmethod
    def _max_count(cls, value: int | None, info: ValidationInfo) -> int | None:
        low, count = info.data.get("min_count"), info.data.get("desired_count")
        if (value is None) != (low is None):
            raise ValueError("auto scaling needs both min_count and max_count (or neither)")
        if value is not None and low is not None:
            if value < low:
                raise ValueError(f"must be at least min_count ({low})")
            if count is not None and not low <= count <= value:
                raise ValueError(f"desired_count ({count}) must be between min_count and max_count")
        return value

    @field_validator("scale_target")
    @classmethod
    def _scale_target(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("scale_on") in ("cpu", "memory") and value > 100:
            raise ValueError("a utilisation target is a percentage (1 to 100)")
        return value

    @property
    def scaling(self) -> bool:
        return self.min_count is not None and self.max_count is not None

    def environment(self) -> dict[str, str]:
        return env_strings(self.env)
