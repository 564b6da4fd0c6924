"""Inputs and outputs as real services use them: text pipelines and (n, 1) regression outputs, through real server
processes and the CLI (`mlship init`, `validate`, `predict --local`). Bare arrays of instances and
`mlship init --sample` files with several bodies: test_io_shapes_arrays.py.
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import yaml

from cli_helpers import invoke
from conftest import running, write_custom_project
from server_processes import post

TEXTS = ["win money now", "free prize claim now", "cheap pills free offer", "you won a free cruise",
         "meeting at noon", "see you tomorrow", "lunch with the team", "notes from the meeting"]
LABELS = ["spam"] * 4 + ["ham"] * 4
QUERIES = ["free money", "team lunch tomorrow", "", "123", "claim your prize now"]


# -- 1. text pipelines ---------------------------------------------------------------------------------------
def text_pipeline(vectorizer: Any = None, classifier: Any = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    steps = [("tfidf", vectorizer or TfidfVectorizer()), ("clf", classifier or LogisticRegression())]
    return Pipeline(steps).fit(TEXTS, LABELS)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with model.joblib (tfidf + logistic regression on strings, compressed) and mlship.yaml from
    `mlship init`, run in that folder."""
    root = tmp_path_factory.mktemp("text")
    joblib.dump(text_pipeline(), root / "model.joblib", compress=3)
    result = invoke("init", str(root / "model.joblib"), "--dir", str(root))
    assert result.exit_code == 0, result.output
    return root


def in_process(root: Path, texts: list[str]) -> tuple[list[str], Any]:
    model = joblib.load(root / "model.joblib")
    return [str(v) for v in model.predict(texts)], model.predict_proba(texts)


def check_same(predictions: list[dict[str, Any]], root: Path, texts: list[str]) -> None:
    labels, proba = in_process(root, texts)
    assert [p["label"] for p in predictions] == labels
    for p, row in zip(predictions, proba, strict=True):
        assert list(p["probabilities"]) == ["ham", "spam"]
        assert np.allclose(list(p["probabilities"].values()), row, rtol=0, atol=1e-12)


def test_init_text_pipeline_writes_a_text_feature(text_dir: Path) -> None:
    data = yaml.safe_load((text_dir / "mlship.yaml").read_text())
    assert data["input"] == {"features": {"text": "str"}}
    assert data["task"] == "classification"
    assert data["output"] == {"labels": ["ham", "spam"]}
    [example] = data["examples"]
    assert example["input"] == {"text": ""}
    assert example["output"] == {"label": in_process(text_dir, [""])[0][0]}


def test_init_text_sample_csv_keeps_text_and_json_works(tmp_path: Path, text_dir: Path) -> None:
    shutil.copy(text_dir / "model.joblib", tmp_path / "model.joblib")
    (tmp_path / "rows.csv").write_text("text,label\n123,spam\nfree money now,spam\n")
    result = invoke("init", str(tmp_path / "model.joblib"), "--dir", str(tmp_path), "--sample",
                    str(tmp_path / "rows.csv"))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert example["input"] == {"text": "123"}  # a number-like cell of a str feature stays text
    assert example["output"] == {"label": in_process(text_dir, ["123"])[0][0]}
    (tmp_path / "rows.json").write_text(json.dumps([{"text": "claim your free prize"}, {"text": "hi"}]))
    result = invoke("init", str(tmp_path / "model.joblib"), "--dir", str(tmp_path), "--force", "--sample",
                    str(tmp_path / "rows.json"))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert example == {"input": {"text": "claim your free prize"},
                       "output": {"label": in_process(text_dir, ["claim your free prize"])[0][0]}}


def test_text_pipeline_validate_and_predict_local(text_dir: Path) -> None:
    result = invoke("validate", "-f", str(text_dir))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ok examples[0]" in text
    # skl2onnx is never given strings: the compiled path declines and says why; the pipeline itself serves
    assert "compiled path not used: the input has non-numeric features" in text
    body = json.dumps({"instances": [{"text": t} for t in QUERIES]})
    result = invoke("predict", "--local", "-f", str(text_dir), "--json", "-d", body)
    assert result.exit_code == 0, result.output
    check_same(json.loads(result.stdout)["predictions"], text_dir, QUERIES)


