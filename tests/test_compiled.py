"""The compiled path (serve.compile): sklearn models converted to ONNX, used only where they predict the same."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.datasets import load_diabetes, load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder
from sklearn.svm import LinearSVC

from conftest import make_iris_project, running
from image_leftovers import image_leftovers
from mlship import compiled
from mlship.contract import Contract
from mlship.contract_io import Project, artifact_sha256, load_project
from mlship.errors import ArtifactError, ContractError
from mlship.runtimes.sklearn import SklearnRuntime
from mlship.serving.predictor import Predictor


def project_for(root: Path, model: Any, features: list[str], task: str = "classification",
                **extra: Any) -> Project:
    joblib.dump(model, root / "model.joblib")
    data = {"name": "t", "runtime": "sklearn", "artifact": "model.joblib", "task": task,
            "input": {"features": dict.fromkeys(features, "float")}, **extra}
    return Project(Contract.model_validate(data), root, root / "mlship.yaml")


def loaded(project: Project) -> Predictor:
    predictor = Predictor(project)
    predictor.load()
    return predictor


def native(project: Project) -> Predictor:
    contract = project.contract.model_copy(update={"serve": project.contract.serve.model_copy(
        update={"compile": "off"})})
    return loaded(Project(contract, project.root, project.contract_path))


def assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float = 1e-5) -> None:
    assert [o.get("label") for o in a] == [o.get("label") for o in b]
    for x, y in zip(a, b, strict=True):
        if "probabilities" in x:
            assert list(x["probabilities"]) == list(y["probabilities"])
            assert list(x["probabilities"].values()) == pytest.approx(list(y["probabilities"].values()), abs=tol)
        if "value" in x:
            assert x["value"] == pytest.approx(y["value"], rel=tol, abs=tol)


def wide_rows(n_features: int, n: int = 500) -> list[list[float]]:
    rng = np.random.default_rng(1)
    return (rng.normal(size=(n, n_features)) * rng.choice([0.1, 1, 10, 1000], size=(n, 1))).tolist()


# -- models that convert: the compiled model answers, the same as the original ---------------------------------


def test_iris_pipeline_is_served_compiled_and_cached(iris_dir: Path) -> None:
    project = load_project(iris_dir)
    predictor = loaded(project)
    assert predictor.compiled is not None
    assert predictor.input_path is not None and predictor.input_path.startswith("onnxruntime ")
    assert predictor.compile_note is None
    folder = iris_dir / ".mlship" / "compiled"
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "model.onnx", "record.json"]
    assert (folder / ".gitignore").read_text() == "*\n"
    record = json.loads((folder / "record.json").read_text())
    assert record["source_sha256"] == artifact_sha256(project.artifact_path)
    assert record["probe_count"] == len(project.contract.examples) + compiled.PROBE_ROWS
    assert record["classes"] == ["setosa", "versicolor", "virginica"]
    assert record["max_abs_diff"] <= 1e-12
    rows = load_iris().data.tolist() + wide_rows(4)
    assert_same(predictor.predict(rows), native(project).predict(rows), tol=1e-12)


def test_second_start_uses_the_kept_model_without_importing_sklearn(iris_dir: Path) -> None:
    loaded(load_project(iris_dir))  # converts and keeps it
    code = textwrap.dedent(f"""
        import sys
        from mlship.contract_io import load_project
        from mlship.serving.predictor import Predictor
        from pathlib import Path; p = Predictor(load_project(Path({str(iris_dir)!r})))
        p.load()
        out = p.predict([[5.1, 3.5, 1.4, 0.2]])
        assert p.compiled is not None, p.compile_note
        print(out[0]["label"], sorted(m for m in ("sklearn", "pandas", "scipy", "skl2onnx") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["setosa", "[]"]


@pytest.mark.parametrize("change", ["artifact", "examples", "onnxruntime", "expected"])
def test_a_stale_or_wrong_record_is_made_again(iris_dir: Path, iris_model: Path, change: str) -> None:
    loaded(load_project(iris_dir))
    record_path = iris_dir / ".mlship" / "compiled" / "record.json"
    if change == "artifact":  # another model in the same file
        iris = load_iris()
        joblib.dump(LogisticRegression(C=0.01, max_iter=1000).fit(
            pd.DataFrame(iris.data, columns=list(load_project(iris_dir).contract.feature_names)),
            iris.target_names[iris.target]), iris_dir / "model" / "iris.joblib")
    elif change == "examples":
        contract = iris_dir / "mlship.yaml"
        contract.write_text(contract.read_text().replace("sepal_length: 5.1", "sepal_length: 5.3", 1))
    else:
        record = json.loads(record_path.read_text())
        if change == "onnxruntime":
            record["onnxruntime"] = "0.0.1"
        else:  # the kept outputs no longer match what the kept model predicts
            record["expected_probabilities"][0] = [1.0, 0.0, 0.0]
            record["expected_values"][0] = "setosa"
        record_path.write_text(json.dumps(record))
    with pytest.raises(compiled.NotCompiled) as info:
        project = load_project(iris_dir)
        compiled.load(iris_dir, Predictor(project)._probe_rows(compiled.PROBE_ROWS), project.contract.feature_names,
                      artifact_sha256(project.artifact_path))
    assert {"artifact": "stale: the artifact changed", "examples": "stale: the probe rows",
            "onnxruntime": "stale: onnxruntime (checked with 0.0.1", "expected": "differs from the original"}[change] \
        in str(info.value)
    predictor = loaded(load_project(iris_dir))  # converted again, from the current artifact and contract
    assert predictor.compiled is not None
    project = load_project(iris_dir)
    record = json.loads(record_path.read_text())
    assert record["source_sha256"] == artifact_sha256(project.artifact_path)
    assert record["onnxruntime"] != "0.0.1"
    rows = load_iris().data.tolist()
    assert_same(predictor.predict(rows), native(project).predict(rows), tol=1e-12)


def test_a_kept_model_that_does_not_fit_a_broken_artifact_is_named_in_the_error(iris_dir: Path) -> None:
    loaded(load_project(iris_dir))
    (iris_dir / "model" / "iris.joblib").write_bytes(b"this is not a pickle")
    with pytest.raises(ArtifactError) as info:
        loaded(load_project(iris_dir))
    assert info.value.message.startswith(
        "iris.joblib cannot be served: the compiled model kept for it does not fit (the compiled model is stale: "
        "the artifact changed), and loading the original failed: iris.joblib is not a readable joblib/pickle file")
    assert "rebuild it with `mlship build`" in (info.value.fix or "")


@pytest.mark.parametrize("kind", ["forest", "int-classes", "no-probabilities", "regression", "forest-regression"])
def test_model_kinds_convert_and_agree(tmp_path: Path, kind: str) -> None:
    x, y = make_classification(n_samples=400, n_features=8, n_informative=5, random_state=0)
    task = "classification"
    model: Any
    if kind == "forest":
        model = RandomForestClassifier(n_estimators=30, random_state=0).fit(x, np.array(["no", "yes"])[y])
    elif kind == "int-classes":
        model = LogisticRegression(max_iter=1000).fit(x, y * 3 + 1)  # classes 1 and 4
    elif kind == "no-probabilities":
        model = LinearSVC().fit(x, y)
    else:
        task = "regression"
        d = load_diabetes()
        x = d.data[:, :8]
        model = (RandomForestRegressor(n_estimators=20, random_state=0) if kind == "forest-regression"
                 else Ridge()).fit(x, d.target)
    project = project_for(tmp_path, model, [f"x{i}" for i in range(8)], task)
    predictor = loaded(project)
    assert predictor.compiled is not None, predictor.compile_note
    rows = x.tolist() + wide_rows(8)
    got, want = predictor.predict(rows), native(project).predict(rows)
    assert_same(got, want)
    if kind == "int-classes":
        assert {o["label"] for o in got} <= {"1", "4"} and list(got[0]["probabilities"]) == ["1", "4"]
    if kind == "no-probabilities":
        assert all(set(o) == {"label"} for o in got)


def test_forest_served_compiled_over_http_matches_native(tmp_path: Path) -> None:
    x, y = make_classification(n_samples=400, n_features=6, random_state=0)
    features = [f"f{i}" for i in range(6)]
    forest = RandomForestClassifier(n_estimators=25, random_state=0).fit(pd.DataFrame(x, columns=features), y)
    project_for(tmp_path, forest, features)
    (tmp_path / "mlship.yaml").write_text(textwrap.dedent(f"""\
        name: forest
        runtime: sklearn
        artifact: model.joblib
        task: classification
        input:
          features: {{{', '.join(f'{f}: float' for f in reversed(features))}}}
        examples:
          - input: {{{', '.join(f'{f}: {v}' for f, v in zip(features, x[0], strict=True))}}}
        """))
    instances = [dict(zip(features, row, strict=True)) for row in (x[:50].tolist() + wide_rows(6, 50))]
    with running(tmp_path) as server:
        meta = httpx.get(server.url + "/metadata").json()
        got = httpx.post(server.url + "/predict", json={"instances": instances}).json()["predictions"]
        assert "model input: onnxruntime" in server.output()
    assert meta["compiled"] is True and meta["model_input"].startswith("onnxruntime")
    assert_same(got, native(load_project(tmp_path)).predict([[i[f] for f in reversed(features)] for i in instances]))


# -- models that do not: the original model answers, and the user is told why ---------------------------------


def string_feature_model(root: Path) -> Project:
    frame = pd.DataFrame({"colour": ["red", "green", "blue", "red"] * 10, "size": np.arange(40.0)})
    target = (frame["size"] > 20).map({True: "big", False: "small"})
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["colour"]), remainder="passthrough"),
                          LogisticRegression()).fit(frame, target)
    joblib.dump(model, root / "model.joblib")
    data = {"name": "t", "runtime": "sklearn", "artifact": "model.joblib", "task": "classification",
            "input": {"features": {"colour": {"type": "str", "enum": ["red", "green", "blue"]}, "size": "float"}}}
    return Project(Contract.model_validate(data), root, root / "mlship.yaml")


