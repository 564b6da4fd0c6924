"""`mlship push` of the real iris image to the loopback registry that scripts/docker-up starts
($MLSHIP_TEST_REGISTRY, default 127.0.0.1:5555), pulled back with the Docker SDK; and a dead registry.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import free_port
from mlship.cli import app

REGISTRY = os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def registry() -> str:
    """The loopback registry; scripts/docker-up starts it (fails loudly, like the engine fixture)."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5):
            pass
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"no registry answers on http://{REGISTRY}/v2/ ({exc}): run `bash scripts/docker-up`, "
                    "or set MLSHIP_TEST_REGISTRY to one")
    return REGISTRY


def _untag(docker_engine: Any, ref: str) -> None:
    if docker_engine.images.list(name=ref):
        docker_engine.images.remove(ref)


def test_push_then_pull_back(iris_image: tuple[Path, str], registry: str, docker_engine: Any) -> None:
    root, tag = iris_image
    name, version = tag.split(":")
    remote = f"{registry}/{name}"
    local = docker_engine.images.get(tag)
    try:
        result = invoke("push", "--registry", registry, "-f", str(root), "--image", tag)
        assert result.exit_code == 0, result.output
        found = re.search(rf"pushed {re.escape(remote)}@(sha256:[0-9a-f]{{64}})", plain(result.stdout))
        assert found, result.stdout
        digest = found.group(1)

        _untag(docker_engine, f"{remote}:{version}")  # the tag push made; the image keeps its own tag
        assert not docker_engine.images.list(name=f"{remote}:{version}")
        pulled = docker_engine.images.pull(remote, tag=version)
        assert pulled.id == local.id
        assert f"{remote}@{digest}" in pulled.attrs["RepoDigests"]
        labels = pulled.labels
        assert labels["org.opencontainers.image.version"] == version
        assert labels["dev.mlship.model-sha256"] == local.labels["dev.mlship.model-sha256"]
        assert labels["dev.mlship.model-sha256"].startswith(version)
    finally:
        _untag(docker_engine, f"{remote}:{version}")


def test_push_to_a_dead_registry_is_a_clear_error(iris_image: tuple[Path, str], docker_engine: Any) -> None:
    root, tag = iris_image
    dead = f"127.0.0.1:{free_port()}"
    try:
        result = invoke("push", "--registry", dead, "-f", str(root), "--image", tag)
        assert result.exit_code == 1, result.output
        err = plain(result.stderr)
        assert f"error: Push of {dead}/{tag} failed:" in err
        assert "connection refused" in err
        assert "fix:" in err
    finally:
        _untag(docker_engine, f"{dead}/{tag}")


def test_push_of_a_missing_image_is_a_clear_error(iris_image: tuple[Path, str], registry: str) -> None:
    result = invoke("push", "--registry", registry, "-f", str(iris_image[0]), "--image", "iris:no-such-version")
    assert result.exit_code == 1
    assert "error: No image iris:no-such-version in the local engine." in plain(result.stderr)
