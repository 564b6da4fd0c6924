"""Model files made the way users made them years ago: with an old Python and an old library, inside a container
of that era (Debian bullseye, Python 3.9: `scripts/make-base-image mlship-test-base:bullseye bullseye`), from a
host-side wheelhouse (the container has no network). Nothing here runs the files on the host."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BULLSEYE = "mlship-test-base:bullseye"  # Python 3.9.2
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
# scikit-learn 0.24 with the numpy/scipy/joblib of its time (April 2021)
SKLEARN_024 = ["scikit-learn==0.24.2", "numpy==1.19.5", "scipy==1.6.3", "joblib==1.0.1", "threadpoolctl==2.1.0"]

TRAIN_TREE = textwrap.dedent("""
    import json, pickle, sys
    import sklearn
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y)
    with open(sys.argv[1], "wb") as fh:
        pickle.dump(model, fh)                      # plain pickle, as many tutorials of the time did
    rows = X[::10].tolist()
    json.dump({"sklearn": sklearn.__version__, "python": sys.version.split()[0], "rows": rows,
               "labels": model.predict(X[::10]).tolist(), "probabilities": model.predict_proba(X[::10]).tolist()},
              open(sys.argv[2], "w"))
""")


def base_image(engine: Any) -> str:
    """The bullseye base image, made once (about a minute) when missing."""
    from docker.errors import ImageNotFound

    try:
        engine.images.get(BULLSEYE)
    except ImageNotFound:
        subprocess.run(["bash", str(REPO / "scripts" / "make-base-image"), BULLSEYE, "bullseye"], check=True,
                       timeout=900)
    return BULLSEYE


def wheelhouse(cache: Path, requirements: list[str], python: str = "3.9") -> Path:
    """cp39 linux wheels for ``requirements``, downloaded on the host once (cached)."""
    dest = cache / "legacy-wheels" / "-".join(r.replace("==", "") for r in requirements)
    if (dest / ".complete").is_file():
        return dest
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", ""),
           "--dest", str(dest), *(arg for p in PLATFORMS for arg in ("--platform", p)), *requirements]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    (dest / ".complete").write_text("ok")
    return dest


def old_sklearn_tree(engine: Any, out: Path, cache: Path) -> tuple[Path, dict[str, Any]]:
    """``out/model.sav``: a DecisionTreeClassifier pickled by scikit-learn 0.24.2 on Python 3.9, and what that
    model predicted there (rows, labels, probabilities)."""
    image = base_image(engine)
    wheels = wheelhouse(cache, SKLEARN_024)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.py").write_text(TRAIN_TREE)
    script = ("python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q --no-index --find-links /wheels "
              f"{' '.join(SKLEARN_024)} && /tmp/venv/bin/python /work/train.py /work/model.sav /work/expected.json")
    container = engine.containers.run(image, ["sh", "-c", script], detach=True, network_mode="none",
                                      volumes={str(wheels): {"bind": "/wheels", "mode": "ro"},
                                               str(out): {"bind": "/work", "mode": "rw"}})
    try:
        status = container.wait(timeout=600)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 0, logs
    (out / "train.py").unlink()
    expected = json.loads((out / "expected.json").read_text())
    (out / "expected.json").unlink()
    return out / "model.sav", expected


_MADE: dict[str, tuple[bytes, dict[str, Any]]] = {}  # one fixture file per test session, copied to each caller


def old_tree_copy(engine: Any, out: Path, cache: Path) -> tuple[Path, dict[str, Any]]:
    """:func:`old_sklearn_tree`, made once per session (the container takes half a minute): a copy in ``out``."""
    if "tree" not in _MADE:
        path, expected = old_sklearn_tree(engine, out, cache)
        _MADE["tree"] = (path.read_bytes(), expected)
        return path, expected
    data, expected = _MADE["tree"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.sav").write_bytes(data)
    return out / "model.sav", json.loads(json.dumps(expected))


def canary_pickle(path: Path, marker: Path) -> Path:
    """A pickle that records scikit-learn 0.24.2 (a DecisionTreeClassifier's state, as such a file has) and whose
    state holds an object that runs ``touch marker`` (os.system) when it is loaded. Written on the host with
    pickle.dumps of classes whose __reduce__ names those callables; nothing here loads it."""
    import os
    import pickle

    from sklearn.tree import DecisionTreeClassifier

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return os.system, (f"touch {marker}",)

    class OldTree:
        def __reduce__(self) -> tuple[Any, ...]:
            return DecisionTreeClassifier, (), {"_sklearn_version": "0.24.2", "n_features_in_": 4,
                                                "classes_": [0, 1], "payload": Boom()}

    path.write_bytes(pickle.dumps(OldTree(), protocol=4))
    return path
