"""The scikit-learn version an artifact was saved with is read, pinned by init, and warned about."""

from __future__ import annotations

from pathlib import Path

import joblib
import pytest
import sklearn
import sklearn.base
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlship.init import init_project
from mlship.runtimes.sklearn import SklearnRuntime


@pytest.fixture
def old_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model whose pickle claims it was written by scikit-learn 1.5.0."""
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    monkeypatch.setattr(sklearn.base, "__version__", "1.5.0")
    path = tmp_path / "old.joblib"
    joblib.dump(model, path)
    monkeypatch.undo()
    return path


def test_saved_version_is_read_and_warned(old_model: Path) -> None:
    runtime = SklearnRuntime()
    model = runtime.load(old_model)
    assert runtime.saved_version == "1.5.0"
    assert any("from version 1.5.0" in w for w in runtime.load_warnings())
    assert runtime.inspect(model, old_model).requirements == ["scikit-learn==1.5.0"]


def test_same_version_has_no_warning(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    path = tmp_path / "new.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path, compress=("zlib", 3))
    runtime = SklearnRuntime()
    runtime.load(path)
    assert runtime.saved_version == sklearn.__version__
    assert runtime.load_warnings() == []


def test_init_pins_the_saved_version_and_notes_the_mismatch(old_model: Path, tmp_path: Path) -> None:
    result = init_project(old_model, directory=tmp_path)
    assert "scikit-learn==1.5.0" in (tmp_path / "mlship.yaml").read_text()
    assert result.info.framework_version == "1.5.0"
    assert any("1.5.0" in note for note in result.info.notes)
