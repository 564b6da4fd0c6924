"""Run the prediction server: bind first, load the model in the background, drain on SIGTERM.

``python -m mlship.serving`` (used in images) and `mlship serve` both call :func:`serve`.

Shutdown (SIGTERM, Ctrl-C), in order:

1. ``/readyz`` turns 503 and every response from now on says ``Connection: close`` (``App.begin_shutdown``).
2. The listening socket stops taking connections without dropping any it took: its backlog shrinks to
   one, the connections the kernel already queued are accepted and answered, then it closes, so a client
   that connects later is refused (a clean error any client or load balancer retries elsewhere), never
   accepted and then reset.
3. Requests in flight finish (up to ``serve.shutdown_grace_s``); a connection closes after its response,
   an idle keep-alive connection once it has been idle a moment (serving/protocol.py), always FIN first.
4. The executor stops; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from mlship.contract import PORT_MAX, PORT_MIN, port_problem
from mlship.contract_io import Project
from mlship.errors import ServeError
from mlship.serving.app import App
from mlship.serving.listener import BACKLOG, backlog_warning, listen_backlog, stop_listening
from mlship.serving.protocol import protocol_class, read_timeouts

log = logging.getLogger("mlship.server")
LISTEN_WHEN_READY_ENV = "MLSHIP_LISTEN_WHEN_READY"



@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int | None = None  # None: $PORT, then mlship.yaml serve.port
    log_level: str = "info"


def api_keys_for(project: Project, environ: dict[str, str] | None = None) -> list[str]:
    """API keys from the environment. Required (and checked) when serve.auth is api_key."""
    env = os.environ if environ is None else environ
    opts = project.contract.serve
    keys = [k.strip() for k in env.get(opts.api_keys_env, "").split(",") if k.strip()]
    if opts.auth == "api_key" and not keys:
        raise ServeError(
            f"serve.auth is api_key but ${opts.api_keys_env} holds no keys.",
            why="Starting without keys would leave the model open to anyone.",
            fix=f"export {opts.api_keys_env}=key1,key2 (comma-separated), or set serve.auth: none.",
        )
    return keys


class PortError(ServeError):
    """The port from --port, $PORT or serve.port is not a TCP port number: bad input, exit code 2."""

    exit_code = 2


_PORT_FIX = {
    "--port": "Pass a port number from {lo} to {hi}, e.g. --port 8080.",
    "$PORT": "Set PORT to a number from {lo} to {hi} (export PORT=8080), or unset it to use serve.port.",
    "serve.port": "Set serve.port in mlship.yaml to a number from {lo} to {hi}, e.g. 8080.",
}


def check_port(value: int | str, source: str) -> int:
    """``value`` as a port, or a PortError naming ``source`` (--port, $PORT or serve.port) and the valid range."""
    fix = _PORT_FIX.get(source, _PORT_FIX["--port"]).format(lo=PORT_MIN, hi=PORT_MAX)
    why = f"The server listens on a TCP port, and TCP ports are numbered {PORT_MIN} to {PORT_MAX}."
    try:
        port = int(value)
    except ValueError:
        raise PortError(f"{source} is not a number: {value!r}.", why=why, fix=fix) from None
    problem = port_problem(port)
    if problem:
        raise PortError(f"{source} {problem}.", why=why, fix=fix)
    return port


def resolve_port(project: Project, port: int | None, environ: dict[str, str] | None = None) -> int:
    """The port to listen on: --port, then $PORT, then serve.port; each checked by :func:`check_port`."""
    env = os.environ if environ is None else environ
    if port is not None:
        return check_port(port, "--port")
    if env.get("PORT"):
        return check_port(env["PORT"].strip(), "$PORT")
    return check_port(project.contract.serve.port, "serve.port")


class _Server(uvicorn.Server):
    """uvicorn server that marks the app not-ready as soon as a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: App) -> None:
        super().__init__(config)
        self.mlship_app = app
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not super().handle_exit: uvicorn (>= 0.29) records the signal and re-raises it after a
        # graceful shutdown, so the process would die of SIGTERM (or KeyboardInterrupt on SIGINT)
        # instead of returning serve()'s exit code (0 after a clean drain).
        self.mlship_app.begin_shutdown()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
        else:
            self.should_exit = True

    def fatal(self) -> None:
        self.exit_code = 1
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown with a listener that refuses instead of dropping, and connections closed cleanly."""
        log.info("shutting down: no new connections; finishing the requests in flight")
        started = time.monotonic()
        await stop_listening(self.servers, sockets or [])
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        grace = self.config.timeout_graceful_shutdown or 0
        deadline = started + grace
        while _busy(state.connections) or state.tasks:
            if self.force_exit or time.monotonic() > deadline:
                log.error("shutdown_grace_s (%gs) is over: %d request(s) cancelled",
                          grace, len(state.tasks))
                for task in list(state.tasks):
                    task.cancel()
                break
            await asyncio.sleep(0.02)
        for connection in list(state.connections):  # idle ones that already got our FIN, or after the grace
            connection.transport.close()
        for server in self.servers:
            with contextlib.suppress(asyncio.TimeoutError):  # (not TimeoutError before Python 3.11)
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if not self.force_exit:
            await self.lifespan.shutdown()


def _busy(connections: set[Any]) -> bool:
    """Whether a connection still has something to answer (not one that only waits for the client's FIN)."""
    return any(not getattr(c, "lingering", False) for c in connections)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"Port {port} on {host} is already in use.",
                fix=f"Stop the other process or choose another port: --port {port + 1}.",
            ) from None
        raise ServeError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve(project: Project, config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code (1 if the model failed to load)."""
    port = resolve_port(project, config.port)
    keys = api_keys_for(project)
    timeouts = read_timeouts()
    # $MLSHIP_LISTEN_WHEN_READY=1: load first, then listen, where a bound port is the only readiness signal a platform
    # has (Heroku: preboot moves traffic to a dyno once it listens); a model that fails to load exits 1 unheard.
    early = App(project, keys) if os.environ.get(LISTEN_WHEN_READY_ENV) == "1" else None
    if early is not None and not early.load_now():
        return 1
    sock = _bind(config.host, port)  # bind before anything slow, so the platform sees the port at once
    warning = backlog_warning(listen_backlog(sock))
    if warning:
        log.warning("%s", warning)
    app = early or App(project, keys)
    uv_config = uvicorn.Config(
        app,
        lifespan="on",
        http=protocol_class(app, timeouts),
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        log_level=config.log_level,
        log_config=None,  # use the process's logging setup: one format for mlship and uvicorn
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(max(1, project.contract.serve.shutdown_grace_s)),
        timeout_keep_alive=5,
        backlog=BACKLOG,
    )
    server = _Server(uv_config, app)
    app.on_fatal = server.fatal
    log.info("mlship serving %s on http://%s:%d (auth: %s)", project.contract.name, config.host, port,
             "api_key" if keys else "none")
    server.run(sockets=[sock])
    return server.exit_code
