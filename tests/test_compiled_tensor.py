"""Tensor models on the compiled path (issue 19): keras-digits and torch-digits converted to ONNX at build time,
proven equal on the examples plus seeded probe tensors, served by onnxruntime without TensorFlow or torch (in
process and in the image), a model the converter cannot handle falling back with the reason, and concurrent tensor
requests coalesced into one model call with each request's own answer and own 422.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import keras_digits
import torch_digits
from conftest import TEST_BASE_IMAGE, build_image, metric, running
from image_leftovers import image_leftovers
from mlship import compiled
from mlship.cli import app
from mlship.compiled_tensor import probe_tensors
from mlship.contract_io import load_project
from mlship.serving.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
TORCH_EXAMPLE = REPO / "examples" / "torch-digits"
KERAS_EXAMPLE = REPO / "examples" / "keras-digits"
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def torch_project(directory: Path, model: Path) -> Path:
    """The torch-digits example as it ships (its mlship.yaml), with a freshly trained model."""
    (directory / "model").mkdir(parents=True)
    shutil.copy(model, directory / "model" / "digits.pt")
    for name in ("mlship.yaml", "MODEL.md"):
        shutil.copy(TORCH_EXAMPLE / name, directory / name)
    return directory


def keras_project(directory: Path, model: Path) -> Path:
    """The keras-digits example: the torch example's contract with the tensorflow runtime and the .keras model."""
    (directory / "model").mkdir(parents=True)
    shutil.copy(model, directory / "model" / "digits.keras")
    shutil.copy(KERAS_EXAMPLE / "MODEL.md", directory / "MODEL.md")
    data = yaml.safe_load((TORCH_EXAMPLE / "mlship.yaml").read_text())
    data.update(name="keras-digits", runtime="tensorflow", artifact="model/digits.keras")
    data["dependencies"]["requirements"] = []
    (directory / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def set_compile(directory: Path, mode: str) -> None:
    path = directory / "mlship.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("serve", {})["compile"] = mode
    path.write_text(yaml.safe_dump(data, sort_keys=False))


digits_model = keras_digits.digits_model  # both examples' models, trained once a session by their own train.py
digits_models = torch_digits.digits_models  # (test_runtime_tensorflow.py, test_runtime_pytorch_digits.py use them)


@pytest.fixture(scope="session")
def trained(digits_models: Path, digits_model: Path) -> dict[str, Path]:
    return {"pytorch": digits_models / "digits.pt", "tensorflow": digits_model}


@pytest.fixture(scope="module", params=["pytorch", "tensorflow"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            trained: dict[str, Path]) -> Path:
    make = torch_project if request.param == "pytorch" else keras_project
    return make(tmp_path_factory.mktemp(f"compiled-{request.param}"), trained[request.param])


def inputs(project_dir: Path, n: int = 64) -> Any:
    """The examples plus n tensors from another seed than the probe rows': what both paths are compared on."""
    c = load_project(project_dir).contract
    assert c.input.tensor is not None
    examples = np.asarray([e.input["input"] for e in c.examples], dtype=np.float32)
    rng = np.random.default_rng(7)
    return np.concatenate([examples, rng.uniform(0, 16, (n, 8, 8)).astype(np.float32)])


def test_validate_says_compiled_and_records_the_conversion(project: Path) -> None:
    result = invoke("validate", "-f", str(project / "mlship.yaml"))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("ok compiled:"))
    assert "onnxruntime" in line and "same labels" in line and "probe tensors" in line, line
    assert ("TorchScript exporter" in line) if "torch" in project.name else ("Keras" in line and "tf2onnx" in line)
    record = json.loads((compiled.folder(project) / compiled.RECORD_FILE).read_text())
    assert record["tensor_shape"] == [8, 8] and record["dtype"] == "float32"
    assert record["probe_count"] == 3 + compiled.PROBE_ROWS  # the three examples and 256 generated tensors
    assert record["max_abs_diff"] <= compiled.TOLERANCE
    assert record["scores_kind"] == ("logits" if "torch" in project.name else "probabilities")


def test_compiled_answers_equal_the_framework(project: Path, tmp_path: Path) -> None:
    native_dir = tmp_path / "native"
    shutil.copytree(project, native_dir, ignore=shutil.ignore_patterns(".mlship"))
    set_compile(native_dir, "off")
    fast, slow = Predictor(load_project(project)), Predictor(load_project(native_dir))
    fast.load()
    slow.load()
    assert fast.compiled is not None and slow.compiled is None
    x = inputs(project)
    got, want = fast.predict(x), slow.predict(x)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    worst = max(abs(g["probabilities"][k] - w["probabilities"][k]) for g, w in zip(got, want, strict=True)
                for k in w["probabilities"])
    assert worst <= compiled.TOLERANCE, worst
    assert [g["label"] for g in got[:3]] == ["0", "1", "2"]


def start_imports(project: Path) -> list[Any]:
    """[compiled?, the frameworks imported] of a fresh process that loads the project as the server does."""
    code = ("import sys, json; from pathlib import Path; from mlship.contract_io import load_project; "
            "from mlship.serving.predictor import Predictor; "
            f"p = Predictor(load_project(Path({str(project)!r}))); p.load(); p.warm_up(); "
            f"print(json.dumps([p.compiled is not None, sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_server_start_imports_no_framework(project: Path) -> None:
    # a fresh process, as the server starts in the image `mlship build` made: the kept compiled model is re-checked
    # and served by onnxruntime
    from mlship.image.context import build_compiled

    build_compiled(load_project(project))
    assert start_imports(project) == [True, []]


def test_state_dict_with_a_load_function_is_served_without_it(tmp_path: Path, trained: dict[str, Path]) -> None:
    project = torch_project(tmp_path / "sd", trained["pytorch"])
    shutil.copy(trained["pytorch"].with_name("digits_state.pt"), project / "model" / "digits_state.pt")
    for name in ("predict.py", "net.py"):
        shutil.copy(TORCH_EXAMPLE / name, project / name)
    data = yaml.safe_load((project / "mlship.yaml").read_text())
    data.update(artifact="model/digits_state.pt", load="predict.py:load", build={"include": ["net.py"]})
    (project / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("validate", "-f", str(project / "mlship.yaml"))
    assert result.exit_code == 0 and "ok compiled: onnxruntime" in result.output, result.output
    assert start_imports(project) == [True, []]  # predict.py (which imports torch) is never imported


def test_probe_tensors_are_seeded_and_fit_the_contract(project: Path) -> None:
    tensor = load_project(project).contract.input.tensor
    assert tensor is not None
    a, b = probe_tensors(tensor, np.zeros((1, 8, 8)), 256), probe_tensors(tensor, np.zeros((1, 8, 8)), 256)
    assert a.shape == (256, 8, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() < 0 and a.max() > 16 and (a == 0).mean() > 0.1  # outside the scale, and sparse images too


def test_torch_export_program_converts_through_dynamo(tmp_path: Path, trained: dict[str, Path]) -> None:
    project = torch_project(tmp_path / "pt2", trained["pytorch"])
    shutil.copy(trained["pytorch"].with_suffix(".pt2"), project / "model" / "digits.pt2")
    data = yaml.safe_load((project / "mlship.yaml").read_text())
    data["artifact"] = "model/digits.pt2"
    (project / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("validate", "-f", str(project / "mlship.yaml"))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("ok compiled:"))
    assert "torch.export" in line and "onnxscript" in line, line


def test_traced_module_whose_parameters_require_grad_converts_and_serves(tmp_path: Path) -> None:
    """The way most users save TorchScript: torch.jit.trace of a module as it is, parameters requiring grad."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model = tmp_path / "digits.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.zeros(1, 8, 8))
    assert all(p.requires_grad for p in traced.parameters())
    traced.save(str(model))
    project = torch_project(tmp_path / "traced", model)
    data = yaml.safe_load((project / "mlship.yaml").read_text())
    data["examples"] = []  # an untrained net: the examples' labels would not hold
    (project / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("validate", "-f", str(project / "mlship.yaml"))
    assert result.exit_code == 0, result.output
    assert any(x.startswith("ok compiled:") for x in result.output.splitlines()), result.output
    x = np.random.default_rng(7).uniform(0, 16, (64, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    for mode in ("auto", "off"):  # the compiled model, then the TorchScript module served as it is
        set_compile(project, mode)
        predictor = Predictor(load_project(project))
        predictor.load()
        assert (predictor.compiled is not None) == (mode == "auto")
        got = [[row["probabilities"][str(k)] for k in range(10)] for row in predictor.predict(x)]
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


# -- a model the converter cannot handle ------------------------------------------------------------------
def test_unconvertible_model_falls_back_with_the_reason(tmp_path: Path, trained: dict[str, Path]) -> None:
    import torch

    class Spectrum(torch.nn.Module):  # aten::fft_fft has no ONNX export in the TorchScript exporter
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real.reshape(x.shape[0], -1)[:, :10]

    project = torch_project(tmp_path / "fft", trained["pytorch"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(Spectrum(), torch.zeros(2, 8, 8)).save(str(project / "model" / "digits.pt"))
    data = yaml.safe_load((project / "mlship.yaml").read_text())
    data["examples"] = []
    (project / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = invoke("validate", "-f", str(project / "mlship.yaml"))
    assert result.exit_code == 0, result.output
    assert "compiled path not used" in result.output and "aten::fft_fft" in result.output, result.output
    assert "serving the pytorch model as it is" in result.output
    set_compile(project, "onnx")
    result = invoke("validate", "-f", str(project / "mlship.yaml"))
    assert result.exit_code != 0 and "serve.compile is onnx" in result.output and "fft_fft" in result.output


# -- micro-batching of tensor requests ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_concurrent_requests_get_their_own_answers_and_422(project: Path, tmp_path: Path, mode: str) -> None:
    served = tmp_path / "served"
    shutil.copytree(project, served)
    set_compile(served, mode)
    x = inputs(project, 40)
    bodies: list[Any] = [{"instances": x[i:i + 1 + i % 3].tolist()} for i in range(0, 40, 2)]
    bad = {"instances": [np.zeros((8, 7)).tolist()]}  # one row short: this request's own 422
    with running(served) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        alone = [client.post("/predict", json=b).json() for b in bodies]  # one at a time
        calls_before = metric(client, "mlship_model_batch_rows_count")
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client.post, "/predict", json=b) for b in [*bodies, bad, *bodies]]
            answers = [f.result(timeout=60) for f in futures]
        calls = metric(client, "mlship_model_batch_rows_count") - calls_before
    assert answers[len(bodies)].status_code == 422
    assert "loc" in json.dumps(answers[len(bodies)].json())
    good = [a for i, a in enumerate(answers) if i != len(bodies)]
    assert all(a.status_code == 200 for a in good)
    for want, got in zip(alone * 2, [a.json() for a in good], strict=True):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        for p, q in zip(got["predictions"], want["predictions"], strict=True):
            assert max(abs(p["probabilities"][k] - q["probabilities"][k]) for k in q["probabilities"]) <= 1e-5
    assert calls < 2 * len(bodies), f"{calls} model calls for {2 * len(bodies)} requests: nothing was coalesced"


# -- the image: no framework, answers through HTTP ------------------------------------------------------------
def test_compiled_image_has_no_framework_and_answers(project: Path, docker_engine: Any) -> None:
    tag = build_image(load_project(project))
    image = docker_engine.images.get(tag)
    assert image.labels["dev.mlship.compiled"] == "onnx"
    # the image's package list: the installed distributions' metadata folders (the image has no pip)
    listing = docker_engine.containers.run(tag, entrypoint=["sh", "-c", "ls /opt/venv/lib/python3*/site-packages"],
                                           remove=True).decode().split()
    packages = {n.removesuffix(".dist-info").rsplit("-", 1)[0].lower().replace("_", "-")
                for n in listing if n.endswith(".dist-info")}
    assert not {"torch", "tensorflow", "keras", "tf_keras"} & set(listing), listing  # nor their import folders
    assert "onnxruntime" in packages and "numpy" in packages and "pillow" in packages, packages
    assert not packages & {"torch", "tensorflow", "tensorflow-cpu", "keras", "tf-keras", "tf2onnx"}, packages
    # what the server never imports is gone, the rest carries no debug information (image/rules.py); and Pillow
    # without its other codecs still decodes what input.tensor.image accepts: an RGB PNG at twice the size of the
    # first example, converted to grey and resized in the image, is that example's digit
    c = load_project(project).contract
    digit = np.kron(np.asarray(c.examples[0].input["input"]) * 255 / 16, np.ones((2, 2)))
    buf = io.BytesIO()
    Image.fromarray(np.stack([digit] * 3, axis=-1).round().astype(np.uint8), "RGB").save(buf, "PNG")
    png = ("\nfrom pathlib import Path\nfrom mlship.contract_io import load_project\n"
           "from mlship.serving.predictor import Predictor\nfrom mlship.serving.validation import make_validator\n"
           "p = load_project(Path('/app/mlship.yaml'))\nm = Predictor(p)\nm.load()\n"
           "rows = make_validator(p.contract.input, 8).validate(json.loads(sys.argv[2])).rows\n"
           "print(json.dumps([m.compiled is not None, m.predict(rows)[0]['label']]))\n")
    body = json.dumps({"input": {"b64": base64.b64encode(buf.getvalue()).decode()}})
    left, decoded = image_leftovers(docker_engine, tag, png, body)
    assert left == {"pruned_but_present": [], "unstripped": [], "kept": ["PIL", "numpy", "onnxruntime", "uvloop"]}, left
    assert json.loads(decoded) == [True, "0"], decoded
    result = invoke("test", "--json", "-f", str(project / "mlship.yaml"), "--image", tag)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and [e["got"]["label"] for e in report["examples"]] == ["0", "1", "2"]
    print(f"\n{project.name} compiled image {tag}: {image.attrs['Size'] / 1e6:.1f} MB, ready {report['ready_s']} s, "
          f"first prediction {report['first_prediction_s']} s (base {TEST_BASE_IMAGE})")
