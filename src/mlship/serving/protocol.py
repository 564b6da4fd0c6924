"""HTTP/1.1 connections: uvicorn's httptools protocol plus read timeouts, the overload fast path and a clean close.

- **Read timeouts.** A request's headers must arrive within ``header_s`` (from the connection's start, or
  from the first byte of a later request on a keep-alive connection), its body within ``body_s`` after
  the headers. Otherwise the client gets ``408`` (when it sent part of a request) and the connection is
  closed: a client sending one byte a second no longer holds a connection for ever.
- **Overload fast path.** A ``POST /predict`` that arrives while ``serve.max_concurrency`` predictions are
  in progress is answered ``503`` + ``Retry-After`` in the callback that parsed its headers: no ASGI task,
  no wait behind the other callbacks and tasks queued on the event loop. Requests let through count as
  in progress from that moment (``App.admit``), so in a burst parsed before any task has run, the excess
  is answered here too.
- **Closing without resets.** The server closes a connection by sending FIN first and reading (and
  dropping) whatever the client still sends until it closes too, so a request that raced the close is
  not answered by a TCP reset. On shutdown (:meth:`shutdown`), a connection with a request in progress
  closes after its response (which says ``Connection: close``); an idle one stays open until it has been
  idle ``DRAIN_IDLE_S``, so a keep-alive client that was about to send its next request gets it answered
  (with ``Connection: close``) instead of finding the connection gone under it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mlship.errors import ServeError

HEADER_TIMEOUT_ENV = "MLSHIP_HEADER_TIMEOUT_S"
BODY_TIMEOUT_ENV = "MLSHIP_BODY_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
LINGER_S = 2.0  # after our FIN, how long to read and drop what the client still sends before closing for good
DRAIN_IDLE_S = 0.25  # on shutdown, an idle keep-alive connection is closed once it has been idle this long

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]  # status, headers (content-length is added), body


@dataclass(frozen=True)
class ReadTimeouts:
    header_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_s: float = DEFAULT_BODY_TIMEOUT_S


def read_timeouts(environ: dict[str, str] | None = None) -> ReadTimeouts:
    """The read timeouts from $MLSHIP_HEADER_TIMEOUT_S and $MLSHIP_BODY_TIMEOUT_S (seconds), else the defaults."""
    env = os.environ if environ is None else environ
    values = []
    for name, default in ((HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S), (BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S)):
        raw = env.get(name, "").strip()
        if not raw:
            values.append(default)
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 3600:
            raise ServeError(
                f"${name} is not a number of seconds from 0 to 3600: {raw!r}.",
                why="The server closes a connection whose request has not arrived within this time; it must be "
                    "a positive number of seconds.",
                fix=f"export {name}={default:g} (the default), or unset it.",
            )
        values.append(value)
    return ReadTimeouts(*values)


class EarlyAnswers(Protocol):
    """What the protocol asks the app (mlship.serving.app.App) without starting an ASGI task."""

    @property
    def stopping(self) -> bool: ...

    def overload_answer(self, headers: Headers) -> Answer | None: ...

    def admit(self) -> None: ...

    def admitted(self) -> None: ...

    def timeout_answer(self, what: str) -> Answer: ...


class _Nothing:
    def set(self) -> None:
        pass


class _Answered:
    """Stands in for uvicorn's RequestResponseCycle of a request answered by the protocol itself: complete, so
    the rest of its body is parsed and dropped."""

    response_started = True
    response_complete = True
    disconnected = False
    more_body = False
    message_event = _Nothing()

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.body = bytearray()


def protocol_class(app: EarlyAnswers, timeouts: ReadTimeouts) -> type[MlshipHttpProtocol]:
    """The protocol class for uvicorn's ``http=`` setting, bound to one app and its timeouts."""
    return type("BoundMlshipHttpProtocol", (MlshipHttpProtocol,), {"app_hooks": app, "timeouts": timeouts})


