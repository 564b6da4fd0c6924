"""The ``heroku`` target (Heroku's container registry, Platform API and web dynos): see
:mod:`mlship.targets.heroku.target`."""

from __future__ import annotations

from mlship.targets.heroku.target import HerokuTarget

__all__ = ["HerokuTarget"]
