"""The examples and the rows of bench/batch_bench.py: a project per example (trained, `mlship init`, its model
compiled), random rows within each feature's range, Parquet inputs written in 1M-row pieces."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"iris": (REPO / "examples" / "iris-sklearn", "iris.joblib"),
            "forest": (REPO / "examples" / "forest-sklearn", "forest.joblib")}
SLICE = 65_536


def train_module(name: str) -> Any:
    folder, _ = EXAMPLES[name]
    spec = importlib.util.spec_from_file_location(f"train_{name}", folder / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project(name: str, root: Path) -> Path:
    """A project folder for the example, as `mlship init` writes it, with its compiled model kept."""
    from mlship.contract_io import load_project
    from mlship.init import init_project
    from mlship.serving.predictor import Predictor

    folder, model = EXAMPLES[name]
    train_module(name).train(root / "model" / model)
    shutil.copy(folder / "rows.csv", root / "rows.csv")
    init_project(root / "model" / model, directory=root, sample=root / "rows.csv")
    Predictor(load_project(root)).load()  # compiles once, as a deploy does
    return root


def not_compiled(root: Path) -> Path:
    """A copy of the project with ``serve.compile: 'off'``: the fitted model as it is (as for a model whose conversion
    fails), scored through the runtime's own predict."""
    off = root.with_name(f"{root.name}-off")
    shutil.copytree(root, off, ignore=shutil.ignore_patterns(".mlship"))
    with (off / "mlship.yaml").open("a") as fh:
        fh.write("serve:\n  compile: 'off'\n")
    return off


def ranges(name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The features and a range per feature: the example rows' min..max, widened by half its span each side."""
    import pyarrow.csv as pacsv  # type: ignore[import-untyped]

    table = pacsv.read_csv(EXAMPLES[name][0] / "rows.csv")
    features = list(train_module(name).FEATURES)
    low = np.array([min(table.column(f).to_pylist()) for f in features], dtype=float)
    high = np.array([max(table.column(f).to_pylist()) for f in features], dtype=float)
    span = np.maximum(high - low, 1.0)
    return features, low - span / 2, high + span / 2


def matrix(name: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    features, low, high = ranges(name)
    return features, np.random.default_rng(seed).uniform(low, high, (n, len(features)))


def write_rows(name: str, path: Path, n: int) -> None:
    """``n`` rows (id + features) written in 1M-row pieces: memory stays small for 20M rows."""
    features, _ = matrix(name, 1, 0)
    schema = pa.schema([("id", pa.int64())] + [(f, pa.float64()) for f in features])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, 1_000_000):
            k = min(1_000_000, n - start)
            _, x = matrix(name, k, start)
            writer.write_table(pa.table({"id": np.arange(start, start + k), **{f: x[:, j] for j, f in
                                                                              enumerate(features)}}))
