"""`mlship predict` (--local and --url): tables, JSON, stdin, CSV, API keys and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli_helpers
from cli_helpers import FEATURES, LABELS, invoke, plain, set_yaml, table_header, table_rows
from conftest import free_port, running

project = cli_helpers.project


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
