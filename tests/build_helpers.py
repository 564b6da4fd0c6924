"""Helpers of the `mlship build` tests (test_build.py, test_build_images.py): contract edits, the session's wheel
cache (the ``wheel_cache`` fixture; a test module names it: ``wheel_cache = build_helpers.wheel_cache``) and the
iris project with a hostile artifact file name."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sklearn
import yaml

from mlship.image import wheelhouse
from mlship.init import init_project

# The wheel cache the session build uses (HOME is a temp folder inside each test, see conftest).
WHEEL_CACHE = wheelhouse.cache_dir()
HOSTILE_ARTIFACT = 'model/ir"is $(touch x).joblib'
SAVED = sklearn.__version__  # the version the session's iris model was saved with


def edit_contract(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def set_requirements(*lines: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["dependencies"]["requirements"] = list(lines)

    return change


@pytest.fixture
def wheel_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Share the session's wheel cache, so write_context does not download the wheelhouse again."""
    monkeypatch.setenv("MLSHIP_CACHE", str(WHEEL_CACHE))
    return WHEEL_CACHE


def hostile_project(directory: Path, model: Path) -> Path:
    """The iris project with the artifact at `model/ir"is $(touch x).joblib`, saved with mode 0600."""
    target = directory / HOSTILE_ARTIFACT
    target.parent.mkdir(parents=True)
    shutil.copy(model, target)
    target.chmod(0o600)
    init_project(target, directory=directory)
    return directory
