"""The deploy spec: what every target needs to know about the service, resolved once by the core from the project
(and, after the test gate, from what the gate measured), so that targets read one object instead of each digging
through the contract.

    spec = deploy_spec(project)            # Target.__init__ sets self.spec
    spec = spec.measured(memory_mb=212.4)  # the pipeline, after `mlship test`, before Target.deploy

The spec is plain data (a frozen dataclass): targets compare it with their platform's limits (a request timeout
under a router's, a drain time under the platform's SIGKILL delay, the measured memory within a size's quota) and
render it into their platform's format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mlship.contract import Example
from mlship.contract_io import Project

CONTAINER_PORT = 8080  # the port an image listens on when the platform sets no $PORT
READINESS_PATH = "/readyz"  # 200 once the model is loaded and warmed up
HEALTH_PATH = "/healthz"  # 200 as soon as the server listens (before the model is loaded)


@dataclass(frozen=True)
class DeploySpec:
    """What runs, and the limits it was made for (see the module docstring)."""

    service: str
    version: str
    port: int = CONTAINER_PORT
    env: dict[str, str] = field(default_factory=dict)  # plain values the image needs (targets add their own)
    secrets: tuple[str, ...] = ()  # names of variables the platform must provide (values never pass through mlship)
    grace_s: float = 8.0  # serve.shutdown_grace_s: how long the server drains on SIGTERM
    request_timeout_s: float = 30.0  # serve.timeout_s: a prediction's limit (504 after it)
    ready_timeout_s: float = 60.0  # test.ready_timeout_s: how long loading may take before /readyz is 200
    readiness_path: str = READINESS_PATH
    health_path: str = HEALTH_PATH
    examples: tuple[Example, ...] = ()  # the smoke test's requests and expected outputs
    memory_mb: float | None = None  # peak memory the test gate measured (None: not measured, e.g. --skip-test)
    memory_source: str | None = None  # how the gate measured it
    ready_s: float | None = None  # the gate's container start -> /readyz 200 (None: not measured)
    fetch_at_start: str | None = None  # serve.fetch_at_start: the artifact the container reads when it starts

    def measured(self, memory_mb: float | None, source: str | None = None, ready_s: float | None = None) -> DeploySpec:
        """This spec with what the test gate measured."""
        return replace(self, memory_mb=memory_mb, memory_source=source,
                       ready_s=ready_s if ready_s is None or ready_s >= 0 else None)


def deploy_spec(project: Project) -> DeploySpec:
    """The spec of ``project``'s service (nothing measured yet)."""
    contract, serve = project.contract, project.contract.serve
    secrets = (serve.api_keys_env,) if serve.auth == "api_key" else ()
    return DeploySpec(service=contract.name, version=project.version, secrets=secrets,
                      grace_s=serve.shutdown_grace_s, request_timeout_s=serve.timeout_s,
                      ready_timeout_s=contract.test.ready_timeout_s, examples=tuple(contract.examples),
                      fetch_at_start=contract.artifact if serve.fetch_at_start else None)
