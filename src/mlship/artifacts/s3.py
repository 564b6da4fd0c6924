"""``s3://bucket/key[?versionId=...]``: boto3 with the standard AWS credential chain (environment, shared
config/credentials files and profiles, SSO, container and instance roles). ``$AWS_ENDPOINT_URL_S3`` /
``$AWS_ENDPOINT_URL`` point it at another S3 API (MinIO, an emulator); boto3 reads them itself.

The pinned form names the object version (``?versionId=``) when the bucket keeps versions, so a build reads
exactly the bytes resolved even if the key is overwritten meanwhile.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from mlship.artifacts.base import Fetcher, Resolved, filename_of
from mlship.errors import ArtifactError

CHUNK = 1 << 20


def parse(uri: str) -> tuple[str, str, str | None]:
    """(bucket, key, version id or None) of an s3:// URI."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if not parts.netloc or not key:
        raise ArtifactError(f"{uri} is not an S3 object URI.", fix="Write it as s3://BUCKET/path/to/model.joblib.")
    version = parse_qs(parts.query).get("versionId", [None])[0]
    return parts.netloc, key, version


def client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client("s3", config=config)


def _error(uri: str, exc: Exception) -> ArtifactError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    bucket, key, _ = parse(uri)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ArtifactError(
            f"Cannot read {uri}: no AWS credentials found.",
            why="mlship reads S3 with the standard AWS credential chain (environment, ~/.aws, SSO, instance role).",
            fix="Run `aws configure` or `aws sso login`, or set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY).")
    if isinstance(exc, EndpointConnectionError):
        return ArtifactError(f"Cannot read {uri}: S3 does not answer ({exc}).",
                             fix="Check the network, and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL if set.")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return ArtifactError(
                f"Cannot read {uri}: access denied ({code}).",
                why="The AWS identity in use may not read this object.",
                fix=f"Grant s3:GetObject (and s3:GetObjectVersion for a pinned version) on "
                f"arn:aws:s3:::{bucket}/{key} to that identity, or use a profile that has it.")
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound"):
            return ArtifactError(f"Cannot read {uri}: no such object ({code}).",
                                 fix=f"Check the bucket `{bucket}` and key `{key}` (`aws s3 ls s3://{bucket}/`).")
    return ArtifactError(f"Cannot read {uri}: {exc}.", fix="Check the URI and your AWS configuration.")


def _sha256_of(head: dict[str, Any]) -> str | None:
    """The object's full sha256 when S3 stores one (a single-part upload with SHA256 checksums)."""
    value = head.get("ChecksumSHA256")
    if not value or "-" in str(value):
        return None
    try:
        return base64.b64decode(str(value)).hex()
    except ValueError:
        return None


class S3Fetcher(Fetcher):
    name = "s3"
    image_packages = ("boto3",)

    @classmethod
    def claims(cls, uri: str, root: Path) -> bool:
        return uri.startswith("s3://")

    def resolve(self, uri: str, root: Path) -> Resolved:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key, version = parse(uri)
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version:
            args["VersionId"] = version
        try:
            head = client().head_object(**args)
        except (BotoCoreError, ClientError) as exc:
            raise _error(uri, exc) from None
        found = head.get("VersionId")
        found = found if found and found != "null" else None
        pinned = f"s3://{bucket}/{key}" + (f"?versionId={quote(found, safe='')}" if found else "")
        return Resolved(uri=uri, pinned=pinned, version=found, sha256=_sha256_of(head),
                        size=head.get("ContentLength"), filename=filename_of(key))

    def fetch(self, resolved: Resolved, dest: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key, version = parse(resolved.pinned)
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version:
            args["VersionId"] = version
        try:
            body = client().get_object(**args)["Body"]
            with dest.open("wb") as out:
                for chunk in body.iter_chunks(CHUNK):
                    out.write(chunk)
        except (BotoCoreError, ClientError) as exc:
            raise _error(resolved.uri, exc) from None
