"""Heroku access for the ``heroku`` target: the API key, a small typed client of the Platform API v3 on httpx, retries
and error messages.

Why a client of our own: the Platform API is plain JSON over HTTPS with a handful of endpoints used here, and the
Python wrappers of it are unmaintained; httpx is a well-kept HTTP library with timeouts and connection reuse.

The key: ``$HEROKU_API_KEY``, else the password of ``machine api.heroku.com`` in ``$NETRC`` or ``~/.netrc`` (what
`heroku login` writes). It goes into the Authorization header and the registry login only: never into a log line,
an error or a repr. ``$MLSHIP_HEROKU_API_URL`` points the client at another API (an emulator),
``$MLSHIP_HEROKU_REGISTRY`` at another registry host.

Retries: 429 and 5xx answers (and connections that fail) are retried up to ``attempts`` times, waiting what
Retry-After says (at most ``max_wait_s``) or an exponential backoff; a POST is retried only on 429 or when it never
reached the server (it may not be safe to send twice). 401, 403, 404 and 422 fail at once with a fix.
"""

from __future__ import annotations

import netrc
import os
import time
from pathlib import Path
from typing import Any

import httpx

from mlship.errors import TargetError

API_URL, API_URL_ENV = "https://api.heroku.com", "MLSHIP_HEROKU_API_URL"
REGISTRY, REGISTRY_ENV = "registry.heroku.com", "MLSHIP_HEROKU_REGISTRY"
KEY_ENV, NETRC_MACHINE = "HEROKU_API_KEY", "api.heroku.com"
ACCEPT = "application/vnd.heroku+json; version=3"
ACCEPT_DOCKER_RELEASES = "application/vnd.heroku+json; version=3.docker-releases"  # formation updates with images
KEY_FIX = ("export HEROKU_API_KEY=$(heroku auth:token) (or run `heroku login`, which writes ~/.netrc; for CI, "
           "`heroku authorizations:create` makes a long-lived key)")


def find_key() -> tuple[str, str] | None:
    """(key, where it was found) or None."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key, f"${KEY_ENV}"
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(NETRC_MACHINE)
    except (netrc.NetrcParseError, OSError):
        return None
    if entry is None or not entry[2]:
        return None
    return entry[2], f"{path} (machine {NETRC_MACHINE})"


def no_key() -> TargetError:
    return TargetError("No Heroku API key found.",
                       why=f"The heroku target reads ${KEY_ENV}, else the password of `machine {NETRC_MACHINE}` in "
                       "$NETRC or ~/.netrc.", fix=KEY_FIX)


def api_url() -> str:
    return (os.environ.get(API_URL_ENV) or API_URL).rstrip("/")


def registry_host() -> str:
    return os.environ.get(REGISTRY_ENV) or REGISTRY


class HerokuApi:
    """One key's session with the Platform API. ``request`` returns the decoded JSON body or raises TargetError."""

    def __init__(self, key: str, *, base_url: str | None = None, attempts: int = 5, timeout_s: float = 30.0,
                 max_wait_s: float = 20.0) -> None:
        self._key = key
        self.base_url = base_url or api_url()
        self.attempts, self.max_wait_s = attempts, max_wait_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers={
            "Accept": ACCEPT, "Authorization": f"Bearer {key}", "User-Agent": "mlship"})

    def __repr__(self) -> str:  # never the key
        return f"HerokuApi({self.base_url!r})"

    @property
    def key(self) -> str:
        """For the registry login only."""
        return self._key

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HerokuApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, what: str, **kwargs: Any) -> Any:
        return self.request("GET", path, what, **kwargs)

    def request(self, method: str, path: str, what: str, *, body: Any = None, headers: dict[str, str] | None = None,
                missing: bool = False, fix: str | None = None) -> Any:
        """``method path`` with JSON ``body``; None when ``missing`` and Heroku answers 404."""
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self._http.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt == self.attempts or (method == "POST" and not never_sent):
                    raise self._unreachable(what, exc) from None
                time.sleep(delay)
                delay *= 2
                continue
            if resp.status_code < 400:
                return resp.json() if resp.content else None
            if resp.status_code == 404 and missing:
                return None
            retry = resp.status_code == 429 or (resp.status_code >= 500 and method != "POST")
            if not retry or attempt == self.attempts:
                raise self.error(resp, what, fix)
            time.sleep(min(self.max_wait_s, _retry_after(resp) or delay))
            delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def _unreachable(self, what: str, exc: httpx.TransportError) -> TargetError:
        text = self._redact(" ".join(str(exc).split())[:300])
        return TargetError(f"{what}: cannot reach the Heroku API at {self.base_url}: {type(exc).__name__}: {text}",
                           fix=f"Check your network (and ${API_URL_ENV}, if set); then run the command again.")

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def error(self, resp: httpx.Response, what: str, fix: str | None = None) -> TargetError:
        """A TargetError from an error answer: Heroku's ``id`` and ``message``, why, and a fix."""
        try:
            body = resp.json()
        except ValueError:
            body = {}
        ident = str(body.get("id") or resp.reason_phrase or resp.status_code) if isinstance(body, dict) else "?"
        message = self._redact(" ".join(str(body.get("message", "") if isinstance(body, dict) else "").split()))
        text = f"{what}: Heroku answered {resp.status_code} {ident}" + (f": {message[:400]}" if message else "")
        code = resp.status_code
        if code == 401:
            return TargetError(text, why="Heroku did not accept the API key (revoked, expired, or mistyped).",
                               fix=KEY_FIX)
        if code == 403:
            return TargetError(text, why="The key's account may not do this on the app (it is not a collaborator, or "
                               "its team role lacks the deploy permission).",
                               fix=fix or "Ask the app's owner to add your account (`heroku access:add EMAIL -a APP "
                               "--permissions deploy,operate`), or use a key of an account that may deploy it.")
        if code == 404:
            return TargetError(text, fix=fix or "Check targets.heroku.app in mlship.yaml (`heroku apps` lists yours).")
        if code == 429 or code >= 500:
            return TargetError(text, why=f"Retried {self.attempts} times (honouring Retry-After); it did not go away.",
                               fix="Try again in a few minutes; a re-run continues where this one stopped.")
        return TargetError(text, fix=fix or "Fix the value Heroku names in targets.heroku (mlship.yaml) and run again.")


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff
