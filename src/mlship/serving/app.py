"""The ASGI application: routing, limits, auth, readiness and the /predict hot path.

A plain ASGI callable (no framework) so each request costs little more than the model call.
The model runs in a thread pool; the event loop only parses, validates and answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hmac
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from mlship import __version__
from mlship.contract_io import Project
from mlship.errors import MlshipError
from mlship.serving import openapi, pages
from mlship.serving.batcher import Batcher, concat_rows
from mlship.serving.metrics import Metrics
from mlship.serving.predictor import Predictor
from mlship.serving.protocol import Answer, Headers
from mlship.serving.validation import Batch, InvalidInput

log = logging.getLogger("mlship.server")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/"})
KNOWN_PATHS = frozenset({"/", "/healthz", "/readyz", "/predict", "/metadata", "/openapi.json", "/docs", "/metrics"})
JSON = b"application/json"
MAX_DEPTH = 10_000  # nesting levels of arrays/objects accepted in a request body
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


class TooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client closed the connection (or the body timed out) before its request body arrived."""


CLOSE = (b"connection", b"close")


class _Expired(Exception):
    """A prediction ran past serve.timeout_s."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class App:
    """ASGI app for one project. ``state`` is loading -> ready (or failed) -> stopping."""

    def __init__(self, project: Project, api_keys: list[str], on_fatal: Callable[[], None] | None = None) -> None:
        self.project = project
        self.opts = project.contract.serve
        self.api_keys = [k.encode() for k in api_keys]
        self.on_fatal = on_fatal
        self.predictor = Predictor(project)
        self.version = project.version
        self._version_header = [(b"x-model-version", self.version.encode())]
        self.state = "loading"
        self.model_ready = False  # loaded and warmed up: predictions are answered, also while stopping
        self.starting = 0  # POST /predict requests handed to a task that has not run yet (serving/protocol.py)
        self.error: str | None = None
        self.metrics = Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(self.opts.threads, thread_name_prefix="mlship-model")
        self.batcher = Batcher(
            self.predictor.predict, self.executor, threads=self.opts.threads, max_rows=self.opts.max_batch_size,
            max_wait_s=self.opts.max_batch_wait_ms / 1000, coalesce=self.opts.batching and self.predictor.batchable,
            concat=concat_rows, release=self._release, observe=self.metrics.model_batch.observe,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        c = project.contract
        auth = bool(api_keys)
        self._openapi = orjson.dumps(openapi.openapi(c, self.version, auth))
        self._index = pages.index_page(c, self.version, auth).encode()
        self._docs = pages.docs_page(c, self.version, project.docs_text).encode()
        self._metadata = self._render_metadata()

    def _render_metadata(self) -> bytes:
        c = self.project.contract
        metadata: dict[str, Any] = {
            "name": c.name, "version": self.version, "runtime": c.runtime, "task": c.task,
            "labels": c.output.labels, "input": openapi.instance_schema(c),
            "docs": self.project.docs_text, "mlship_version": __version__,
            "batching": self.batcher.coalesce,
        }
        if c.input.tensor is not None:
            metadata["tensor"] = c.input.tensor.model_dump(mode="json")
        if self.predictor.input_path is not None:
            metadata["model_input"] = self.predictor.input_path
        metadata["compiled"] = self.predictor.compiled is not None
        if self.project.remote:  # where the model came from (docs/artifacts.md)
            from mlship.artifacts.resolve import describe

            metadata["artifact"] = describe(self.project)
        return orjson.dumps(metadata)

    # -- life cycle ---------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Load and warm up the model in a background thread; the port is already bound."""
        if not self.model_ready:  # loaded before the port was bound (load_now)
            threading.Thread(target=self._load, name="mlship-loader", daemon=True).start()

    def load_now(self) -> bool:
        """Load and warm up the model in this thread, before the port is bound; whether it loaded."""
        self._load()
        return self.model_ready

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.predictor.load()
            for warning in self.predictor.warnings:
                log.warning("while loading the model: %s", warning)
            if self.predictor.compile_note:
                log.warning("%s", self.predictor.compile_note)
            self.predictor.warm_up()
        except MlshipError as exc:
            self._fail(exc.render())
            return
        except Exception as exc:
            self._fail(f"{exc.__class__.__name__}: {exc}")
            return
        self._metadata = self._render_metadata()
        # The model, its framework and the server are now loaded: ~10^5 long-lived objects that every full
        # garbage collection would walk again (tens of ms, a pause that all requests in flight wait out).
        # Freezing moves them out of the collector's sight; little is garbage yet, so little is kept.
        gc.freeze()
        self.model_ready = True
        if self.state == "loading":
            self.state = "ready"
            self.metrics.ready = 1
        log.info("model %s %s ready in %.2fs (model input: %s; batching: %s)", self.project.contract.name,
                 self.version, time.perf_counter() - started, self.predictor.input_path or self.predictor.runtime.name,
                 "on" if self.batcher.coalesce else "off")

    def _fail(self, message: str) -> None:
        self.state, self.error = "failed", message
        log.error("model failed to load; /readyz stays 503:\n%s", message)
        if self.on_fatal is not None:
            self.on_fatal()

    def begin_shutdown(self) -> None:
        """SIGTERM: stop reporting ready; from now on every response says `Connection: close`. Requests in
        flight finish, and a request that still arrives on an open connection is answered (the model is loaded)."""
        self.state = "stopping"
        self.metrics.ready = 0

    @property
    def stopping(self) -> bool:
        return self.state == "stopping"

    # -- answers the HTTP protocol writes itself (serving/protocol.py) --------------------------------------
    def overload_answer(self, headers: Headers) -> Answer | None:
        """The 503 for a POST /predict that arrives while max_concurrency predictions are in progress, answered
        without starting a task; None when the request must go the usual way (not overloaded, not authorized,
        model not ready)."""
        if not self.model_ready or self.metrics.in_progress + self.starting < self.opts.max_concurrency:
            return None
        if not self._authorized({"headers": headers}):
            return None
        self.metrics.errors["overload"] += 1
        self.metrics.request("/predict", 503, 0.0)
        return 503, [(b"content-type", JSON), (b"retry-after", b"1")], self._overload_body()

    def admit(self) -> None:
        """A POST /predict goes on to its task: it counts against max_concurrency from now, so that the requests
        of a burst, parsed before any of their tasks runs, are not all let through."""
        self.starting += 1

    def admitted(self) -> None:
        """Its task has taken its first step: the request is now in progress (or answered) on its own."""
        self.starting -= 1

    def _overload_body(self) -> bytes:
        busy = self.metrics.in_progress + self.starting
        return orjson.dumps({"error": "overloaded", "message": f"{busy} predictions in progress; retry shortly"})

    def timeout_answer(self, what: str) -> Answer:
        """The 408 for a request whose headers or body did not arrive in time."""
        self.metrics.request("other", 408, 0.0)
        return 408, [(b"content-type", JSON)], orjson.dumps(
            {"error": "request_timeout", "message": f"the request {what} did not arrive in time; send it at once"})

    # -- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        path = scope["path"]
        code = await self._route(scope, receive, send, path)
        self.metrics.request(path if path in KNOWN_PATHS else "other", code, time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                self.start_loading()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send, path: str) -> int:
        method = scope["method"]
        if path == "/predict":
            if method != "POST":
                return await self._error(send, 405, "method_not_allowed", "use POST /predict", [(b"allow", b"POST")])
            if not self._authorized(scope):
                return await self._unauthorized(send)
            return await self._predict(scope, receive, send)
        if path not in KNOWN_PATHS:
            return await self._error(send, 404, "not_found", f"no endpoint {path}; see /docs")
        if method not in ("GET", "HEAD"):
            return await self._error(send, 405, "method_not_allowed", f"use GET {path}", [(b"allow", b"GET")])
        if path not in PUBLIC_PATHS and not self._authorized(scope):
            return await self._unauthorized(send)
        if path == "/healthz":
            return await self._respond(send, 200, b'{"status":"alive"}')
        if path == "/readyz":
            return await self._readyz(send)
        static = {"/": (self._index, b"text/html; charset=utf-8"), "/docs": (self._docs, b"text/html; charset=utf-8"),
                  "/openapi.json": (self._openapi, JSON), "/metadata": (self._metadata, JSON)}
        if path in static:
            body, ctype = static[path]
            return await self._respond(send, 200, body, ctype)
        return await self._respond(send, 200, self.metrics.render().encode(), b"text/plain; version=0.0.4")

    async def _readyz(self, send: Send) -> int:
        if self.state == "ready":
            return await self._respond(send, 200, orjson.dumps({"status": "ready", "version": self.version}))
        body = {"status": self.state}
        if self.error:
            body["error"] = self.error
        return await self._respond(send, 503, orjson.dumps(body), headers=[(b"retry-after", b"1")])

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_keys:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                token = value[7:].strip()
                return any(hmac.compare_digest(token, key) for key in self.api_keys)
        return False

    async def _unauthorized(self, send: Send) -> int:
        return await self._error(send, 401, "unauthorized", "send `Authorization: Bearer <API key>`",
                            [(b"www-authenticate", b"Bearer")])

    # -- /predict ---------------------------------------------------------------------------------
    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> int:
        if not self.model_ready:
            return await self._error(send, 503, "not_ready", f"the model is {self.state}; retry later",
                                [(b"retry-after", b"1")])
        if self.metrics.in_progress >= self.opts.max_concurrency:
            return await self._overloaded(send)
        try:
            raw = await self._read_body(scope, receive)
        except ClientGone:
            return 499  # nobody to answer (nginx's code for it, in /metrics only)
        except TooLarge:
            return await self._error(send, 413, "body_too_large",
                                f"request body exceeds {self.opts.max_body_bytes} bytes; send fewer instances")
        if _too_deep(raw):
            self.metrics.errors["invalid_input"] += 1
            return await self._error(send, 422, "invalid_json", f"the body nests deeper than {MAX_DEPTH} levels",
                                detail=[{"loc": ["body"], "msg": "nested too deeply", "type": "json_invalid",
                                         "expected": f"at most {MAX_DEPTH} levels of arrays/objects",
                                         "got": f"more than {MAX_DEPTH}"}])
        try:
            batch = self.predictor.validator.validate(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            self.metrics.errors["invalid_input"] += 1
            return await self._error(send, 422, "invalid_json", f"the body is not valid JSON: {exc}",
                                detail=[{"loc": ["body"], "msg": "invalid JSON", "type": "json_invalid",
                                         "expected": "a JSON document", "got": str(exc)}])
        except InvalidInput as exc:
            self.metrics.errors["invalid_input"] += 1
            return await self._error(send, 422, "invalid_input", exc.errors[0]["msg"], detail=exc.errors)
        if self.metrics.in_progress >= self.opts.max_concurrency:
            # checked again: other requests may have started while this body was arriving, and
            # nothing awaits from here to the increment in _run_model
            return await self._overloaded(send)
        self.metrics.batch.observe(len(batch.rows))
        return await self._run_model(batch, send)

    async def _overloaded(self, send: Send) -> int:
        self.metrics.errors["overload"] += 1
        return await self._respond(send, 503, self._overload_body(), headers=[(b"retry-after", b"1")])

    async def _run_model(self, batch: Batch, send: Send) -> int:
        self.metrics.in_progress += 1  # released by the batcher when the model call returns (or it is dropped)
        future = self.batcher.submit(batch.rows)
        # a timer that fails the future, not asyncio.wait_for: half the overhead per request, same effect (the
        # batcher drops a request whose future is done while it is still queued)
        loop = self.loop or asyncio.get_running_loop()
        timer = loop.call_later(self.opts.timeout_s, _expire, future)
        try:
            result = await future
        except _Expired:
            self.metrics.errors["timeout"] += 1
            return await self._error(send, 504, "timeout", f"the prediction took longer than {self.opts.timeout_s:g}s")
        except MlshipError as exc:
            self.metrics.errors["model"] += 1
            log.error("prediction failed: %s", exc.render())
            return await self._error(send, 500, "prediction_failed", exc.message)
        finally:
            timer.cancel()
        body = result[0] if batch.single else {"predictions": result}
        return await self._respond(send, 200, orjson.dumps(body), headers=self._version_header)

    def _release(self, requests: int) -> None:
        self.metrics.in_progress -= requests

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.opts.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _respond(self, send: Send, status: int, body: bytes, ctype: bytes = JSON,
                       headers: list[tuple[bytes, bytes]] | None = None) -> int:
        hdrs = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        if headers:
            hdrs.extend(headers)
        if self.state == "stopping":
            hdrs.append(CLOSE)  # the client opens a new connection (elsewhere) for its next request
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _error(self, send: Send, status: int, error: str, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None,
                     detail: list[dict[str, Any]] | None = None) -> int:
        payload: dict[str, Any] = {"error": error, "message": message}
        if detail is not None:
            payload["detail"] = detail
        return await self._respond(send, status, orjson.dumps(payload), headers=headers)


def _too_deep(raw: bytes) -> bool:
    """Whether arrays/objects in a JSON text nest deeper than MAX_DEPTH (brackets in strings don't count).

    orjson before 3.9.15 has no nesting limit (CVE-2024-27454): ~500k levels, well under the default
    1 MiB body limit, overflow the C stack and kill the whole process. Ordinary bodies hold fewer
    brackets than the limit, so for them this costs two ``bytes.count`` calls.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    chars = np.frombuffer(_ESCAPE.sub(b"", raw), dtype=np.uint8)  # drop escapes: every '"' left delimits
    outside = np.cumsum(chars == ord('"')) % 2 == 0
    depth = np.cumsum(np.where(outside, _DEPTH_STEP[chars], 0), dtype=np.int64)
    return depth.size > 0 and int(depth.max()) > MAX_DEPTH

