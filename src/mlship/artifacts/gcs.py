"""``gs://bucket/object[#generation]``: google-cloud-storage with Application Default Credentials
(``gcloud auth application-default login``, ``$GOOGLE_APPLICATION_CREDENTIALS``, the metadata server of Cloud
Run / GCE / GKE). ``$STORAGE_EMULATOR_HOST`` points the client at an emulator; the client reads it itself.

The pinned form names the object generation (``#1717...``), so a build reads exactly the bytes resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlship.artifacts.base import Fetcher, Resolved, filename_of
from mlship.errors import ArtifactError


def parse(uri: str) -> tuple[str, str, int | None]:
    """(bucket, object name, generation or None) of a gs:// URI."""
    parts = urlsplit(uri)
    name = parts.path.lstrip("/")
    if not parts.netloc or not name or (parts.fragment and not parts.fragment.isdigit()):
        raise ArtifactError(f"{uri} is not a Cloud Storage object URI.",
                            fix="Write it as gs://BUCKET/path/to/model.joblib (optionally #GENERATION).")
    return parts.netloc, name, int(parts.fragment) if parts.fragment else None


def client() -> Any:
    from google.cloud import storage

    return storage.Client()


def _error(uri: str, exc: Exception) -> ArtifactError:
    from google.api_core import exceptions as api
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    bucket, name, _ = parse(uri)
    if isinstance(exc, (DefaultCredentialsError, RefreshError)):
        return ArtifactError(
            f"Cannot read {uri}: no Google Cloud credentials found ({str(exc).splitlines()[0]}).",
            why="mlship reads Cloud Storage with Application Default Credentials.",
            fix="Run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service "
            "account key file.")
    if isinstance(exc, (api.Forbidden, api.Unauthorized)):
        return ArtifactError(
            f"Cannot read {uri}: access denied ({exc.code}).",
            why="The Google identity in use may not read this object.",
            fix=f"Grant roles/storage.objectViewer on gs://{bucket} to that identity "
            f"(`gcloud storage buckets add-iam-policy-binding gs://{bucket} --member=... "
            "--role=roles/storage.objectViewer`).")
    if isinstance(exc, api.NotFound):
        return ArtifactError(f"Cannot read {uri}: no such object.",
                             fix=f"Check the bucket `{bucket}` and object `{name}` (`gcloud storage ls gs://{bucket}/`).")
    return ArtifactError(f"Cannot read {uri}: {exc}.", fix="Check the URI, the network and your gcloud configuration.")


def _errors() -> tuple[type[Exception], ...]:
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from requests import RequestException

    return (GoogleAPIError, GoogleAuthError, RequestException)


class GcsFetcher(Fetcher):
    name = "gcs"
    image_packages = ("google-cloud-storage",)

    @classmethod
    def claims(cls, uri: str, root: Path) -> bool:
        return uri.startswith("gs://")

    def resolve(self, uri: str, root: Path) -> Resolved:
        bucket, name, generation = parse(uri)
        try:
            blob = client().bucket(bucket).get_blob(name, generation=generation, timeout=10)
        except _errors() as exc:
            raise _error(uri, exc) from None
        if blob is None:
            raise ArtifactError(f"Cannot read {uri}: no such object.",
                                fix=f"Check the bucket `{bucket}` and object `{name}`.")
        found = str(blob.generation) if blob.generation else None
        pinned = f"gs://{bucket}/{name}" + (f"#{found}" if found else "")
        return Resolved(uri=uri, pinned=pinned, version=found, sha256=None, size=blob.size,
                        filename=filename_of(name))

    def fetch(self, resolved: Resolved, dest: Path) -> None:
        bucket, name, generation = parse(resolved.pinned)
        try:
            blob = client().bucket(bucket).blob(name, generation=generation)
            blob.download_to_filename(str(dest), timeout=60)
        except _errors() as exc:
            raise _error(resolved.uri, exc) from None
