"""Real `mlship deploy --target local` of the models users bring, each made the way users made it (the builders
are the other test files'): a text Pipeline(TfidfVectorizer, LogisticRegression) saved with
``joblib.dump(..., compress=9)`` as model.joblib.gz, a torch net inside a scikit-learn-style wrapper whose package
lies next to the contract, and a Keras 2 SavedModel zipped (made with tf_keras).

Each: `mlship init` (no hand-written contract; only the deploy port is set) -> `mlship deploy --target local`
(a real image and the test gate) -> POST /predict through the deploy's URL answers what the original object
answers in-process -> `mlship destroy`. The Keras 2 image also holds exactly one TensorFlow package.

The images are big (torch, TensorFlow: about 1 GB each): each is built once, and removed when its test ends but
for its dependency stage, which the session's image cleanup removes (test_wrapped_models.py's image has the same
torch lock and builds on its layers). bench/fixtures_bench.py times the same round trips.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import image_cleanup
from conftest import free_port
from mlship.cli import app
from mlship.contract_io import load_project
from test_io_shapes import QUERIES, text_pipeline
from test_keras2 import make_keras2_files
from test_wrapped_models import _forget_netwrap, make_wrapped

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@dataclass
class Deployed:
    """A fixture deployed by `deploy`: the URL, the image, the deploy report and what it took."""

    root: Path
    name: str
    init_args: list[str]
    url: str
    image: str
    report: dict[str, Any]
    started: float  # time.perf_counter() when `mlship init` began
    user_code_lines: int  # lines of the files the written contract's load:/predict: name (0: none needed)
    log: str = ""  # what `mlship deploy` printed (its progress)
    destroyed: bool = field(default=False)

    def predict(self, body: Any) -> tuple[list[dict[str, Any]], float]:
        """POST /predict through the deploy's URL: (predictions, seconds since `mlship init` began)."""
        response = httpx.post(self.url + "/predict", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["predictions"], time.perf_counter() - self.started

    def destroy(self) -> None:
        result = invoke("destroy", "--target", "local", "-f", str(self.root), "--json")
        assert result.exit_code == 0, result.output
        self.destroyed = True
        with pytest.raises(httpx.TransportError):
            httpx.get(self.url + "/healthz", timeout=2)


def _user_code_lines(root: Path) -> int:
    contract = load_project(root).contract
    files = {str(ref).split(":")[0] for ref in (contract.load, contract.predict) if ref}
    return sum(len((root / f).read_text().splitlines()) for f in files)


@contextmanager
def deployed(root: Path, artifact: str, init_args: list[str], engine: Any) -> Iterator[Deployed]:
    """`mlship init <artifact> <init_args>` in ``root``, the local target on a free port, `mlship deploy`; the
    containers and images of the service are removed afterwards, whatever happened (its dependency stage at the
    session's end, so that a later build with the same lock reuses its layers)."""
    name = f"fx-{root.name[:12].lower().replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    try:
        result = invoke("init", str(root / artifact), "--dir", str(root), "--name", name, *init_args)
        assert result.exit_code == 0, result.output
        path = root / "mlship.yaml"
        data = yaml.safe_load(path.read_text())
        data["targets"] = {"local": {"port": free_port()}}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        result = invoke("deploy", "--target", "local", "-f", str(root), "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        yield Deployed(root, name, init_args, report["url"], report["build"]["image"], report, started,
                       _user_code_lines(root), log=result.output)
    finally:
        image_cleanup.remove_service(engine, name)  # its deps stage stays: test_wrapped_models builds the same one


def image_size_mb(engine: Any, image: str) -> float:
    """The image's size as `docker image inspect` reports it."""
    return round(float(engine.api.inspect_image(image)["Size"]) / 1e6, 1)


def installed(engine: Any, image: str) -> dict[str, str]:
    """`pip list` of the image's /opt/venv (run by the base image's pip: the venv has none)."""
    out = engine.containers.run(image, ["-c", "PATH=/usr/local/bin:/usr/bin:/bin python3 -m pip list --format "
                                        "json --path /opt/venv/lib/python3*/site-packages"],
                                entrypoint="/bin/sh", remove=True, user="0")
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out)}


