"""The pytorch runtime on tiny Linear(4, 3) models: formats and their safety rules, output handling, threads, and
the CPU-only requirements of images. The torch-digits example end to end: test_runtime_pytorch_digits.py.
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cli_helpers import invoke
from mlship.contract_io import load_project
from mlship.errors import ArtifactError, BuildError
from mlship.runtimes import pytorch as rt
from mlship.serving.predictor import Predictor


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Linear(4, 3) saved in every format the runtime knows, plus files it must refuse."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.zeros(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(root / "scripted.pt"))
        torch.jit.trace(model, x[:1]).save(str(root / "traced.ts"))
        dynamic = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        torch.export.save(dynamic, str(root / "dynamic.pt2"))
        torch.export.save(torch.export.export(model, (torch.zeros(4, 4),)), str(root / "static.pt2"))
    torch.save(model.state_dict(), root / "state.pth")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), root / "module.pt")
    torch.save(model.state_dict(), root / "legacy.pt", _use_new_zipfile_serialization=False)
    (root / "junk.pt").write_bytes(b"not a model")
    return root


def tiny_project(directory: Path, artifact: Path, **changes: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifact, directory / artifact.name)
    data: dict[str, Any] = {"name": "tiny", "runtime": "pytorch", "artifact": artifact.name, "task": "classification",
                            "input": {"tensor": {"shape": [None, 4], "dtype": "float32"}},
                            "output": {"labels": ["a", "b", "c"]}}
    data.update(changes)
    (directory / "mlship.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


# --- formats ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind"), [
    ("scripted.pt", "torchscript"), ("traced.ts", "torchscript"), ("dynamic.pt2", "export"),
    ("static.pt2", "export"), ("state.pth", "torch.save"), ("module.pt", "torch.save"),
    ("legacy.pt", "torch.save"), ("junk.pt", "unknown"),
])
def test_formats_are_told_apart_without_running_code(tiny: Path, name: str, kind: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for module, fn in ((torch, "load"), (torch.jit, "load"), (torch.export, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, fn, lambda *a, **k: pytest.fail("detect_format must not load anything"))
    assert rt.detect_format(tiny / name) == kind
    assert rt.PytorchRuntime.can_load(tiny / name)  # by extension: .pt .pth .pt2 .ts


def test_torchscript_and_export_load_with_their_input_shape(tiny: Path) -> None:
    runtime = rt.PytorchRuntime()
    traced = runtime.load(tiny / "traced.ts")
    assert (traced.format, traced.shape, traced.dtype) == ("torchscript", [None, 4], "float32")
    assert any("TorchScript is deprecated" in w for w in runtime.load_warnings())
    dynamic = runtime.load(tiny / "dynamic.pt2")
    assert (dynamic.format, dynamic.shape, dynamic.dtype, dynamic.fixed_batch) == ("export", [None, 4], "float32",
                                                                                  None)
    info = runtime.inspect(dynamic, tiny / "dynamic.pt2")
    assert info.tensor == {"shape": [None, 4], "dtype": "float32"}
    assert (info.task, info.labels) == ("classification", ["0", "1", "2"])
    assert info.requirements == [f"torch=={rt.public_version(torch.__version__)}"]
    assert "+" not in info.requirements[0]

    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    expected = Tiny()
    expected.load_state_dict(torch.load(tiny / "state.pth", weights_only=True))
    with torch.no_grad():
        want = torch.softmax(expected(torch.from_numpy(x)), 1).numpy()
    for model in (traced, dynamic, runtime.load(tiny / "static.pt2"), runtime.load(tiny / "scripted.pt")):
        runtime.task = "classification"
        out = runtime.predict(model, x, [])
        np.testing.assert_allclose(out.probabilities, want, atol=1e-5)
        assert out.values == list(want.argmax(1))


def test_static_batch_export_is_padded_to_its_size(tiny: Path) -> None:
    runtime = rt.PytorchRuntime()
    model = runtime.load(tiny / "static.pt2")
    assert model.fixed_batch == 4 and model.shape == [None, 4]
    assert "fixed batch size of 4" in " ".join(runtime.inspect(model, tiny / "static.pt2").notes)
    runtime.task = "regression"
    for n in (1, 4, 9):
        assert len(runtime.predict(model, np.ones((n, 4), dtype=np.float32), []).values) == n


def test_scripted_module_without_an_example_asks_for_input_tensor(tiny: Path) -> None:
    runtime = rt.PytorchRuntime()
    model = runtime.load(tiny / "scripted.pt")
    assert model.shape is None
    with pytest.raises(ArtifactError) as info:
        runtime.inspect(model, tiny / "scripted.pt")
    assert "input.tensor" in info.value.message
    assert "tensor: {shape: [null, 8, 8], dtype: float32}" in (info.value.fix or "")


def test_state_dict_without_a_loader_says_how_to_serve_it(tiny: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        rt.PytorchRuntime().load(tiny / "state.pth")
    assert "holds a state_dict (2 entries: linear.weight, linear.bias)" in info.value.message
    assert "load: predict.py:load" in (info.value.fix or "")
    assert "weights_only=True" in (info.value.fix or "")
    with pytest.raises(ArtifactError, match=r"not a TorchScript, torch\.export or torch\.save file"):
        rt.PytorchRuntime().load(tiny / "junk.pt")


def test_pickled_module_is_refused_without_the_opt_in(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        rt.PytorchRuntime().load(tiny / "module.pt")
    err = info.value
    assert "module.pt is a pickled object (torch.nn.modules.container.Sequential" in err.message
    assert "saved with torch.save(model)" in err.message
    assert "runs arbitrary code" in (err.why or "")
    assert "`unsafe_deserialization: true` to mlship.yaml" in (err.fix or "")
    assert "mlship init --unsafe-deserialization" in (err.fix or "")

    root = tiny_project(tmp_path / "refused", tiny / "module.pt")
    result = invoke("validate", "-f", str(root))
    assert result.exit_code == 1
    assert "unsafe_deserialization: true" in " ".join(result.output.split())


def test_pickled_module_loads_with_the_opt_in(tiny: Path, tmp_path: Path) -> None:
    root = tiny_project(tmp_path / "trusted", tiny / "module.pt", unsafe_deserialization=True,
                        examples=[{"input": {"input": [1.0, 2.0, 3.0, 4.0]}}])
    predictor = Predictor(load_project(root))
    predictor.load()
    [out] = predictor.predict(predictor.validator.validate({"input": [1, 2, 3, 4]}).rows)
    assert out["label"] in ("a", "b", "c") and sorted(out["probabilities"]) == ["a", "b", "c"]
    assert abs(sum(out["probabilities"].values()) - 1.0) < 1e-9
    assert invoke("validate", "-f", str(root)).exit_code == 0


# --- outputs, threads, requirements ---------------------------------------------------------------
def test_logits_get_softmax_and_probabilities_pass_through() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    proba = rt._probabilities(logits)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[1], [1 / 3] * 3)
    assert proba[0].argmax() == 0
    given = np.array([[0.2, 0.8], [0.5, 0.5]])
    np.testing.assert_array_equal(rt._probabilities(given), given)
    not_normalised = np.array([[0.2, 0.3]])  # in [0, 1] but not summing to 1: scores, so softmax
    np.testing.assert_allclose(rt._probabilities(not_normalised).sum(), 1.0)
    binary = rt._probabilities(np.array([[0.0], [10.0]]))  # one logit: sigmoid, two classes
    np.testing.assert_allclose(binary[:, 1], [0.5, 1 / (1 + np.exp(-10))])
    np.testing.assert_allclose(rt._probabilities(np.array([0.25]))[0], [0.75, 0.25])


def test_label_count_must_match_the_model(tiny: Path, tmp_path: Path) -> None:
    root = tiny_project(tmp_path / "labels", tiny / "dynamic.pt2", output={"labels": ["a", "b"]})
    predictor = Predictor(load_project(root))
    predictor.load()
    with pytest.raises(Exception, match=r"returns 3 class scores per instance but output\.labels lists 2"):
        predictor.predict(np.zeros((1, 4), dtype=np.float32))


def test_shape_and_dtype_in_the_contract_are_checked_against_the_model(tiny: Path, tmp_path: Path) -> None:
    root = tiny_project(tmp_path / "shape", tiny / "dynamic.pt2",
                        input={"tensor": {"shape": [None, 5], "dtype": "float64"}})
    with pytest.raises(ArtifactError) as info:
        Predictor(load_project(root)).load()
    assert "input.tensor.shape is [null, 5] but the model takes [null, 4]" in info.value.message
    assert "input.tensor.dtype is float64 but the model takes float32" in info.value.message


def test_named_numeric_features_become_one_row_tensor(tiny: Path, tmp_path: Path) -> None:
    features = {"a": "float", "b": "float", "c": "int", "d": "float"}
    root = tiny_project(tmp_path / "tabular", tiny / "dynamic.pt2", input={"features": features})
    predictor = Predictor(load_project(root))
    predictor.load()
    rows = predictor.validator.validate({"a": 1.0, "b": 2.0, "c": 3, "d": 4.0}).rows
    assert predictor.predict(rows)[0]["label"] in ("a", "b", "c")
    for bad, problem in (({"a": "float", "b": "float", "c": "float"}, "not 3 named features"),
                         ({**features, "d": "str"}, "input.features d are strings")):
        tiny_project(root, tiny / "dynamic.pt2", input={"features": bad})
        with pytest.raises(ArtifactError, match=problem):
            Predictor(load_project(root)).load()


def test_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rt.THREADS_ENV, raising=False)
    assert rt.torch_threads() == 1
    monkeypatch.setenv(rt.THREADS_ENV, "3")
    assert rt.torch_threads() == 3
    monkeypatch.setenv(rt.THREADS_ENV, "many")
    with pytest.raises(ArtifactError, match="MLSHIP_TORCH_THREADS='many' is not a positive integer"):
        rt.torch_threads()


INSTALLED = rt.public_version(torch.__version__)


CPU_MIRROR = "http://127.0.0.1:9/torch-cpu/simple"


@pytest.mark.parametrize(("given", "expected"), [
    (["torch==2.4.1"], ["torch==2.4.1+cpu"]),
    ([f"torch>={INSTALLED}", "numpy"], [f"torch=={INSTALLED}+cpu", "numpy"]),
    (["numpy"], [f"torch=={INSTALLED}+cpu", "numpy"]),
    (["torch[opt-einsum]==2.4.1; python_version >= '3.9'", "torchvision==0.19.1"],
     ['torch[opt-einsum]==2.4.1+cpu; python_version >= "3.9"', "torchvision==0.19.1+cpu"]),
])
def test_image_requirements_take_the_cpu_build(given: list[str], expected: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rt.CPU_INDEX_ENV, raising=False)
    reqs, urls, notes = rt.PytorchRuntime.image_requirements(given)
    assert reqs == expected
    assert urls == []  # no index is added unless $MLSHIP_TORCH_INDEX_URL names one
    assert any("CPU build" in n and rt.CPU_INDEX_ENV in n for n in notes)
    monkeypatch.setenv(rt.CPU_INDEX_ENV, CPU_MIRROR)
    assert rt.PytorchRuntime.image_requirements(given)[:2] == (expected, [CPU_MIRROR])


def test_image_requirements_keep_a_chosen_variant_and_refuse_loose_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rt.CPU_INDEX_ENV, "")
    assert rt.PytorchRuntime.image_requirements(["torch==2.4.1+cu124"]) == (["torch==2.4.1+cu124"], [], [])
    assert rt.PytorchRuntime.image_requirements(["torch==2.4.1"])[1] == []  # fallback index disabled
    with pytest.raises(BuildError, match="does not pin one version of torch"):
        rt.PytorchRuntime.image_requirements(["torch<2"])


def test_wheelhouse_tries_the_cpu_index_only_when_the_configured_indexes_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlship.image import wheelhouse

    calls: list[list[str] | None] = []

    def fake(requirements: list[str], python: str, into: Path, index_urls: list[str] | None = None,
             progress: object = None) -> None:
        calls.append(index_urls)
        if not index_urls:
            raise BuildError("No matching distribution found for torch==2.4.1+cpu")
        into.mkdir(parents=True)

    monkeypatch.setenv("MLSHIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wheelhouse, "_pip_download", fake)
    wheelhouse.download(["torch==2.4.1+cpu"], "3.11", tmp_path / "w", [CPU_MIRROR])
    assert calls == [None, [CPU_MIRROR]]
    calls.clear()
    with pytest.raises(BuildError):
        wheelhouse.download(["torch==2.4.2+cpu"], "3.11", tmp_path / "w2")
    assert calls == [None]


def test_a_missing_cpu_wheel_says_where_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlship.image import wheelhouse

    failed = (1, ["ERROR: No matching distribution found for torch==9.9.9+cpu"])
    monkeypatch.setattr(wheelhouse, "_run_pip", lambda *a, **k: failed)
    with pytest.raises(BuildError) as info:
        wheelhouse._pip_download(["torch==9.9.9+cpu"], "3.11", tmp_path / "w")
    assert "No matching distribution found for torch==9.9.9+cpu" in info.value.message
    assert info.value.fix is not None and "set $MLSHIP_TORCH_INDEX_URL to PyTorch's CPU wheel index" in info.value.fix
    with pytest.raises(BuildError) as info:
        wheelhouse._pip_download(["numpy==0.0.1"], "3.11", tmp_path / "w")
    assert info.value.fix is not None and "MLSHIP_TORCH_INDEX_URL" not in info.value.fix
