"""Removing what a test session built from the Docker engine (the fixture is in tests/conftest.py).

Images the tests build (iris, keras, torch, pushed copies...) add up to gigabytes, and other sessions may build on
the same engine at the same time: a session removes only images it made itself and that nobody else tagged.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

TEST_REGISTRY = os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")


def engine_or_none() -> Any:
    """A Docker client when something listens at $DOCKER_HOST (2 s at most), else None; never raises. The socket is
    tried first: the SDK leaves one open when the engine is down (a ResourceWarning, an error under filterwarnings)."""
    scheme, _, rest = (os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock").partition("://")
    try:
        if scheme == "unix":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(rest)
        elif scheme in ("tcp", "http", "https"):
            address, _, port = rest.split("/")[0].rpartition(":")
            socket.create_connection((address.strip("[]"), int(port)), timeout=2).close()
        import docker

        return docker.from_env(timeout=300)
    except Exception:
        return None


class Made:
    """What this session's Docker SDK calls made: the short ids of the images its builds made (steps that ran, not
    cache hits, which may be another session's), and the tags it set (build, tag, pull)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.tags: set[str] = set()

    def add_tag(self, repository: str, tag: str | None = None) -> None:
        named = tag is None and ":" in repository.rsplit("/", 1)[-1]
        self.tags.add(repository if named else f"{repository}:{tag or 'latest'}")

    def record(self, patch: pytest.MonkeyPatch) -> None:
        from docker.api.client import APIClient

        build, set_tag, pull = APIClient.build, APIClient.tag, APIClient.pull

        def noting_build(api: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("tag"):
                self.add_tag(kwargs["tag"])
            stream = build(api, *args, **kwargs)
            return stream if isinstance(stream, str) else self._read(stream)

        def noting_tag(api: Any, image: str, repository: str, tag: str | None = None, **kwargs: Any) -> Any:
            self.add_tag(repository, tag)
            return set_tag(api, image, repository, tag, **kwargs)

        def noting_pull(api: Any, repository: str, tag: str | None = None, **kwargs: Any) -> Any:
            self.add_tag(repository, tag)
            return pull(api, repository, tag, **kwargs)

        patch.setattr(APIClient, "build", noting_build)
        patch.setattr(APIClient, "tag", noting_tag)
        patch.setattr(APIClient, "pull", noting_pull)

    def _read(self, stream: Iterator[Any]) -> Iterator[Any]:
        """Pass the build's stream on, noting the images of the steps that ran. Undecoded streams are JSON lines
        (split anywhere; `>` written as \u003e), decoded ones dicts."""
        raw, text, cached = "", "", False
        for chunk in stream:
            yield chunk
            if isinstance(chunk, dict):
                messages = [chunk]
            else:
                *done, raw = (raw + (chunk.decode(errors="replace") if isinstance(chunk, bytes) else str(chunk))
                              ).split("\n")
                messages = [_json(line) for line in done]
            for message in messages:
                aux = message.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    text += f"Successfully built {str(aux['ID']).removeprefix('sha256:')[:12]}\n"
                *lines, text = (text + str(message.get("stream", ""))).split("\n")
                for line in lines:
                    cached = self._line(line.strip(), cached)

    def _line(self, line: str, cached: bool) -> bool:
        """Note the image a build line names unless its step came from the cache; returns that state."""
        if re.match(r"Step \d+/\d+ : ", line):  # a FROM step's image is the base: not made here either
            return bool(re.match(r"Step \d+/\d+ : FROM ", line, re.IGNORECASE))
        cached = cached or line == "---> Using cache"
        found = re.fullmatch(r"(?:---> |Successfully built )([0-9a-f]{12})", line)
        if found and not cached:
            self.ids.add(found.group(1))
        return cached


def _json(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _listed(cli: Any) -> list[Any]:
    """The engine's top-level images. The SDK inspects each one it lists: one that another session removes in between
    answers 404, and the listing is taken again (5 times at most)."""
    from docker.errors import NotFound

    for attempt in range(5):
        try:
            return list(cli.images.list())
        except NotFound:
            if attempt == 4:
                raise
    return []


def remove_images(cli: Any, before: set[str], made: Made, base_image: str) -> str:
    """Remove the images of ``made`` (see tests/conftest.py, _remove_session_images); returns one line."""
    from docker.errors import DockerException

    def mlship(img: Any) -> bool:
        return not img.tags or any(t.startswith(TEST_REGISTRY + "/") for t in img.tags) or any(
            key.startswith(("dev.mlship.", "org.opencontainers.image.")) for key in img.labels)

    def left_untagged(img: Any) -> bool:
        """An mlship image that lost its last tag during the session: a build in a subprocess (`mlship build` run as
        a command, which the SDK patch does not see) moved its tag to a newer image."""
        return not img.tags and any(key.startswith("dev.mlship.") for key in img.labels)

    def layers_size() -> int | None:
        """The engine's layer bytes; None while another session's disk-usage query runs (the engine answers one at a
        time: "a disk usage operation is already running"), which must not stop the removal."""
        try:
            return int(cli.df()["LayersSize"])
        except DockerException:
            return None

    def removed(img: Any) -> bool:
        try:
            cli.images.remove(img.id, force=True)  # force: also tagged for the registry; no container runs it
            return True
        except DockerException:
            return False

    try:
        running = {c.attrs.get("Image") for c in cli.containers.list()}
        base = cli.images.get(base_image).id
        ours = [img for img in _listed(cli)  # top level: removing one removes its untagged parents too
                if img.id not in before and img.id != base and set(img.tags) <= made.tags and mlship(img)
                and (img.id.removeprefix("sha256:")[:12] in made.ids or left_untagged(img))]
        disk = layers_size()
        gone = [img for img in ours if img.id not in running and removed(img)]
        after = layers_size()
        freed = f"{(disk - after) / 1e6:.0f} MB freed" if disk is not None and after is not None else "size not known"
    except DockerException as exc:
        return f"test images: not removed: {str(exc).splitlines()[0][:200]}"
    return f"test images: removed {len(gone)} of the {len(ours)} images this session built ({freed})"


def remove_service(cli: Any, name: str) -> None:
    """Remove service ``name``'s containers and its images (tagged ``name:...``) but its dependency stage's image
    (label dev.mlship.stage=deps, tag ``name:mlship-deps-cache``): a later build in this session with the same lock
    (torch's, a minute to install) reuses its layers, and the session's cleanup removes it at the end."""
    for container in cli.containers.list(all=True, filters={"label": f"dev.mlship.service={name}"}):
        container.remove(force=True)
    for image in cli.images.list(name=name):
        if image.labels.get("dev.mlship.stage") != "deps":
            cli.images.remove(image.id, force=True)
