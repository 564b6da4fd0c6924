"""The model half of the tensor peers (FastAPI, BentoML, LitServe): the framework called directly, as a user would.

Loads the file named by $PEER_MODEL once: `.pt` (TorchScript) with `torch.jit.load`, called under
`torch.inference_mode()` with one intra-op thread (the server has one core; mlship's pytorch runtime does the
same), softmax in torch; `.keras` with `keras.saving.load_model`, called through one `tf.function` with a
batch-dynamic input signature (the fast way to call a Keras model per request; `model.predict` costs
milliseconds more per call). `probabilities(x)` takes an (N, 8, 8) float32 array and returns (N, 10) class
probabilities; `answers(x)` adds the label, the same answer shape as mlship's `{"label", "probabilities"}`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class TensorModel:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.environ["PEER_MODEL"]
        if self.path.endswith(".pt"):
            import torch

            torch.set_num_threads(1)
            self.torch = torch
            self.module = torch.jit.load(self.path).eval()
            self.probabilities = self._torch
        else:
            import keras
            import tensorflow as tf

            model = keras.saving.load_model(self.path)
            shape = tuple(model.inputs[0].shape[1:])
            self.fn = tf.function(lambda x: model(x, training=False),
                                  input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
            self.probabilities = self._keras
        self.labels = [str(i) for i in range(10)]

    def _torch(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out: np.ndarray = torch.softmax(self.module(torch.from_numpy(x)), dim=1).numpy()
        return out

    def _keras(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(x))  # the model's last layer is a softmax

    def answers(self, x: np.ndarray) -> list[dict[str, Any]]:
        proba = self.probabilities(x)
        labels = self.labels
        return [{"label": labels[best], "probabilities": dict(zip(labels, row, strict=True))}
                for best, row in zip(proba.argmax(axis=1).tolist(), proba.tolist(), strict=True)]