def test_text_pipeline_serves_the_same_as_in_process(text_dir: Path) -> None:
    with running(text_dir, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        one = post(http, {"text": "free money"})
        assert one.status_code == 200, one.text
        check_same([one.json()], text_dir, ["free money"])
        for body in ({"instances": [{"text": t} for t in QUERIES]}, [{"text": t} for t in QUERIES],
                     [[t] for t in QUERIES]):
            r = post(http, body)
            assert r.status_code == 200, r.text
            check_same(r.json()["predictions"], text_dir, QUERIES)
        bad = post(http, {"text": 3})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "text"]
        meta = http.get("/metadata").json()
        assert meta["compiled"] is False
        assert meta["model_input"] == "text (a list of strings)"
        assert "Traceback" not in server.output()


@pytest.mark.parametrize("kind", ["count", "hashing", "nested", "regressor"])
def test_other_text_pipelines(tmp_path: Path, kind: str) -> None:
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    from mlship.contract_io import load_project
    from mlship.serving.predictor import Predictor

    if kind == "count":
        model = text_pipeline(CountVectorizer())
    elif kind == "hashing":
        model = text_pipeline(HashingVectorizer(n_features=64))
    elif kind == "nested":
        model = Pipeline([("features", Pipeline([("counts", CountVectorizer())])), ("clf", Ridge())])
        model.fit(TEXTS, [float(len(t)) for t in TEXTS])
    else:
        model = Pipeline([("counts", CountVectorizer()), ("reg", Ridge())]).fit(TEXTS, [float(len(t)) for t in TEXTS])
    joblib.dump(model, tmp_path / "m.joblib")
    result = invoke("init", str(tmp_path / "m.joblib"), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "mlship.yaml").read_text())
    assert data["input"] == {"features": {"text": "str"}}
    assert data["task"] == ("classification" if kind in ("count", "hashing") else "regression")
    predictor = Predictor(load_project(tmp_path), keep_compiled=False)
    predictor.load()
    got = predictor.predict([[t] for t in QUERIES])
    expected = model.predict(QUERIES)
    key = "label" if data["task"] == "classification" else "value"
    assert [g[key] for g in got] == [v if key == "value" else str(v) for v in expected.tolist()]


def test_text_vectorizer_reading_files_is_refused(tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    files = []
    for i, t in enumerate(TEXTS):
        files.append(str(tmp_path / f"doc{i}.txt"))
        Path(files[-1]).write_text(t)
    model = Pipeline([("v", CountVectorizer(input="filename")), ("c", LogisticRegression())]).fit(files, LABELS)
    joblib.dump(model, tmp_path / "m.joblib")
    result = invoke("init", str(tmp_path / "m.joblib"), "--dir", str(tmp_path))
    assert result.exit_code != 0
    assert "input='filename'" in " ".join(result.output.split())
    assert not (tmp_path / "mlship.yaml").exists()


def test_text_model_with_wrong_features_is_a_clear_error(tmp_path: Path, text_dir: Path) -> None:
    for name in ("model.joblib", "MODEL.md"):
        shutil.copy(text_dir / name, tmp_path / name)
    data = yaml.safe_load((text_dir / "mlship.yaml").read_text())
    data["input"] = {"features": {"title": "str", "body": "str"}}
    data["examples"] = [{"input": {"title": "a", "body": "b"}}]
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(data))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code != 0
    assert "takes one text per instance" in " ".join(result.output.split())


def test_text_model_with_compile_onnx_says_why(tmp_path: Path, text_dir: Path) -> None:
    for name in ("model.joblib", "MODEL.md"):
        shutil.copy(text_dir / name, tmp_path / name)
    data = yaml.safe_load((text_dir / "mlship.yaml").read_text())
    data["serve"] = {"compile": "onnx"}
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(data))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code != 0
    assert "non-numeric features" in " ".join(result.output.split())


