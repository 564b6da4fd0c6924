"""Defects a new user hit: each test asserts the message the user now sees (what, why, fix; no traceback)."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mlship.cli import app

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
HEADER = ",".join(FEATURES)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """Output without colour codes and with whitespace collapsed, so wrapping never matters."""
    return " ".join(ANSI.sub("", text).split())


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=input, env=env)


def assert_no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output
    assert 'File "' not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def set_yaml(project: Path, section: str, key: str, value: Any) -> None:
    path = project / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def project(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The iris project from `mlship init` (the cwd)."""
    monkeypatch.chdir(iris_dir)
    return iris_dir


@pytest.fixture
def model_dir(tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder (the cwd) holding only model/iris.joblib and rows.csv."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "iris.joblib").write_bytes(iris_model.read_bytes())
    (tmp_path / "rows.csv").write_text((REPO / "examples" / "iris-sklearn" / "rows.csv").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_real_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process `mlship serve` must fail before binding: never run uvicorn or os._exit in pytest."""
    from mlship.serving import server

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mlship serve got past its start-up checks inside pytest")

    monkeypatch.setattr(server, "_bind", refuse)
    monkeypatch.setattr(server._Server, "run", refuse)
    monkeypatch.setattr(os, "_exit", refuse)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)


# -- 1. ports out of range ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_real_serving")
@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_port_flag_out_of_range(project: Path, port: str) -> None:
    result = invoke("serve", "--port", port)
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert f"error: --port must be a TCP port number 1-65535, got {port}." in err
    assert "why: The server listens on a TCP port, and TCP ports are numbered 1 to 65535." in err
    assert "fix: Pass a port number from 1 to 65535, e.g. --port 8080." in err
    assert_no_traceback(result)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_port_env_out_of_range(project: Path) -> None:
    result = invoke("serve", env={"PORT": "99999"})
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: $PORT must be a TCP port number 1-65535, got 99999." in err
    assert "fix: Set PORT to a number from 1 to 65535 (export PORT=8080), or unset it to use serve.port." in err
    assert_no_traceback(result)


@pytest.mark.usefixtures("no_real_serving")
@pytest.mark.parametrize("command", ["serve", "validate"])
def test_serve_port_in_contract_out_of_range(project: Path, command: str) -> None:
    set_yaml(project, "serve", "port", 99999)
    result = invoke(command)
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert re.search(r"mlship\.yaml:\d+ -> serve\.port: must be a TCP port number 1-65535, got 99999; "
                     r"set it to a port number in that range, e.g\. 8080", err), err
    assert_no_traceback(result)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_python_module_port_out_of_range(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlship.serving import __main__ as entry

    assert entry.main(["--port", "70000"]) == 2
    assert "error: --port must be a TCP port number 1-65535, got 70000." in capsys.readouterr().err


# -- 2. a model that needs a module this Python does not have ----------------------------------------------


def test_sklearn_extra_installs_pandas() -> None:
    extra = re.search(r"^sklearn = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert extra is not None
    assert re.search(r'"pandas\b', extra.group(1)), extra.group(0)


def write_pickle_of_gone_module(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pickle an instance of a class from a throwaway module, then delete the module (disk and memory)."""
    source = tmp_path / "mlship_gone_model_xyz.py"
    source.write_text("class Model:\n    def predict(self, rows):\n        return [0 for _ in rows]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("mlship_gone_model_xyz")
    path.write_bytes(pickle.dumps(module.Model()))
    source.unlink()
    del sys.modules["mlship_gone_model_xyz"]
    importlib.invalidate_caches()


def test_init_model_needing_a_missing_module_says_pip_install(model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write_pickle_of_gone_module(model_dir / "custom.pkl", tmp_path_factory.mktemp("gone"), monkeypatch)
    result = invoke("init", "custom.pkl")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: custom.pkl needs the module `mlship_gone_model_xyz`, which is not importable." in err
    assert "why: A pickle stores references to the classes it contains (module and name), not their code. " \
           "`mlship_gone_model_xyz` is not installed in this Python environment." in err
    assert "fix: Install it: `pip install mlship_gone_model_xyz`" in err
    assert_no_traceback(result)
    assert sorted(p.name for p in model_dir.iterdir()) == ["custom.pkl", "model", "rows.csv"]


def test_init_model_needing_a_missing_package_maps_its_pip_name(model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv were not installed
    (model_dir / "cv.pkl").write_bytes(b"\x80\x02ccv2\nModel\nq\x00)\x81q\x01.")
    result = invoke("init", "cv.pkl")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: cv.pkl needs the module `cv2`, which is not importable." in err
    assert "fix: Install it: `pip install opencv-python`" in err
    assert_no_traceback(result)


def test_model_needing_a_module_of_another_package_version(model_dir: Path) -> None:
    (model_dir / "old.pkl").write_bytes(b"\x80\x02csklearn.no_such_module_xyz\nModel\nq\x00)\x81q\x01.")
    result = invoke("init", "old.pkl")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: old.pkl needs the module `sklearn.no_such_module_xyz`, which cannot be imported from the " \
           "installed scikit-learn: No module named 'sklearn.no_such_module_xyz'." in err
    assert "fix: Install the version the model was trained with: `pip install 'scikit-learn==<that version>'`." in err
    assert_no_traceback(result)


def test_validate_dataframe_model_without_pandas(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: iris.joblib was fitted on a pandas DataFrame and needs pandas, which is not installed." in err
    assert "fix: Install it: `pip install pandas` (`pip install 'mlship[sklearn]'` includes it)." in err
    assert_no_traceback(result)


@pytest.mark.parametrize(("module", "package"), [
    ("sklearn.tree._classes", "scikit-learn"), ("PIL.Image", "pillow"), ("yaml", "PyYAML"),
    ("google.protobuf.message", "protobuf"), ("xgboost.sklearn", "xgboost"),
])
def test_pip_name(module: str, package: str) -> None:
    from mlship.runtimes.sklearn_load import pip_name

    assert pip_name(module) == package


# -- 3. predict: CSV on stdin, CSV without a header ---------------------------------------------------------


def test_predict_csv_on_stdin(project: Path) -> None:
    from_file = invoke("predict", "--local", "-i", "rows.csv", "--json")
    assert from_file.exit_code == 0, from_file.output
    result = invoke("predict", "--local", "--input", "-", "--json", input=(project / "rows.csv").read_text())
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)["predictions"]
    assert len(preds) == 6
    assert preds == json.loads(from_file.stdout)["predictions"]


def test_predict_json_on_stdin_still_works(project: Path) -> None:
    body = "\n  " + json.dumps([dict.fromkeys(FEATURES, 1.0), dict(zip(FEATURES, [6.3, 3.3, 6.0, 2.5], strict=True))])
    result = invoke("predict", "--local", "--json", input=body)
    assert result.exit_code == 0, result.output
    assert [p["label"] for p in json.loads(result.stdout)["predictions"]][1] == "virginica"


@pytest.mark.parametrize("first", ["5.1,3.5,1.4,0.2", "length,width,height,depth"])
def test_predict_csv_without_header(project: Path, first: str) -> None:
    (project / "noheader.csv").write_text(f"{first}\n6.3,3.3,6.0,2.5\n")
    result = invoke("predict", "--local", "-i", "noheader.csv")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert f"error: noheader.csv has no header row: its first line ({first}) names none of the input features." in err
    assert "why: The first line of a CSV names the columns; without a header the first row would be read as " \
           "column names and dropped." in err
    assert f"fix: Add this header line as the first line of the CSV: {HEADER}" in err
    assert result.stdout == ""
    assert_no_traceback(result)


def test_predict_csv_without_header_on_stdin(project: Path) -> None:
    result = invoke("predict", "--local", "-i", "-", input="5.1,3.5,1.4,0.2\n")
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: input has no header row: its first line (5.1,3.5,1.4,0.2) names none of the input features." in err
    assert f"fix: Add this header line as the first line of the CSV: {HEADER}" in err


def test_read_rows_without_schema_rejects_a_numeric_header() -> None:
    from mlship.client import read_rows
    from mlship.errors import ClientError

    assert read_rows("a,b\n1,2\n", None) == [{"a": 1, "b": 2}]
    with pytest.raises(ClientError, match=r"^input has no header row: its first line \(1,2\) holds only numbers\."):
        read_rows("1,2\n3,4\n", None)


# -- 4. a failed init writes nothing ------------------------------------------------------------------------


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize(("sample", "content", "message"), [
    ("nope.csv", None, "Sample file not found: nope.csv."),
    ("short.csv", "sepal_length,sepal_width,petal_length\n5.1,3.5,1.4\n",
     "The sample row does not fit the model's inputs: petal_width: field required"),
    ("bad.json", "{not json", "bad.json is not valid JSON"),
])
@pytest.mark.parametrize("directory", [".", "service/v1"])
def test_failed_init_writes_nothing(model_dir: Path, sample: str, content: str | None, message: str,
                                    directory: str) -> None:
    if content is not None:
        (model_dir / sample).write_text(content)
    before = files_under(model_dir)
    result = invoke("init", "model/iris.joblib", "--sample", sample, "--dir", directory)
    assert result.exit_code == 2, result.output
    assert message in plain(result.stderr)
    assert files_under(model_dir) == before
    assert not (model_dir / "MODEL.md").exists()
    assert_no_traceback(result)


# -- 5. did you mean ----------------------------------------------------------------------------------------


def test_unknown_target_suggests_the_nearest(project: Path) -> None:
    result = invoke("status", "--target", "cloudrn")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: Unknown target `cloudrn`; did you mean `cloudrun`? Available: cloudrun, ecs, heroku, local." in err
    assert "fix: Use `cloudrun`, or install the package that provides the `cloudrn` target." in err


def test_unknown_runtime_in_contract_suggests_the_nearest(project: Path) -> None:
    data = yaml.safe_load((project / "mlship.yaml").read_text())
    data["runtime"] = "sklern"
    (project / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("validate")
    assert result.exit_code == 2, result.output
    assert "error: Unknown runtime `sklern`; did you mean `sklearn`? Available: pytorch, sklearn, tensorflow." \
           in plain(result.stderr)


def test_init_unknown_runtime_suggests_the_nearest(model_dir: Path) -> None:
    result = invoke("init", "model/iris.joblib", "--runtime", "sklern")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: Unknown runtime `sklern`; did you mean `sklearn`? Available: pytorch, sklearn, tensorflow." in err
    assert "fix: Use `sklearn`," in err


# -- 6. top-level help shows whole summaries ----------------------------------------------------------------


def summaries() -> dict[str, str]:
    """Each registered command's name -> its docstring's first paragraph, on one line."""
    found = {}
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        doc = inspect.getdoc(command.callback) or ""
        found[name] = " ".join(doc.split("\n\n")[0].split())
    return found


@pytest.mark.parametrize("columns", ["100", "60"])
def test_top_level_help_shows_whole_summaries(columns: str) -> None:
    result = invoke("--help", env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    listed = result.stdout.split("Commands:")[1]  # (the usage line above ends with "[ARGS]...")
    assert not [ln for ln in listed.splitlines() if ln.rstrip().endswith(("...", "…"))], result.stdout
    names = [ln.split()[0] for ln in listed.splitlines() if re.match(r"  \S", ln)]
    expected = summaries()
    assert names == list(expected)
    assert len(names) >= 13
    text = plain(listed)
    for name, summary in expected.items():
        assert f"{name} {summary}" in text, name


def test_init_in_a_folder_it_cannot_write_says_so(iris_model: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder (simulated: root may write anywhere): a clear error, no traceback, nothing written."""
    import shutil

    (tmp_path / "ro").mkdir()
    shutil.copy(iris_model, tmp_path / "ro" / "iris.joblib")
    real = Path.write_text

    def read_only(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.resolve().parent == (tmp_path / "ro").resolve():
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    monkeypatch.chdir(tmp_path / "ro")
    result = invoke("init", "iris.joblib")
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert "error: Cannot write " in err and "mlship.yaml: Permission denied." in err
    assert "fix: Choose a folder you can write to with `--dir`" in err
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["iris.joblib"]
