"""Helpers the cloud targets share: environment variable names in their options, pushing an image with registry
credentials, the smoke test of a deployed URL, and polling with a deadline. Each target keeps its platform's API
in its own package; what is the same logic everywhere lives here, once.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from mlship.contract import Example
from mlship.errors import EngineError, TargetError
from mlship.examples import check_example
from mlship.targets.base import Progress

T = TypeVar("T")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_WORDS = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def env_name(key: str, reserved: tuple[str, ...], set_by: str) -> str:
    """An environment variable name in a target's options (pydantic validator body: ValueError when bad)."""
    if not _ENV_NAME.match(key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    if key in reserved:
        raise ValueError(f"{key} is set by {set_by}; remove it")
    return key


def plain_env_name(key: str, *, readers: str, store: str, example: str) -> str:
    """A name for a plain (not secret) value: one that looks secret is refused (only the name is ever shown)."""
    if _SECRET_WORDS.search(key):
        raise ValueError(
            f"{key!r} looks like a secret, and plain env values are readable by anyone who can {readers}; store it "
            f"in {store} and reference it instead: `secrets: {{{key}: {example}}}`")
    return key


def env_strings(env: dict[str, str | int | float | bool]) -> dict[str, str]:
    """Option values as the strings a container gets (booleans as true/false)."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()}


def push_progress(progress: Progress) -> Progress:
    """Only the lines worth reading from a push (one per layer, not every byte-count update)."""
    def forward(line: str) -> None:
        if line.endswith((": Pushed", ": Layer already exists")) or ": Mounted from " in line:
            progress(line)
    return forward


def push_with_credentials(image: str, repository: str, *, username: str, password: str, registry: str,
                          progress: Progress) -> str:
    """Push ``image`` (NAME:VERSION) as ``repository``:VERSION with the engine logged in to ``registry`` as
    ``username``; returns the reference by digest (``repository@sha256:...``). The password goes to the engine's
    login only, never into a progress line or an error.

    The login and the push use one engine client (a login on another client does not reach this push).
    """
    from docker.errors import APIError, ImageNotFound

    from mlship.image import engine

    cli = engine.client()
    repo, tag = repository, image.rpartition(":")[2]
    digest = None
    try:
        cli.login(username=username, password=password, registry=f"https://{registry}", reauth=True)
        cli.images.get(image).tag(repo, tag)
        for chunk in cli.api.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise EngineError(f"Push of {repo}:{tag} failed: {chunk['error'].strip()}")
            if chunk.get("status") and chunk.get("id"):
                progress(f"{chunk['id']}: {chunk['status']}")
            digest = (chunk.get("aux") or {}).get("Digest", digest)
    except ImageNotFound:
        raise EngineError(f"No image {image} in the local engine.", fix="Run `mlship build` first.") from None
    except APIError as exc:
        raise EngineError(f"Push of {repo}:{tag} failed: {_one_line(exc)}".replace(password, "***")) from None
    finally:
        cli.close()
    if digest is None:
        raise EngineError(f"Push of {repo}:{tag} reported no digest.")
    return f"{repo}@{digest}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "explanation", None) or exc).split())[:500]


def poll(what: str, check: Callable[[], T | None], *, timeout_s: float, first_delay_s: float,
         max_delay_s: float = 5.0, fix: str = "") -> T:
    """Call ``check`` until it returns something other than None; the delay grows by half each time up to
    ``max_delay_s``. TargetError when ``timeout_s`` passes first."""
    deadline, delay = time.monotonic() + timeout_s, first_delay_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TargetError(f"{what}: not done within {timeout_s:g}s.", fix=fix or None)
        time.sleep(delay)
        delay = min(delay * 1.5, max_delay_s)


def smoke_test(url: str, examples: list[Example], *, version: str | None, headers: dict[str, str] | None = None,
               timeout_s: float = 30.0) -> list[str]:
    """POST every example to ``url``/predict and compare; problems (empty when all passed).

    ``version``: the X-Model-Version the URL must answer with (proves it reaches the new version).
    """
    sent = {"Content-Type": "application/json", **(headers or {})}
    problems: list[str] = []
    for i, example in enumerate(examples or []):
        req = urllib.request.Request(f"{url}/predict", data=json.dumps(example.input).encode(),  # noqa: S310
                                     method="POST", headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - http(s) service URL
                got, answered = json.loads(resp.read()), resp.headers.get("X-Model-Version")
        except urllib.error.HTTPError as exc:
            problems.append(f"examples[{i}]: {url}/predict answered HTTP {exc.code}: {exc.read()[:300]!r}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problems.append(f"examples[{i}]: POST {url}/predict failed: {getattr(exc, 'reason', exc)}")
            continue
        if version is not None and answered != version:
            problems.append(f"examples[{i}]: answered by model version {answered}, expected {version}")
        problems += [f"examples[{i}]: {p}" for p in check_example(i, example, got).problems]
    return problems
