"""The tensor suite of the peer bench: torch-digits and keras-digits, one 8x8 image (float32, 0..16) per instance.

The models are the examples' own (examples/torch-digits/train.py: TorchScript `digits.pt`;
examples/keras-digits/train.py: Keras 3 `digits.keras`), trained once into the temp dir by
bench/tensor_bench.py's make_project, which also converts and checks them as `mlship build` does. The same file is
served by mlship (compiled: onnxruntime; `mlship-native`: serve.compile off, the framework), a FastAPI app calling
the framework directly, BentoML with adaptive batching and LitServe with batching (tensor_servers.py). The
reference is apps/peer_tensor.py, the very code the framework peers run, loaded in this process: its answers are
the expected ones, its calls/s on one core the ceiling and its median time on one instance the latency floor.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import tensor_bench
from inprocess import Call, median_call_ms, point_ceilings
from servers import APPS, Answer, Model, Point, Suite, write_native_contract
from tensor_servers import DEFAULT_TENSOR_PEERS, TENSOR_PEERS

KINDS = {"torch": "digits.pt", "keras": "digits.keras"}
POINTS = [Point(kind, rows, c) for kind in KINDS for rows, c in ((1, 32), (1, 1), (32, 1))]
IMAGES = 1024  # distinct instances the request bodies are cut from: sklearn's digits, 0..16 as ints


def digits() -> list[list[list[int]]]:
    from sklearn.datasets import load_digits

    images: list[list[list[int]]] = load_digits().images[:IMAGES].astype(int).tolist()
    return images


def prepare(tmp: Path, keys: list[str]) -> tuple[dict[str, Model], Reference]:
    images = digits()
    models = {}
    for kind in keys:
        directory = tmp / kind
        tensor_bench.make_project(kind, directory)  # trains, converts and checks; also writes a -native copy
        write_native_contract(directory / "mlship.yaml")  # mlship-native.yaml beside it (serve.compile: off)
        models[kind] = Model(kind, f"{kind}-digits: the example's {KINDS[kind]}", directory / "model" / KINDS[kind],
                             directory / "mlship.yaml", [], images)
    return models, Reference(models)


class Reference:
    """apps/peer_tensor.TensorModel per model, in this process (torch with one intra-op thread, as in the peers)."""

    def __init__(self, models: dict[str, Model]) -> None:
        sys.path.insert(0, str(APPS))
        from peer_tensor import TensorModel

        self.models = models
        self.loaded = {key: TensorModel(str(m.artifact)) for key, m in models.items()}

    def _array(self, batch: list[Any]) -> Any:
        import numpy as np

        return np.asarray(batch, dtype=np.float32)

    def expected(self, key: str, batch: list[Any]) -> Answer:
        answers = self.loaded[key].answers(self._array(batch))
        return Answer([a["label"] for a in answers],
                      [{k: float(v) for k, v in a["probabilities"].items()} for a in answers])

    def call(self, key: str, rows: int) -> Call:
        """The framework's own call (forward + softmax) on a prebuilt float32 array of `rows` instances."""
        return functools.partial(self.loaded[key].probabilities, self._array(self.models[key].rows[:rows]))

    def ceilings(self, seconds: float, windows: int = 1, model: str | None = None) -> dict[str, float]:
        return point_ceilings([p for p in POINTS if p.model in self.models], self.call, seconds, windows, model)

    def latency_ms(self, seconds: float) -> dict[str, float]:
        return {key: median_call_ms(self.call(key, 1), seconds) for key in self.loaded}


SUITE = Suite("tensor", POINTS, TENSOR_PEERS, DEFAULT_TENSOR_PEERS,
              "in-process framework call (1 core)", prepare)
