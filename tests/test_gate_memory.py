"""`mlship test` measures the container's peak memory while it loads the model and answers the examples (the
figure a deploy compares with a platform's memory quota): reported in --json, printed, and real (an image that
holds 300 MB more measures at least that much more)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import build_from_files
from mlship.cli import app

HOG_MB = 300
# imported by Python at start-up (PYTHONPATH): keeps HOG_MB of written (so resident) memory for the process' life
SITECUSTOMIZE = f'_HOG = b"x" * {HOG_MB * 1_000_000}\n'.encode()


@pytest.fixture(scope="module")
def hog_image(docker_engine: Any, iris_image: tuple[Path, str]) -> Iterator[str]:
    """The session's iris image whose server process holds HOG_MB more memory from its first line on."""
    files = {"Dockerfile": f"FROM {iris_image[1]}\nCOPY sitecustomize.py /opt/hog/sitecustomize.py\n"
                           "ENV PYTHONPATH=/opt/hog\n".encode(), "sitecustomize.py": SITECUSTOMIZE}
    tag = build_from_files(docker_engine, files, f"iris:hog-{uuid.uuid4().hex[:6]}")
    yield tag
    docker_engine.images.remove(tag, force=True)


def gate(root: Path, image: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["test", "-f", str(root), "--image", image, "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_memory_is_measured_and_follows_what_the_process_holds(iris_image: tuple[Path, str], hog_image: str) -> None:
    root, tag = iris_image
    plain, hog = gate(root, tag), gate(root, hog_image)
    assert plain["memory_source"] in ("cgroup v1 memory.max_usage_in_bytes (engine stats API)",
                                      "cgroup v2 memory.peak (read in the container)")
    assert 30 < plain["memory_mb"] < 1000, plain  # python + scikit-learn + a tiny model
    assert hog["memory_source"] == plain["memory_source"]
    # the 300 MB are counted (not a figure made up from the image): within what a second run may vary
    assert HOG_MB - 30 < hog["memory_mb"] - plain["memory_mb"] < HOG_MB + 60, (plain["memory_mb"], hog["memory_mb"])


def test_mlship_test_prints_the_peak_memory(iris_image: tuple[Path, str]) -> None:
    root, tag = iris_image
    result = CliRunner().invoke(app, ["test", "-f", str(root), "--image", tag])
    assert result.exit_code == 0, result.output
    found = re.search(r"peak memory (\d+(\.\d+)?) MB", result.stdout)
    assert found is not None, result.stdout
    assert 30 < float(found[1]) < 1000
