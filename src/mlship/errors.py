"""Typed errors raised by the mlship core and rendered in one place (``mlship.cli``).

Every error carries three parts a user needs: *what* went wrong (the message), *why* (``why``)
and *how to fix it* (``fix``). Core modules raise; only the CLI prints and exits.

The tree::

    MlshipError                      base; exit code 1
    ├── ContractError                mlship.yaml cannot be read or is invalid; exit code 2
    ├── PluginError                  unknown or broken runtime/target plugin; exit code 2
    ├── PreflightError               a check before any build failed (credentials, port, engine); exit code 4
    ├── ArtifactError                model file missing, unreadable, or not what the runtime expects
    ├── UserCodeError                the predict snippet (predict.py) cannot be imported or failed
    ├── PredictionError              the model raised while predicting
    ├── ServeError                   the server cannot start (port in use, missing API keys, ...)
    ├── BuildError                   an image cannot be built (dependencies, version skew, Dockerfile)
    ├── EngineError                  no Docker engine is reachable, or it refused a request
    ├── GateError                    `mlship test`: the built image failed its checks; exit code 3
    ├── TargetError                  a deploy target failed (and what was cleaned up)
    └── ClientError                  `mlship predict` could not reach the URL or got an error back
"""

from __future__ import annotations

from typing import Any

#: Exit codes of the CLI (stable: CI jobs branch on them).
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_PREFLIGHT_FAILED = 0, 1, 2, 3, 4


class MlshipError(Exception):
    """Base class. ``str(err)`` is the *what*; ``why`` and ``fix`` are optional details."""

    exit_code = 1

    def __init__(self, message: str, *, why: str | None = None, fix: str | None = None, report: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.why = why
        self.fix = fix
        self.report = report  # the report of what failed, where there is one (GateError, PreflightError)

    def render(self) -> str:
        """The full text shown to a user: what, then why, then how to fix."""
        parts = [self.message]
        if self.why:
            parts.append(f"Why: {self.why}")
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return "\n".join(parts)


class ContractError(MlshipError):
    """mlship.yaml is missing, is not valid YAML, or does not match the contract schema."""

    exit_code = EXIT_BAD_INPUT


class PluginError(MlshipError):
    """A runtime or target name is unknown, or two plugins claim the same name."""

    exit_code = EXIT_BAD_INPUT


class ArtifactError(MlshipError):
    """The model artifact is missing, unreadable, or not loadable by the chosen runtime."""


class UserCodeError(MlshipError):
    """The user's predict snippet could not be imported or raised an exception."""


class PredictionError(MlshipError):
    """The model raised an exception while predicting on valid input."""


class ServeError(MlshipError):
    """The prediction server cannot start."""


class ClientError(MlshipError):
    """`mlship predict` could not reach the server or got an error response."""


class BuildError(MlshipError):
    """An image cannot be built: unresolvable dependencies, version skew, a failing build step."""


class EngineError(MlshipError):
    """The Docker engine is unreachable or refused a request."""


class GateError(MlshipError):
    """The built image failed `mlship test` (not ready, wrong outputs, over budget); ``report`` is the
    :class:`mlship.reports.GateResult` when the gate ran."""

    exit_code = EXIT_GATE_FAILED


class PreflightError(MlshipError):
    """A preflight check failed: nothing was built, pushed or changed. ``report`` is the
    :class:`mlship.reports.PreflightReport` with every check."""

    exit_code = EXIT_PREFLIGHT_FAILED


class TargetError(MlshipError):
    """A deploy target operation failed."""
