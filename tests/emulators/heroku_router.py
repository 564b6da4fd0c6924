"""The Heroku emulator's router (one loopback port per app: its ``web_url``) and its log book.

The router sends each request to a random ``up`` dyno of the generation that serves (see heroku_dynos.py) and
answers as Heroku's router does, with its 503 "Application Error" page and a ``heroku[router]`` log line:

* H12 Request timeout: no response within the router timeout (30 s; configurable) - the dyno keeps working;
* H10 App crashed: every dyno that should serve has crashed;
* H14 No web processes running: the app has no web dynos (nothing released, or scaled to 0);
* H20 App boot timeout: dynos are starting and none came up while the request waited (Heroku holds a request for
  up to 75 s for a booting app; the emulator holds it for the configured boot limit, at most 75 s);
* H13 Connection closed without response: the dyno closed the connection.

Every answered request gets an ``at=info`` line (``method path host request_id fwd dyno connect service status
bytes protocol``), every error an ``at=error code=H.. desc=".."`` line. Forwarded requests carry X-Forwarded-For,
X-Forwarded-Proto, X-Forwarded-Port, X-Request-Id, X-Request-Start and Via, as Heroku's router adds them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from emulators._runtime import Answer, ProxyHooks

ERROR_PAGE = (b"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Application Error</title></head><body>"
              b"<iframe src=\"//www.herokucdn.com/error-pages/application-error.html\"></iframe></body></html>")
DESCRIPTIONS = {"H10": "App crashed", "H12": "Request timeout", "H13": "Connection closed without response",
                "H14": "No web processes running", "H20": "App boot timeout"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class LogBook:
    """Each app's log lines, in Heroku's format: ``<timestamp> <source>[<dyno>]: <text>``."""

    def __init__(self) -> None:
        self._lines: dict[str, list[tuple[str, str, str, str]]] = {}
        self._lock = threading.Lock()

    def add(self, app: str, source: str, dyno: str, text: str) -> None:
        with self._lock:
            self._lines.setdefault(app, []).append((now(), source, dyno, text))

    def drop(self, app: str) -> None:
        with self._lock:
            self._lines.pop(app, None)

    def read(self, app: str, lines: int, dyno: str | None = None, source: str | None = None) -> str:
        """The last ``lines`` lines; ``dyno`` "web" matches web.1, web.2... and "web.1" only that one; ``source``
        "app" or "heroku"."""
        with self._lock:
            found = [line for line in self._lines.get(app, [])
                     if (source is None or line[1] == source)
                     and (dyno is None or line[2] == dyno or line[2].startswith(f"{dyno}."))]
        return "".join(f"{ts} {src}[{name}]: {text}\n" for ts, src, name, text in found[-lines:] if lines > 0)


class RouterHooks(ProxyHooks):
    """The Heroku router's answers for one app (see the module docstring)."""

    label_header = None

    def __init__(self, app: str, logs: LogBook, why_not: Callable[[], str]) -> None:
        self.app, self.logs, self.why_not = app, logs, why_not
        self._request = threading.local()

    def forwarded_headers(self, client: str) -> dict[str, str]:
        request_id = str(uuid.uuid4())
        self._request.id, self._request.code = request_id, ""
        return {"X-Forwarded-For": client, "X-Forwarded-Proto": "http", "X-Forwarded-Port": "80",
                "X-Request-Id": request_id, "X-Request-Start": str(int(time.time() * 1000)), "Via": "1.1 vegur"}

    def _fail(self, code: str) -> Answer:
        self._request.code = code
        return 503, ERROR_PAGE, {"Content-Type": "text/html; charset=utf-8"}

    def no_route(self) -> Answer:
        return self._fail(self.why_not())

    def timed_out(self, label: str) -> Answer:
        return self._fail("H12")

    def unreachable(self, label: str) -> Answer:
        return self._fail("H13")

    def answered(self, method: str, path: str, label: str, status: int, seconds: float, size: int) -> None:
        code = getattr(self._request, "code", "")
        request_id = getattr(self._request, "id", "") or str(uuid.uuid4())
        self._request.code = self._request.id = ""
        head = f'at=error code={code} desc="{DESCRIPTIONS[code]}" ' if code else "at=info "
        self.logs.add(self.app, "heroku", "router",
                      f'{head}method={method} path="{path}" host={self.app}.herokuapp.com request_id={request_id} '
                      f'fwd="127.0.0.1" dyno={label} connect=0ms service={int(seconds * 1000)}ms status={status} '
                      f"bytes={size} protocol=http")
