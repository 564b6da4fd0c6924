"""``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``: the MLflow Model Registry, read with MLflow's own client.

The tracking server is ``$MLFLOW_TRACKING_URI`` (the registry ``$MLFLOW_REGISTRY_URI`` when set); credentials are
MLflow's own (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, a Databricks profile).
An alias (or ``latest``) is resolved to a version when the project is built: the pinned form is
``models:/NAME/<n>``, so a build reads exactly the version it resolved.

A registered version holds an MLflow model folder (``MLmodel`` + the saved model). mlship serves the one file a
runtime reads: for the ``sklearn`` flavor the file the MLmodel names (``model.skops``, or ``model.pkl`` for
pickle/cloudpickle); for ``keras``/``tensorflow``/``pytorch`` the single ``.keras``/``.h5``/``.pt``/``.pth`` file in
the flavor's data folder. Other flavors (pyfunc-only, xgboost, transformers, ...) are an error that says so.

Preflight (:meth:`MlflowFetcher.checks`) asks the server's REST API directly (no MLflow import, well inside the
preflight deadline). The registry round trip (listing, deployment tags) is in :mod:`mlship.artifacts.mlflow_registry`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from mlship.artifacts.base import Fetcher, Resolved
from mlship.errors import ArtifactError
from mlship.reports import Check

SERVABLE = (".skops", ".pkl", ".joblib", ".keras", ".h5", ".pt", ".pth", ".pt2")
_SERVED_FLAVORS = ("sklearn", "keras", "tensorflow", "pytorch")
_FIX_FLAVOR = ("Log the model with mlflow.sklearn.log_model (or save a .keras / TorchScript .pt file), or point "
               "`artifact:` at a model file mlship serves (.joblib, .pkl, .skops, .keras, .h5, .pt).")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: the registered model and one of version, alias or ``latest``."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def pinned(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse(uri: str) -> ModelRef:
    """``models:/iris/3``, ``models:/iris@champion`` or ``models:/iris/latest``; anything else is an error."""
    rest = uri[len("models:/"):] if uri.startswith("models:/") else ""
    rest = rest.lstrip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if name and alias and "/" not in alias:
            return ModelRef(name=name, alias=alias)
    elif "/" in rest:
        name, _, version = rest.rpartition("/")
        if name and (version.isdigit() or version == "latest"):
            return ModelRef(name=name, version=version if version.isdigit() else None,
                            alias="latest" if version == "latest" else None)
        if name and version:
            raise ArtifactError(
                f"{uri}: `{version}` is not a version number or an alias.",
                why="Model Registry stages (Staging, Production) are deprecated in MLflow; mlship reads a version "
                "(models:/NAME/3), an alias (models:/NAME@champion) or models:/NAME/latest.",
                fix=f"Set an alias on the version you mean and write models:/{name}@ALIAS.")
    raise ArtifactError(f"{uri} is not a Model Registry URI mlship reads.",
                        why="A registered model needs a version or an alias.",
                        fix="Write models:/NAME/VERSION (models:/iris/3) or models:/NAME@ALIAS "
                        "(models:/iris@champion).")


def tracking_uri() -> str:
    """``$MLFLOW_REGISTRY_URI`` or ``$MLFLOW_TRACKING_URI``; unset is an error (MLflow would use a local file)."""
    uri = os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ArtifactError(
            "No MLflow tracking server is configured: MLFLOW_TRACKING_URI is not set.",
            why="models:/ artifacts are read from the MLflow Model Registry of the server MLflow's client is "
            "pointed at; without it MLflow would create an empty local store.",
            fix="export MLFLOW_TRACKING_URI=http://your-mlflow-server:5000 (and MLFLOW_TRACKING_TOKEN or "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD if it needs credentials).")
    return uri


def _probe(uri: str) -> None:
    """For an http(s) server: a TCP connect (3 s) first, so an unreachable server fails at once, not after
    MLflow's client has retried for minutes."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=3).close()
    except OSError as exc:
        raise ArtifactError(
            f"The MLflow tracking server {uri} does not answer ({exc.strerror or exc}).",
            why="models:/ artifacts are resolved and downloaded through the tracking server.",
            fix="Start the server or fix MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI if set); check the "
            "network or VPN to it.") from None


