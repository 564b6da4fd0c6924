"""Model files made years ago, the way users made them: a scikit-learn 0.24.2 tree pickled with plain `pickle` on
Python 3.9, inside a Debian bullseye container (tests/legacy_models.py). mlship reads them statically and says
what they are, and never claims a false version."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import sklearn
from typer.testing import CliRunner

from conftest import WHEEL_CACHE
from legacy_models import old_sklearn_tree
from mlship.cli import app
from mlship.pickle_scan import scan


@pytest.fixture(scope="session")
def old_tree(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return old_sklearn_tree(docker_engine, tmp_path_factory.mktemp("old-tree"), WHEEL_CACHE)


def test_the_scan_reads_an_old_pickle_without_loading_it(old_tree: tuple[Path, dict[str, Any]]) -> None:
    path, made = old_tree
    assert made["sklearn"] == "0.24.2" and made["python"].startswith("3.9")
    found = scan(path)
    assert found.version("scikit-learn") == "0.24.2" and found.compression == "none"
    assert ("sklearn.tree._classes", "DecisionTreeClassifier") in found.globals
    assert found.dangerous == [] and found.user_modules == []
    assert found.estimator is not None
    assert found.estimator.n_features_in == 4 and found.estimator.classes == [0, 1, 2]


def test_init_names_the_recorded_version_and_a_fix_that_works(old_tree: tuple[Path, dict[str, Any]],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(old_tree[0], tmp_path / "model.sav")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "model.sav"])
    assert result.exit_code == 1, result.output
    err = " ".join(result.stderr.split())
    assert (f"error: model.sav was saved with scikit-learn 0.24.2, and the scikit-learn installed here "
            f"({sklearn.__version__}) cannot load it: ValueError: node array from the pickle has an incompatible "
            "dtype") in err
    assert "mlship read the version from the file without loading it" in err
    assert "'scikit-learn==1.2.2' 'numpy<2'" in err and "sk/bin/mlship init model.joblib" in err
    assert "not a readable joblib/pickle file" not in err  # the real cause, not a generic one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.sav"]  # a failed init writes nothing
