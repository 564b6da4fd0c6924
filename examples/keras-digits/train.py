"""Train the keras-digits example from scikit-learn's bundled 8x8 digits (no download) into
model/digits.keras: a small CNN, on CPU, in a few seconds.

    python examples/keras-digits/train.py [--out model/digits.keras]

The model takes the raw 8x8 pixel values (0..16, as in sklearn's data) and rescales them itself, so
the contract's input is `tensor: {shape: [null, 8, 8], dtype: float32}`; with
`image: {channels: 1, scale: [0, 16]}` it also accepts PNGs of digits (white on black).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = Path(__file__).resolve().parent


def build_model() -> object:
    import keras

    return keras.Sequential([
        keras.Input((8, 8), name="pixels"),
        keras.layers.Rescaling(1.0 / 16.0),
        keras.layers.Reshape((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits")


def train(out: Path, epochs: int = 20) -> Path:
    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images.astype("float32"), digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)  # type: ignore[attr-defined]
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)  # type: ignore[attr-defined]
    print(f"held-out accuracy: {accuracy:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)  # type: ignore[attr-defined]
    return out


def write_sample(out: Path, rows: int = 2) -> Path:
    """Digits 1500.. of sklearn's data as a batch request body: {"instances": [8x8 nested lists]}."""
    from sklearn.datasets import load_digits

    images = load_digits().images[1500:1500 + rows].astype(int).tolist()
    body = ",\n".join("  [" + ",\n   ".join(json.dumps(row) for row in image) + "]" for image in images)
    out.write_text('{"instances": [\n' + body + "\n]}\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / "model" / "digits.keras")
    print(f"wrote {train(parser.parse_args().out)}")
    print(f"wrote {write_sample(HERE / 'sample.json')}")