def unconvertible(root: Path, **extra: Any) -> Project:
    """A model skl2onnx cannot convert: a FunctionTransformer with a Python function."""
    iris = load_iris()
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=1000)).fit(iris.data,
                                                                                               iris.target)
    return project_for(root, model, [f"x{i}" for i in range(4)], **extra)


@pytest.mark.parametrize("case", ["strings", "unconvertible"])
def test_fallback_serves_the_original_and_says_why(tmp_path: Path, case: str) -> None:
    project = string_feature_model(tmp_path) if case == "strings" else unconvertible(tmp_path)
    predictor = loaded(project)
    assert predictor.compiled is None
    assert predictor.compile_note is not None
    why = "non-numeric features" if case == "strings" else "skl2onnx cannot convert Pipeline: "
    assert predictor.compile_note.startswith("compiled path not used: ")
    assert why in predictor.compile_note
    assert predictor.compile_note.endswith("; serving the sklearn model as it is")
    row = [["red", 30.0]] if case == "strings" else [[5.1, 3.5, 1.4, 0.2]]
    assert predictor.predict(row)[0]["label"] in ({"big", "small"} if case == "strings" else {"0", "1", "2"})
    if case == "unconvertible":  # kept for the image (see test_build_keeps_the_reason_for_the_image)
        kept = json.loads((tmp_path / ".mlship" / "compiled" / compiled.FAILURE_FILE).read_text())
        assert why in kept["reason"]


