"""scikit-learn runtime: joblib / pickle artifacts (compressed joblib included)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mlship.contract import Contract, Task
from mlship.errors import ArtifactError
from mlship.runtimes.base import ArtifactInfo, ModelOutput, Runtime
from mlship.runtimes.sklearn_load import (
    check_trust,
    importable,
    load_skops,
    missing_module_error,
    scan_file,
    unreadable_error,
    unscannable_error,
)


class SklearnRuntime(Runtime):
    """Estimators and pipelines saved with ``joblib.dump``, ``pickle.dump`` or ``skops.io.dump``."""

    name = "sklearn"
    extensions = (".joblib", ".pkl", ".pickle", ".sav", ".skops")

    batchable = True
    framework_packages = ("scikit-learn", "sklearn", "joblib", "scipy", "threadpoolctl", "pandas")

    def __init__(self) -> None:
        self._warnings: list[str] = []
        self.saved_version: str | None = None
        self._array_model: Any = None  # the model that prepare() proved takes arrays as well as DataFrames
        self._array_order: list[int] = []  # contract feature order -> the model's column order
        self._served_with: dict[str, str] = {}  # provenance.served_with: the versions mlship.yaml serves it with

    def configure(self, contract: Contract) -> None:
        super().configure(contract)
        self._served_with = dict(contract.provenance.served_with) if contract.provenance is not None else {}

    def load(self, path: Path) -> Any:
        try:
            import joblib
            import sklearn
        except ImportError as exc:
            raise ArtifactError(
                f"The sklearn runtime needs scikit-learn and joblib: {exc}.",
                fix="pip install scikit-learn joblib (the versions you trained with).",
            ) from None
        if not path.is_file():
            raise ArtifactError(f"Model file not found: {path}.", fix="Train the model or fix `artifact`.")
        skops = path.suffix.lower() == ".skops"
        found = None  # read first, without running anything in the file: loaded only if every name is trusted
        try:
            found = None if skops else scan_file(path)
        except ArtifactError as exc:
            if not self.unsafe_deserialization:
                raise unscannable_error(path, exc) from None
        if found is not None and not self.unsafe_deserialization:
            check_trust(path, found, self.trust)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = (load_skops(path, self.trust, self.unsafe_deserialization) if skops
                         else joblib.load(path))
            except ImportError as exc:  # ModuleNotFoundError included
                raise missing_module_error(path, exc) from None
            except AttributeError as exc:  # e.g. a class defined in the training script's __main__
                raise ArtifactError(
                    f"{path.name} refers to a class or function that cannot be found: {exc}.",
                    why="A pickle stores references to the classes it contains, not their code.",
                    fix="Import or define that class where the model is loaded: add its code next to "
                    "mlship.yaml and load the model from a `load:` function in predict.py.",
                ) from None
            except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, OSError) as exc:
                raise unreadable_error(path, exc, found, sklearn.__version__, self._served_with) from None
        self.saved_version = sklearn.__version__
        for w in caught:
            original = getattr(w.message, "original_sklearn_version", None)
            if original:
                self.saved_version = str(original)
            if issubclass(w.category, UserWarning):
                self._warnings.append(str(w.message).splitlines()[0])
        if found is not None and found.version("scikit-learn"):  # the file's own record beats the warnings
            self.saved_version = found.version("scikit-learn")
        if not hasattr(model, "predict"):
            raise ArtifactError(
                f"{path.name} holds a {type(model).__name__}, which has no predict() method.",
                fix="Save the fitted estimator or pipeline itself, or wrap the object with a "
                "`predict: predict.py:predict` function in mlship.yaml.",
            )
        if getattr(model, "feature_names_in_", None) is not None and not importable("pandas"):
            raise ArtifactError(
                f"{path.name} was fitted on a pandas DataFrame and needs pandas, which is not installed.",
                why="A model fitted with feature names gets its rows as a DataFrame with those column names.",
                fix="Install it: `pip install pandas` (`pip install 'mlship[sklearn]'` includes it).",
            )
        return model

    def saved_versions(self, model: Any) -> dict[str, str]:
        return {"scikit-learn": self.saved_version} if self.saved_version else {}

    def recorded_versions(self, path: Path) -> dict[str, str]:
        """The scikit-learn version the file records, read without loading it ({} when it records none)."""
        from mlship.runtimes.sklearn_load import scan_quietly

        found = scan_quietly(path) if path.suffix.lower() != ".skops" else None
        saved = found.version("scikit-learn") if found is not None else None
        return {"scikit-learn": saved} if saved else {}

    def load_warnings(self) -> list[str]:
        return list(dict.fromkeys(self._warnings))

    def inspect(self, model: Any, path: Path) -> ArtifactInfo:
        from sklearn.base import is_classifier, is_regressor

        from mlship.runtimes.sklearn_text import check_text_input, text_step

        notes: list[str] = []
        names = getattr(model, "feature_names_in_", None)
        vectorizer = text_step(model)
        if vectorizer is not None:
            check_text_input(vectorizer)
            features = {"text": "str"}
            notes.append(f"The model takes raw text (its first step is a {type(vectorizer).__name__}): one "
                         "feature `text`, a string per instance.")
        elif names is not None:
            features = {str(n): "float" for n in names}
        else:
            n = getattr(model, "n_features_in_", None)
            if n is None:
                raise _no_feature_count(model)
            features = {f"x{i}": "float" for i in range(int(n))}
            notes.append(
                "The model was trained without feature names; features are named x0..xN. "
                "Train on a pandas DataFrame to get real names, or rename them in mlship.yaml."
            )
        classes = getattr(model, "classes_", None)
        task: Task
        labels: list[str] | None
        if _is(is_classifier, model) or (classes is not None and not _is(is_regressor, model)):
            task = "classification"
            labels = [str(c) for c in classes] if classes is not None else None
        else:
            task, labels = "regression", None
        reqs = [f"scikit-learn=={self.saved_version}"] if self.saved_version else []
        if names is not None:
            reqs.append(_pin("pandas"))
        return ArtifactInfo(
            task=task,
            features=features,
            labels=labels,
            requirements=reqs,
            framework_version=self.saved_version,
            notes=notes,
        )

    def check(self, model: Any, features: list[str]) -> list[str]:
        from mlship.runtimes.sklearn_text import text_problems, text_step

        if text_step(model) is not None:
            return text_problems(model, features)
        names = getattr(model, "feature_names_in_", None)
        if names is not None:
            expected = [str(n) for n in names]
            if sorted(expected) != sorted(features):
                missing = sorted(set(expected) - set(features))
                unknown = sorted(set(features) - set(expected))
                return [
                    f"input.features must match the model's feature names {expected}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; not in the model {unknown}" if unknown else "")
                ]
            return []
        n = getattr(model, "n_features_in_", None)
        if n is not None and int(n) != len(features):
            return [f"the model takes {int(n)} features but input.features lists {len(features)}"]
        return []

    def prepare(self, model: Any, samples: Any, features: list[str]) -> str | None:
        """Choose the input path: a numpy array, or a pandas DataFrame for a model fitted with feature names.

        Building a DataFrame per call costs more than many models' predictions. For a model fitted with
        feature names, the array path (columns in the model's order) is taken only when it predicts the same
        as the DataFrame path on ``samples`` (classes equal, probabilities and values within 1e-12); a model
        that needs the names (a ColumnTransformer selecting columns by name) keeps its DataFrames.
        """
        names = getattr(model, "feature_names_in_", None)
        self._array_model = None
        if _takes_text(model):
            return "text (a list of strings)"
        if names is None:
            return "numpy"
        try:
            order = [features.index(str(n)) for n in names]
        except ValueError:
            return "dataframe"
        rows = list(samples)
        try:
            for batch in (rows, rows[:1]):
                expected = self._output(model, _frame(model, batch, features))
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_NO_NAMES, category=UserWarning)
                    got = self._output(model, _array(batch, order))
                if not _same(expected, got):
                    return "dataframe"
        except Exception:
            return "dataframe"
        # the model was fitted on a DataFrame and now gets arrays: sklearn warns on every call
        warnings.filterwarnings("ignore", message=_NO_NAMES, category=UserWarning)
        self._array_model, self._array_order = model, order
        return "numpy (checked against pandas)"

    def to_onnx(self, model: Any, features: list[str]) -> tuple[bytes, list[int], str]:
        """skl2onnx conversion (runtimes/sklearn_onnx.py: the input type the model computes with)."""
        from mlship.runtimes.sklearn_onnx import convert

        return convert(model, features, self.saved_version)

    def predict(self, model: Any, rows: list[list[Any]], features: list[str]) -> ModelOutput:
        if model is self._array_model:
            x = _array(rows, self._array_order)
        elif getattr(model, "feature_names_in_", None) is not None:
            x = _frame(model, rows, features)
        elif _takes_text(model):  # a text pipeline: one document per row, not a table
            x = [row[0] for row in rows]
        else:
            x = _array(rows, None)
        return self._output(model, x)

    @staticmethod
    def _output(model: Any, x: Any) -> ModelOutput:
        proba_fn = getattr(model, "predict_proba", None)
        classes = getattr(model, "classes_", None)
        if proba_fn is not None and classes is not None:
            try:
                proba = np.asarray(proba_fn(x))
            except AttributeError:  # e.g. SVC(probability=False) exposes predict_proba but refuses
                proba = None
            if proba is not None:
                known = classes if isinstance(classes, np.ndarray) else np.asarray(list(classes), dtype=object)
                best = proba.argmax(axis=1)
                return ModelOutput(
                    values=known[best].tolist() if known.ndim == 1 and best.ndim == 1  # Python scalars, as JSON has
                    else [classes[i] for i in best],
                    probabilities=proba,
                    classes=list(classes),
                )
        y = np.asarray(model.predict(x))
        if y.ndim == 2 and y.shape[1] == 1:  # one target as a column (PLSRegression, ...): one value per row
            y = y[:, 0]
        return ModelOutput(values=list(y.tolist()))


def _no_feature_count(model: Any) -> ArtifactError:
    """Why the number of input features cannot be read from ``model``: no ``n_features_in_``, on a fitted
    model (a wrapper class that does not set it) or on one that looks unfitted."""
    name = type(model).__name__
    state = vars(model) if hasattr(model, "__dict__") else {}
    fitted = [k for k in state if k.endswith("_") and not k.startswith("_")]
    check = getattr(model, "__sklearn_is_fitted__", None)
    is_fitted = bool(check()) if callable(check) else bool(fitted)
    by_hand = ("write input.features in mlship.yaml by hand, one entry per column in the order the model takes "
               "them (e.g. `input: {features: {x0: float, x1: float}}`)")
    if not is_fitted:
        return ArtifactError(
            f"{name} records no input size: it has no `n_features_in_` and no fitted attributes.",
            why="mlship reads the number of input features from `n_features_in_` (or their names from "
            "`feature_names_in_`), which fit() sets; this object has neither, nor any attribute ending in `_` "
            "(scikit-learn's mark of a fitted estimator), so it looks unfitted.",
            fix=f"Fit the model before saving it; if {name} is fitted but keeps its state elsewhere, set "
            f"`self.n_features_in_ = X.shape[1]` in its fit(), or {by_hand}.")
    hint = ""
    for attr in fitted:  # a torch module inside a wrapper: its first layer's input size
        modules = getattr(state[attr], "modules", None)
        if callable(modules):
            first = next((m for m in modules() if isinstance(getattr(m, "in_features", None), int)), None)
            if first is not None:
                hint = f" (its `{attr}` starts with {type(first).__name__}(in_features={first.in_features}))"
                break
    return ArtifactError(
        f"{name} is fitted but does not record how many input features it takes: it has no `n_features_in_`.",
        why=f"mlship reads the number of input features from `n_features_in_` (or their names from "
        f"`feature_names_in_`), which scikit-learn's estimators set in fit(); {name} has "
        f"{', '.join(fitted[:5])} but not that{hint}.",
        fix=f"Set `self.n_features_in_ = X.shape[1]` in {name}.fit() (and `self.feature_names_in_` for named "
        f"columns) and save the model again, or {by_hand}.")


_NO_NAMES = "X does not have valid feature names"

def _frame(model: Any, rows: list[list[Any]], features: list[str]) -> Any:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=features)
    return frame[[str(n) for n in model.feature_names_in_]]


def _array(rows: list[list[Any]], order: list[int] | None) -> Any:
    try:
        x = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        x = np.asarray(rows, dtype=object)
    if order is not None and order != list(range(len(order))):
        x = x[:, order]
    return x


def _takes_text(model: Any) -> bool:
    from mlship.runtimes.sklearn_text import text_step
    return text_step(model) is not None


def _same(a: ModelOutput, b: ModelOutput) -> bool:
    """Whether two outputs agree: the same classes and values, numbers and probabilities within 1e-12."""
    if (a.probabilities is None) != (b.probabilities is None) or a.classes != b.classes:
        return False
    if a.probabilities is not None:
        pa, pb = np.asarray(a.probabilities, dtype=np.float64), np.asarray(b.probabilities, dtype=np.float64)
        if pa.shape != pb.shape or not np.allclose(pa, pb, rtol=0.0, atol=1e-12, equal_nan=True):
            return False
    if len(a.values) != len(b.values):
        return False
    try:  # numbers (regression, also multi-output): within 1e-12
        va, vb = np.asarray(a.values, dtype=np.float64), np.asarray(b.values, dtype=np.float64)
    except (TypeError, ValueError):  # labels
        return bool(a.values == b.values)
    return va.shape == vb.shape and bool(np.allclose(va, vb, rtol=0.0, atol=1e-12, equal_nan=True))


def _pin(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package}=={version(package)}"
    except PackageNotFoundError:
        return package


def _is(check: Any, model: Any) -> bool:
    """sklearn's is_classifier / is_regressor, False for an object that is not a sklearn estimator (a plain class
    of your own has no ``__sklearn_tags__`` and makes them raise in scikit-learn >= 1.6)."""
    try:
        return bool(check(model))
    except (AttributeError, TypeError):
        return False