# -- 2. (n, 1) regression outputs ----------------------------------------------------------------------------
def column_regressor(kind: str) -> Any:
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x @ np.array([1.0, 2.0, -3.0]) + 0.5).reshape(-1, 1)  # a 2-D target: predict returns (n, 1)
    model = (LinearRegression() if kind == "linear" else PLSRegression(n_components=2)).fit(x, y)
    assert model.predict(x[:2]).shape == (2, 1)
    return model


@pytest.mark.parametrize("kind", ["linear", "pls"])
def test_column_regressor_answers_one_value(tmp_path: Path, kind: str) -> None:
    model = column_regressor(kind)
    joblib.dump(model, tmp_path / "reg.joblib")
    result = invoke("init", str(tmp_path / "reg.joblib"), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    [example] = yaml.safe_load((tmp_path / "mlship.yaml").read_text())["examples"]
    assert isinstance(example["output"]["value"], float)
    rows = [[0.1, 0.2, 0.3], [1.0, -1.0, 2.0]]
    expected = model.predict(np.asarray(rows))[:, 0]
    with running(tmp_path, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        one = post(http, {"x0": 0.1, "x1": 0.2, "x2": 0.3})
        assert one.status_code == 200, one.text
        assert set(one.json()) == {"value"}
        assert isinstance(one.json()["value"], float)
        assert math.isclose(one.json()["value"], expected[0], rel_tol=1e-5)
        batch = post(http, rows).json()["predictions"]
        assert [set(p) for p in batch] == [{"value"}, {"value"}]
        assert np.allclose([p["value"] for p in batch], expected, rtol=1e-5)
        assert http.get("/metadata").json()["compiled"] is True  # the ONNX model's (n, 1) output agrees too
    # the original model (no compiled path) answers the same way
    (tmp_path / "mlship.yaml").write_text((tmp_path / "mlship.yaml").read_text() + "serve:\n  compile: \"off\"\n")
    result = invoke("predict", "--local", "-f", str(tmp_path), "--json", "-d", json.dumps({"instances": rows}))
    assert result.exit_code == 0, result.output
    got = [p["value"] for p in json.loads(result.stdout)["predictions"]]
    assert np.allclose(got, expected, rtol=0, atol=1e-12)


CUSTOM_ESTIMATOR = """
import numpy as np

class Column:
    \"\"\"A user's model whose predict returns an (n, 1) array.\"\"\"
    n_features_in_ = 2

    def predict(self, x):
        return np.asarray(x, dtype=float).sum(axis=1, keepdims=True)

def load(path):
    return Column()
"""


def test_custom_estimator_with_a_column_output(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"unused")
    (tmp_path / "custom.py").write_text(CUSTOM_ESTIMATOR)
    (tmp_path / "mlship.yaml").write_text(textwrap.dedent("""\
        name: column
        runtime: sklearn
        artifact: model.pkl
        task: regression
        load: custom.py:load
        input:
          features: {a: float, b: float}
        examples:
          - input: {a: 1.0, b: 2.0}
            output: {value: 3.0}
        """))
    result = invoke("validate", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output
    result = invoke("predict", "--local", "-f", str(tmp_path), "--json", "-d", '{"a": 1.5, "b": 2.0}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"predictions": [{"value": 3.5}]}


@pytest.mark.parametrize("returns", ["np.asarray(xs).reshape(-1, 1) * model",
                                     "(np.asarray(xs).reshape(-1, 1) * model).tolist()"])
def test_predict_snippet_returning_a_column(tmp_path: Path, returns: str) -> None:
    write_custom_project(tmp_path, f"""
        import numpy as np

        def load(path):
            return 2.0

        def predict(model, instances):
            xs = [i["x"] for i in instances]
            return {returns}
        """)
    with running(tmp_path, env={"MLSHIP_API_KEYS": ""}) as server, \
            httpx.Client(base_url=server.url, timeout=10) as http:
        assert post(http, {"x": 1.5}).json() == {"value": 3.0}
        assert post(http, [{"x": 1.0}, [2.0]]).json() == {"predictions": [{"value": 2.0}, {"value": 4.0}]}