def test_a_compiled_model_that_disagrees_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check itself: a converter that returns another model's graph is caught on the probe rows."""
    x, y = make_classification(n_samples=300, n_features=5, random_state=0)
    project = project_for(tmp_path, LogisticRegression().fit(x, y), [f"x{i}" for i in range(5)])
    other = LogisticRegression(C=1e-3).fit(x, 1 - y)
    real = SklearnRuntime.to_onnx

    def wrong(self: SklearnRuntime, model: Any, features: list[str]) -> tuple[bytes, list[int], str]:
        return real(self, other, features)

    monkeypatch.setattr(SklearnRuntime, "to_onnx", wrong)
    predictor = loaded(project)
    assert predictor.compiled is None
    assert predictor.compile_note is not None
    assert "the ONNX model says" in predictor.compile_note and "where the original model says" in predictor.compile_note
    assert not (tmp_path / ".mlship" / "compiled" / "model.onnx").exists()


def test_compile_onnx_makes_a_failure_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        loaded(unconvertible(tmp_path, serve={"compile": "onnx"}))
    assert "serve.compile is onnx, but the compiled model cannot be used: skl2onnx cannot convert" in str(info.value)
    assert "Set serve.compile to auto" in (info.value.fix or "")


def test_compile_onnx_with_user_code_is_a_contract_error(tmp_path: Path) -> None:
    (tmp_path / "predict.py").write_text("def predict(model, instances):\n    return [1 for _ in instances]\n")
    project = project_for(tmp_path, LogisticRegression().fit([[0.0], [1.0]], [0, 1]), ["x0"],
                          predict="predict.py:predict", serve={"compile": "onnx"})
    with pytest.raises(ContractError, match=r"serve.compile is onnx, but the model is loaded or called by your code"):
        loaded(project)


def test_compile_off_never_converts(iris_dir: Path) -> None:
    shutil.rmtree(iris_dir / ".mlship", ignore_errors=True)  # `mlship init` converted it already
    contract = iris_dir / "mlship.yaml"
    contract.write_text(contract.read_text() + "serve:\n  compile: 'off'\n")
    predictor = loaded(load_project(iris_dir))
    assert predictor.compiled is None and predictor.compile_note is None
    assert not (iris_dir / ".mlship" / "compiled").exists()


def test_converting_needs_the_version_that_saved_the_pickle(tmp_path: Path) -> None:
    runtime = SklearnRuntime()
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    runtime.saved_version = "1.0.2"
    with pytest.raises(compiled.NotCompiled, match=r"saved with scikit-learn 1\.0\.2 and .* is installed here"):
        runtime.to_onnx(model, ["x0"])


