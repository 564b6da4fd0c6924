"""`mlship build` past the plan: the build context (lock hashes, mlship wheel, no secrets), the CLI and the engine
(dry run, an unreachable engine), real builds of the iris example (labels, non-root, a model-only rebuild, a hostile
file name), base images that cannot be pulled and the dependency stage kept as cache.

Real builds are few: the session fixture `iris_image` builds once; this module adds a model-only rebuild
(through the CLI) and a build of a hostile file name, both of which reuse the dependency layers.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import pytest

import build_helpers
import mlship
from build_helpers import HOSTILE_ARTIFACT, SAVED, edit_contract, hostile_project
from cli_helpers import invoke, plain
from conftest import TEST_BASE_IMAGE
from mlship.contract_io import artifact_sha256, load_project
from mlship.errors import BuildError, EngineError
from mlship.image import engine, wheelhouse
from mlship.image.context import plan_build, plan_project, write_context

wheel_cache = build_helpers.wheel_cache


UNREACHABLE = "tcp://127.0.0.1:1"


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".mlship"))
    return dest


# --- the build context ------------------------------------------------------------------------------
def test_lock_has_a_hash_for_every_wheel(iris_dir: Path, wheel_cache: Path) -> None:
    """The image of the sklearn model itself (serve.compile: off); tests/test_compiled.py has the compiled one."""
    contract = iris_dir / "mlship.yaml"
    contract.write_text(contract.read_text() + "serve:\n  compile: 'off'\n")
    project = load_project(iris_dir)
    plan = plan_project(project, TEST_BASE_IMAGE)
    ctx = write_context(plan, iris_dir / ".mlship" / "build")
    lines = [ln for ln in (ctx / "requirements.lock").read_text().splitlines() if not ln.startswith("#")]
    locked = {}
    for line in lines:
        found = re.fullmatch(r"([a-z0-9-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
        assert found, f"lock line without an exact version and hash: {line!r}"
        locked[found.group(1)] = (found.group(2), found.group(3))
    wheels = sorted((ctx / "wheels").glob("*.whl"))
    assert len(wheels) == len(locked)
    for wheel in wheels:
        name, ver, _build, _tags = wheelhouse.parse_wheel_filename(wheel.name)
        assert locked[str(name)] == (str(ver), hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert locked["scikit-learn"][0] == SAVED
    assert {"numpy", "uvicorn", "orjson", "pydantic", "scipy"} <= set(locked)
    assert (ctx / ".dockerignore").read_text().split() == ["Dockerfile", ".dockerignore"]
    assert len(list((ctx / "mlship").glob("mlship-*.whl"))) == 1


def test_no_host_secrets_in_the_dockerfile_or_context(iris_dir: Path, wheel_cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"MLSHIP_API_KEYS": "sk-host-secret-1,sk-host-secret-2", "AWS_SECRET_ACCESS_KEY": "aws-host-secret"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    project = load_project(iris_dir)
    plan = plan_build(project, base=TEST_BASE_IMAGE, pins={"scikit-learn": SAVED})
    ctx = write_context(plan, iris_dir / ".mlship" / "build")
    for path in [p for p in ctx.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for name, value in secrets.items():
            for part in [name, *value.split(",")]:
                assert part.encode() not in data, f"{part} leaked into {path.relative_to(ctx)}"


def _package_copy(tmp_path: Path) -> Path:
    src = Path(mlship.__file__).resolve().parent
    dest = tmp_path / "src" / "mlship"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_mlship_wheel_is_deterministic_and_complete(tmp_path: Path) -> None:
    first = wheelhouse.mlship_wheel(tmp_path / "a")
    second = wheelhouse.mlship_wheel(tmp_path / "b")
    assert first.name == second.name and first.read_bytes() == second.read_bytes()
    assert re.fullmatch(rf"mlship-{re.escape(mlship.__version__)}-1[0-9a-f]{{12}}-py3-none-any\.whl", first.name)
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        record = zf.read(f"mlship-{mlship.__version__}.dist-info/RECORD").decode()
    assert {"mlship/serving/__main__.py", "mlship/serving/app.py", "mlship/templates/Dockerfile.j2",
            "mlship/py.typed"} <= names
    assert not [n for n in names if n.endswith((".pyc", ".pyo")) or "__pycache__" in n]
    assert all(name in record for name in names)


def test_mlship_wheel_name_changes_with_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = wheelhouse.mlship_wheel(tmp_path / "current").name
    package = _package_copy(tmp_path)
    monkeypatch.setattr(mlship, "__file__", str(package / "__init__.py"))
    assert wheelhouse.mlship_wheel(tmp_path / "copy").name == before  # same content, same name
    with (package / "serving" / "app.py").open("a") as fh:
        fh.write("\n# changed\n")
    changed = wheelhouse.mlship_wheel(tmp_path / "copy")
    assert changed.name != before
    assert [p.name for p in (tmp_path / "copy").glob("*.whl")] == [changed.name], "old wheel not removed"


# --- the CLI and the engine ---------------------------------------------------------------------------
def test_dry_run_prints_the_dockerfile_and_builds_nothing(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", UNREACHABLE)  # a dry run must not even need an engine
    result = invoke("build", "--dry-run", "-f", str(iris_dir), "--base-image", TEST_BASE_IMAGE)
    assert result.exit_code == 0, result.output
    project = load_project(iris_dir)
    assert f"image: iris:{project.version}" in result.stdout
    assert f"base: {TEST_BASE_IMAGE}" in result.stdout
    assert f"onnxruntime=={version('onnxruntime')}" in result.stdout  # the compiled model (tests/test_compiled.py)
    assert "scikit-learn" not in result.stdout.split("--- Dockerfile")[0].split("note:")[0]
    assert ("files: model/model/iris.joblib, model/.mlship/compiled/model.onnx, model/.mlship/compiled/record.json, "
            "contract/MODEL.md, contract/mlship.yaml") in result.stdout
    dockerfile = result.stdout.split("--- Dockerfile\n", 1)[1]
    assert dockerfile.strip() == plan_project(project, TEST_BASE_IMAGE, dry_run=True).dockerfile.strip()
    assert not (iris_dir / ".mlship").exists()


def test_unreachable_engine_says_how_to_fix(iris_dir: Path, wheel_cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", UNREACHABLE)
    with pytest.raises(EngineError) as info:
        engine.client()
    assert info.value.message.startswith(f"Cannot reach the Docker engine at {UNREACHABLE}")
    assert info.value.fix is not None and "DOCKER_HOST" in info.value.fix and "dockerd" in info.value.fix
    result = invoke("build", "-f", str(iris_dir), "--base-image", TEST_BASE_IMAGE)
    assert result.exit_code == 4  # the preflight's engine check: nothing was built
    assert "error: Preflight for build failed; nothing was built or changed:" in plain(result.stderr)
    assert f"docker engine: Cannot reach the Docker engine at {UNREACHABLE}" in plain(result.stderr)
    assert "Start Docker" in plain(result.stderr)
    assert not (iris_dir / ".mlship").exists()


# --- real builds ----------------------------------------------------------------------------------------
def test_image_labels(iris_image: tuple[Path, str]) -> None:
    root, tag = iris_image
    project = load_project(root)
    labels = engine.inspect(tag).labels
    assert labels["org.opencontainers.image.title"] == "iris"
    assert labels["org.opencontainers.image.version"] == project.version == tag.split(":")[1]
    assert labels["dev.mlship.model-sha256"] == artifact_sha256(project.artifact_path)
    assert labels["dev.mlship.contract-sha256"] == hashlib.sha256(project.contract_path.read_bytes()).hexdigest()
    assert labels["dev.mlship.version"] == mlship.__version__
    assert labels["dev.mlship.runtime"] == "sklearn"


def test_image_runs_as_non_root(iris_image: tuple[Path, str], docker_engine: Any) -> None:
    _root, tag = iris_image
    out = docker_engine.containers.run(tag, ["id", "-u"], remove=True).decode().strip()
    assert out.isdigit() and int(out) != 0


def _steps(log: str) -> dict[str, bool]:
    """Build log -> {instruction: reused from the cache}."""
    steps = {}
    for block in re.split(r"^Step \d+/\d+ : ", log, flags=re.M)[1:]:
        steps[block.splitlines()[0].strip()] = "---> Using cache" in block
    return steps


def test_model_only_rebuild_reuses_the_dependency_layers(iris_image: tuple[Path, str], tmp_path: Path,
                                                         wheel_cache: Path, docker_engine: Any) -> None:
    """`mlship build` through the CLI after a model-only change: one build, deps from the cache."""
    root = copy_project(iris_image[0], tmp_path / "p")
    model = root / "model" / "iris.joblib"
    joblib.dump(joblib.load(model), model, compress=0)  # same model, new bytes: a new version
    project = load_project(root)
    tag = f"iris:{project.version}"
    assert tag != iris_image[1]
    result = invoke("build", "-f", str(root), "--base-image", TEST_BASE_IMAGE)
    try:
        assert result.exit_code == 0, result.output
        assert re.search(rf"built {re.escape(tag)}-[0-9a-f]{{12}} sha256:[0-9a-f]{{12}} \d+\.\d MB in \d+\.\ds",
                         plain(result.stdout)), result.stdout
        steps = _steps((root / ".mlship" / "build.log").read_text())
        reused = {instr: hit for instr, hit in steps.items() if not instr.startswith("FROM ")}
        pip = [hit for instr, hit in reused.items() if "--require-hashes" in instr]
        assert pip == [True], steps
        order = list(reused)
        deps = order[:order.index("COPY mlship/ /build/mlship/")]
        assert deps and all(reused[instr] for instr in deps), steps
        # mlship and the venv copy are reused too, unless mlship's source changed since the session build
        wheels = [next((p / ".mlship" / "build" / "mlship").glob("*.whl")).name for p in (iris_image[0], root)]
        if wheels[0] == wheels[1]:
            mlship_to_model = order[order.index("COPY mlship/ /build/mlship/"):order.index("COPY model/ /app/")]
            assert all(reused[instr] for instr in mlship_to_model), steps
        assert not reused["COPY model/ /app/"], "the model layer must be rebuilt"
        assert engine.inspect(tag).labels["dev.mlship.model-sha256"] == artifact_sha256(model)
    finally:
        if docker_engine.images.list(name=tag):
            docker_engine.images.remove(tag)


def test_hostile_file_name_builds_and_loads_as_the_image_user(tmp_path: Path, iris_image: tuple[Path, str],
                                                              iris_model: Path, wheel_cache: Path,
                                                              docker_engine: Any) -> None:
    project = load_project(hostile_project(tmp_path / "p", iris_model))
    ctx = write_context(plan_build(project, base=TEST_BASE_IMAGE, pins={"scikit-learn": SAVED}), tmp_path / "ctx")
    tag = "mlship-test-hostile:1"
    engine.build(ctx, tag)
    try:
        code = ("import os, sys, joblib; m = joblib.load(sys.argv[1]); "
                "print(os.getuid(), type(m).__name__, os.listdir('/app/model'))")
        out = docker_engine.containers.run(tag, ["python", "-c", code, "/app/" + HOSTILE_ARTIFACT],
                                           remove=True).decode()
        assert out.split(" ", 2)[:2] == ["10001", "Pipeline"], out
        assert repr(HOSTILE_ARTIFACT.split("/")[1]) in out
    finally:
        docker_engine.images.remove(tag)


# --- base images that cannot be pulled, and the dependency stage kept as cache ----------------------------
NO_SUCH_BASE = "mlship-no-such-base:1"


def test_missing_base_image_names_the_three_ways_to_choose_another(iris_dir: Path, wheel_cache: Path,
                                                                   docker_engine: Any) -> None:
    """A real build of the iris context FROM an image the engine does not have and cannot pull (no such image;
    no network here either). `mlship build` checks the base image before it builds (preflight); this is the
    build's own error, for an image that disappears in between or a build started some other way."""
    assert not docker_engine.images.list(name=NO_SUCH_BASE)
    plan = plan_project(load_project(iris_dir), NO_SUCH_BASE)
    log = iris_dir / ".mlship" / "build.log"
    with pytest.raises(BuildError) as info:
        engine.build(write_context(plan, iris_dir / ".mlship" / "build"), plan.tag, log_path=log)
    err = info.value
    assert re.fullmatch(rf"The base image {re.escape(NO_SUCH_BASE)} could not be pulled: \S.*", err.message), err
    assert err.why == (f"The build starts FROM {NO_SUCH_BASE}, and the Docker engine has no copy of it and could "
                       "not pull it.")
    assert err.fix == ("Choose another base image with `--base-image IMAGE`, the environment variable "
                       f"MLSHIP_BASE_IMAGE, or `build.base_image` in mlship.yaml; or `docker pull {NO_SUCH_BASE}` / "
                       f"`docker load` it first. Full log: {log}")
    assert f"FROM {NO_SUCH_BASE} AS deps" in log.read_text()