def client() -> Any:
    """MLflow's client for the configured tracking server and registry."""
    uri = tracking_uri()
    _probe(uri)
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ArtifactError(f"models:/ artifacts need MLflow's client, which is not installed ({exc}).",
                            fix="pip install 'mlship[mlflow]'") from None
    return MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or uri,
                        registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def registry_error(uri: str, exc: Exception, ref: ModelRef, mlflow: Any = None,
                   code: str | None = None) -> ArtifactError:
    """What went wrong asking the registry for ``ref``: credentials, no such model/version/alias, or else."""
    code = code or str(getattr(exc, "error_code", ""))
    server = os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "401" in str(exc) or "403" in str(exc):
        return ArtifactError(
            f"Cannot read {uri}: the MLflow server {server} refused ({code or exc}).",
            why="The credentials MLflow's client sends may not read this registered model.",
            fix="Set MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) for a user "
            f"with READ permission on the registered model `{ref.name}`.")
    if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
        held = _held(mlflow, ref.name) if mlflow is not None else "The registry holds no such version or alias."
        what = f"alias `{ref.alias}`" if ref.alias else f"version {ref.version}" if ref.version else None
        return ArtifactError(
            f"{uri}: the registry at {server} has no {what} of the model `{ref.name}`." if what else
            f"{uri}: the registry at {server} has no registered model `{ref.name}`.",
            why=held or f"No registered model is named `{ref.name}` there.",
            fix="Use one of the versions or aliases it holds (`mlship models` lists them), or register the model "
            "(mlflow.register_model / log_model(..., registered_model_name=...)).")
    return ArtifactError(f"Cannot read {uri} from the MLflow server {server}: {exc}.",
                         fix="Check MLFLOW_TRACKING_URI and that the server is healthy (GET /health).")


def _held(mlflow: Any, name: str) -> str | None:
    """'It holds versions 1, 2; aliases champion -> 2' for the errors, or None when the model does not exist."""
    try:
        model = mlflow.get_registered_model(name)
        versions = sorted(int(v.version) for v in mlflow.search_model_versions(f"name='{name}'"))
    except Exception:
        return None
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    return f"`{name}` holds versions {', '.join(map(str, versions)) or 'none'}; aliases: {aliases}."


def rest_version(uri: str, ref: ModelRef, server: str) -> str:
    """The version ``ref`` names now, asked of the server's REST API with MLflow's credential variables
    (MLFLOW_TRACKING_TOKEN, _USERNAME/_PASSWORD, _INSECURE_TLS, _SERVER_CERT_PATH); ArtifactError otherwise."""
    import httpx

    if ref.alias == "latest":
        path, params = "registered-models/get", {"name": ref.name}
    elif ref.alias:
        path, params = "registered-models/alias", {"name": ref.name, "alias": ref.alias}
    else:
        path, params = "model-versions/get", {"name": ref.name, "version": str(ref.version)}
    env = os.environ
    token, user = env.get("MLFLOW_TRACKING_TOKEN"), env.get("MLFLOW_TRACKING_USERNAME")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    auth = (user, env.get("MLFLOW_TRACKING_PASSWORD", "")) if user and not token else None
    verify: bool | str = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or (
        env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() not in ("true", "1"))
    try:
        answer = httpx.get(f"{server.rstrip('/')}/api/2.0/mlflow/{path}", params=params, headers=headers,
                           auth=auth, verify=verify, timeout=3.5)
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
    except (httpx.HTTPError, ValueError) as exc:
        raise registry_error(uri, exc, ref) from None
    if answer.status_code == 200 and ref.alias == "latest":
        versions = [int(v["version"]) for v in body.get("registered_model", {}).get("latest_versions", [])]
        if versions:
            return str(max(versions))
        raise ArtifactError(f"{uri}: the registered model `{ref.name}` has no versions.",
                            fix="Register a version first, or fix the model name.")
    if answer.status_code == 200:
        return str(body["model_version"]["version"])
    code = str(body.get("error_code") or ("PERMISSION_DENIED" if answer.status_code in (401, 403) else ""))
    raise registry_error(uri, RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}"), ref, code=code)


def resolve_version(mlflow: Any, uri: str, ref: ModelRef) -> ModelRef:
    """The version an alias (or ``latest``) points at now; a version is checked to exist and be READY."""
    try:
        if ref.alias == "latest":
            versions = mlflow.search_model_versions(f"name='{ref.name}'")
            if not versions:
                raise ArtifactError(f"{uri}: the registered model `{ref.name}` has no versions.",
                                    fix="Register a version first, or fix the model name.")
            found = max(versions, key=lambda v: int(v.version))
        elif ref.alias:
            found = mlflow.get_model_version_by_alias(ref.name, ref.alias)
        else:
            found = mlflow.get_model_version(ref.name, ref.version)
    except ArtifactError:
        raise
    except Exception as exc:
        raise registry_error(uri, exc, ref, mlflow) from None
    if str(found.status) not in ("READY", "ModelVersionStatus.READY"):
        raise ArtifactError(f"{uri}: version {found.version} is {found.status}, not READY.",
                            fix="Wait for the registration to finish, or use another version.")
    return ModelRef(name=ref.name, version=str(found.version), alias=ref.alias)


