"""The ``cloudrun`` target (Google Cloud Run, Admin API v2): see :mod:`mlship.targets.cloudrun.target`."""

from __future__ import annotations

from mlship.targets.cloudrun.target import CloudRunTarget

__all__ = ["CloudRunTarget"]
