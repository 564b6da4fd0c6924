"""mlship.yaml on disk (load_project): paths resolved, the files it names checked with the line that names them;
versions and artifact hashes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from contract_helpers import MINIMAL, error_of
from mlship.contract import Contract
from mlship.contract_io import Project, artifact_sha256, find_contract, load_project
from mlship.errors import ContractError


def write_project(directory: Path, text: str, artifact: bool = True) -> Path:
    if artifact:
        (directory / "model.joblib").write_bytes(b"model bytes")
    path = directory / "mlship.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- files (load_project) ---------------------------------------------------------------------------------------


def test_load_project_resolves_paths(tmp_path: Path) -> None:
    path = write_project(tmp_path, MINIMAL)
    project = load_project(path)
    assert project.contract_path == path
    assert project.root == tmp_path.resolve()
    assert project.artifact_path == (tmp_path / "model.joblib").resolve()
    assert project.docs_text is None
    assert project.requirements() == []


def test_load_project_accepts_a_folder_and_defaults_to_cwd(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path, MINIMAL)
    assert load_project(tmp_path).contract.name == "iris"
    monkeypatch.chdir(tmp_path)
    assert load_project().contract.name == "iris"
    assert find_contract(None) == tmp_path / "mlship.yaml"


def test_no_contract_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as info:
        load_project(tmp_path)
    assert info.value.message == f"No contract at {tmp_path / 'mlship.yaml'}."
    assert info.value.fix is not None and "mlship init" in info.value.fix
    assert info.value.exit_code == 2


def test_missing_artifact_names_line_and_path(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL.replace("model.joblib", "model/missing.joblib"))
    with pytest.raises(ContractError) as info:
        load_project(tmp_path)
    assert info.value.message == "mlship.yaml:3 -> artifact: file not found: model/missing.joblib"
    assert info.value.why is not None and str(tmp_path.resolve()) in info.value.why


def test_artifact_may_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "weights.bin").write_bytes(b"w")
    write_project(tmp_path, MINIMAL.replace("model.joblib", "saved"), artifact=False)
    assert load_project(tmp_path).artifact_path == (tmp_path / "saved").resolve()


def test_missing_docs_file(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "docs: CARD.md\n")
    with pytest.raises(ContractError, match=r"^mlship\.yaml:9 -> docs: file not found: CARD\.md$"):
        load_project(tmp_path)


def test_docs_text_is_read(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "docs: CARD.md\n")
    (tmp_path / "CARD.md").write_text("# Iris\n\nFlowers.\n", encoding="utf-8")
    assert load_project(tmp_path).docs_text == "# Iris\n\nFlowers.\n"


def test_missing_requirements_file(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "dependencies:\n  requirements: reqs.txt\n")
    with pytest.raises(ContractError,
                       match=r"^mlship\.yaml:10 -> dependencies\.requirements: file not found: reqs\.txt$"):
        load_project(tmp_path)


def test_missing_predict_file(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "predict: code/predict.py:predict\n")
    with pytest.raises(ContractError, match=r"^mlship\.yaml:9 -> predict: file not found: code/predict\.py$"):
        load_project(tmp_path)


def test_missing_load_file(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "load: loader.py:load\n")
    with pytest.raises(ContractError, match=r"^mlship\.yaml:9 -> load: file not found: loader\.py$"):
        load_project(tmp_path)


def test_requirements_file_is_read(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "dependencies:\n  requirements: reqs.txt\n")
    (tmp_path / "reqs.txt").write_text(
        "# pinned\nscikit-learn==1.5.0\n\n  numpy>=1.24  \n# end\n", encoding="utf-8"
    )
    assert load_project(tmp_path).requirements() == ["scikit-learn==1.5.0", "numpy>=1.24"]


def test_requirements_list(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "dependencies:\n  requirements: [xgboost==2.0.3, pandas]\n")
    assert load_project(tmp_path).requirements() == ["xgboost==2.0.3", "pandas"]


# -- versions and hashes -------------------------------------------------------------------------------------


def test_artifact_sha256_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"abc" * 1000)
    assert artifact_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    path.write_bytes(b"abd" * 1000)
    assert artifact_sha256(path) == hashlib.sha256(b"abd" * 1000).hexdigest()


def test_artifact_sha256_of_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"one")
    (folder / "sub" / "b.bin").write_bytes(b"two")
    first = artifact_sha256(folder)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert artifact_sha256(folder) == first

    (folder / "sub" / "b.bin").write_bytes(b"TWO")
    changed = artifact_sha256(folder)
    assert changed != first

    (folder / "sub" / "b.bin").write_bytes(b"two")
    assert artifact_sha256(folder) == first
    (folder / "sub" / "b.bin").rename(folder / "sub" / "c.bin")
    assert artifact_sha256(folder) != first, "renaming a file must change the hash"


def test_version_defaults_to_artifact_hash_prefix(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL)
    project = load_project(tmp_path)
    expected = hashlib.sha256(b"model bytes").hexdigest()[:12]
    assert project.version == expected
    assert re.fullmatch(r"[0-9a-f]{12}", project.version)
    (tmp_path / "model.joblib").write_bytes(b"retrained")
    assert project.version == hashlib.sha256(b"retrained").hexdigest()[:12]


def test_explicit_version_wins(tmp_path: Path) -> None:
    write_project(tmp_path, MINIMAL + "version: 2024.06-rc1\n")
    assert load_project(tmp_path).version == "2024.06-rc1"


def test_bad_version_is_rejected() -> None:
    err = error_of(MINIMAL + "version: 'v 1'\n")
    assert "-> version:" in err.message


def test_project_built_by_hand(tmp_path: Path) -> None:
    contract = Contract.model_validate(
        {"name": "x", "runtime": "sklearn", "artifact": "m.pkl", "task": "regression",
         "input": {"features": {"a": "float"}}}
    )
    project = Project(contract, tmp_path, tmp_path / "mlship.yaml")
    assert project.artifact_path == (tmp_path / "m.pkl").resolve()
    assert contract.input.features["a"].type == "float"
