"""mlship's build-environment probe: load a scikit-learn pickle with the versions installed where it runs, and
write what the model is and what it predicts on the given rows, as JSON.

Standalone: runs on Python 3.6 and later, imports nothing from mlship (the build environment has only the
model's own libraries). It runs only files mlship has read and trusted first (mlship.runtimes.sklearn_load).

    python probe_script.py MODEL ROWS.json OUT.json
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import traceback
import warnings
from typing import Any

PACKAGES = ("scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl", "pandas")


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        module = {"scikit-learn": "sklearn"}.get(name, name)
        try:
            found[name] = str(__import__(module).__version__)
        except ImportError:
            continue
    return found


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def probe(model_path: str, rows: list[list[float]]) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import joblib
        import numpy

        model = joblib.load(model_path)
        out: dict[str, Any] = {"class": type(model).__module__ + "." + type(model).__name__}
        out["estimator_type"] = getattr(model, "_estimator_type", None)
        n = getattr(model, "n_features_in_", None)
        out["n_features_in"] = int(n) if n is not None else None
        names = getattr(model, "feature_names_in_", None)
        out["feature_names_in"] = [str(f) for f in names] if names is not None else None
        classes = getattr(model, "classes_", None)
        out["classes"] = _plain(classes) if classes is not None else None
        x = numpy.asarray(rows, dtype=numpy.float64)
        out["predictions"] = _plain(numpy.asarray(model.predict(x)))
        out["probabilities"] = None
        if classes is not None and hasattr(model, "predict_proba"):
            with contextlib.suppress(AttributeError):  # e.g. SVC(probability=False) refuses
                out["probabilities"] = _plain(numpy.asarray(model.predict_proba(x), dtype=numpy.float64))
    out["warnings"] = sorted({str(w.message).splitlines()[0][:300] for w in caught})
    return out


def main(argv: list[str]) -> int:
    model_path, rows_path, out_path = argv[1:4]
    result: dict[str, Any] = {"python": platform.python_version()}
    try:
        with open(rows_path, encoding="utf-8") as fh:
            rows = json.load(fh)
        result["versions"] = _versions()
        result.update(probe(model_path, rows))
        result["ok"] = True
    except Exception as exc:  # reported to mlship, which names the cause
        result["ok"] = False
        result["error"] = exc.__class__.__name__ + ": " + (str(exc).strip().splitlines() or [""])[0][:500]
        result["traceback"] = traceback.format_exc()[-2000:]
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
