"""The ``ecs`` target (AWS ECS on Fargate behind an Application Load Balancer): see
:mod:`mlship.targets.ecs.target`."""

from __future__ import annotations

from mlship.targets.ecs.target import EcsTarget

__all__ = ["EcsTarget"]
