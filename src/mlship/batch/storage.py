"""Batch input and output on a local disk, S3 (``s3://bucket/prefix``) or GCS (``gs://bucket/prefix``), through
``pyarrow.fs``, so that the batch image needs neither boto3 nor google-cloud-storage.

Credentials come from the standard chains (AWS: environment, ~/.aws, SSO, container and instance roles; GCP:
application default credentials, the metadata server). ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL`` point S3 at
another S3 API (MinIO, moto), ``$STORAGE_EMULATOR_HOST`` points GCS at an emulator (anonymous).

Writes are all-or-nothing: a local file is written next to its place and renamed; an object is written to a local
temporary file first and then uploaded in one stream (an object appears only when its upload completes), and its
size is checked after the upload. Errors are :class:`~mlship.errors.StorageError`-style ContractErrors naming the
URI, why, and the fix (credentials, permission, bucket).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs  # type: ignore[import-untyped]

from mlship.errors import MlshipError

SCHEMES = ("s3", "gs")


class StorageError(MlshipError):
    """Batch input or output cannot be read or written (credentials, permission, bucket, path)."""


@dataclass(frozen=True)
class Location:
    """A file or folder: the URI the user wrote, the pyarrow filesystem and the path in it."""

    uri: str
    fs: Any
    path: str
    scheme: str  # file, s3, gs

    @property
    def remote(self) -> bool:
        return self.scheme in SCHEMES

    def child(self, name: str) -> Location:
        base = self.uri.rstrip("/")
        return Location(f"{base}/{name}", self.fs, f"{self.path.rstrip('/')}/{name}", self.scheme)


def locate(uri: str) -> Location:
    """The location of ``uri``: a local path, ``s3://bucket/key`` or ``gs://bucket/key``."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        if "://" in uri:
            raise StorageError(f"{uri}: mlship batch reads and writes local paths, s3:// and gs://, not "
                               f"{parts.scheme}://.", fix="Copy the data to S3 or GCS, or to a local folder.")
        return Location(uri, pafs.LocalFileSystem(), str(Path(uri).resolve()), "file")
    if not parts.netloc:
        raise StorageError(f"{uri} names no bucket.", fix=f"Write it as {parts.scheme}://BUCKET/prefix/.")
    path = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    return Location(uri, _s3() if parts.scheme == "s3" else _gcs(), path, parts.scheme)


def _s3() -> Any:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, Any] = {"connect_timeout": 5, "request_timeout": 60,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _gcs() -> Any:
    limit = datetime.timedelta(seconds=30)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        parts = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=parts.netloc, scheme=parts.scheme,
                                  retry_time_limit=limit)
    return pafs.GcsFileSystem(retry_time_limit=limit)


def storage_error(loc: Location, action: str, exc: Exception) -> StorageError:
    """What went wrong reading or writing ``loc``, why, and the fix, from pyarrow's error text."""
    text = str(exc)
    bucket = loc.path.split("/", 1)[0]
    denied = ("ACCESS_DENIED", "AccessDenied", "Forbidden", "PERMISSION_DENIED", "403", "InvalidAccessKeyId",
              "SignatureDoesNotMatch", "INVALID_ACCESS_KEY")
    no_creds = ("credentials", "Could not load the default credentials", "UNAUTHENTICATED", "401")
    if loc.scheme == "s3":
        chain = ("Run `aws configure` or `aws sso login`, or set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY)")
        grant = f"s3:ListBucket on arn:aws:s3:::{bucket} and s3:GetObject / s3:PutObject on arn:aws:s3:::{bucket}/*"
    else:
        chain = ("Run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service "
                 "account key file")
        grant = f"roles/storage.objectAdmin (or objectViewer to read) on gs://{bucket}"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text or ("404" in text and "ListObjects" in text):
        return StorageError(f"Cannot {action} {loc.uri}: the bucket `{bucket}` does not exist.",
                            fix=f"Create the bucket, or fix the bucket name in {loc.uri}.")
    if any(word in text for word in denied):
        return StorageError(f"Cannot {action} {loc.uri}: access denied.",
                            why="The identity the standard credential chain found may not do this.",
                            fix=f"Grant {grant} to that identity, or use credentials that have it. {chain}.")
    if any(word in text for word in no_creds):
        return StorageError(f"Cannot {action} {loc.uri}: no usable credentials.",
                            why="mlship batch uses the standard credential chain of the cloud.", fix=f"{chain}.")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"Cannot {action} {loc.uri}: it does not exist.", fix="Check the path.")
    return StorageError(f"Cannot {action} {loc.uri}: {text.splitlines()[0] if text else type(exc).__name__}",
                        fix="Check the URI, the network and your credentials"
                        + (" (and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL if set)." if loc.scheme == "s3" else "."))


