"""`mlship init` on a scikit-learn 0.24.2 pickle made on Python 3.9 (tests/legacy_models.py), unaided: the file runs
in a build environment with the versions it records, scikit-learn 1.2.2 is proven to predict the same on probe rows,
and the contract serves with it (provenance + proof); validate runs in a build environment, deploy --target local
serves predictions equal to the ones the model made where it was trained.

And the rules around it: a proof belongs to one file, the skew guard names the true versions, --keep-versions
serves the recorded ones, nothing untrusted runs in a build environment, and the Python of a release is read from
the index (cached; a built-in table offline)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from conftest import TEST_BASE_IMAGE, WHEEL_CACHE, free_port
from legacy_models import BULLSEYE, SKLEARN_024, base_image, canary_pickle, old_tree_copy
from mlship.cli import app
from mlship.contract_io import artifact_sha256, load_project
from mlship.errors import ArtifactError, BuildError, ContractError
from mlship.image.context import plan_project
from mlship.legacy import pyversions
from mlship.legacy.buildenv import LABEL
from mlship.targets.base import LABEL_OWNER, owner_label

pytestmark = pytest.mark.timeout(900)
ENV = {"MLSHIP_BASE_IMAGE_3_9": BULLSEYE, "MLSHIP_BASE_IMAGE": TEST_BASE_IMAGE, "NO_COLOR": "1", "COLUMNS": "200",
       "MLSHIP_CACHE": str(WHEEL_CACHE)}
SAMPLE_ROW = 7  # the --sample row: one of the rows whose prediction the training container recorded


@pytest.fixture(autouse=True)
def _legacy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def proven(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str, float]:
    """A folder with the old pickle and the mlship.yaml `mlship init model.sav` wrote (once per session): (folder,
    what the model predicted where it was trained, init's output, init's seconds)."""
    root = tmp_path_factory.mktemp("legacy-proven")
    _path, expected = old_tree_copy(docker_engine, root, WHEEL_CACHE)
    base_image(docker_engine)
    (root / "sample.json").write_text(json.dumps({"instances": [expected["rows"][SAMPLE_ROW]]}))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        patch.chdir(root)
        start = time.monotonic()
        result = CliRunner().invoke(app, ["init", "model.sav", "--name", "legacy-tree", "--sample", "sample.json"])
        seconds = time.monotonic() - start
    assert result.exit_code == 0, result.output
    return root, expected, result.output, seconds


def test_init_runs_the_pickle_in_its_era_and_proves_a_newer_release(proven: tuple[Path, dict[str, Any], str,
                                                                                   float]) -> None:
    root, expected, output, seconds = proven
    text = " ".join(output.split())
    assert "saved with scikit-learn 0.24.2 (Python 3.9 era)" in text
    assert "(Python 3.9 era: its wheels are for CPython 3.6-3.9, read from the package index" in text
    assert "ran it in a build environment (Python 3.9.2, scikit-learn 0.24.2, numpy 1.19.5, scipy 1.6.3" in text
    assert "scikit-learn 1.2.2 (Python 3.11) predicts the same on 257 probe rows: labels equal" in text
    assert "Version skew" not in text and "cannot load it" not in text
    contract = yaml.safe_load((root / "mlship.yaml").read_text())
    assert contract["dependencies"]["python"] == "3.11"
    reqs = contract["dependencies"]["requirements"]
    assert reqs[0] == "scikit-learn==1.2.2" and any(r.startswith("numpy==1.") for r in reqs)
    prov = contract["provenance"]
    assert prov["saved_with"] == {"scikit-learn": "0.24.2"} and prov["python"] == "3.9"
    assert prov["served_with"]["scikit-learn"] == "1.2.2"
    assert [f"{k}=={v}" for k, v in prov["served_with"].items()] == reqs  # the image installs what was proven
    proof = prov["proof"]
    assert proof["artifact_sha256"] == artifact_sha256(root / "model.sav")
    assert proof["rows"] == 257 and proof["labels_equal"] is True
    assert 0 <= proof["max_abs_diff"] <= proof["tolerance"] == 1e-9
    assert proof["reference"] == dict(r.split("==") for r in SKLEARN_024)  # the era caps give the known-good set
    assert contract["input"]["features"] == {f"x{i}": "float" for i in range(4)}
    assert contract["output"]["labels"] == ["0", "1", "2"]
    # the example's expected output is what the model predicted in its own environment
    assert contract["examples"][0]["output"] == {"label": str(expected["labels"][SAMPLE_ROW])}
    print(f"\nlegacy init (build environment + bridge): {seconds:.1f}s")


def test_validate_runs_in_the_build_environment(proven: tuple[Path, dict[str, Any], str, float],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(proven[0])
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "the image serves it with scikit-learn 1.2.2 (Python 3.11), and scikit-learn" in text
    assert "validating in a build environment" in text
    assert "ok model loads and predicts in a build environment with Python 3.11" in text
    assert "scikit-learn 1.2.2" in text and "ok examples[0]" in text and "Version skew" not in text


def test_validate_in_the_build_environment_finds_a_wrong_example(
        proven: tuple[Path, dict[str, Any], str, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, contract = _copy(proven, tmp_path)
    right = contract["examples"][0]["output"]["label"]
    wrong = next(label for label in ("0", "1", "2") if label != right)
    contract["examples"][0]["output"]["label"] = wrong
    _write(root, contract)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1, result.output
    assert f"FAIL examples[0]: output.label: expected '{wrong}', got '{right}'" in " ".join(result.output.split())


def test_deploy_serves_predictions_equal_to_the_original(proven: tuple[Path, dict[str, Any], str, float],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         docker_engine: Any) -> None:
    root, expected, _output, init_s = proven
    contract = yaml.safe_load((root / "mlship.yaml").read_text())
    contract["targets"] = {"local": {"port": free_port()}}
    (root / "mlship.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    monkeypatch.chdir(root)
    start = time.monotonic()
    result = CliRunner().invoke(app, ["deploy", "--target", "local", "--json"])
    try:
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        notes = " ".join(report["build"]["notes"])
        assert "serving scikit-learn 1.2.2, proven to predict the same as 0.24.2" in notes
        # converted to ONNX in a build environment with the proven versions, checked here against them
        assert ("serving the compiled model, converted in a build environment (Python 3.11.2, scikit-learn 1.2.2, "
                "numpy 1.26.4") in notes and "same labels" in notes
        requirements = report["build"]["requirements"]
        assert any(r.startswith("onnxruntime==") for r in requirements)
        assert not any(r.startswith(("scikit-learn", "scipy", "numpy==2")) for r in requirements)
        got = httpx.post(report["url"] + "/predict", json={"instances": expected["rows"]}, timeout=30).json()
        served_s = time.monotonic() - start
        labels = [p["label"] for p in got["predictions"]]
        assert labels == [str(label) for label in expected["labels"]]
        diff = max(abs(p["probabilities"][str(k)] - row[k])
                   for p, row in zip(got["predictions"], expected["probabilities"], strict=True) for k in range(3))
        assert diff <= 1e-5  # the compiled path's tolerance (float32 tree values in onnxruntime's kernel)
        size = docker_engine.images.get(report["image"]).attrs["Size"] / 1e6
        print(f"\nlegacy image {size:.0f} MB; deploy to served prediction {served_s:.1f}s; init to served "
              f"prediction {init_s + served_s:.1f}s")
        assert "Version skew" not in result.output
        # the build kept the compiled model: this machine now serves it too, without scikit-learn 0.24.2 or 1.2.2
        from mlship.serving.predictor import Predictor

        predictor = Predictor(load_project(root))
        predictor.load()
        assert predictor.compiled is not None and predictor.model is None
    finally:
        CliRunner().invoke(app, ["destroy", "--target", "local"])


@contextmanager
def created_buildenvs(engine: Any) -> Iterator[list[str]]:
    """The images of the build-environment containers created while the block runs, from the engine's event
    stream, watched live (the engine keeps only its last events, and other sessions share it)."""
    seen: list[str] = []
    mine = [LABEL, f"{LABEL_OWNER}={owner_label()}"]  # this process's (other sessions share the engine)
    stream = engine.events(decode=True, filters={"type": "container", "label": mine, "event": "create"})

    def pump() -> None:
        try:
            for event in stream:
                seen.append(event["from"])
        except Exception:  # the stream closed under it
            return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        time.sleep(1.0)  # events still on their way
        stream.close()
        thread.join(5)


def _copy(proven: tuple[Path, dict[str, Any], str, float], dest: Path) -> tuple[Path, dict[str, Any]]:
    root = proven[0]
    for name in ("model.sav", "mlship.yaml", "MODEL.md"):
        shutil.copy(root / name, dest / name)
    return dest, yaml.safe_load((dest / "mlship.yaml").read_text())


def proven_served(contract: dict[str, Any]) -> list[str]:
    return list(contract["provenance"]["served_with"])


def _write(dest: Path, contract: dict[str, Any]) -> None:
    (dest / "mlship.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))


def test_the_plan_pins_the_proven_release_without_loading_the_model(
        proven: tuple[Path, dict[str, Any], str, float], tmp_path: Path) -> None:
    root, contract = _copy(proven, tmp_path)
    contract["serve"] = {"compile": "off"}  # the original model (the compiled one: see the deploy test)
    _write(root, contract)
    plan = plan_project(load_project(root), "base:1", dry_run=True)
    notes = " ".join(plan.notes)
    assert "serving scikit-learn 1.2.2, proven to predict the same as 0.24.2 (the version the artifact records) " \
           "on 257 probe rows" in notes
    assert "compiled" not in notes
    assert [r for r in plan.requirements if r.split("==")[0] in proven_served(contract)] == \
        contract["dependencies"]["requirements"]
    assert not any(r.startswith(("numpy==2", "scikit-learn==0.24")) for r in plan.requirements)


def test_serving_on_this_machine_says_how_to_serve_the_proven_versions(
        proven: tuple[Path, dict[str, Any], str, float], tmp_path: Path) -> None:
    from mlship.serving.predictor import Predictor

    root, _contract = _copy(proven, tmp_path)  # no compiled model kept (a build keeps one: see the deploy test)
    with pytest.raises(ArtifactError) as err:
        Predictor(load_project(root)).load()
    assert err.value.message.startswith("model.sav was saved with scikit-learn 0.24.2; mlship.yaml serves it with "
                                        "scikit-learn 1.2.2 (provenance), and the scikit-learn installed here")
    assert "mlship deploy --target local" in (err.value.fix or "") and "'scikit-learn==1.2.2'" in (err.value.fix or "")


def test_a_proof_for_another_file_is_refused_with_the_true_versions(
        proven: tuple[Path, dict[str, Any], str, float], tmp_path: Path) -> None:
    root, contract = _copy(proven, tmp_path)
    contract["provenance"]["proof"]["artifact_sha256"] = "0" * 64
    _write(root, contract)
    with pytest.raises(BuildError) as err:
        plan_project(load_project(root), "base:1", dry_run=True)
    assert ("mlship.yaml serves scikit-learn 1.2.2, but model.sav records scikit-learn 0.24.2, and the proof that "
            "1.2.2 predicts the same was made for another file (sha256 000000000000") in err.value.message
    assert "mlship init" in (err.value.fix or "")


def test_the_skew_guard_names_the_recorded_and_the_proven_version(
        proven: tuple[Path, dict[str, Any], str, float], tmp_path: Path) -> None:
    root, contract = _copy(proven, tmp_path)
    contract["dependencies"]["requirements"][0] = "scikit-learn==1.3.0"
    _write(root, contract)
    with pytest.raises(BuildError) as err:
        plan_project(load_project(root), "base:1", dry_run=True)
    assert err.value.message == ("Version skew: the artifact was saved with scikit-learn 0.24.2 and proven to predict "
                                 "the same with 1.2.2 (provenance in mlship.yaml), but dependencies.requirements asks "
                                 "for scikit-learn==1.3.0.")


def test_another_served_release_needs_a_passing_proof(
        proven: tuple[Path, dict[str, Any], str, float], tmp_path: Path) -> None:
    root, contract = _copy(proven, tmp_path)
    for proof in (None, {**contract["provenance"]["proof"], "max_abs_diff": 0.01}):
        contract["provenance"]["proof"] = proof
        _write(root, contract)
        with pytest.raises(ContractError) as err:
            load_project(root)
        assert "served_with changes scikit-learn from the recorded version without a passing proof" in str(err.value)


def test_keep_versions_serves_the_recorded_versions_in_their_python(docker_engine: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    old_tree_copy(docker_engine, tmp_path, WHEEL_CACHE)
    base_image(docker_engine)
    monkeypatch.chdir(tmp_path)
    with created_buildenvs(docker_engine) as made:
        result = CliRunner().invoke(app, ["init", "model.sav", "--keep-versions"])
    assert result.exit_code == 0, result.output
    assert made == [BULLSEYE]  # one build environment: the recorded versions, no bridge
    text = " ".join(result.output.split())
    assert "--keep-versions: the image runs scikit-learn 0.24.2 in Python 3.9, as saved" in text
    assert "1.2.2" not in text  # the bridge was not tried
    contract = yaml.safe_load((tmp_path / "mlship.yaml").read_text())
    assert contract["dependencies"] == {"python": "3.9", "requirements": SKLEARN_024}
    prov = contract["provenance"]
    assert prov["saved_with"] == {"scikit-learn": "0.24.2"} and "proof" not in prov
    assert prov["served_with"] == dict(r.split("==") for r in SKLEARN_024)


def test_a_canary_pickle_is_refused_before_any_container_starts(docker_engine: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "canary-ran"
    canary_pickle(tmp_path / "model.sav", marker)
    monkeypatch.chdir(tmp_path)
    with created_buildenvs(docker_engine) as made:
        result = CliRunner().invoke(app, ["init", "model.sav"])
    assert result.exit_code == 1, result.output
    err = " ".join(result.stderr.split())
    assert "model.sav refers to posix.system, which can run commands or code when it is loaded" in err
    assert not marker.exists()
    assert made == []  # no build-environment container was made (the watcher sees them: the test above)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.sav"]


def test_the_python_of_a_release_is_read_from_the_index_then_cached(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSHIP_CACHE", str(tmp_path / "cache"))
    assert pyversions.pythons_for("scikit-learn", "0.24.2") == (["3.6", "3.7", "3.8", "3.9"], "index")
    assert pyversions.pythons_for("scikit-learn", "0.24.2") == (["3.6", "3.7", "3.8", "3.9"], "cache")
    assert pyversions.choose_python("scikit-learn", "0.24.2") == (
        "3.9", "its wheels are for CPython 3.6-3.9, read from the package index (cached)")
    assert pyversions.choose_python("scikit-learn", "0.24.2", "3.8") == ("3.8", "given")


def test_offline_the_built_in_table_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSHIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())  # an index that is not there
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    assert pyversions.pythons_for("scikit-learn", "0.24.1") == (["3.6", "3.7", "3.8", "3.9"], "table")
    with pytest.raises(BuildError) as err:
        pyversions.pythons_for("no-such-package-mlship", "1.0")
    assert "--python 3.X" in (err.value.fix or "")
    assert not (tmp_path / "cache" / "python-versions.json").exists()  # a table answer is not cached


def test_era_caps_and_the_bridge_table() -> None:
    assert pyversions.era_requirements("scikit-learn", "0.24.2") == [
        "scikit-learn==0.24.2", "numpy<1.20", "scipy<1.7", "joblib<1.1", "threadpoolctl<2.2"]
    assert pyversions.bridge_for("scikit-learn", "0.24.2") == ("scikit-learn==1.2.2", "numpy<2", "scipy<1.12")
    assert pyversions.bridge_for("scikit-learn", "1.3.0") is None  # read by current releases: served as it is
    assert pyversions.bridge_for("scikit-learn", "1.2.2") is None and pyversions.bridge_for("xgboost", "0.9") is None


def test_without_a_docker_engine_init_says_why_it_needs_one(docker_engine: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    old_tree_copy(docker_engine, tmp_path, WHEEL_CACHE)
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing listens there
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "model.sav"])
    assert result.exit_code == 1, result.output
    err = " ".join(result.stderr.split())
    assert ("error: model.sav was saved with scikit-learn 0.24.2, which has no wheel for Python 3.11: mlship runs it "
            "in a build environment (a Docker container), and cannot reach the Docker engine at tcp://127.0.0.1:9")\
        in err
    assert "Start Docker" in err and "'scikit-learn==1.2.2' 'numpy<2'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.sav"]
