"""The CLI as a test drives it: ``invoke`` runs `mlship` in-process (Typer's CliRunner), ``plain`` and the table
readers take the colour codes and wrapping out of what it printed, ``set_yaml`` edits a contract, and the
``project`` fixture (the iris project as the cwd; a test module names it: ``project = cli_helpers.project``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mlship.cli import app

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["setosa", "versicolor", "virginica"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=input, env=env)


def plain(text: str) -> str:
    """Output without colour codes and with whitespace collapsed, so wrapping never matters."""
    return " ".join(ANSI.sub("", text).split())


def table_rows(text: str) -> list[list[str]]:
    """Cells of a rich table's body rows (`0 │ setosa │ 0.985 ...`)."""
    rows = []
    for line in ANSI.sub("", text).splitlines():
        if "│" in line:
            rows.append([cell.strip() for cell in line.split("│")])
    return rows


def table_header(text: str) -> list[str]:
    for line in ANSI.sub("", text).splitlines():
        if "┃" in line:
            return [cell.strip() for cell in line.split("┃")]
    raise AssertionError(f"no table header in:\n{text}")


def set_yaml(project: Path, **changes: Any) -> None:
    """Edit mlship.yaml as data (top-level keys; dotted keys for nested ones)."""
    path = project / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def project(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The iris project from `mlship init` (the cwd)."""
    monkeypatch.chdir(iris_dir)
    return iris_dir
