"""Deploy targets: where a built, tested image runs. ``local`` (Docker) is built in; others are plugins
in the ``mlship.targets`` entry-point group. See :mod:`mlship.targets.base` for the interface."""

from __future__ import annotations

from mlship import plugins
from mlship.contract_io import Project
from mlship.targets.base import Deployment, Progress, Target, TargetStatus, parse_options

__all__ = ["Deployment", "Progress", "Target", "TargetStatus", "get_target", "parse_options"]


def get_target(name: str, project: Project) -> Target:
    """The target plugin ``name`` for ``project``, its ``targets.<name>`` options validated."""
    cls = plugins.get("target", name)
    target: Target = cls(project, project.contract.targets.get(name, {}))
    return target
