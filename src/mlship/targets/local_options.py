"""Options (``targets.local``) and small container helpers of the local target (see mlship.targets.local)."""

from __future__ import annotations

import calendar
import ipaddress
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlship.errors import TargetError
from mlship.targets.base import CONTAINER_PORT

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class LocalOptions(BaseModel):
    """``targets.local`` in mlship.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(default=8080, ge=1, le=65535, description="Host port the service is published on.")
    host: str = Field(default="127.0.0.1", description="Host address to bind; 0.0.0.0 for every interface.")
    env: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Plain environment variables for the container."
    )
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = Field(
        default="unless-stopped", description="Docker restart policy."
    )

    @field_validator("host")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("expected an IP address such as 127.0.0.1 or 0.0.0.0") from None
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in value:
            if not re.match(_ENV_NAME, key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key == "PORT":
                raise ValueError("PORT is set by mlship (8080 inside the container); set `port` for the host port")
        return value

    def environment(self) -> dict[str, str]:
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in self.env.items()}



def connect_host(host: str) -> str:
    """Where to reach a port bound on ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def host_port(container: Any) -> int:
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{CONTAINER_PORT}/tcp") or []
    if not bindings:
        raise TargetError(f"{container.name} has no published port (it exited at once?).",
                          why="Container log tail:\n" + logs_tail(container))
    return int(bindings[0]["HostPort"])


def logs_tail(container: Any, lines: int = 30) -> str:
    try:
        return str(container.logs(tail=lines).decode(errors="replace")).strip() or "(no output)"
    except Exception:  # the container may be gone already
        return "(no logs: the container is gone)"


def short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]


def created(container: Any) -> float:
    """The container's creation time as a Unix timestamp."""
    stamp = str(container.attrs.get("Created", ""))[:19]
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0.0