@pytest.mark.parametrize(("dockerfile", "what"), [
    (f"FROM {TEST_BASE_IMAGE} AS deps\nRUN true\nFROM deps AS more\nFROM {NO_SUCH_BASE}\nCOPY --from=deps / /\n",
     f"The base image {NO_SUCH_BASE} could not be pulled: "),
    (f"FROM {TEST_BASE_IMAGE}\nRUN exit 3\n", "docker build of mlship-test-fails:1 failed: The command"),
])
def test_failed_build_says_what_failed(tmp_path: Path, docker_engine: Any, dockerfile: str, what: str) -> None:
    """The FROM of a later stage is a base image too; a failing RUN is not about the base image."""
    (tmp_path / "Dockerfile").write_text(dockerfile)
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as info:
        engine.build(tmp_path, "mlship-test-fails:1", log_path=log)
    assert info.value.message.startswith(what), info.value.message
    assert info.value.fix is not None and info.value.fix.endswith(f"Full log: {log}")
    assert ("--base-image IMAGE" in info.value.fix) == ("could not be pulled" in what)
    if "could not be pulled" not in what:  # a failing RUN: the step quoted, with what it printed
        assert info.value.why == "It failed at Step 2/2 : RUN exit 3, which printed nothing."


def test_two_builds_keep_one_labelled_stage_image(tmp_path: Path, iris_model: Path, wheel_cache: Path,
                                                  docker_engine: Any) -> None:
    """The deps stage's last image is kept (tagged) as the next build's cache; the one it replaces is removed."""
    from docker.errors import ImageNotFound

    from conftest import make_iris_project

    name = f"mlship-test-stages-{os.urandom(3).hex()}"
    root = make_iris_project(tmp_path / "p", iris_model)
    edit_contract(root, lambda d: d.update(name=name))
    plan = plan_project(load_project(root), TEST_BASE_IMAGE)
    ctx = write_context(plan, root / ".mlship" / "build")
    service = {"label": [f"dev.mlship.service={name}"]}
    cache = engine.stage_cache_tag(name)
    assert cache == f"{name}:mlship-deps-cache"
    try:
        engine.build(ctx, plan.tag)
        first = docker_engine.images.list(filters=service)
        assert [(img.tags, img.labels["dev.mlship.stage"]) for img in first] == [([cache], "deps")]
        with (ctx / "requirements.lock").open("a") as fh:  # a changed requirement: a new deps stage, pip again
            fh.write(f"# {name}\n")
        engine.build(ctx, plan.tag, log_path=tmp_path / "second.log")
        steps = _steps((tmp_path / "second.log").read_text())
        assert [hit for instr, hit in steps.items() if "--require-hashes" in instr] == [False], steps
        kept = docker_engine.images.list(filters=service)
        assert [img.tags for img in kept] == [[cache]] and kept[0].id != first[0].id
        assert not docker_engine.images.list(filters={"dangling": True, **service})
        with pytest.raises(ImageNotFound):
            docker_engine.images.get(first[0].id)
        assert f"removed the older deps stage image {first[0].short_id} of {name}" in (
            tmp_path / "second.log").read_text()
        # the kept image is the cache: a model-only change runs no pip
        (ctx / "model" / "model" / "iris.joblib").write_bytes(b"another model")
        engine.build(ctx, f"{name}:model-only", log_path=tmp_path / "third.log")
        steps = _steps((tmp_path / "third.log").read_text())
        assert all(hit for instr, hit in steps.items() if "pip" in instr), steps
        assert not steps["COPY model/ /app/"], steps
        assert [img.id for img in docker_engine.images.list(filters=service)] == [kept[0].id]
        with pytest.raises(EngineError, match="not a service image") as info:  # never mistaken for a deployable one
            engine.inspect(cache)
        assert info.value.fix is not None and f"{name}:VERSION" in info.value.fix
        with pytest.raises(EngineError, match="not a service image"):
            engine.push(cache, UNREACHABLE.removeprefix("tcp://"))
    finally:
        for ref in (plan.tag, f"{name}:model-only", cache):
            if docker_engine.images.list(name=ref):
                docker_engine.images.remove(ref)
