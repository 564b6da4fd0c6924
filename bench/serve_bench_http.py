"""serve_bench.py's HTTP side: request bodies, a minimal HTTP/1.1 client (asyncio reader, blocking GET/POST) and the
server under test, a real `python -m mlship.serving` process on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serve_bench_cpus import memory_mb, proc_cpu_seconds

HOST = "127.0.0.1"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


# -- HTTP ------------------------------------------------------------------------------------------
def request_body(batch: list[list[float]], features: list[str] | None = None) -> bytes:
    """One bare instance for a single row (the common client call), else {"instances": [...]}."""
    instances = [dict(zip(features or FEATURES, row, strict=True)) for row in batch]
    body: Any = instances[0] if len(instances) == 1 else {"instances": instances}
    return json.dumps(body, separators=(",", ":")).encode()


def build_request(port: int, body: bytes, path: str = "/predict") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one response framed by Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"bad status line {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolError("response without Content-Length")
    end = lower.index(b"\r\n", at + 2)
    length = int(lower[at + 17:end])
    body = await reader.readexactly(length) if length else b""
    return status, body, b"\r\nconnection: close" in lower


def http_get(port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status of GET path, or None if nothing answers (yet)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def http_post(port: int, body: bytes, timeout: float = 10.0, path: str = "/predict") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- server process --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m mlship.serving` on a free loopback port, pinned to one CPU, logging to a file."""

    def __init__(self, project_dir: Path, cpu: int | None) -> None:
        self.port = free_port()
        self.log_path = project_dir / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in ("MLSHIP_API_KEYS", "PORT")}
        cmd = [sys.executable, "-m", "mlship.serving", str(project_dir / "mlship.yaml"),
               "--host", HOST, "--port", str(self.port)]
        preexec = None
        if cpu is not None:
            def preexec() -> None:
                os.sched_setaffinity(0, {cpu})
        with self.log_path.open("wb") as log:
            self.started = time.perf_counter()
            # own session: a Ctrl-C in the terminal reaches only the bench, which then stops the server
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=preexec, start_new_session=True)
        self.affinity = sorted(os.sched_getaffinity(self.proc.pid)) if cpu is not None else None

    def cold_start(self, body: bytes, timeout: float = 60.0) -> dict[str, float]:
        """Seconds from process start to the first HTTP answer, to /readyz 200, to a 200 prediction."""
        first_http = None
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"/readyz not 200 after {timeout:g}s:\n{self.log_tail()}")
            status = http_get(self.port, "/readyz")
            now = time.perf_counter()
            if status is not None and first_http is None:
                first_http = now - self.started
            if status == 200:
                ready = now - self.started
                break
            time.sleep(0.005)
        status, payload = http_post(self.port, body)
        if status != 200:
            raise RuntimeError(f"first prediction got {status}: {payload[:300]!r}")
        return {"first_http_s": first_http or ready, "readyz_s": ready,
                "first_prediction_s": time.perf_counter() - self.started}

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.proc.pid)

    def memory(self) -> dict[str, float] | None:
        return memory_mb(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.proc.kill()
            self.proc.wait()
