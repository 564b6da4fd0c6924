"""Remote artifacts: the fetchers (``s3://``, ``gs://``, ``https://``, ``models:/``, DVC), the content-addressed
cache, and :func:`resolve_artifact`, the one function everything that reads a remote artifact goes through.

Built-in fetchers are listed in ``FETCHERS`` (imported lazily: boto3 and friends load only when used);
third-party ones register in the entry-point group ``mlship.fetchers`` (see :mod:`mlship.artifacts.base`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mlship.errors import PluginError
from mlship.plugins import with_entry_points

#: name -> "module:Class", in the order they are asked to claim an ``artifact:`` value.
FETCHERS: list[tuple[str, str]] = [
    ("s3", "mlship.artifacts.s3:S3Fetcher"),
    ("gcs", "mlship.artifacts.gcs:GcsFetcher"),
    ("https", "mlship.artifacts.https:HttpsFetcher"),
    ("mlflow", "mlship.artifacts.mlflow:MlflowFetcher"),
    ("dvc", "mlship.artifacts.dvc:DvcFetcher"),
]
GROUP = "mlship.fetchers"
REMOTE_SCHEMES = ("s3://", "gs://", "https://", "http://", "models:/")


def available() -> dict[str, str]:
    """Every fetcher as ``name -> "module:Class"``: the built-ins, then entry points; a clash is an error."""
    return with_entry_points(dict(FETCHERS), GROUP, "fetcher")


def _load(name: str, ref: str) -> Any:
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        extra = {"s3": "s3", "gcs": "gcs", "mlflow": "mlflow", "dvc": "dvc"}.get(name)
        raise PluginError(
            f"The `{name}` artifact fetcher cannot be imported: {exc}.",
            why=f"It is provided by {ref}, which needs packages that are not installed.",
            fix=f"pip install 'mlship[{extra}]'" if extra else "Install the package that provides it.",
        ) from None


def looks_remote(uri: str) -> bool:
    """Whether ``artifact:`` names something outside the project folder by its scheme (no import, no I/O)."""
    return uri.startswith(REMOTE_SCHEMES)


_SCHEMES: dict[str, tuple[str, ...]] = {"s3": ("s3://",), "gcs": ("gs://",), "https": ("https://", "http://"),
                                       "mlflow": ("models:/",)}


def fetcher_for(uri: str, root: Path) -> Any | None:
    """The fetcher that claims ``uri`` (a built-in is imported only when the URI has its scheme), or None."""
    for name, ref in available().items():
        prefixes = _SCHEMES.get(name)
        if prefixes is not None and not uri.startswith(prefixes):
            continue  # do not import boto3 to learn that gs:// is not its
        if name == "dvc" and not (root / f"{uri}.dvc").is_file():
            continue
        cls = _load(name, ref)
        if cls.claims(uri, root):
            return cls()
    return None
