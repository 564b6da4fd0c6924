"""mlship's build-environment probe: load a scikit-learn pickle with the versions installed where it runs, and
write what the model is and what it predicts on the given rows, as JSON.

Standalone: runs on Python 3.6 and later, imports nothing from mlship (the build environment has only the
model's own libraries). It runs only files mlship has read and trusted first (mlship.runtimes.sklearn_load).

    python probe_script.py MODEL ROWS.json OUT.json [ONNX_DIR]

With ONNX_DIR (skl2onnx installed), the model is also converted for mlship's compiled path: model-double.onnx
(float64 input) and model-float.onnx (float32: first for trees, forests and gradient boosting, which compare float32
features in scikit-learn; else for converters and onnxruntime kernels that support only that), probabilities as one
array (no ZipMap); mlship checks them on its side, in the order the output lists them.
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


#: estimators that cast their input to float32 (scikit-learn's tree DTYPE): their float32 conversion is tried first,
#: it takes the same branches as scikit-learn (mlship/runtimes/sklearn_onnx.py keeps the same list)
FLOAT32_BASES = frozenset({"BaseDecisionTree", "BaseForest", "BaseGradientBoosting", "IsolationForest"})


def convert(model_path: str, n_features: int, folder: str) -> dict[str, Any]:
    """Write the ONNX conversions that work into ``folder``; their names (in the order mlship tries them), the
    converter and the failures."""
    import joblib
    import skl2onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = joblib.load(model_path)
        made, errors = [], []
        kinds = [("double", DoubleTensorType), ("float", FloatTensorType)]
        if any(c.__name__ in FLOAT32_BASES and c.__module__.startswith("sklearn.") for c in type(model).__mro__):
            kinds.reverse()
        for name, kind in kinds:
            types = [("input", kind([None, n_features]))]
            try:
                try:
                    onx = skl2onnx.to_onnx(model, initial_types=types, options={"zipmap": False})
                except NameError as exc:  # a converter without the option (regressors)
                    if "zipmap" not in str(exc):
                        raise
                    onx = skl2onnx.to_onnx(model, initial_types=types)
            except Exception as exc:
                errors.append(name + ": " + exc.__class__.__name__ + ": " + (str(exc).strip().splitlines() or [""])[0])
                continue
            with open(folder + "/model-" + name + ".onnx", "wb") as fh:
                fh.write(onx.SerializeToString())
            made.append(name)
    return {"onnx": made, "onnx_errors": errors, "converter": "skl2onnx " + str(skl2onnx.__version__)}


def main(argv: list[str]) -> int:
    model_path, rows_path, out_path = argv[1:4]
    result: dict[str, Any] = {"python": platform.python_version()}
    try:
        with open(rows_path, encoding="utf-8") as fh:
            rows = json.load(fh)
        result["versions"] = _versions()
        result.update(probe(model_path, rows))
        result["ok"] = True
        if len(argv) > 4:
            try:
                result.update(convert(model_path, len(rows[0]), argv[4]))
            except Exception as exc:  # the model still ran: mlship serves it without the compiled path
                result["onnx_errors"] = [exc.__class__.__name__ + ": " + (str(exc).strip().splitlines() or [""])[0]]
    except Exception as exc:  # reported to mlship, which names the cause
        result["ok"] = False
        result["error"] = exc.__class__.__name__ + ": " + (str(exc).strip().splitlines() or [""])[0][:500]
        result["traceback"] = traceback.format_exc()[-2000:]
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