def model_file(uri: str, mlmodel: dict[str, Any], listing: list[tuple[str, int]]) -> tuple[str, int | None]:
    """(path inside the model folder, size) of the file mlship serves, from the MLmodel and the folder listing."""
    flavors: dict[str, Any] = mlmodel.get("flavors") or {}
    sizes = dict(listing)
    sk = flavors.get("sklearn")
    if isinstance(sk, dict) and sk.get("pickled_model"):
        path = str(sk["pickled_model"])
        return path, sizes.get(path)
    for flavor in ("keras", "tensorflow", "pytorch"):
        options = flavors.get(flavor)
        if not isinstance(options, dict):
            continue
        data = str(options.get("model_data") or options.get("data") or "data").rstrip("/")
        files = [(p, s) for p, s in listing if (p.startswith(data + "/") or p == data)
                 and PurePosixPath(p).suffix.lower() in SERVABLE]
        if len(files) == 1:
            return files[0][0], files[0][1]
        raise ArtifactError(
            f"{uri}: its `{flavor}` model is not one file mlship reads (found {[p for p, _ in files] or 'none'} "
            f"in {data}/).", why="mlship serves a single .keras/.h5 or TorchScript .pt file from the model folder.",
            fix=_FIX_FLAVOR)
    raise ArtifactError(f"{uri}: an MLflow model of flavor(s) {', '.join(sorted(flavors)) or 'none'}, which mlship "
                        "does not serve.",
                        why=f"mlship serves the {', '.join(_SERVED_FLAVORS)} flavors' model files with its own "
                        "runtimes, never through MLflow's pyfunc loader.", fix=_FIX_FLAVOR)


def _listing(mlflow_artifacts: Any, base: str, path: str = "", depth: int = 0) -> list[tuple[str, int]]:
    """Every file under the model folder as (relative path, size), three folders deep at most."""
    out: list[tuple[str, int]] = []
    for item in mlflow_artifacts.list_artifacts(artifact_uri=f"{base}/{path}".rstrip("/")):
        rel = item.path if not path or item.path.startswith(path + "/") else f"{path}/{item.path}"
        if item.is_dir and depth < 3:
            out += _listing(mlflow_artifacts, base, rel, depth + 1)
        elif not item.is_dir:
            out.append((rel, int(item.file_size or 0)))
    return out


@contextmanager
def quiet() -> Iterator[None]:
    """No tqdm bar from MLflow's downloads amid mlship's own progress (unless the user set the variable)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def locate(uri: str, pinned: ModelRef) -> tuple[str, int | None]:
    """Read the version's MLmodel and listing: (the served file's path in the folder, its size)."""
    import mlflow.artifacts
    import yaml

    base = pinned.pinned
    with tempfile.TemporaryDirectory(prefix="mlship-mlmodel-") as tmp:
        try:
            listing = _listing(mlflow.artifacts, base)
            if "MLmodel" not in dict(listing):
                raise ArtifactError(f"{uri}: version {pinned.version} holds no MLmodel file (an MLflow model "
                                    "folder).", fix=_FIX_FLAVOR)
            with quiet():
                path = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/MLmodel", dst_path=tmp)
        except ArtifactError:
            raise
        except Exception as exc:
            raise registry_error(uri, exc, pinned) from None
        mlmodel = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return model_file(uri, mlmodel, listing)


class MlflowFetcher(Fetcher):
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and ``models:/NAME/latest`` from the MLflow Model Registry."""

    name = "mlflow"
    image_packages = ("mlflow-skinny",)  # serve.fetch_at_start: MLflow's client without its server

    @classmethod
    def claims(cls, uri: str, root: Path) -> bool:
        return uri.startswith("models:/")

    def resolve(self, uri: str, root: Path) -> Resolved:
        ref = parse(uri)
        pinned = resolve_version(client(), uri, ref)
        path, size = locate(uri, pinned)
        return Resolved(uri=uri, pinned=pinned.pinned, version=pinned.version, sha256=None, size=size,
                        filename=PurePosixPath(path).name)

    def checks(self, uri: str, root: Path) -> list[Check]:
        """Preflight: the server answers, the credentials may read, the version or alias exists. Over an
        http(s) server through its REST API (no MLflow import); otherwise :meth:`resolve`."""
        try:
            ref = parse(uri)
            server = tracking_uri()
            if urlsplit(server).scheme not in ("http", "https"):
                return super().checks(uri, root)
            _probe(server)
            version = rest_version(uri, ref, server)
        except ArtifactError as exc:
            return [Check(name="artifact", ok=False, detail=exc.message, fix=exc.fix)]
        return [Check(name="artifact", ok=True, detail=f"{uri}: version {version} in the registry at {server}")]

    def fetch(self, resolved: Resolved, dest: Path) -> None:
        import mlflow.artifacts

        pinned = parse(resolved.pinned)
        client()  # the same configuration errors as resolve
        path, _ = locate(resolved.uri, pinned)
        scratch = Path(tempfile.mkdtemp(prefix=".mlflow-", dir=dest.parent))
        try:
            with quiet():
                got = mlflow.artifacts.download_artifacts(artifact_uri=f"{resolved.pinned}/{path}",
                                                          dst_path=str(scratch))
            os.replace(got, dest)
        except Exception as exc:
            raise registry_error(resolved.uri, exc, pinned) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
