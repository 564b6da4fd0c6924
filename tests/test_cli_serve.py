"""`mlship serve`: the start-up checks in-process (never binding), and a real `mlship serve` process that
serves and stops on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import cli_helpers
from cli_helpers import invoke, plain, set_yaml
from conftest import free_port

project = cli_helpers.project


# -- serve ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_real_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process `mlship serve` must fail before binding: never run uvicorn or os._exit in pytest."""
    from mlship.serving import server

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mlship serve got past its start-up checks inside pytest")

    monkeypatch.setattr(server._Server, "run", refuse)
    monkeypatch.setattr(os, "_exit", refuse)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_api_key_auth_without_keys(project: Path) -> None:
    set_yaml(project, serve__auth="api_key")
    result = invoke("serve", "--port", str(free_port()))
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert "error: serve.auth is api_key but $MLSHIP_API_KEYS holds no keys." in err
    assert "fix: export MLSHIP_API_KEYS=key1,key2" in err


@pytest.mark.usefixtures("no_real_serving")
def test_serve_custom_keys_env_without_keys(project: Path) -> None:
    set_yaml(project, serve__auth="api_key", serve__api_keys_env="IRIS_KEYS")
    result = invoke("serve", "--port", str(free_port()), env={"IRIS_KEYS": " , "})
    assert result.exit_code == 1, result.output
    assert "$IRIS_KEYS holds no keys" in plain(result.stderr)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_port_in_use(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = invoke("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.exit_code == 1, result.output
    err = plain(result.stderr)
    assert f"error: Port {port} on 127.0.0.1 is already in use." in err
    assert f"--port {port + 1}" in err


@pytest.mark.usefixtures("no_real_serving")
def test_serve_bad_port_env(project: Path) -> None:
    result = invoke("serve", env={"PORT": "eighty"})
    assert result.exit_code == 2, result.output
    assert "$PORT is not a number: 'eighty'." in plain(result.stderr)


@pytest.mark.usefixtures("no_real_serving")
def test_serve_without_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("serve")
    assert result.exit_code == 2, result.output
    assert "No contract at" in result.stderr


def test_serve_subprocess_serves_and_stops_on_sigterm(project: Path) -> None:
    port = free_port()
    log = project / "serve.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mlship", "serve", "--port", str(port)],
                                cwd=project, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            ready = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            assert ready is not None and ready.status_code == 200, log.read_text()
            assert re.fullmatch(r"[0-9a-f]{12}", ready.json()["version"])
            pred = httpx.post(f"http://127.0.0.1:{port}/predict", timeout=5, json={
                "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2})
            assert pred.status_code == 200, pred.text
            assert pred.json()["label"] == "setosa"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert f"mlship serving iris on http://127.0.0.1:{port}" in log.read_text()