# --- the fixtures, as their users made them -----------------------------------------------------------------
def text_fixture(root: Path) -> tuple[str, list[str], Any, Callable[[list[dict[str, Any]]], None]]:
    """model.joblib.gz: the text pipeline, joblib.dump(compress=9). Returns (artifact, init args, body, check)."""
    root.mkdir(parents=True, exist_ok=True)
    pipe = text_pipeline()
    joblib.dump(pipe, root / "model.joblib.gz", compress=9)
    labels, proba = [str(v) for v in pipe.predict(QUERIES)], pipe.predict_proba(QUERIES)
    classes = [str(c) for c in pipe.classes_]

    def check(predictions: list[dict[str, Any]]) -> None:
        assert [p["label"] for p in predictions] == labels
        got = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
        np.testing.assert_allclose(got, proba, rtol=0, atol=1e-12)

    return "model.joblib.gz", [], {"instances": [{"text": t} for t in QUERIES]}, check


def torch_wrapper_fixture(root: Path) -> tuple[str, list[str], Any, Callable[[list[dict[str, Any]]], None]]:
    """estimator.joblib: a torch net in a scikit-learn-style wrapper, its package netwrap/ beside it."""
    _root, rows, proba = make_wrapped(root)
    labels = ["setosa", "versicolor", "virginica"]

    def check(predictions: list[dict[str, Any]]) -> None:
        assert [p["label"] for p in predictions] == [labels[int(i)] for i in proba.argmax(axis=1)]
        got = np.array([[p["probabilities"][c] for c in labels] for p in predictions])
        np.testing.assert_allclose(got, proba, rtol=0, atol=1e-6)

    body = {"instances": [{f"x{k}": float(v) for k, v in enumerate(row)} for row in rows]}
    # torch pickles tensors through a nested torch.load: the file loads only when you say you trust it
    return "estimator.joblib", ["--unsafe-deserialization"], body, check


def keras2_zip_fixture(root: Path) -> tuple[str, list[str], Any, Callable[[list[dict[str, Any]]], None]]:
    """model.zip: a Keras 2 SavedModel folder made with tf_keras, zipped; the rows as init's sample."""
    files = make_keras2_files(root / "made")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["zip"], root / "model.zip")
    (root / "sample.json").write_text(json.dumps({"instances": files["rows"]}))

    def check(predictions: list[dict[str, Any]]) -> None:
        got = np.array([[p["probabilities"][str(k)] for k in range(3)] for p in predictions])
        np.testing.assert_allclose(got, files["expected"], rtol=0, atol=1e-6)
        assert [p["label"] for p in predictions] == [str(i) for i in files["expected"].argmax(axis=1)]

    return "model.zip", ["--sample", str(root / "sample.json")], {"instances": files["rows"]}, check


FIXTURES = {"text_pipeline": text_fixture, "torch_wrapper": torch_wrapper_fixture, "keras2_zip": keras2_zip_fixture}


# --- the round trips --------------------------------------------------------------------------------------------
@pytest.fixture
def forget_netwrap() -> Iterator[None]:
    _forget_netwrap()
    yield
    _forget_netwrap()


@pytest.mark.parametrize("kind", list(FIXTURES))
def test_init_deploy_predict_destroy(kind: str, tmp_path: Path, docker_engine: Any, base_image_env: str,
                                     forget_netwrap: None) -> None:
    root = tmp_path / kind
    artifact, init_args, body, check = FIXTURES[kind](root)
    with deployed(root, artifact, init_args, docker_engine) as service:
        predictions, seconds = service.predict(body)
        check(predictions)
        assert service.user_code_lines == 0  # no load:/predict: snippet was needed
        packages = installed(docker_engine, service.image)
        if kind == "keras2_zip":  # converted with tf2onnx and served by onnxruntime: no TensorFlow package at all
            # (a native Keras 2 image's one TensorFlow package is tests/test_keras2.py's)
            assert docker_engine.images.get(service.image).labels["dev.mlship.compiled"] == "onnx"
            assert "onnxruntime" in packages and not {"tensorflow", "tensorflow-cpu", "tf-keras"} & set(packages)
        if kind == "torch_wrapper":  # torch's CPU build, no CUDA packages
            assert packages["torch"].endswith("+cpu") and not [p for p in packages if p.startswith("nvidia")]
        print(f"\n{kind}: {image_size_mb(docker_engine, service.image)} MB, first prediction {seconds:.0f}s "
              "after init")
        service.destroy()
