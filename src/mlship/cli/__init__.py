"""The `mlship` command line. The only package that prints or exits: it calls the core and renders.

Workflow: ``mlship init MODEL`` -> ``mlship validate`` -> ``mlship serve`` -> ``mlship predict``;
images: ``mlship build`` -> ``mlship test`` -> ``mlship push``; targets: ``mlship deploy`` and friends.
Commands register themselves on :data:`app` when their module is imported (in help order).
"""

from __future__ import annotations

# Registration order is the order of `mlship --help`: model, images, targets.
# isort: off
from mlship.cli import model  # noqa: F401
from mlship.cli import images  # noqa: F401
from mlship.cli import targets  # noqa: F401
from mlship.cli import convert  # noqa: F401
from mlship.cli import models  # noqa: F401
from mlship.cli import batch  # noqa: F401
# isort: on
from mlship.cli._app import app, complete_short_help

__all__ = ["app", "main"]

complete_short_help(app)  # after every command module registered its commands


def main() -> None:
    app()
