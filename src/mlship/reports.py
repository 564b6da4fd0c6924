"""What the pipeline returns: one report per command, also the JSON documents of ``--json``.

Each report is a pydantic model, so its JSON schema is generated (``schema/reports.schema.json``,
``scripts/gen_schema.py``) and a CI job can rely on it: every document has ``kind`` (the command),
``schema_version`` and ``ok``; a failed command prints an :class:`ErrorReport` instead. Fields are only
ever added within one ``schema_version``. The exit codes (see :mod:`mlship.errors`): 0 ok, 1 failure,
2 bad input or contract, 3 the test gate failed, 4 preflight failed (nothing was built or changed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    ok: bool = True

    def as_json(self) -> str:
        return self.model_dump_json(indent=2)


class Check(BaseModel):
    """One preflight check: what was checked, whether it passed, what was found, and the fix when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


class PreflightReport(Report):
    kind: Literal["preflight"] = "preflight"
    target: str
    checks: list[Check] = Field(default_factory=list)
    seconds: float = 0.0


class BuildReport(Report):
    kind: Literal["build"] = "build"
    service: str
    image: str = Field(description="the content tag NAME:VERSION-<12 hex of every build input>; NAME:VERSION is "
                                   "moved to it by `mlship build` (and by a deploy whose gate passed)")
    image_id: str | None = Field(default=None, description="sha256:... of the built image; null in a dry run")
    size_mb: float | None = None
    base_image: str
    requirements: list[str]
    notes: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="paths in the build context: model, contract, files")
    seconds: float = 0.0
    dry_run: bool = False
    dockerfile: str | None = Field(default=None, description="only in a dry run")


class GateExample(BaseModel):
    index: int
    ok: bool
    problems: list[str]
    got: Any = None


class GateResult(Report):
    """`mlship test`: the image run like a platform runs it, its examples replayed, its budgets checked."""

    kind: Literal["test"] = "test"
    image: str
    size_mb: float
    ready_s: float = Field(description="container start -> /readyz 200; -1 when never ready")
    first_prediction_s: float
    memory_mb: float | None = Field(default=None, description="peak memory of the container (MB, page cache "
                                    "included) while it loaded and answered the examples; null when not measured")
    memory_source: str | None = Field(default=None, description="where memory_mb was read (cgroup v1 or v2)")
    examples: list[GateExample] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


class DeployReport(Report):
    kind: Literal["deploy"] = "deploy"
    service: str
    target: str
    url: str | None = None
    image: str | None = Field(default=None,
                              description="the image reference the target runs (the pushed reference on a cloud)")
    digest: str | None = Field(default=None, description="content digest of what runs (sha256:...)")
    version: str
    previous: str | None = Field(default=None, description="the image that served before (what rollback goes back to)")
    changed: bool = Field(default=False, description="false when the same image already served (nothing was touched)")
    dry_run: bool = False
    preflight: PreflightReport
    build: BuildReport | None = None
    gate: GateResult | None = Field(default=None, description="null when skipped (--skip-test) or in a dry run")
    plan: list[str] = Field(default_factory=list, description="the target's steps; in a dry run what would be done")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class StatusReport(Report):
    kind: Literal["status"] = "status"
    service: str
    target: str
    deployed: bool
    url: str | None = None
    image: str | None = None
    version: str | None = None
    state: str
    ready: bool | None = None
    history: list[str] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, description="the platform's latest events, newest first")
    failed_deployment: str | None = Field(default=None, description="the last deploy the platform rolled back, "
                                          "with its revision and why")
    serving: str | None = Field(default=None, description="the model the image serves, from its labels: "
                                "'<artifact uri> (<version>, sha256 ...), git <commit>'")


class RollbackReport(Report):
    kind: Literal["rollback"] = "rollback"
    service: str
    target: str
    url: str | None = None
    image: str
    digest: str | None = None
    version: str
    previous: str | None = Field(default=None, description="the image rolled back from")
    serving: str | None = Field(default=None, description="the code+model pair rolled back to, from the image's "
                                "labels: '<artifact uri> (<version>, sha256 ...), git <commit>'")


class DestroyReport(Report):
    kind: Literal["destroy"] = "destroy"
    service: str
    target: str
    removed: list[str] = Field(default_factory=list)


class BatchRunReport(Report):
    """`mlship batch`: in-process (``target`` null) or a job of ``tasks`` tasks on a target (docs/batch.md)."""

    kind: Literal["batch"] = "batch"
    target: str | None = Field(default=None, description="null: scored in this process")
    input: str
    output: str
    rows: int = Field(default=0, description="rows read (scored + rejected)")
    rejects: int = 0
    seconds: float = Field(default=0.0, description="in-process: the run; a job: submit -> all tasks done")
    rows_per_s: float = 0.0
    outputs: list[str] = Field(default_factory=list, description="the prediction files (a job: its parts, in order)")
    rejects_files: list[str] = Field(default_factory=list)
    resumed_chunks: int = Field(default=0, description="in-process: chunks kept from an earlier run")
    tasks: int = 1
    succeeded: int = Field(default=1, description="tasks that finished (their manifest is in the output)")
    failed: int = 0
    retries: int = 0
    failed_logs: dict[str, list[str]] = Field(default_factory=dict, description="task index -> its last log lines")
    job_id: str | None = None
    image: str | None = Field(default=None, description="the batch image the tasks ran (the local tag)")
    cost_usd: float | None = Field(default=None, description="the target's estimate from list prices; null: none")
    console: str | None = Field(default=None, description="where to look at the job on the platform")
    dry_run: bool = False
    plan: list[str] = Field(default_factory=list, description="the target's resources and calls (a dry run)")


class ErrorDetail(BaseModel):
    type: str = Field(description="the error class, e.g. GateError, PreflightError, ContractError")
    message: str
    why: str | None = None
    fix: str | None = None


class ErrorReport(Report):
    """What ``--json`` prints when a command fails (with the exit code it exits with)."""

    kind: Literal["error"] = "error"
    ok: bool = False
    command: str
    exit_code: int
    error: ErrorDetail
    preflight: PreflightReport | None = Field(default=None, description="when preflight failed: every check")
    gate: GateResult | None = Field(default=None, description="when the test gate failed: its report")


DOCUMENTS: list[type[Report]] = [DeployReport, BuildReport, GateResult, StatusReport, RollbackReport, DestroyReport,
                                 PreflightReport, BatchRunReport, ErrorReport]
