"""The deploy-target plugin interface: ``plan`` (pure) -> ``deploy`` -> ``status`` / ``logs`` /
``rollback`` / ``destroy``.

A target is one class. mlship builds and tests the image; the target only runs an image that
already passed ``mlship test``. Targets keep their state where the service runs (container labels,
cloud revisions, ...), never in a local file, so any machine with access sees the same deployment.

A complete (if useless) third-party target that "deploys" by remembering the image in memory::

    # mlship_echo/__init__.py
    from typing import Any, ClassVar

    from pydantic import BaseModel, ConfigDict

    from mlship.contract_io import Project
    from mlship.errors import TargetError
    from mlship.targets.base import Deployment, Progress, Target, TargetStatus, parse_options


    class EchoOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        greeting: str = "hello"


    class EchoTarget(Target):
        name: ClassVar[str] = "echo"
        deployed: ClassVar[list[str]] = []          # a real target asks its platform instead

        def __init__(self, project: Project, options: dict[str, Any]) -> None:
            super().__init__(project, options)
            self.opts = parse_options(EchoOptions, self.name, options)

        def plan(self, image: str) -> list[str]:
            return [f"remember {image} for {self.project.contract.name}"]

        def deploy(self, image: str, progress: Progress) -> Deployment:
            previous = self.deployed[-1] if self.deployed else None
            if previous != image:
                self.deployed.append(image)
                progress(f"{self.opts.greeting}, {image}")
            return Deployment(url=None, image=image, version=image.rpartition(":")[2], previous=previous)

        def status(self) -> TargetStatus:
            if not self.deployed:
                return TargetStatus(url=None, image=None, version=None, state="not deployed", history=[])
            image = self.deployed[-1]
            return TargetStatus(url=None, image=image, version=image.rpartition(":")[2], state="running",
                                history=self.deployed[::-1][:2])

        def logs(self, tail: int = 100) -> str:
            return "\\n".join(self.deployed[-tail:])

        def rollback(self, progress: Progress) -> Deployment:
            if len(self.deployed) < 2:
                raise TargetError("Nothing to roll back to.", fix="Deploy a second version first.")
            return self.deploy(self.deployed[-2], progress)

        def destroy(self) -> list[str]:
            removed, self.deployed[:] = list(self.deployed), []
            return removed

    # pyproject.toml of the plugin package
    [project.entry-points."mlship.targets"]
    echo = "mlship_echo:EchoTarget"

with ``targets: {echo: {greeting: hi}}`` in mlship.yaml and ``mlship deploy --target echo``.

Rules: ``preflight`` is read-only and fast (see :meth:`Target.preflight`); ``plan`` never talks to the
platform; every failure is a :class:`~mlship.errors.TargetError` (what / why / fix) that says what was cleaned
up; a failed deploy leaves the previous version serving and nothing else behind; ``destroy`` of nothing is not
an error. Targets that hold connections close them in :meth:`Target.close` (the CLI uses a target as a context
manager).
"""

from __future__ import annotations

import difflib
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from mlship.contract_io import Project
from mlship.errors import ContractError
from mlship.reports import Check
from mlship.targets.spec import CONTAINER_PORT as CONTAINER_PORT  # re-exported: targets import it from here
from mlship.targets.spec import DeploySpec, deploy_spec

Progress = Callable[[str], None]
OptionsT = TypeVar("OptionsT", bound=BaseModel)

# labels on every container mlship starts (the test gate's, a local candidate, a local service)
LABEL_SERVICE = "dev.mlship.service"
LABEL_ROLE = "dev.mlship.role"  # test (the gate), candidate, service
LABEL_DEPLOY = "dev.mlship.deploy"  # the id of the deploy that started it
LABEL_OWNER = "dev.mlship.owner"  # PID@HOST of the process that started it (see owner_alive)


