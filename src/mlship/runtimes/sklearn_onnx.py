"""scikit-learn -> ONNX with skl2onnx: one input (the model's columns), no ZipMap (plain arrays out).

The input type follows what the model itself computes with. A decision tree, a forest or gradient boosting casts
its input to float32 before comparing it with its thresholds, so it is converted with a float32 input first: the
ONNX model then takes the same branches as scikit-learn for every row (with a float64 input, a value within float32
rounding of a threshold takes the other branch: on 1 M random rows of the forest example, probabilities up to 0.01
away from ``predict_proba``). Everything else gets float64 first (the same numbers the original model gets), and
float32 where a converter or onnxruntime supports only that; the parity check decides.
"""

from __future__ import annotations

import warnings
from typing import Any

from mlship.compiled import NotCompiled, Unavailable, loading_problem

#: scikit-learn's base classes of the estimators that cast their input to float32 (the trees' DTYPE), in every
#: version's module layout (legacy/probe_script.py, standalone, keeps the same list)
FLOAT32_BASES = frozenset({"BaseDecisionTree", "BaseForest", "BaseGradientBoosting", "IsolationForest"})


def compares_float32(model: Any) -> bool:
    """True for a decision tree, a forest (incl. extra trees and isolation forests) or gradient boosting, used
    directly (not inside a pipeline, whose earlier steps compute in float64)."""
    return any(c.__name__ in FLOAT32_BASES and c.__module__.startswith("sklearn.") for c in type(model).__mro__)


def convert(model: Any, features: list[str], saved_version: str | None) -> tuple[bytes, list[int], str]:
    """(ONNX bytes, the model's columns as positions in ``features``, the converter's name and version)."""
    try:
        import skl2onnx
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    except ImportError:
        raise Unavailable("skl2onnx is not installed (pip install 'mlship[sklearn]' installs it)") from None
    import sklearn

    if saved_version and saved_version != sklearn.__version__:
        raise NotCompiled(f"the artifact was saved with scikit-learn {saved_version} and "
                          f"{sklearn.__version__} is installed here; converting needs the version that wrote it")
    names = getattr(model, "feature_names_in_", None)
    try:
        columns = [features.index(str(n)) for n in names] if names is not None else list(range(len(features)))
    except ValueError:
        raise NotCompiled("the model's feature names differ from input.features") from None
    order = (FloatTensorType, DoubleTensorType) if compares_float32(model) else (DoubleTensorType, FloatTensorType)
    failures = []
    for tensor_type in order:
        types = [("input", tensor_type([None, len(columns)]))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:  # probabilities as one array, not a list of dicts (ZipMap)
                    onx = skl2onnx.to_onnx(model, initial_types=types, options={"zipmap": False})
                except NameError as exc:  # a converter without the option (regressors, LinearSVC)
                    if "zipmap" not in str(exc):
                        raise
                    onx = skl2onnx.to_onnx(model, initial_types=types)
        except Exception as exc:  # skl2onnx raises many types (RuntimeError, MissingShapeCalculator, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            failures.append(f"skl2onnx cannot convert {type(model).__name__}: {exc.__class__.__name__}"
                            + (f": {first[:200]}" if first else ""))
            continue
        data = onx.SerializeToString()
        problem = loading_problem(data)
        if problem is None:
            return data, columns, f"skl2onnx {skl2onnx.__version__}"
        failures.append(problem)
    raise NotCompiled(failures[0])
