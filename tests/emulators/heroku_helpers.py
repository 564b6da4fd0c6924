"""What the Heroku emulator's own tests (tests/test_emulator_heroku.py) drive it with: a small web app image, an
httpx client of the Platform API, apps made and deleted per test, and helpers to push, release, wait for dynos and
read log sessions. A test module names the fixtures it uses (``web_image = heroku_helpers.web_image``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from docker.errors import APIError

from conftest import TEST_BASE_IMAGE, build_from_files
from emulators.heroku import HerokuEmulator

ACCEPT = "application/vnd.heroku+json; version=3"
RELEASES = "application/vnd.heroku+json; version=3.docker-releases"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"

# A web process in the spirit of `python -m http.server`: / says which dyno and release answered; /sleep?s=N sleeps,
# /alloc?mb=N keeps N more MB (touched); NEVER_BIND never binds; CRASH exits 3;
# on SIGTERM it stops accepting, finishes the requests it has and exits 0 (PID 1 has no default action for it),
# unless IGNORE_TERM.
APP_PY = b'''
import os, signal, sys, threading, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
if os.environ.get("CRASH"):
    print("crashing on purpose", flush=True)
    sys.exit(3)
if os.environ.get("NEVER_BIND"):
    time.sleep(999)
KEPT = []
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/sleep":
            time.sleep(float(q["s"]))
        if url.path == "/alloc":
            block = bytearray(int(q["mb"]) << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            KEPT.append(block)
        body = f"{os.environ['DYNO']} {os.environ.get('VERSION', '-')} {os.getuid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)
class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
server = Server(("0.0.0.0", int(os.environ["PORT"])), H)
stop = lambda *_: threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("IGNORE_TERM") else stop)
print("listening on", os.environ["PORT"], flush=True)
server.serve_forever()
server.server_close()
'''


@pytest.fixture(scope="module")
def web_image(docker_engine: Any) -> Iterator[str]:
    tag = f"heroku-emu-web:{uuid.uuid4().hex[:6]}"
    build_from_files(docker_engine, {"Dockerfile": f"FROM {TEST_BASE_IMAGE}\nCOPY app.py /app.py\n"
                                     'CMD ["python3", "/app.py"]\n'.encode(), "app.py": APP_PY}, tag)
    yield tag
    docker_engine.images.remove(tag, force=True)


@pytest.fixture
def api(heroku: HerokuEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=heroku.api_url, timeout=30, headers={
            "Accept": ACCEPT, "Authorization": f"Bearer {heroku.api_key}"}) as client:
        yield client


@pytest.fixture
def new_app(api: httpx.Client, heroku: HerokuEmulator) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(**body: Any) -> str:
        name = f"emu-{uuid.uuid4().hex[:8]}"
        resp = api.post("/apps", json={"name": name, "region": "eu", "stack": "container", **body})
        assert resp.status_code == 201, resp.text
        made.append(name)
        return name

    yield make
    for name in made:
        api.delete(f"/apps/{name}")
    deadline = time.monotonic() + 30
    while any(heroku.containers(n) for n in made) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [c.name for n in made for c in heroku.containers(n)]


def push(docker_engine: Any, heroku: HerokuEmulator, image: str, app: str, key: str | None = None) -> str:
    """Push ``image`` as <registry>/<app>/web with `_:<key>`; returns the image id (config digest)."""
    repo = f"{heroku.registry}/{app}/web"
    docker_engine.images.get(image).tag(repo, "latest")
    try:
        for line in docker_engine.images.push(repo, "latest", stream=True, decode=True,
                                              auth_config={"username": "_", "password": key or heroku.api_key}):
            if "error" in line:
                raise APIError(line["error"])
    finally:
        docker_engine.images.remove(f"{repo}:latest")
    return str(docker_engine.images.get(image).id)


def release(api: httpx.Client, app: str, image_id: str) -> dict[str, Any]:
    resp = api.patch(f"/apps/{app}/formation", headers={"Accept": RELEASES},
                     json={"updates": [{"type": "web", "docker_image": image_id}]})
    assert resp.status_code == 200, resp.text
    releases = api.get(f"/apps/{app}/releases", headers={"Range": "version ..; max=1, order=desc"}).json()
    return dict(releases[0])


def deploy_up(api: httpx.Client, heroku: HerokuEmulator, docker_engine: Any, image: str, app: str) -> dict[str, Any]:
    """Push and release ``image`` on ``app``, then wait for its one web dyno to be up; returns the release."""
    released = release(api, app, push(docker_engine, heroku, image, app))
    wait_for(lambda: dyno_states(api, app) == [("web.1", released["version"], "up")], what="web.1 up")
    return released


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not after {timeout}s: {what}")


def dyno_states(api: httpx.Client, app: str) -> list[tuple[str, int, str]]:
    return [(d["name"], d["release"]["version"], d["state"]) for d in api.get(f"/apps/{app}/dynos").json()]


def log_text(api: httpx.Client, app: str, **body: Any) -> str:
    session = api.post(f"/apps/{app}/log-sessions", json={"lines": 1500, "tail": False, **body})
    assert session.status_code == 201, session.text
    return httpx.get(session.json()["logplex_url"], timeout=10).text