def test_an_image_reports_the_reason_found_by_the_build(tmp_path: Path) -> None:
    """In an image neither the framework nor the converter is installed: the reason kept by `mlship build` is
    the one to show, not 'skl2onnx is not installed'."""
    sha = "ab" * 32
    first = compiled.remember_failure(tmp_path, sha, compiled.NotCompiled("skl2onnx cannot convert Foo"))
    assert first == "skl2onnx cannot convert Foo"
    later = compiled.remember_failure(tmp_path, sha, compiled.Unavailable("skl2onnx is not installed"))
    assert later == "skl2onnx cannot convert Foo (found by mlship build)"
    other = compiled.remember_failure(tmp_path, "cd" * 32, compiled.Unavailable("skl2onnx is not installed"))
    assert other == "skl2onnx is not installed"


def test_onnxruntime_telemetry_is_off(iris_dir: Path, tmp_path: Path) -> None:
    """onnxruntime's telemetry keeps a device id under ~/.cache/Microsoft and queues usage events: off."""
    home = tmp_path / "home"
    home.mkdir()
    code = ("from pathlib import Path\nfrom mlship.contract_io import load_project\n"
            "from mlship.serving.predictor import Predictor\n"
            f"p = Predictor(load_project(Path({str(iris_dir)!r}))); p.load(); assert p.compiled is not None\n"
            "import os; print(os.environ['ORT_DISABLE_TELEMETRY'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    assert "telemetry" not in proc.stderr
    assert list(home.rglob("*")) == []


# -- build: the image serves the compiled model without scikit-learn -------------------------------------------


def test_build_plan_of_a_compiled_model(tmp_path: Path, iris_model: Path) -> None:
    from importlib.metadata import version

    from mlship.image.context import plan_project

    root = make_iris_project(tmp_path / "p", iris_model)
    plan = plan_project(load_project(root), "base:1")
    names = [r.split("==")[0] for r in plan.requirements]
    assert f"onnxruntime=={version('onnxruntime')}" in plan.requirements
    assert "scikit-learn" not in names and "pandas" not in names
    assert [ctx for _src, ctx in plan.files if ".mlship" in ctx] == [
        "model/.mlship/compiled/model.onnx", "model/.mlship/compiled/record.json"]
    assert plan.labels["dev.mlship.compiled"] == "onnx"
    assert any(n.startswith("serving the compiled model: onnxruntime") and n.endswith(
        "left out of the image: scikit-learn, pandas") for n in plan.notes)
    contract = root / "mlship.yaml"
    contract.write_text(contract.read_text() + "serve:\n  compile: 'off'\n")
    plan = plan_project(load_project(root), "base:1")
    assert f"scikit-learn=={version('scikit-learn')}" in plan.requirements
    assert not any(r.startswith("onnxruntime") for r in plan.requirements)
    assert plan.labels["dev.mlship.compiled"] == "no"
    assert not any(".mlship" in ctx for _src, ctx in plan.files)


def test_build_keeps_the_reason_for_the_image(tmp_path: Path) -> None:
    from mlship.image.context import plan_project

    project = unconvertible(tmp_path)
    project.contract_path.write_text(yaml_of(project))
    plan = plan_project(load_project(tmp_path), "base:1")
    assert any(r.split("==")[0] == "scikit-learn" for r in plan.requirements)
    assert plan.labels["dev.mlship.compiled"] == "no"
    assert [ctx for _src, ctx in plan.files if ".mlship" in ctx] == ["model/.mlship/compiled/not-compiled.json"]
    assert any(n.startswith("compiled path not used: skl2onnx cannot convert") for n in plan.notes)


def yaml_of(project: Project) -> str:
    import yaml

    return yaml.safe_dump(project.contract.model_dump(mode="json", exclude_defaults=True))


def test_image_serves_the_compiled_model_without_sklearn(iris_image: tuple[Path, str], docker_engine: Any) -> None:
    _root, tag = iris_image
    client: Any = docker_engine
    image = client.images.get(tag)
    assert image.labels["dev.mlship.compiled"] == "onnx"
    script = ("import importlib.util as u, sys; print([m for m in ('sklearn', 'pandas', 'scipy', 'onnxruntime') "
              "if u.find_spec(m)])")
    out = client.containers.run(tag, ["python", "-c", script], remove=True).decode()
    assert out.strip() == "['onnxruntime']"
    # what the server never imports is gone (image/rules.py COMPILED_PRUNE: onnxruntime's C API library and tools,
    # numpy's build tools, headers, stubs and test modules, ...) and the server's packages carry no debug information
    # (SERVER_STRIP); the Python module links onnxruntime in, so the server still starts (the session's tests serve
    # from this image)
    left, _ = image_leftovers(client, tag)
    assert left == {"pruned_but_present": [], "unstripped": [], "kept": ["numpy", "onnxruntime", "uvloop"]}, left

