"""Projects for the Predictor tests (test_predictor.py, test_predictor_usercode.py): a contract made in memory,
one whose model comes from user code (predict.py), and ``clean_user_modules`` (an autouse fixture a test module
names: ``clean_user_modules = predictor_helpers.clean_user_modules``)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlship.contract import Contract
from mlship.contract_io import Project
from mlship.serving.predictor import Predictor


@pytest.fixture(autouse=True)
def clean_user_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """User code is imported as mlship_user_<stem> and its folder put on sys.path: undo both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m.startswith("mlship_user_")]:
        del sys.modules[name]


def make_project(root: Path, features: dict[str, Any], task: str = "classification", **extra: Any) -> Project:
    data = {"name": "test", "runtime": "sklearn", "artifact": extra.pop("artifact", "model.joblib"),
            "task": task, "input": {"features": features}, **extra}
    return Project(Contract.model_validate(data), root, root / "mlship.yaml")


def user_project(root: Path, code: str, task: str = "regression", **extra: Any) -> Predictor:
    """A project whose model comes from predict.py:load and is called through predict.py:predict."""
    (root / "predict.py").write_text(textwrap.dedent(code))
    extra.setdefault("load", "predict.py:load")
    extra.setdefault("predict", "predict.py:predict")
    predictor = Predictor(make_project(root, {"x": "float", "n": "int"}, task, **extra))
    predictor.load()
    return predictor


def rows(*xs: float) -> list[list[Any]]:
    return [[x, 1] for x in xs]
