"""The Heroku emulator's container registry: a Docker Registry v2 front on its own 127.0.0.1 port that does what
registry.heroku.com does for ``docker login`` / ``docker push`` and stores what it accepts in a real registry.

* Basic auth: any user name (Heroku's docs use ``_``) and the API key as password. A request without it, or with
  a key that is not an account's, gets 401 ``UNAUTHORIZED`` with ``WWW-Authenticate: Basic realm="Heroku Registry"``,
  so ``docker login`` asks for (and checks) credentials. Heroku documents the same credentials (``docker login
  --username=_ --password=$(heroku auth:token) registry.heroku.com``); that the emulator checks them as Basic auth
  on every request, with no token exchange, is its choice.
* Repositories are ``<app>/<process type>``; an app the key's account cannot deploy to is 401 ``UNAUTHORIZED``
  "requested access to the resource is denied" (``docker push`` stops at once: the engine retries a ``DENIED``
  answer for a minute), an app that does not exist is 404 ``NAME_UNKNOWN``.
* Manifests: only a Docker Image Manifest V2, Schema 2 (application/vnd.docker.distribution.manifest.v2+json) is
  accepted, as Heroku documents; an OCI image index, a Docker manifest list or an OCI image manifest is refused
  with 405 ``UNSUPPORTED`` "The operation is unsupported." (the answer Heroku's registry gives a pushed index).
  The image config must say linux/amd64 (Heroku runs no other platform): else 400 ``MANIFEST_INVALID`` naming it
  (the emulator's wording; Heroku's is not documented).
* Everything else (blobs, uploads, tags, manifest reads) is forwarded, streamed, to the upstream registry
  (scripts/docker-up's loopback registry) under ``<prefix>/<app>/<process>``; Location headers and cross-repository
  mounts are translated both ways. ``on_manifest`` hears of each accepted manifest (app, process, reference,
  manifest digest, config digest = the image id the release API takes).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlencode, urlsplit

from emulators._runtime import HOP_BY_HOP, LoopbackServer, send

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
REFUSED = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
           "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws"}
CHALLENGE = 'Basic realm="Heroku Registry"'
_REPO = re.compile(r"/v2/([a-z][a-z0-9-]{1,28}[a-z0-9])/([a-z0-9_-]+)/(manifests|blobs|tags)(/.*)?")


class RegistryError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class RegistryFront:
    """See the module docstring. ``account(key)`` -> the account's email or None; ``access(email, app)`` -> None
    when it may push, "missing" when no such app, "denied" otherwise."""

    def __init__(self, *, upstream: str, prefix: str, account: Callable[[str], str | None],
                 access: Callable[[str, str], str | None],
                 on_manifest: Callable[[str, str, str, str, str], None]) -> None:
        self.upstream, self.prefix = upstream, prefix
        self.account, self.access, self.on_manifest = account, access, on_manifest
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.kept: set[tuple[str, str]] = set()  # (upstream repository, manifest digest) of what it accepted
        self._server = LoopbackServer(self._serve, "heroku-registry")
        self.address = f"127.0.0.1:{self._server.port}"

    def close(self) -> None:
        """Stop serving and delete the manifests it stored upstream (their blobs go at the registry's next GC)."""
        self._server.close()
        for repository, digest in sorted(self.kept):
            conn = http.client.HTTPConnection(self.upstream, timeout=30)
            try:
                conn.request("DELETE", f"/v2/{repository}/manifests/{digest}")
                conn.getresponse().read()
            except OSError:
                pass  # the upstream registry is gone already
            finally:
                conn.close()

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        try:
            self._handle(req)
        except RegistryError as exc:
            self._error(req, exc)

    # --- requests ---------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        email = self._authenticate(req)
        if parts.path in ("/v2/", "/v2"):
            return self._reply(req, 200, b"{}", {"Content-Type": "application/json"})
        found = _REPO.fullmatch(parts.path)
        if found is None:
            raise RegistryError(404, "NAME_UNKNOWN", "repository name not known to registry")
        app, process, kind = found[1], found[2], found[3]
        denied = self.access(email, app)
        if denied == "missing":
            raise RegistryError(404, "NAME_UNKNOWN", f"repository name not known to registry: no app {app!r}")
        if denied:  # UNAUTHORIZED: the engine gives up at once (it retries a DENIED answer for a minute)
            raise RegistryError(401, "UNAUTHORIZED", "requested access to the resource is denied",
                                {"WWW-Authenticate": CHALLENGE})
        path = f"/v2/{self.prefix}/{app}/{process}/{kind}{found[4] or ''}"
        query = [(k, f"{self.prefix}/{v}" if k == "from" else v) for k, v in parse_qsl(parts.query)]
        target = path + (f"?{urlencode(query)}" if query else "")
        if req.command == "PUT" and kind == "manifests":
            self._put_manifest(req, app, process, (found[4] or "/").lstrip("/"), target)
        else:
            self._forward(req, target, self._body_stream(req))
        return None

    def _authenticate(self, req: BaseHTTPRequestHandler) -> str:
        scheme, _, value = (req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            raise RegistryError(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": CHALLENGE})
        try:
            _, _, key = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            key = ""
        email = self.account(key) if key else None
        if email is None:
            raise RegistryError(401, "UNAUTHORIZED", "authentication required: invalid credentials",
                                {"WWW-Authenticate": CHALLENGE})
        return email

    def _put_manifest(self, req: BaseHTTPRequestHandler, app: str, process: str, reference: str,
                      target: str) -> None:
        media = (req.headers.get("Content-Type") or "").split(";")[0].strip()
        body = b"".join(self._body_stream(req))
        try:
            manifest = json.loads(body)
        except ValueError:
            raise RegistryError(400, "MANIFEST_INVALID", "manifest invalid: not JSON") from None
        media = media or str(manifest.get("mediaType", ""))
        if media in REFUSED or manifest.get("manifests") is not None:
            raise RegistryError(405, "UNSUPPORTED", "The operation is unsupported.")
        if media != DOCKER_V2 or manifest.get("schemaVersion") != 2:
            raise RegistryError(400, "MANIFEST_INVALID", f"manifest invalid: Heroku accepts only {DOCKER_V2} "
                                                         f"(schemaVersion 2), got {media or 'no media type'}")
        config_digest = str(manifest.get("config", {}).get("digest", ""))
        platform = self._platform(app, process, config_digest)
        if platform != "linux/amd64":
            raise RegistryError(400, "MANIFEST_INVALID", f"manifest invalid: the image is for {platform}; Heroku "
                                                         "runs linux/amd64 images only")
        status, _ = self._forward(req, target, iter([body]))
        if status == 201:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.kept.add((f"{self.prefix}/{app}/{process}", digest))
            self.on_manifest(app, process, reference, digest, config_digest)
        return None

    def _platform(self, app: str, process: str, digest: str) -> str:
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request("GET", f"/v2/{self.prefix}/{app}/{process}/blobs/{digest}")
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RegistryError(400, "MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: config {digest}")
            config = json.loads(data)
            return f"{config.get('os', '?')}/{config.get('architecture', '?')}"
        finally:
            conn.close()

    # --- forwarding -------------------------------------------------------------------------------
    def _body_stream(self, req: BaseHTTPRequestHandler) -> Iterator[bytes]:
        if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pending: list[bytes] = []
            while size := int(req.rfile.readline().split(b";")[0].strip() or b"0", 16):
                pending.append(req.rfile.read(size))
                req.rfile.readline()
                if sum(map(len, pending)) >= 1 << 20:  # forwarded in pieces of about 1 MB
                    yield b"".join(pending)
                    pending = []
            while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            yield b"".join(pending)
            return
        left = int(req.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = req.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _forward(self, req: BaseHTTPRequestHandler, target: str, body: Iterator[bytes]) -> tuple[int, dict[str, str]]:
        conn = http.client.HTTPConnection(self.upstream, timeout=300)
        try:
            conn.putrequest(req.command, target, skip_accept_encoding=True)
            for key, value in req.headers.items():
                if key.lower() not in HOP_BY_HOP | {"host", "authorization"}:
                    conn.putheader(key, value)
            has_body = req.command in ("POST", "PUT", "PATCH")
            if has_body:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            if has_body:
                for chunk in body:
                    if chunk:
                        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
            if "Location" in headers:
                headers["Location"] = self._unprefix(headers["Location"])
            length = resp.getheader("Content-Length")
            if length is None or req.command == "HEAD":  # a chunked answer (small: JSON) is sent whole
                data = resp.read() if req.command != "HEAD" else b""
                self._send_head(req, resp.status, headers, len(data) if length is None else int(length))
                req.wfile.write(data)
                return resp.status, headers
            self._send_head(req, resp.status, headers, int(length))
            while chunk := resp.read(1 << 20):
                req.wfile.write(chunk)
            return resp.status, headers
        finally:
            conn.close()

    def _unprefix(self, location: str) -> str:
        parts = urlsplit(location)
        path = parts.path.replace(f"/v2/{self.prefix}/", "/v2/", 1)
        return path + (f"?{parts.query}" if parts.query else "")

    def _send_head(self, req: BaseHTTPRequestHandler, status: int, headers: dict[str, str], length: int) -> None:
        self.requests.append((req.command, urlsplit(req.path).path, status))
        req.send_response(status)
        headers.setdefault("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(length))
        req.end_headers()

    def _reply(self, req: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.requests.append((req.command, urlsplit(req.path).path, status))
        send(req, status, data, {"Docker-Distribution-API-Version": "registry/2.0", **headers})

    def _error(self, req: BaseHTTPRequestHandler, exc: RegistryError) -> None:
        data = json.dumps({"errors": [{"code": exc.code, "message": exc.message, "detail": None}]}).encode()
        self._reply(req, exc.status, data, {"Content-Type": "application/json", **exc.headers})
        req.close_connection = True  # a request body we did not read may still be on the wire
