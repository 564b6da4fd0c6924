"""The torch-digits example's models for the tests that serve them (test_runtime_pytorch_digits.py,
test_compiled_tensor.py): the ``digits_models`` fixture, trained once per session however many modules name it
(``digits_models = torch_digits.digits_models``), as keras_digits.py does for the Keras example."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from conftest import REPO, load_example_module

EXAMPLE = REPO / "examples" / "torch-digits"
_TRAINED: dict[Path, Path] = {}  # the session's base temp folder -> the model folder trained in it


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model/ with digits.pt (TorchScript), digits.pt2 (torch.export) and digits_state.pt, trained once per session
    by examples/torch-digits/train.py."""
    base = tmp_path_factory.getbasetemp()
    if base not in _TRAINED:
        out = tmp_path_factory.mktemp("digits") / "model" / "digits.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
            load_example_module(EXAMPLE / "train.py", "torch_digits_train").train(out)
        _TRAINED[base] = out.parent
    return _TRAINED[base]
