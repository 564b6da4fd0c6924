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
from legacy_models import old_tree_copy
from mlship.cli import app
from mlship.pickle_scan import scan


@pytest.fixture(scope="session")
def old_tree(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return old_tree_copy(docker_engine, tmp_path_factory.mktemp("old-tree"), WHEEL_CACHE)


def test_the_scan_reads_an_old_pickle_without_loading_it(old_tree: tuple[Path, dict[str, Any]]) -> None:
    path, made = old_tree
    assert made["sklearn"] == "0.24.2" and made["python"].startswith("3.9")
    found = scan(path)
    assert found.version("scikit-learn") == "0.24.2" and found.compression == "none"
    assert ("sklearn.tree._classes", "DecisionTreeClassifier") in found.globals
    assert found.dangerous == [] and found.user_modules == []
    assert found.estimator is not None
    assert found.estimator.n_features_in == 4 and found.estimator.classes == [0, 1, 2]


def test_a_contract_without_provenance_names_the_recorded_version_and_mlship_init(
        old_tree: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-written contract (no provenance) for the old file: validate says which version the file records and
    that `mlship init` makes it work; never a false version skew."""
    shutil.copy(old_tree[0], tmp_path / "model.sav")
    (tmp_path / "mlship.yaml").write_text(
        "name: old-tree\nruntime: sklearn\nartifact: model.sav\ntask: classification\n"
        "input: {features: {x0: float, x1: float, x2: float, x3: float}}\n"
        "dependencies: {requirements: [scikit-learn==0.24.2]}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1, result.output
    err = " ".join(result.stderr.split())
    assert (f"error: model.sav was saved with scikit-learn 0.24.2, and the scikit-learn installed here "
            f"({sklearn.__version__}) cannot load it: ValueError: node array from the pickle has an incompatible "
            "dtype") in err
    assert "mlship read the version from the file without loading it" in err
    assert "Run `mlship init model.sav --force`: it runs the file with scikit-learn 0.24.2 in a build environment" \
        in err and "'scikit-learn==1.2.2' 'numpy<2'" in err
    assert "not a readable joblib/pickle file" not in err and "Version skew" not in err
