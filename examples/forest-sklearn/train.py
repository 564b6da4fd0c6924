"""Train the random-forest example from scikit-learn's bundled wine data (no download) into model/forest.joblib.

    python examples/forest-sklearn/train.py [--out model/forest.joblib]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier

HERE = Path(__file__).resolve().parent
#: the data set's 13 measurements, named as identifiers (od280/od315_of_diluted_wines -> od280_od315)
FEATURES = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
            "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280_od315", "proline"]


def train(out: Path) -> Path:
    wine = load_wine()
    x = pd.DataFrame(wine.data, columns=FEATURES)
    y = [f"cultivar_{i}" for i in wine.target]  # string labels: cultivar_0 / cultivar_1 / cultivar_2
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0)
    model.fit(x, y)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out, compress=3)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / "model" / "forest.joblib")
    print(f"wrote {train(parser.parse_args().out)}")
