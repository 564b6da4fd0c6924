"""Fixtures of the remote-artifact tests: real servers on loopback, driven by the real client libraries.

``artifact_cache`` (an empty $MLSHIP_CACHE_DIR per test), ``s3`` (moto in server mode, reused from ecs_moto.py,
with boto3 pointed at it through the standard chain and a versioned bucket ``models``), ``gcs``
(gcp-storage-emulator, $STORAGE_EMULATOR_HOST, bucket ``models``), ``https`` (a TLS server whose certificate a
test CA made with trustme signs; $MLSHIP_CA_BUNDLE names the CA; Range requests and cut connections on demand).
A test module names what it uses: ``s3 = storage_fixtures.s3``.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emulators.ecs_moto import MotoServer, aws_environment

BUCKET = "models"
REGION = "us-east-1"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_files(root: Path) -> list[str]:
    """Every file under an artifact cache's blobs/ and tmp/ (what a failed fetch must not leave)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and p.relative_to(root).parts[0] in ("blobs", "tmp"))


@pytest.fixture
def artifact_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "artifact-cache"
    monkeypatch.setenv("MLSHIP_CACHE_DIR", str(cache))
    return cache


# --- S3: moto in server mode ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@dataclass
class S3:
    server: MotoServer
    client: Any

    def put(self, key: str, data: bytes) -> str:
        """Upload a new version of ``key``; returns its version id."""
        return str(self.client.put_object(Bucket=BUCKET, Key=key, Body=data)["VersionId"])

    def uri(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"


@pytest.fixture
def s3(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, artifact_cache: Path) -> S3:
    """boto3 pointed at moto (AWS_ENDPOINT_URL, test keys) and a versioned bucket ``models``, empty."""
    import boto3

    for key, value in aws_environment(moto_server.endpoint, REGION, str(tmp_path)).items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if BUCKET in names:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                client.delete_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])
    else:
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return S3(moto_server, client)


def no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard chain finds nothing: no keys, no files, no instance metadata."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


# --- GCS: gcp-storage-emulator ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[str]:
    from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def gcs(gcs_server: str, monkeypatch: pytest.MonkeyPatch, artifact_cache: Path) -> Any:
    """The official client pointed at the emulator; returns the bucket ``models``."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    return storage.Client().bucket(BUCKET)


# --- HTTPS: a TLS server with a test CA ------------------------------------------------------------
@dataclass
class Files:
    """What the HTTPS server serves: path -> bytes; ``cut`` responses close after half the body;
    ``ranges`` answers Range requests (206) or ignores them (200, the whole file)."""

    content: dict[str, bytes] = field(default_factory=dict)
    cut: int = 0
    ranges: bool = True
    delay_s: float = 0.0  # before each GET's body: a slow download
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):  # the test's HTTPS file server
    files: Files
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        files = self.files
        wanted = self.headers.get("Range", "")
        files.requests.append((self.command, self.path, wanted))
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "/" + self.path.removeprefix("/redirect/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = files.content.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted and files.ranges else 0
        end = len(data) - 1
        if wanted and files.ranges and wanted.split("-")[1]:
            end = int(wanted.split("-")[1])
        part = data[start:end + 1]
        self.send_response(206 if wanted and files.ranges else 200)
        if wanted and files.ranges:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if files.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.send_header("ETag", f'"{sha256(data)[:16]}"')
        self.end_headers()
        if not body:
            return
        time.sleep(files.delay_s)
        with files.lock:
            cut = files.cut > 0
            files.cut -= 1 if cut else 0
        if cut:
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)


@dataclass
class Https:
    url: str
    files: Files
    ca_file: Path


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    files = Files()
    handler = type("Handler", (_Handler,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield Https(f"https://127.0.0.1:{server.server_address[1]}", files, ca_file)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def https(https_server: Https, monkeypatch: pytest.MonkeyPatch, artifact_cache: Path) -> Https:
    """The server with nothing served yet, whole answers, Range honoured; the test CA trusted."""
    https_server.files.content.clear()
    https_server.files.requests.clear()
    https_server.files.cut, https_server.files.ranges, https_server.files.delay_s = 0, True, 0.0
    monkeypatch.setenv("MLSHIP_CA_BUNDLE", str(https_server.ca_file))
    return https_server


def iris_variant(out: Path, c: float = 0.5) -> bytes:
    """Another iris model (same features and labels, other weights): "a new version" of the model's bytes."""
    import joblib
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    x = pd.DataFrame(iris.data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    model.fit(x, iris.target_names[iris.target])
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out, compress=3)
    return out.read_bytes()


def repin(project_dir: Path, sha: str) -> None:
    """What a user does when the object changed on purpose: put its digest in mlship.yaml."""
    import re

    contract = project_dir / "mlship.yaml"
    contract.write_text(re.sub(r"(?m)^artifact_sha256: [0-9a-f]{64}$", f"artifact_sha256: {sha}",
                               contract.read_text()))
