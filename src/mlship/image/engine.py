"""Docker engine access through the Docker SDK (honours DOCKER_HOST, DOCKER_CONFIG auth)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship.errors import BuildError, EngineError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    tag: str
    id: str
    size: int  # bytes, uncompressed
    labels: dict[str, str]
    seconds: float = 0.0


def client() -> Any:
    """A Docker client, or an EngineError saying where we looked and how to fix it."""
    import docker
    from docker.errors import DockerException

    try:
        cli = docker.from_env(timeout=300)
        cli.ping()
        return cli
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineError(
            f"Cannot reach the Docker engine at {where}: {_short(exc)}",
            why="Building, testing and running images needs a Docker engine.",
            fix="Start Docker (e.g. `sudo systemctl start docker`, Docker Desktop, or `dockerd &`), "
            "or point DOCKER_HOST at a running engine.",
        ) from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]


def build(context: Path, tag: str, progress: Progress | None = None, log_path: Path | None = None,
          nocache: bool = False) -> Image:
    """`docker build` the context; streams step lines to ``progress``; full log kept in ``log_path``.

    ``nocache`` rebuilds every step without the engine's layer cache (used by bench/image_bench.py).
    """
    from docker.errors import APIError

    cli = client()
    log_lines: list[str] = []
    started = time.perf_counter()
    image_id = None
    try:
        for chunk in cli.api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True, pull=False,
                                   nocache=nocache):
            if "stream" in chunk:
                text = chunk["stream"]
                log_lines.append(text)
                line = text.strip()
                if progress and re.match(r"^Step \d+/\d+ : ", line):
                    progress(line)
                found = re.match(r"^Successfully built ([0-9a-f]+)", line)
                if found:
                    image_id = found.group(1)
            elif "error" in chunk:
                log_lines.append(chunk["error"] + "\n")
                raise BuildError(
                    f"docker build of {tag} failed: {chunk['error'].strip()}",
                    why=_tail(log_lines),
                    fix=f"Full log: {log_path}" if log_path else None,
                )
            elif "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except APIError as exc:
        raise BuildError(f"docker build of {tag} failed: {_short(exc)}", why=_tail(log_lines)) from None
    finally:
        if log_path is not None:
            log_path.write_text("".join(log_lines))
    if image_id is None:
        raise BuildError(f"docker build of {tag} produced no image.", why=_tail(log_lines))
    return inspect(tag, seconds=time.perf_counter() - started)


def _tail(lines: list[str], n: int = 15) -> str:
    return "".join(lines[-n:]).strip()


def inspect(ref: str, seconds: float = 0.0) -> Image:
    from docker.errors import ImageNotFound

    try:
        img = client().images.get(ref)
    except ImageNotFound:
        raise EngineError(f"No image {ref} in the local engine.", fix="Run `mlship build` first.") from None
    labels = dict(img.attrs.get("Config", {}).get("Labels") or {})
    return Image(tag=ref, id=img.id, size=int(img.attrs.get("Size", 0)), labels=labels, seconds=seconds)


def push(ref: str, registry: str, progress: Progress | None = None) -> str:
    """Tag ``ref`` as ``registry/ref`` and push it; returns the pushed reference with its digest."""
    from docker.errors import APIError, ImageNotFound

    cli = client()
    remote = f"{registry.rstrip('/')}/{ref}"
    repo, _, tag = remote.rpartition(":")
    try:
        cli.images.get(ref).tag(repo, tag)
    except ImageNotFound:
        raise EngineError(f"No image {ref} in the local engine.", fix="Run `mlship build` first.") from None
    digest = None
    try:
        for chunk in cli.api.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise EngineError(
                    f"Push of {remote} failed: {chunk['error'].strip()}",
                    fix="Check the registry address and your login (`docker login REGISTRY`).",
                )
            if progress and chunk.get("status") and chunk.get("id"):
                progress(f"{chunk['id']}: {chunk['status']}")
            aux = chunk.get("aux") or {}
            if "Digest" in aux:
                digest = aux["Digest"]
    except APIError as exc:
        raise EngineError(f"Push of {remote} failed: {_short(exc)}",
                          fix="Is the registry running and reachable from the Docker engine?") from None
    if digest is None:
        raise EngineError(f"Push of {remote} reported no digest.")
    return f"{repo}@{digest}"