def info(loc: Location) -> Any:
    """pyarrow's FileInfo of ``loc`` (type NotFound when it is not there)."""
    try:
        return loc.fs.get_file_info(loc.path)
    except (OSError, ValueError) as exc:
        raise storage_error(loc, "read", exc) from None


def list_files(loc: Location) -> list[Any]:
    """The files of a folder / prefix, recursively, sorted by path; leaves out names starting with `.` or `_`
    (our own `_mlship/`, temporary files)."""
    try:
        found = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:
        raise storage_error(loc, "list", exc) from None
    if not found and loc.remote:
        _bucket_exists(loc)
    prefix = loc.path.rstrip("/") + "/"
    keep = [f for f in found if f.type == pafs.FileType.File
            and not any(part.startswith((".", "_")) for part in f.path[len(prefix):].split("/"))]
    return sorted(keep, key=lambda f: str(f.path))


def _bucket_exists(loc: Location) -> None:
    bucket = loc.path.split("/", 1)[0]
    try:
        missing = loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except (OSError, ValueError) as exc:
        raise storage_error(loc, "list", exc) from None
    if missing:
        raise StorageError(f"Cannot read {loc.uri}: the bucket `{bucket}` does not exist.",
                           fix=f"Create the bucket, or fix the bucket name in {loc.uri}.")


def read_bytes(loc: Location) -> bytes | None:
    """The whole (small) file, or None when it does not exist."""
    try:
        with loc.fs.open_input_stream(loc.path) as fh:
            return bytes(fh.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        if "NOT_FOUND" in str(exc) or "NoSuchKey" in str(exc):
            return None
        raise storage_error(loc, "read", exc) from None


def put_file(source: Path, dest: Location) -> int:
    """Put the complete local file ``source`` at ``dest`` all at once; returns its size."""
    size = source.stat().st_size
    try:
        if not dest.remote:
            Path(dest.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(dest.path).with_name(f".{Path(dest.path).name}.tmp{os.getpid()}")
            shutil.copyfile(source, tmp)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest.path)
            return size
        with source.open("rb") as src, dest.fs.open_output_stream(dest.path) as out:
            while block := src.read(1 << 22):
                out.write(block)
        stored = dest.fs.get_file_info(dest.path).size
    except OSError as exc:
        raise storage_error(dest, "write", exc) from None
    if stored != size:
        raise StorageError(f"{dest.uri} holds {stored} bytes after an upload of {size}.",
                           why="The storage service did not keep what was sent (an S3-compatible server that does "
                           "not read the checksum trailers of newer AWS SDKs stores an empty object).",
                           fix="Set AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED for such a server, and run again.")
    return size


def put_bytes(data: bytes, dest: Location) -> int:
    with tempfile.TemporaryDirectory(prefix="mlship-put-") as tmp:
        path = Path(tmp) / "data"
        path.write_bytes(data)
        return put_file(path, dest)


def delete(loc: Location) -> None:
    try:
        loc.fs.delete_file(loc.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage_error(loc, "delete", exc) from None
