"""Every `mlship` command, its output and every error path (with the message a user sees)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import sklearn
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from conftest import free_port, running
from mlship import __version__
from mlship.cli import app

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
LABELS = ["setosa", "versicolor", "virginica"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """Output without colour codes and with whitespace collapsed, so wrapping never matters."""
    return " ".join(ANSI.sub("", text).split())


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=input, env=env)


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
def model_dir(tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder (the cwd) holding model/iris.joblib and rows.csv."""
    (tmp_path / "model").mkdir()
    shutil.copy(iris_model, tmp_path / "model" / "iris.joblib")
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "iris-sklearn" / "rows.csv", tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def project(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The iris project from `mlship init` (the cwd)."""
    monkeypatch.chdir(iris_dir)
    return iris_dir


# -- mlship / --help / --version --------------------------------------------------------------------------


def test_help_lists_commands_and_workflow() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    listed = result.stdout.split("Commands:")[1]
    names = [line.split()[0] for line in listed.splitlines() if re.match(r"  \S", line)]  # not wrapped lines
    assert names == ["init", "validate", "serve", "predict", "info", "build", "test", "push",
                     "deploy", "status", "logs", "rollback", "destroy", "convert", "models", "batch"]
    text = plain(result.stdout)
    assert "Workflow: `mlship init model.joblib` writes mlship.yaml" in text
    assert "`mlship serve` starts the HTTP server" in text


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output
    assert "Commands" in result.output


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"mlship {__version__}"


@pytest.mark.parametrize("command", ["init", "validate", "serve", "predict", "info"])
def test_every_command_has_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_predict_help_shows_api_key_env() -> None:
    result = invoke("predict", "--help")
    assert result.exit_code == 0, result.output
    assert "MLSHIP_API_KEY" in result.stdout


# -- init -------------------------------------------------------------------------------------------------


def test_init_writes_contract_and_model_card(model_dir: Path, iris_model: Path) -> None:
    result = invoke("init", "model/iris.joblib")
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "wrote mlship.yaml" in out
    assert "wrote MODEL.md" in out
    assert "sklearn classification model, 4 features, labels: setosa, versicolor, virginica" in out
    assert f"saved with sklearn {sklearn.__version__} (pinned in dependencies)" in out
    assert "next: `mlship validate`, then `mlship serve`" in out
    assert result.stderr == ""

    data = yaml.safe_load((model_dir / "mlship.yaml").read_text())
    assert data["name"] == "iris"
    assert data["runtime"] == "sklearn"
    assert data["artifact"] == "model/iris.joblib"
    assert data["task"] == "classification"
    assert list(data["input"]["features"]) == FEATURES
    assert set(data["input"]["features"].values()) == {"float"}
    assert data["output"]["labels"] == LABELS
    assert f"scikit-learn=={sklearn.__version__}" in data["dependencies"]["requirements"]
    assert data["dependencies"]["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert data["docs"] == "MODEL.md"
    assert (model_dir / "MODEL.md").read_text().startswith("# iris\n")

    [example] = data["examples"]
    assert example["input"] == dict.fromkeys(FEATURES, 0.0)
    model = joblib.load(iris_model)
    import pandas as pd

    expected = model.predict(pd.DataFrame([example["input"]], columns=FEATURES))[0]
    assert example["output"] == {"label": str(expected)}

    check = invoke("validate")
    assert check.exit_code == 0, check.output


def test_init_sample_uses_first_row(model_dir: Path) -> None:
    result = invoke("init", "model/iris.joblib", "--sample", "rows.csv")
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((model_dir / "mlship.yaml").read_text())["examples"]
    assert example["input"] == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                                "petal_width": 0.2}
    assert example["output"] == {"label": "setosa"}


def test_init_sample_json(model_dir: Path) -> None:
    row = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
    (model_dir / "rows.json").write_text(json.dumps({"instances": [row]}))
    result = invoke("init", "model/iris.joblib", "--sample", "rows.json")
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((model_dir / "mlship.yaml").read_text())["examples"]
    assert example == {"input": row, "output": {"label": "virginica"}}


def test_init_sample_missing_a_column(model_dir: Path) -> None:
    (model_dir / "short.csv").write_text("sepal_length,sepal_width,petal_length\n5.1,3.5,1.4\n")
    result = invoke("init", "model/iris.joblib", "--sample", "short.csv")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "The sample row does not fit the model's inputs: petal_width: field required" in err
    assert not (model_dir / "mlship.yaml").exists()


def test_init_sample_file_not_found(model_dir: Path) -> None:
    result = invoke("init", "model/iris.joblib", "--sample", "nope.csv")
    assert result.exit_code == 2, result.output
    assert "Sample file not found: nope.csv." in plain(result.stderr)


def test_init_sample_without_rows(model_dir: Path) -> None:
    (model_dir / "empty.csv").write_text(",".join(FEATURES) + "\n")
    result = invoke("init", "model/iris.joblib", "--sample", "empty.csv")
    assert result.exit_code == 2, result.output
    assert "empty.csv has no data rows." in plain(result.stderr)


def test_init_refuses_to_overwrite(model_dir: Path) -> None:
    (model_dir / "mlship.yaml").write_text("name: mine\n")
    result = invoke("init", "model/iris.joblib")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: mlship.yaml already exists." in err
    assert "why: mlship init never overwrites your contract." in err
    assert "--force" in err
    assert (model_dir / "mlship.yaml").read_text() == "name: mine\n"
    assert result.stdout == ""


def test_init_force_overwrites(model_dir: Path) -> None:
    (model_dir / "mlship.yaml").write_text("name: mine\n")
    (model_dir / "MODEL.md").write_text("# my card\n")
    result = invoke("init", "model/iris.joblib", "--force", "--name", "flowers")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((model_dir / "mlship.yaml").read_text())
    assert data["name"] == "flowers"
    assert data["runtime"] == "sklearn"
    assert (model_dir / "MODEL.md").read_text() == "# my card\n", "an existing model card is kept"
    assert "wrote MODEL.md" not in result.stdout


def test_init_into_another_folder(model_dir: Path) -> None:
    result = invoke("init", "model/iris.joblib", "--dir", "service/v1")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((model_dir / "service" / "v1" / "mlship.yaml").read_text())
    assert data["artifact"] == "../../model/iris.joblib"
    check = invoke("validate", "--file", "service/v1")
    assert check.exit_code == 0, check.output


def test_init_name_from_file_name(model_dir: Path) -> None:
    shutil.copy(model_dir / "model" / "iris.joblib", model_dir / "My Iris_Model v2.joblib")
    result = invoke("init", "My Iris_Model v2.joblib")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((model_dir / "mlship.yaml").read_text())["name"] == "my-iris-model-v2"


def test_init_missing_artifact(model_dir: Path) -> None:
    result = invoke("init", "model/missing.joblib")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: Model file not found: model/missing.joblib." in err
    assert "fix: Check the path, or train the model first." in err


def test_init_unknown_file_type(model_dir: Path) -> None:
    (model_dir / "model.xyz").write_bytes(b"weights")
    result = invoke("init", "model.xyz")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: No runtime recognises model.xyz." in err
    assert "Installed runtimes: " in err and "sklearn" in err
    assert "--runtime NAME" in err


def test_init_unknown_runtime(model_dir: Path) -> None:
    result = invoke("init", "model/iris.joblib", "--runtime", "nope")
    assert result.exit_code == 2, result.output
    assert "error: Unknown runtime `nope`. Available: " in plain(result.stderr)
    assert "sklearn" in plain(result.stderr)


def test_init_explicit_runtime_for_unusual_extension(model_dir: Path) -> None:
    shutil.copy(model_dir / "model" / "iris.joblib", model_dir / "iris.model")
    result = invoke("init", "iris.model", "--runtime", "sklearn")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((model_dir / "mlship.yaml").read_text())["artifact"] == "iris.model"


def test_init_unreadable_model(model_dir: Path) -> None:
    (model_dir / "broken.joblib").write_bytes(b"this is not a pickle \x00\x01\x02")
    result = invoke("init", "broken.joblib")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: broken.joblib is not a readable joblib/pickle file" in err
    assert "joblib.dump(model, 'model.joblib')" in err
    assert not (model_dir / "mlship.yaml").exists()


def test_init_empty_model_file(model_dir: Path) -> None:
    (model_dir / "empty.pkl").write_bytes(b"")
    result = invoke("init", "empty.pkl")
    assert result.exit_code == 1, result.output
    assert "empty.pkl is not a readable joblib/pickle file: EOFError" in plain(result.stderr)


def test_init_object_without_predict(model_dir: Path) -> None:
    joblib.dump({"a": 1}, model_dir / "dict.joblib")
    result = invoke("init", "dict.joblib")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: dict.joblib holds a dict, which has no predict() method." in err
    assert "predict: predict.py:predict" in err


def test_init_pickle_needing_missing_module(model_dir: Path) -> None:
    # protocol-2 pickle of an instance of `no_such_module_xyz.Model`
    (model_dir / "custom.pkl").write_bytes(b"\x80\x02cno_such_module_xyz\nModel\nq\x00)\x81q\x01.")
    result = invoke("init", "custom.pkl")
    assert result.exit_code == 1, result.output
    assert "custom.pkl needs the module `no_such_module_xyz`, which is not importable." in plain(result.stderr)


def test_init_pickle_needing_missing_class(model_dir: Path) -> None:
    # a class that was defined in the training script, e.g. __main__.MyModel, is missing here
    (model_dir / "custom.pkl").write_bytes(b"\x80\x02cmlship.errors\nNoSuchModel\nq\x00)\x81q\x01.")
    result = invoke("init", "custom.pkl")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "custom.pkl refers to a class or function that cannot be found" in err
    assert "NoSuchModel" in err
    assert "`load:` function" in err


def test_init_model_without_feature_names(model_dir: Path) -> None:
    iris = load_iris()
    model = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    joblib.dump(model, model_dir / "numpy.joblib")
    result = invoke("init", "numpy.joblib")
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "sklearn classification model, 4 features, labels: 0, 1, 2" in out
    assert "note: The model was trained without feature names; features are named x0..xN." in out
    data = yaml.safe_load((model_dir / "mlship.yaml").read_text())
    assert list(data["input"]["features"]) == ["x0", "x1", "x2", "x3"]
    assert data["output"]["labels"] == ["0", "1", "2"]
    assert not any(r.startswith("pandas") for r in data["dependencies"]["requirements"])
    [example] = data["examples"]
    expected = model.predict(np.zeros((1, 4)))[0]
    assert example["output"] == {"label": str(expected)}
    check = invoke("validate")
    assert check.exit_code == 0, check.output


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


# -- predict --local --------------------------------------------------------------------------------------


def assert_iris_table(stdout: str, n: int = 6) -> None:
    assert table_header(stdout) == ["#", "label", "p(setosa)", "p(versicolor)", "p(virginica)"]
    rows = table_rows(stdout)
    assert len(rows) == n
    assert [r[0] for r in rows] == [str(i) for i in range(n)]
    for row in rows:
        assert row[1] in LABELS
        probs = [float(p) for p in row[2:]]
        assert abs(sum(probs) - 1) < 0.01
        assert row[1] == LABELS[probs.index(max(probs))]
    if n == 6:
        assert [r[1] for r in rows] == ["setosa", "setosa", "versicolor", "versicolor", "virginica", "virginica"]


def test_predict_local_table(project: Path) -> None:
    result = invoke("predict", "--local", "--input", "rows.csv")
    assert result.exit_code == 0, result.output
    assert_iris_table(result.stdout)
    assert result.stderr == ""


def test_predict_local_json(project: Path) -> None:
    result = invoke("predict", "--local", "-i", "rows.csv", "--json")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)["predictions"]
    assert len(preds) == 6
    assert preds[0]["label"] == "setosa"
    assert set(preds[0]["probabilities"]) == set(LABELS)
    assert [p["label"] for p in preds][-1] == "virginica"


def test_predict_local_json_file(project: Path) -> None:
    rows = [{"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}]
    (project / "rows.json").write_text(json.dumps(rows))
    result = invoke("predict", "--local", "-i", "rows.json", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"][0]["label"] == "virginica"


def test_predict_inline_data(project: Path) -> None:
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    result = invoke("predict", "--local", "--data", json.dumps(row), "--json")
    assert result.exit_code == 0, result.output
    [pred] = json.loads(result.stdout)["predictions"]
    assert pred["label"] == "setosa"
    table = invoke("predict", "--local", "-d", json.dumps({"instances": [row, row]}))
    assert table.exit_code == 0, table.output
    assert [r[1] for r in table_rows(table.stdout)] == ["setosa", "setosa"]


@pytest.mark.parametrize("args", [["--input", "-"], []])
def test_predict_stdin(project: Path, args: list[str]) -> None:
    body = json.dumps({"instances": [
        {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4}]})
    result = invoke("predict", "--local", *args, "--json", input=body)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"][0]["label"] == "versicolor"


def test_predict_stdin_not_json(project: Path) -> None:
    result = invoke("predict", "--local", "-i", "-", input='{"sepal_length": 1,')
    assert result.exit_code == 1, result.output
    assert "error: input is not valid JSON" in plain(result.stderr)


@pytest.mark.parametrize("args", [[], ["--local", "--url", "http://127.0.0.1:9"]])
def test_predict_needs_exactly_one_of_url_and_local(project: Path, args: list[str]) -> None:
    result = invoke("predict", "-i", "rows.csv", *args)
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: Give exactly one of --url URL or --local." in err
    assert "fix: e.g. `mlship predict --input rows.csv --url http://127.0.0.1:8080`." in err
    assert result.stdout == ""


def test_predict_missing_input_file(project: Path) -> None:
    result = invoke("predict", "--local", "-i", "nope.csv")
    assert result.exit_code == 1, result.output
    assert "error: Input file not found: nope.csv." in plain(result.stderr)


def test_predict_csv_with_bad_number(project: Path) -> None:
    (project / "bad.csv").write_text(",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n5.1,abc,1.4,0.2\n")
    result = invoke("predict", "--local", "-i", "bad.csv")
    assert result.exit_code == 1, result.output
    assert "error: bad.csv:3 sepal_width: expected a number, got 'abc'." in plain(result.stderr)


def test_predict_csv_with_extra_cells(project: Path) -> None:
    (project / "bad.csv").write_text(",".join(FEATURES) + "\n5.1,3.5,1.4,0.2,9\n")
    result = invoke("predict", "--local", "-i", "bad.csv")
    assert result.exit_code == 1, result.output
    assert "bad.csv:2: more cells than header columns." in plain(result.stderr)


def test_predict_local_invalid_instance(project: Path) -> None:
    bad = {"sepal_length": "long", "sepal_width": 3.5, "petal_length": 1.4, "colour": "blue"}
    result = invoke("predict", "--local", "-d", json.dumps([bad]))
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: Invalid input:" in err
    assert "body.instances.0.sepal_length: expected a number (expected float, got string 'long')" in err
    assert "body.instances.0.petal_width: field required" in err
    assert "body.instances.0.colour: unknown feature" in err
    assert "`mlship info` shows the input schema" in err


def test_predict_local_without_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", "--local", "-d", "{}")
    assert result.exit_code == 2, result.output
    assert "No contract at" in result.stderr


def test_predict_batch_size_must_be_positive(project: Path) -> None:
    result = invoke("predict", "--local", "-i", "rows.csv", "--batch-size", "0")
    assert result.exit_code == 2, result.output
    assert "batch-size" in result.output


# -- predict --url ----------------------------------------------------------------------------------------


def test_predict_url_table_json_and_422(project: Path) -> None:
    with running(project) as server:
        table = invoke("predict", "--url", server.url + "/", "-i", "rows.csv", "--batch-size", "4")
        assert table.exit_code == 0, table.output
        assert_iris_table(table.stdout)

        as_json = invoke("predict", "--url", server.url, "-i", "rows.csv", "--json")
        assert as_json.exit_code == 0, as_json.output
        preds = json.loads(as_json.stdout)["predictions"]
        assert len(preds) == 6
        local = invoke("predict", "--local", "-i", "rows.csv", "--json")
        assert preds == json.loads(local.stdout)["predictions"], "server and --local must agree"

        bad = invoke("predict", "--url", server.url, "-d",
                     json.dumps({"sepal_length": "x", "sepal_width": 1, "petal_length": 1}))
        assert bad.exit_code == 1, bad.output
        err = plain(bad.stderr)
        assert f"error: {server.url}/predict answered HTTP 422" in err
        assert "body.instances.0.sepal_length: expected a number (expected float, got string 'x')" in err
        assert "body.instances.0.petal_width: field required" in err
        assert "GET /metadata shows the input schema" in err


def test_predict_url_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke("predict", "--url", url, "-d", "{}")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert f"error: Cannot reach {url}/metadata:" in err
    assert "the server is running (`mlship serve`)" in err


def test_predict_url_not_http() -> None:
    result = invoke("predict", "--url", "ftp://example.invalid", "-d", "{}")
    assert result.exit_code == 1, result.output
    assert "Not an http(s) URL: ftp://example.invalid/metadata." in plain(result.stderr)


def test_predict_url_with_api_key(project: Path) -> None:
    set_yaml(project, serve__auth="api_key")
    with running(project, env={"MLSHIP_API_KEYS": "k1, k2"}) as server:
        missing = invoke("predict", "--url", server.url, "-i", "rows.csv")
        assert missing.exit_code == 1, missing.output
        err = plain(missing.stderr)
        assert f"error: {server.url}/metadata answered HTTP 401" in err
        assert "Authorization: Bearer" in err
        assert "fix: Pass the key with --api-key or $MLSHIP_API_KEY." in err

        wrong = invoke("predict", "--url", server.url, "-i", "rows.csv", "--api-key", "nope")
        assert wrong.exit_code == 1, wrong.output
        assert "HTTP 401" in wrong.stderr

        ok = invoke("predict", "--url", server.url, "-i", "rows.csv", "--api-key", "k2")
        assert ok.exit_code == 0, ok.output
        assert_iris_table(ok.stdout)

        from_env = invoke("predict", "--url", server.url, "-i", "rows.csv", "--json",
                          env={"MLSHIP_API_KEY": "k1"})
        assert from_env.exit_code == 0, from_env.output
        assert len(json.loads(from_env.stdout)["predictions"]) == 6


# -- serve ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_real_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process `mlship serve` must fail before binding: never run uvicorn or os._exit in pytest."""
    from mlship.serving import server

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mlship serve got past its start-up checks inside pytest")

    monkeypatch.setattr(server._Server, "run", refuse)
    monkeypatch.setattr(os, "_exit", refuse)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_api_key_auth_without_keys(project: Path) -> None:
    set_yaml(project, serve__auth="api_key")
    result = invoke("serve", "--port", str(free_port()))
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: serve.auth is api_key but $MLSHIP_API_KEYS holds no keys." in err
    assert "fix: export MLSHIP_API_KEYS=key1,key2" in err


@pytest.mark.usefixtures("no_real_serving")
def test_serve_custom_keys_env_without_keys(project: Path) -> None:
    set_yaml(project, serve__auth="api_key", serve__api_keys_env="IRIS_KEYS")
    result = invoke("serve", "--port", str(free_port()), env={"IRIS_KEYS": " , "})
    assert result.exit_code == 1, result.output
    assert "$IRIS_KEYS holds no keys" in plain(result.stderr)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_port_in_use(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = invoke("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert f"error: Port {port} on 127.0.0.1 is already in use." in err
    assert f"--port {port + 1}" in err


@pytest.mark.usefixtures("no_real_serving")
def test_serve_bad_port_env(project: Path) -> None:
    result = invoke("serve", env={"PORT": "eighty"})
    assert result.exit_code == 2, result.output
    assert "$PORT is not a number: 'eighty'." in plain(result.stderr)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_without_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("serve")
    assert result.exit_code == 2, result.output
    assert "No contract at" in result.stderr


def test_serve_subprocess_serves_and_stops_on_sigterm(project: Path) -> None:
    port = free_port()
    log = project / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mlship", "serve", "--port", str(port)],
                                cwd=project, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            ready = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            assert ready is not None and ready.status_code == 200, log.read_text()
            assert re.fullmatch(r"[0-9a-f]{12}", ready.json()["version"])
            pred = httpx.post(f"http://127.0.0.1:{port}/predict", timeout=5, json={
                "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2})
            assert pred.status_code == 200, pred.text
            assert pred.json()["label"] == "setosa"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert f"mlship serving iris on http://127.0.0.1:{port}" in log.read_text()
