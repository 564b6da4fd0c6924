"""`mlship validate` and `mlship info`: their output and every error path (with the message a user sees)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sklearn
import yaml

import cli_helpers
from cli_helpers import FEATURES, invoke, plain, set_yaml, table_header, table_rows

project = cli_helpers.project


# -- validate ---------------------------------------------------------------------------------------------


def test_validate_ok(project: Path) -> None:
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    lines = [plain(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines[0] == f"ok {project / 'mlship.yaml'}: iris (sklearn, classification, 4 features)"
    assert re.fullmatch(r"ok model loads and predicts \(version [0-9a-f]{12}\)", lines[1])
    assert re.fullmatch(r"ok compiled: onnxruntime \S+ \(compiled with skl2onnx \S+ from scikit-learn \S+; same "
                        r"labels, max difference \S+ on 257 probe rows\)", lines[2]), lines[2]
    assert lines[3] == "ok examples[0]"
    assert result.stderr == ""


def test_validate_file_option(project: Path, tmp_path_factory: pytest.TempPathFactory,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    for target in (str(project), str(project / "mlship.yaml")):
        result = invoke("validate", "--file", target)
        assert result.exit_code == 0, result.output
        assert "ok examples[0]" in result.stdout


def test_validate_wrong_expected_output(project: Path) -> None:
    set_yaml(project, examples=[{"input": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                                           "petal_width": 0.2}, "output": {"label": "virginica"}},
                                {"input": {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0,
                                           "petal_width": 2.5}, "output": {"label": "virginica"}}])
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    out = plain(result.stdout)
    assert "FAIL examples[0]: output.label: expected 'virginica', got 'setosa'" in out
    assert "ok examples[1]" in out
    err = plain(result.stderr)
    assert "error: 1 of 2 examples did not match." in err
    assert "update the expected outputs in mlship.yaml" in err


def test_validate_probability_tolerance(project: Path) -> None:
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    set_yaml(project, examples=[{"input": row, "output": {"probabilities": {"setosa": 0.5}}, "tolerance": 0.01}])
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    assert re.search(r"FAIL examples\[0\]: output\.probabilities\.setosa: expected 0\.5 \(±0\.01\), got 0\.9\d+",
                     plain(result.stdout))


def test_validate_no_load_skips_the_model(project: Path) -> None:
    (project / "model" / "iris.joblib").write_bytes(b"garbage")
    result = invoke("validate", "--no-load")
    assert result.exit_code == 0, result.output
    assert "iris (sklearn, classification, 4 features)" in result.stdout
    assert "model loads" not in result.stdout
    loaded = invoke("validate")
    assert loaded.exit_code == 1, loaded.output
    assert "iris.joblib is not a readable joblib/pickle file" in plain(loaded.stderr)


def test_validate_without_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("validate")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert f"error: No contract at {tmp_path / 'mlship.yaml'}." in err
    assert "fix: Run `mlship init path/to/model.joblib` to write one, or pass --file PATH." in err


def test_validate_bad_yaml(project: Path) -> None:
    (project / "mlship.yaml").write_text("name: iris\n\truntime: sklearn\n")
    result = invoke("validate")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: mlship.yaml:2:1: not valid YAML:" in err
    assert "Check the indentation" in err


def test_validate_unknown_key(project: Path) -> None:
    text = (project / "mlship.yaml").read_text().replace("\nruntime: sklearn", "\nruntim: sklearn")
    (project / "mlship.yaml").write_text(text)
    line = text.splitlines().index("runtim: sklearn") + 1
    result = invoke("validate")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert f"mlship.yaml:{line} -> runtim: unknown key `runtim`; did you mean `runtime`?" in err


def test_validate_missing_artifact(project: Path) -> None:
    (project / "model" / "iris.joblib").unlink()
    text = (project / "mlship.yaml").read_text()
    line = text.splitlines().index("artifact: model/iris.joblib") + 1
    result = invoke("validate")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert f"error: mlship.yaml:{line} -> artifact: file not found: model/iris.joblib" in err
    assert "Paths are relative to the folder of mlship.yaml" in err


def test_validate_unknown_runtime(project: Path) -> None:
    set_yaml(project, runtime="tensorflw")
    result = invoke("validate")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: Unknown runtime `tensorflw`; did you mean `tensorflow`? Available: " in err and "sklearn" in err
    assert "install the package that provides the `tensorflw` runtime" in err


def test_validate_features_that_do_not_match_the_model(project: Path) -> None:
    set_yaml(project, input={"features": {"sepal_length": "float", "sepal_width": "float",
                                          "petal_length": "float", "petal_size": "float"}}, examples=[])
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: The model does not match mlship.yaml:" in err
    assert "missing ['petal_width']" in err
    assert "not in the model ['petal_size']" in err
    assert "Run `mlship init` again" in err


def test_validate_label_count_mismatch(project: Path) -> None:
    set_yaml(project, output={"labels": ["a", "b"]})
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: output.labels has 2 labels but the model has 3 classes (setosa, versicolor, virginica)." in err


def test_validate_renamed_labels_are_used(project: Path) -> None:
    data = yaml.safe_load((project / "mlship.yaml").read_text())
    data["output"]["labels"] = ["S", "Ve", "Vi"]
    data["examples"][0]["output"] = {"label": "S"}
    (project / "mlship.yaml").write_text(yaml.safe_dump(data))
    result = invoke("validate")
    assert result.exit_code == 0, result.output


# -- info -------------------------------------------------------------------------------------------------


def test_info(project: Path) -> None:
    set_yaml(project, input={"features": {
        "sepal_length": {"type": "float", "description": "Sepal length in cm"},
        "sepal_width": "float", "petal_length": "float", "petal_width": "float"}})
    result = invoke("info")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.match(r"iris [0-9a-f]{12} · sklearn · classification", plain(out))
    assert table_header(out)[:3] == ["feature", "type", "description"]
    rows = table_rows(out)
    assert rows[0][:3] == ["sepal_length", "float", "Sepal length in cm"]
    assert [r[0] for r in rows] == FEATURES
    assert "labels: setosa, versicolor, virginica" in out
    assert f"requirements: scikit-learn=={sklearn.__version__}" in out
    card = (project / "MODEL.md").read_text().strip()
    assert card.splitlines()[0] in out
    assert card.splitlines()[-1] in out


def test_info_explicit_version_and_requirements_file(project: Path) -> None:
    (project / "requirements.txt").write_text("# deps\nscikit-learn\nnumpy<3\n")
    set_yaml(project, version="v7", dependencies={"requirements": "requirements.txt"})
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert plain(result.stdout).startswith("iris v7 · sklearn · classification")
    assert "requirements: scikit-learn, numpy<3" in result.stdout


def test_info_without_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("info")
    assert result.exit_code == 2, result.output
    assert "No contract at" in result.stderr
