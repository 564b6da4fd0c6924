"""What the Cloud Run emulator does with Docker: run a revision's container, probe it, stop it, and
route a service's requests to it through a small reverse proxy.

Pure helpers with no emulator state, so `cloudrun.py` stays about the API.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LABEL = "dev.mlship.emulator"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length"}


def run_container(docker: Any, image: str, *, name: str, port: int, env: dict[str, str], labels: dict[str, str],
                  command: list[str] | None, args: list[str] | None, mem_limit: int | None,
                  nano_cpus: int | None, user: str | None = None, host_network: bool = False) -> tuple[Any, int]:
    """Pull ``image`` and run it detached with ``port`` published on an ephemeral 127.0.0.1 port (as ``user``
    when given, else the image's user). ``host_network``: in the host's network instead, listening on a free
    loopback port (PORT and MLSHIP_HOST set), so it reaches the emulators on loopback."""
    docker.images.pull(image)
    if host_network:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            free = int(sock.getsockname()[1])
        container = docker.containers.run(
            image, name=name, detach=True, environment={**env, "PORT": str(free), "MLSHIP_HOST": "127.0.0.1"},
            labels=labels, network_mode="host", entrypoint=command or None, command=args or None,
            mem_limit=mem_limit, memswap_limit=mem_limit if mem_limit else None, nano_cpus=nano_cpus,
            stop_signal="SIGTERM", **({"user": user} if user else {}))
        return container, free
    container = docker.containers.run(
        image, name=name, detach=True, environment=env, labels=labels,
        ports={f"{port}/tcp": ("127.0.0.1", None)}, entrypoint=command or None, command=args or None,
        mem_limit=mem_limit, memswap_limit=mem_limit if mem_limit else None, nano_cpus=nano_cpus,
        stop_signal="SIGTERM", **({"user": user} if user else {}))
    for _ in range(50):  # the engine fills in the port binding a moment after start
        container.reload()
        bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
        if bindings:
            return container, int(bindings[0]["HostPort"])
        if container.status in ("exited", "dead"):
            break
        time.sleep(0.05)
    return container, 0


def stop_container(container: Any, grace_s: int = 10) -> None:
    """SIGTERM, SIGKILL after ``grace_s`` (Cloud Run's 10 s by default); then remove it. Never raises."""
    with contextlib.suppress(Exception):  # already gone, or being removed by another thread
        container.stop(timeout=grace_s)
    with contextlib.suppress(Exception):
        container.remove(force=True)


def logs_tail(container: Any, lines: int = 20) -> str:
    try:
        return str(container.logs(tail=lines).decode(errors="replace")).strip() or "(no output)"
    except Exception:
        return "(no logs: the container is gone)"


def exit_code(container: Any) -> int | None:
    try:
        container.reload()
    except Exception:
        return -1
    if container.status in ("exited", "dead"):
        return int(container.attrs.get("State", {}).get("ExitCode", -1))
    return None


def listening(container: Any, port: int, host_port: int) -> bool:
    """Whether a process in ``container`` (reloaded) listens on ``port``: read from its network namespace's socket
    tables when the engine runs on this machine, else by connecting through the published ``host_port``."""
    pid = int(container.attrs.get("State", {}).get("Pid") or 0)
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            local = pid > 0 and container.id in fh.read()
    except OSError:
        local = False
    if not local:
        return bool(host_port) and _tcp_open(host_port, 0.5)
    suffix = f":{port:04X}"
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if len(cols) > 3 and cols[1].endswith(suffix) and cols[3] == "0A":  # 0A: LISTEN
                    return True
    return False


def memory_used(container: Any) -> int | None:
    """The container's memory in bytes without the page cache (as `docker stats` counts it); None when gone."""
    try:
        stats = container.stats(stream=False, one_shot=True)["memory_stats"]
    except Exception:
        return None
    extra = stats.get("stats") or {}
    return int(stats.get("usage", 0)) - int(extra.get("total_cache", extra.get("inactive_file", 0)))


def _tcp_open(host_port: int, timeout: float) -> bool:
    """True when something accepts on the port and keeps the connection open (Docker's userland proxy
    accepts every connection, then closes it at once when nothing listens in the container)."""
    try:
        with socket.create_connection(("127.0.0.1", host_port), timeout=timeout) as sock:
            sock.settimeout(0.2)
            try:
                return sock.recv(1) != b""
            except TimeoutError:
                return True
    except OSError:
        return False


def _http_ok(host_port: int, path: str, headers: dict[str, str], timeout: float) -> tuple[bool, str]:
    conn = http.client.HTTPConnection("127.0.0.1", host_port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
        return 200 <= status < 400, f"HTTP {status}"
    except (OSError, http.client.HTTPException) as exc:
        return False, type(exc).__name__
    finally:
        conn.close()


def startup_probe(container: Any, host_port: int, probe: dict[str, Any], port: int, cancelled: threading.Event,
                  container_name: str) -> str:
    """Run a Cloud Run startup probe (template dict shape); "" once it passes, else why it failed."""
    delay = int(probe.get("initialDelaySeconds", 0))
    timeout = int(probe.get("timeoutSeconds", 1))
    period = int(probe.get("periodSeconds", 10))
    threshold = int(probe.get("failureThreshold", 3))
    http_get = probe.get("httpGet")
    kind = "HTTP" if http_get is not None else "TCP"
    where = f'path "{http_get.get("path") or "/"}"' if http_get is not None else f"port {port}"
    if cancelled.wait(delay):
        return "cancelled"
    failures, last = 0, ""
    while True:
        started = time.monotonic()
        if http_get is not None:
            headers = {h["name"]: h.get("value", "") for h in http_get.get("httpHeaders", [])}
            ok, last = _http_ok(host_port, http_get.get("path") or "/", headers, timeout)
        else:  # one TCP attempt keeps trying to connect until its timeout (Cloud Run's default: 240 s)
            ok = False
            while not ok and time.monotonic() - started < timeout and exit_code(container) is None:
                ok = _tcp_open(host_port, 1.0) or cancelled.wait(0.1)
        if ok:
            return "" if not cancelled.is_set() else "cancelled"
        code = exit_code(container)  # an attempt cut short by the container exiting is an exit, not a probe failure
        if code is not None:
            return f"The container exited with code {code} before the startup probe passed."
        failures += 1
        if failures >= threshold:
            detail = f" (last answer: {last})" if last else ""
            return (f"STARTUP {kind} probe failed {failures} time{'s' * (failures > 1)} consecutively for "
                    f'container "{container_name}" on {where}{detail}. The instance was not started.')
        if cancelled.wait(max(0.0, period - (time.monotonic() - started))):
            return "cancelled"


Answer = tuple[int, bytes, dict[str, str]]


class ProxyHooks:
    """What a platform's front end does around each forwarded request; the defaults are Cloud Run's answers.
    A platform subclasses it (the Heroku router: H10/H12/H14 pages and router log lines)."""

    label_header: str | None = "X-Cloudrun-Emulator-Revision"  # names the instance that answered, if set

    def forbidden(self) -> Answer:
        return 403, b"Error: Forbidden. Your client does not have permission to get URL from this server.\n", {}

    def no_route(self) -> Answer:
        return 503, b"Service Unavailable: no ready revision takes traffic.\n", {}

    def timed_out(self, label: str) -> Answer:
        return 504, b"upstream request timeout\n", {}

    def unreachable(self, label: str) -> Answer:
        return 503, b"Service Unavailable: the instance did not answer.\n", {}

    def forwarded_headers(self, client: str) -> dict[str, str]:
        return {"X-Forwarded-For": client, "X-Forwarded-Proto": "http"}

    def answered(self, method: str, path: str, label: str, status: int, seconds: float, size: int) -> None:
        """Called once per request with what the client got (label "" when no instance was picked)."""


class LoopbackServer:
    """A threading HTTP/1.1 server on an ephemeral 127.0.0.1 port whose every request (any method) goes to
    ``handle(request)``; served by a daemon thread until ``close()``."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None], name: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"{name}-{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def send(req: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str]) -> None:
    """Answer ``req`` with ``data`` (no body for HEAD) and a Content-Length."""
    req.send_response(status)
    for key, value in headers.items():
        req.send_header(key, value)
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(data)


def read_body(req: BaseHTTPRequestHandler) -> bytes:
    """The request's body, by Content-Length or chunked."""
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(req.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
        while req.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)
    return req.rfile.read(int(req.headers.get("Content-Length") or 0))


class Proxy(LoopbackServer):
    """A reverse proxy on its own 127.0.0.1 port: ``route()`` picks (host port, revision) per request."""

    def __init__(self, route: Callable[[], tuple[int, str] | None], *, timeout: Callable[[], float],
                 authorize: Callable[[dict[str, str]], bool], hooks: ProxyHooks | None = None) -> None:
        self.route, self.timeout, self.authorize, self.hooks = route, timeout, authorize, hooks or ProxyHooks()
        super().__init__(self._forward, "proxy")

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        on, started, label = self.hooks, time.monotonic(), ""

        def answer(status: int, data: bytes, headers: dict[str, str]) -> None:
            send(req, status, data, headers)
            on.answered(req.command, req.path, label, status, time.monotonic() - started, len(data))

        body = read_body(req)
        if not self.authorize({k.lower(): v for k, v in req.headers.items()}):
            return answer(*on.forbidden())
        target = self.route()
        if target is None:
            return answer(*on.no_route())
        host_port, label = target
        conn = http.client.HTTPConnection("127.0.0.1", host_port, timeout=self.timeout())
        try:
            conn.putrequest(req.command, req.path, skip_host=True, skip_accept_encoding=True)
            for key, value in req.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    conn.putheader(key, value)
            for key, value in on.forwarded_headers(req.client_address[0]).items():
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
            if on.label_header:
                headers[on.label_header] = label
            answer(resp.status, data, headers)
        except TimeoutError:
            answer(*on.timed_out(label))
        except (OSError, http.client.HTTPException):
            answer(*on.unreachable(label))
        finally:
            conn.close()
        return None


def weighted_choice(targets: list[tuple[int, str, int]]) -> tuple[int, str] | None:
    """(host port, revision) drawn by percent from [(host port, revision, percent)]; None when all are 0."""
    live = [t for t in targets if t[2] > 0 and t[0]]
    if not live:
        return None
    port, revision, _ = random.choices(live, weights=[t[2] for t in live])[0]
    return port, revision
