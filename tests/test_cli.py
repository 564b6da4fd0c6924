"""`mlship`, --help, --version and `mlship init`: the output and every error path (with the message a user sees).
The other commands: test_cli_validate.py (validate, info), test_cli_predict.py, test_cli_serve.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cli_helpers import FEATURES, LABELS, invoke, plain
from mlship import __version__


@pytest.fixture
def model_dir(tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder (the cwd) holding model/iris.joblib and rows.csv."""
    (tmp_path / "model").mkdir()
    shutil.copy(iris_model, tmp_path / "model" / "iris.joblib")
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "iris-sklearn" / "rows.csv", tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
