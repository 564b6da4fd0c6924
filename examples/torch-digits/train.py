"""Train the torch-digits example from scikit-learn's bundled digits (no download), on CPU, in seconds.

    python examples/torch-digits/train.py [--out model/digits.pt]

Writes (the same network three ways)
- model/digits.pt        TorchScript (traced): served with no code; `mlship init` reads its input shape
- model/digits.pt2       a torch.export program: also no code, and the format newer torch releases favour
- model/digits_state.pt  the weights as a state_dict, for the `load: predict.py:load` variant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from net import DigitsNet  # noqa: E402


def data() -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) float32 in 0..16 and labels 0..9."""
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def train(out: Path, epochs: int = 20, seed: int = 0) -> Path:
    """Train, save TorchScript to ``out`` and the state_dict next to it; returns ``out``."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(4, threads))
    try:
        x, y = data()
        order = np.random.default_rng(seed).permutation(len(x))  # a shuffled 80/20 split
        train_idx, test_idx = order[: int(0.8 * len(x))], order[int(0.8 * len(x)):]
        x_train, y_train = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
        x_test, y_test = torch.from_numpy(x[test_idx]), torch.from_numpy(y[test_idx])
        model = DigitsNet()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(seed)
        for _epoch in range(epochs):
            model.train()
            for batch in torch.randperm(len(x_train), generator=generator).split(64):
                optimiser.zero_grad()
                loss_fn(model(x_train[batch]), y_train[batch]).backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
        out.parent.mkdir(parents=True, exist_ok=True)
        # trace with one real image: TorchScript keeps it, so `mlship init` knows the input is (N, 8, 8) float32
        traced = torch.jit.trace(model, x_test[:1])
        traced.save(str(out))
        # a dynamic batch dimension, so the program takes any number of images per request
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (x_test[:2],), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, str(out.with_suffix(".pt2")))
        torch.save(model.state_dict(), out.with_name(out.stem + "_state.pt"))
        print(f"test accuracy {accuracy:.3f} on {len(x_test)} held-out images")
    finally:
        torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / "model" / "digits.pt")
    print(f"wrote {train(parser.parse_args().out)}")