class MlshipHttpProtocol(HttpToolsProtocol):
    app_hooks: EarlyAnswers
    timeouts: ReadTimeouts = ReadTimeouts()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None  # the read timeout, or the wait for an idle close
        self._linger_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False
        self._idle_since = 0.0
        self.draining = False
        self.lingering = False

    # -- timers ----------------------------------------------------------------------------------------
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        if not self.lingering:
            self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- connection ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        self._arm(self.timeouts.header_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # closing: what the client still sends is read and dropped, so the close is a FIN, not a reset
        super().data_received(data)

    def idle(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self._reading_headers

    # -- parser callbacks ----------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._timer is None or self.draining:  # a new connection's first request: its timer runs already
            self._arm(self.timeouts.header_s, self._header_timeout)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm()
        if self.lingering:
            return  # a request after one answered with Connection: close, in the same packet: not answered
        if self.parser.get_method() == b"POST" and self.url.partition(b"?")[0] == b"/predict" and self.idle() \
                and not self.pipeline and not self.parser.should_upgrade():
            answer = self.app_hooks.overload_answer(self.headers)
            if answer is not None:
                self._answer(*answer)
                self._arm(self.timeouts.body_s, self._body_timeout)  # the rest of its body is read and dropped
                return
            # its task starts now (an idle connection): until the task's first step (scheduled first, so run
            # before this callback) has counted it in progress, it counts as starting
            hooks = self.app_hooks
            hooks.admit()
            try:
                super().on_headers_complete()
            finally:
                self.loop.call_soon(hooks.admitted)
        else:
            super().on_headers_complete()
        self._arm(self.timeouts.body_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()
        if self.draining and not self.transport.is_closing():
            self._close_when_idle()

    # -- answers written here --------------------------------------------------------------------------------
    def _answer(self, status: int, headers: Headers, body: bytes) -> None:
        keep_alive = (self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
                      and not self.draining and not self.app_hooks.stopping)
        self._write(status, headers, body, keep_alive)
        self.cycle = _Answered(keep_alive)  # type: ignore[assignment]  # the attributes uvicorn reads
        if keep_alive:
            self.on_response_complete()
        else:
            self.server_state.total_requests += 1
            self._linger_close()

    def _write(self, status: int, headers: Headers, body: bytes, keep_alive: bool) -> None:
        content = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers,
                            (b"content-length", str(len(body)).encode())]:
            content.extend([name, b": ", value, b"\r\n"])
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.extend([b"\r\n", body])
        self.transport.write(b"".join(content))

    def _header_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the next request's headers are late: close after this response
            return
        if self._reading_headers:
            self._write(*self.app_hooks.timeout_answer("headers"), keep_alive=False)
        self._linger_close()  # (a connection that sent nothing at all is closed without an answer)

    def _body_timeout(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if not cycle.response_started:
            self._write(*self.app_hooks.timeout_answer("body"), keep_alive=False)
        if not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() returns http.disconnect; its sends are dropped
            cycle.message_event.set()
        self._linger_close()

    # -- closing ---------------------------------------------------------------------------------------------
    def _linger_close(self) -> None:
        """Send FIN, then read and drop until the client closes too (or LINGER_S): never a reset."""
        if self.transport.is_closing() or self.lingering:
            return
        self.lingering = True
        self._disarm()
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def timeout_keep_alive_handler(self) -> None:
        self._linger_close()

    def shutdown(self) -> None:
        """The server stops: close after the response in progress, or once idle for DRAIN_IDLE_S."""
        self.draining = True
        if self.lingering:
            return  # already closing
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not self._reading_headers:
            self._close_when_idle()

    def _close_when_idle(self) -> None:
        delay = max(0.0, self._idle_since + DRAIN_IDLE_S - self.loop.time())
        self._arm(delay, self._drain_idle)

    def _drain_idle(self) -> None:
        self._timer = None
        if self.idle():
            self._linger_close()
        # else a request has begun: it is answered with Connection: close and the connection closes after it
