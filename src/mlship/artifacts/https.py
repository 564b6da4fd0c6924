"""``https://...``: httpx, redirects followed, TLS always verified (a private CA: ``$MLSHIP_CA_BUNDLE`` or
``$SSL_CERT_FILE`` names its PEM file), a cut download resumed with ``Range`` where the server allows it.

A plain ``http://`` URL is refused except on loopback: a model is code for pickle formats, and its bytes must not
be open to tampering on the way (the digest pin catches it, but a clear error beats a mismatch).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlship.artifacts.base import Fetcher, Resolved, filename_of
from mlship.errors import ArtifactError

ATTEMPTS = 5  # connections per download (the first and up to 4 resumes)
TIMEOUT_S = 30.0


def ssl_context() -> ssl.SSLContext:
    """The TLS settings: the system's trust store, or the PEM file in $MLSHIP_CA_BUNDLE / $SSL_CERT_FILE."""
    bundle = os.environ.get("MLSHIP_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if bundle:
        if not Path(bundle).is_file():
            raise ArtifactError(f"The CA bundle {bundle} does not exist.",
                                fix="Set MLSHIP_CA_BUNDLE (or SSL_CERT_FILE) to a PEM file of your CA certificates.")
        return ssl.create_default_context(cafile=bundle)
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def _client() -> Any:
    import httpx

    return httpx.Client(verify=ssl_context(), follow_redirects=True, timeout=TIMEOUT_S, trust_env=True)


def _error(uri: str, exc: Exception) -> ArtifactError:
    import httpx

    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return ArtifactError(f"Cannot read {uri}: its TLS certificate is not trusted ({exc}).",
                             why="mlship always verifies TLS.",
                             fix="If the server uses a private CA, set MLSHIP_CA_BUNDLE to that CA's PEM file.")
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        fix = {401: "The server wants credentials: put them in ~/.netrc for this host.",
               403: "The server refuses this client: check the URL's token or your access.",
               404: "Check the URL."}.get(code, "Check the URL and the server.")
        return ArtifactError(f"Cannot read {uri}: HTTP {code}.", fix=fix)
    return ArtifactError(f"Cannot read {uri}: {type(exc).__name__}: {exc}.", fix="Check the URL and the network.")


def _check_scheme(uri: str) -> None:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.scheme == "http" and not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise ArtifactError(f"{uri} is plain HTTP.", why="A model is fetched over TLS only (except on loopback).",
                            fix="Use the https:// URL of the same file.")


class HttpsFetcher(Fetcher):
    name = "https"
    image_packages = ("httpx", "certifi")

    @classmethod
    def claims(cls, uri: str, root: Path) -> bool:
        return uri.startswith(("https://", "http://"))

    def resolve(self, uri: str, root: Path) -> Resolved:
        import httpx

        _check_scheme(uri)
        try:
            with _client() as http:
                response = http.head(uri)
                if response.status_code in (405, 501):  # HEAD not allowed: ask for one byte
                    response = http.get(uri, headers={"Range": "bytes=0-0"})
                response.raise_for_status()
        except httpx.HTTPError as exc:
            raise _error(uri, exc) from None
        size = _total_size(response)
        etag = response.headers.get("etag")
        return Resolved(uri=uri, pinned=uri, version=etag.strip('"') if etag else None, sha256=None, size=size,
                        filename=filename_of(urlsplit(uri).path))

    def fetch(self, resolved: Resolved, dest: Path) -> None:
        import httpx

        _check_scheme(resolved.pinned)
        last: Exception | None = None
        with _client() as http, dest.open("wb") as out:
            for _ in range(ATTEMPTS):
                have = out.tell()
                headers = {"Range": f"bytes={have}-"} if have else {}
                try:
                    with http.stream("GET", resolved.pinned, headers=headers) as response:
                        response.raise_for_status()
                        if have and response.status_code != 206:  # the server ignores Range: start over
                            out.seek(0)
                            out.truncate()
                        for chunk in response.iter_bytes():  # as received: a cut loses nothing read
                            out.write(chunk)
                        total = _total_size(response)
                    if total is None or out.tell() >= total:
                        return
                    last = ArtifactError(f"{resolved.uri}: the server sent {out.tell()} of {total} bytes.")
                except httpx.HTTPStatusError as exc:
                    raise _error(resolved.uri, exc) from None
                except httpx.HTTPError as exc:  # the connection was cut: resume where it stopped
                    last = exc
        raise ArtifactError(
            f"Cannot download {resolved.uri}: the connection was cut {ATTEMPTS} times ({last}).",
            why="The server or the network drops the download, and it could not be resumed; nothing was kept.",
            fix="Retry later; if it keeps happening, host the file where downloads can be resumed (Range requests).")


def _total_size(response: Any) -> int | None:
    """The whole file's size: from Content-Range on a 206, else Content-Length."""
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() and response.status_code == 200 else None
