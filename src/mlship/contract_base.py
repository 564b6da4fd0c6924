"""What every contract section shares: the strict base model and the port range check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PORT_MIN, PORT_MAX = 1, 65535


def port_problem(port: int) -> str | None:
    """Why ``port`` cannot be listened on, or None. The one range check for serve.port, --port and $PORT."""
    if PORT_MIN <= port <= PORT_MAX:
        return None
    return f"must be a TCP port number {PORT_MIN}-{PORT_MAX}, got {port}"


class Strict(BaseModel):
    """Base for every contract section: unknown keys are errors, values are not coerced loosely."""

    model_config = ConfigDict(extra="forbid", frozen=True)
