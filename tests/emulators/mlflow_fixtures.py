"""A real MLflow tracking server for the ``models:/`` tests, and the models it holds.

``MlflowServer`` runs ``mlflow server`` as a process of its own (SQLite backend store, a local folder as the
artifact store that the server proxies: clients download over HTTP, as from a team's server), on a free loopback
port; ``start`` waits for ``/health``, ``stop`` ends the process group it started.

``register(url, variants, alias=...)`` trains scikit-learn models on sklearn's bundled iris data and logs each with
``mlflow.sklearn.log_model(..., registered_model_name="iris")`` (the default serialization, skops), in a child
process (MLflow's own warnings stay out of pytest's ``filterwarnings = error``); it returns, per new version, the
model's own predictions on the iris example's rows.csv, which a served deploy must equal.

Run as a script it is that child: ``python mlflow_fixtures.py URL OUT.json VARIANT...``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "iris"
ROWS = Path(__file__).resolve().parents[2] / "examples" / "iris-sklearn" / "rows.csv"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
VARIANTS = ("logreg", "nb", "logreg-c01")  # three models that predict differently on rows.csv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:<free port>, its store and artifacts under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "server.log"

    def start(self, timeout: float = 180.0) -> MlflowServer:
        mlflow = Path(sys.executable).parent / "mlflow"
        cmd = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health in {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def register(url: str, variants: list[str], out: Path, *, alias: str | None = None) -> dict[str, Any]:
    """Log and register one version of ``iris`` per variant (child process); ``{version: predictions}``.
    ``alias`` (e.g. champion) is set on the first new version."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, __file__, url, str(out), *variants], env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"registering {variants} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    versions: dict[str, Any] = json.loads(out.read_text())
    if alias:
        set_alias(url, alias, min(versions, key=int))
    return versions


def set_alias(url: str, alias: str, version: str) -> None:
    """Point ``iris@alias`` at ``version`` through the REST API the MLflow client uses."""
    httpx.post(f"{url}/api/2.0/mlflow/registered-models/alias",
               json={"name": MODEL, "alias": alias, "version": str(version)}, timeout=10).raise_for_status()


def _train(variant: str) -> Any:
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    x = pd.DataFrame(iris.data, columns=FEATURES)
    y = iris.target_names[iris.target]
    model = {"logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
             "nb": GaussianNB,
             "logreg-c01": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000))}
    return model[variant]().fit(x, y)


def _main(url: str, out: str, variants: list[str]) -> None:
    import mlflow
    import mlflow.sklearn
    import pandas as pd

    mlflow.set_tracking_uri(url)
    rows = pd.read_csv(ROWS)[FEATURES]
    versions: dict[str, Any] = {}
    for variant in variants:
        model = _train(variant)
        with mlflow.start_run(run_name=variant):
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=MODEL,
                                            pip_requirements=["scikit-learn"])
        versions[str(info.registered_model_version)] = {
            "variant": variant, "labels": [str(v) for v in model.predict(rows)],
            "probabilities": model.predict_proba(rows).tolist(), "classes": [str(c) for c in model.classes_]}
    Path(out).write_text(json.dumps(versions))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], sys.argv[3:])