def owner_label() -> str:
    """``PID@HOST`` of this process, for LABEL_OWNER."""
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process a LABEL_OWNER value names still runs; None when this machine cannot tell (another
    host, or no label)."""
    pid, _, host = owner.partition("@")
    if not pid.isdigit() or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


@dataclass(frozen=True)
class Deployment:
    """The result of ``deploy`` or ``rollback``: what is serving now, and what served before."""

    url: str | None
    image: str
    version: str
    previous: str | None = None
    changed: bool = True  # False when the same image was already serving (an idempotent no-op)
    digest: str | None = None  # content digest of what runs (sha256:...), when the target knows it
    serving: str | None = None  # the code+model pair it serves, as the platform recorded it (artifacts.provenance)


@dataclass(frozen=True)
class TargetStatus:
    """What a target runs for the service now; ``history`` is [current image, previous image]."""

    url: str | None
    image: str | None
    version: str | None
    state: str  # running, exited, restarting, ..., or "not deployed"
    history: list[str] = field(default_factory=list)
    ready: bool | None = None  # /readyz answered 200 (None when not checked)
    events: list[str] = field(default_factory=list)  # the platform's latest events about the service, newest first
    failed: str | None = None  # the last deploy the platform rolled back: its revision and why (None: none)
    serving: str | None = None  # the code+model pair that serves, as the platform recorded it (artifacts.provenance)


class Target(ABC):
    """A deploy target. Subclasses set ``name`` and implement the six operations."""

    name: ClassVar[str]

    def __init__(self, project: Project, options: dict[str, Any]) -> None:
        """``options`` is ``project.contract.targets.get(name, {})``; subclasses validate it with
        :func:`parse_options` so that a typo fails before anything is built."""
        self.project = project
        self.raw_options = dict(options)
        self.deploy_id = uuid.uuid4().hex[:12]  # names this deploy's containers (LABEL_DEPLOY)
        # what runs and its limits, resolved once (the pipeline adds the gate's measurements before deploy)
        self.spec: DeploySpec = deploy_spec(project)

    def runtime_env(self) -> dict[str, str]:
        """The environment the service's container gets on this target, as far as this machine can know it:
        the test gate starts the image with it, so the gate runs what will run. Secrets the platform injects
        (and this machine cannot read) are left out; say so in the target's docs. Default: PORT only. May
        raise TargetError (e.g. keys required but missing)."""
        return {"PORT": str(CONTAINER_PORT)}

    def preflight(self) -> list[Check]:
        """Cheap, read-only checks before anything is built (well under 5 s in all): credentials found,
        required options present, the port free, the registry reachable and, where the platform can tell,
        the permissions the deploy needs. A failed check says how to fix it in ``fix``. Never raises for
        a failed check; the pipeline stops before the build when any check failed."""
        return []

    @abstractmethod
    def plan(self, image: str) -> list[str]:
        """Pure: the human-readable steps ``deploy(image)`` would take. No platform calls."""

    @abstractmethod
    def deploy(self, image: str, progress: Progress) -> Deployment:
        """Run ``image`` for the service; keep the previous version serving if anything fails."""

    @abstractmethod
    def status(self) -> TargetStatus:
        """What runs now (``state="not deployed"`` when nothing does)."""

    @abstractmethod
    def logs(self, tail: int = 100) -> str:
        """The last ``tail`` lines the service logged."""

    @abstractmethod
    def rollback(self, progress: Progress) -> Deployment:
        """Redeploy the previous image; TargetError with a fix when there is none."""

    @abstractmethod
    def destroy(self) -> list[str]:
        """Remove everything this target created for the service; returns what was removed."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections to the platform."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def parse_options(model: type[OptionsT], target: str, options: dict[str, Any]) -> OptionsT:
    """Validate ``targets.<target>`` with a pydantic model (``extra="forbid"``); errors name the key."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        valid = list(model.model_fields)
        lines = []
        for error in exc.errors():
            # pydantic marks an error in a dict's key with a "[key]" step: the key itself names the place
            path = ".".join(["targets", target, *(str(p) for p in error["loc"] if p != "[key]")])
            if error["type"] == "extra_forbidden":
                key = str(error["loc"][-1])
                near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5) if len(error["loc"]) == 1 else []
                hint = f"; did you mean `{near[0]}`?" if near else "."
                lines.append(f"{path}: unknown key `{key}`{hint} Valid keys: {', '.join(valid)}")
            else:
                msg = str(error["msg"]).removeprefix("Value error, ")
                lines.append(f"{path}: {msg}, got {error.get('input')!r}")
        raise ContractError(
            f"mlship.yaml: invalid options for the `{target}` target:\n" + "\n".join(f"  {ln}" for ln in lines),
            why=f"targets.{target} is read by the {target} target plugin; its valid keys are "
            f"{', '.join(valid)}.",
            fix=f"Fix targets.{target} in mlship.yaml.",
        ) from None
