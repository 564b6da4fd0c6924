"""The heroku target without Heroku: its options, the platform's limits and the dyno fit (pure), the API key's
discovery, the Platform API client's retries and errors against a small local HTTP server, and the server's
listen-when-ready mode that Heroku's preboot relies on (a real server process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, free_port, make_iris_project
from mlship.errors import ContractError, TargetError
from mlship.targets.base import parse_options
from mlship.targets.heroku.api import HerokuApi, find_key
from mlship.targets.heroku.options import HerokuOptions
from mlship.targets.heroku.spec import boot_problem, limit_problems, memory_problem, plan_lines, smallest_fit
from mlship.targets.spec import DeploySpec

KEY = "hrku-0123456789abcdef-secret"


def options(**given: Any) -> HerokuOptions:
    return parse_options(HerokuOptions, "heroku", {"app": "iris-demo", **given})


def spec(**changes: Any) -> DeploySpec:
    return replace(DeploySpec(service="iris", version="abc123"), **changes)


@pytest.mark.parametrize(("given", "expected"), [
    ({"dyno": "standard-3x"}, "targets.heroku.dyno: Heroku has no dyno size 'standard-3x'; choose eco, basic, "
                              "standard-1x"),
    ({"app": "Iris_Demo"}, "targets.heroku.app: an app name has 3 to 30 characters"),
    ({"dyno": "basic", "quantity": 2}, "targets.heroku.quantity: basic dynos cannot scale beyond 1 web dyno"),
    ({"dyno": "eco", "preboot": True}, "targets.heroku.preboot: preboot needs a Standard or Performance dyno, not eco"),
    ({"team": "ml"}, "targets.heroku.team: team only applies to an app mlship creates"),
    ({"dynos": "basic"}, "targets.heroku.dynos: unknown key `dynos`; did you mean `dyno`?"),
    ({"env": {"API_TOKEN": "x"}}, "looks like a secret"),
    ({"env": {"PORT": "1"}}, "PORT is set by Heroku or mlship; remove it"),
])
def test_bad_options_name_the_key(given: dict[str, Any], expected: str) -> None:
    with pytest.raises(ContractError) as info:
        options(**given)
    assert expected in info.value.message


def test_defaults_and_preboot_by_size() -> None:
    opts = options()
    assert (opts.dyno, opts.quantity, opts.use_preboot, opts.quota_mib, opts.create) == ("standard-1x", 1, True, 512,
                                                                                         False)
    assert not options(dyno="basic").use_preboot
    assert options(dyno="performance-m").quota_mib == 2560 and options(quota_mb=400).quota_mib == 400


def test_router_and_sigkill_limits_refused_with_the_fix() -> None:
    assert limit_problems(spec()) == []  # the contract's defaults fit: timeout 30 s, drain 8 s
    [(problem, fix)] = limit_problems(spec(request_timeout_s=45))
    assert "serve.timeout_s is 45s, but Heroku's router answers 503 (H12)" in problem
    assert fix.startswith("Set serve.timeout_s to at most 30 in mlship.yaml")
    [(problem, fix)] = limit_problems(spec(grace_s=30))
    assert "Heroku kills a dyno 30s after SIGTERM" in problem and "below 30" in fix


def test_memory_fit_names_the_smallest_size_that_holds_it() -> None:
    assert memory_problem(spec(memory_mb=None), options()) is None
    assert memory_problem(spec(memory_mb=500.0), options()) is None  # 477 MiB < 512 MiB
    found = memory_problem(spec(memory_mb=700.0, memory_source="cgroup"), options())
    assert found is not None
    assert "measured a peak of 700 MB (668 MiB) for iris, over the quota of a standard-1x dyno (512 MiB)" in found[0]
    assert found[1] == ("Set targets.heroku.dyno: standard-2x in mlship.yaml: the smallest size that holds it "
                        "(1024 MiB, $50/month).")
    below = memory_problem(spec(memory_mb=300.0), options(quota_mb=200))
    assert below is not None and "over targets.heroku.quota_mb (200 MiB)" in below[0]
    assert below[1].startswith("Raise targets.heroku.quota_mb to at least 286")
    assert smallest_fit(3000.0) is not None and smallest_fit(3000.0).name == "performance-l"  # type: ignore[union-attr]
    huge = memory_problem(spec(memory_mb=200_000.0), options())
    assert huge is not None and huge[1].startswith("No Common Runtime dyno size holds it")


def test_boot_time_over_r10_is_refused() -> None:
    assert boot_problem(spec(ready_s=2.4)) is None and boot_problem(spec()) is None
    found = boot_problem(spec(ready_s=75.0))
    assert found is not None and "within 60s (R10)" in found[0] and "boot timeout" in found[1]


def test_plan_is_pure_and_names_limits_memory_and_rollback() -> None:
    lines = plan_lines(options(create=True, region="eu"), spec(memory_mb=46.0, memory_source="cgroup v1"),
                       image="iris:abc-123", registry="registry.heroku.com")
    text = "\n".join(lines)
    assert "create app iris-demo (stack container, region eu) if it does not exist" in text
    assert "push iris:abc-123 to registry.heroku.com/iris-demo/web" in text
    assert "46 MB (44 MiB, cgroup v1), 9% of the 512 MiB quota of a standard-1x dyno" in text
    assert "preboot on" in text and "roll back to the release that served before" in text


def test_key_from_env_then_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEROKU_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert find_key() is None
    (tmp_path / "netrc").write_text("machine git.heroku.com\n  login a@b.c\n  password other\n"
                                    f"machine api.heroku.com\n  login a@b.c\n  password {KEY}\n")
    assert find_key() == (KEY, f"{tmp_path / 'netrc'} (machine api.heroku.com)")
    monkeypatch.setenv("HEROKU_API_KEY", "from-env")
    assert find_key() == ("from-env", "$HEROKU_API_KEY")


class Script:
    """A local HTTP server answering each request with the next scripted (status, headers, body)."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict[str, Any]]]) -> None:
        self.answers, self.seen = list(answers), []  # type: ignore[var-annotated]
        script = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                script.seen.append((self.command, self.path, time.monotonic(), dict(self.headers)))
                status, headers, body = script.answers.pop(0) if script.answers else (200, {}, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def script() -> Iterator[Any]:
    made: list[Script] = []

    def make(*answers: tuple[int, dict[str, str], dict[str, Any]]) -> Script:
        made.append(Script(list(answers)))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_429_honours_retry_after_and_5xx_is_retried(script: Any) -> None:
    server = script((429, {"Retry-After": "1"}, {"id": "rate_limit", "message": "slow down"}),
                    (503, {}, {"id": "unavailable", "message": "try later"}),
                    (200, {}, {"email": "me@example.com"}))
    with HerokuApi(KEY, base_url=server.url) as api:
        assert api.get("/account", "GET /account") == {"email": "me@example.com"}
    times = [seen[2] for seen in server.seen]
    assert len(times) == 3 and times[1] - times[0] >= 0.95  # waited what Retry-After said
    assert server.seen[0][3]["Authorization"] == f"Bearer {KEY}"
    assert server.seen[0][3]["Accept"] == "application/vnd.heroku+json; version=3"


def test_retries_are_bounded_and_a_post_is_not_resent_after_a_5xx(script: Any) -> None:
    server = script(*[(429, {"Retry-After": "100"}, {"id": "rate_limit", "message": "slow down"})] * 3)
    started = time.monotonic()
    with HerokuApi(KEY, base_url=server.url, attempts=3, max_wait_s=0.2) as api, pytest.raises(TargetError) as info:
        api.get("/account", "GET /account")
    assert time.monotonic() - started < 5 and len(server.seen) == 3
    assert "Heroku answered 429 rate_limit: slow down" in info.value.message
    assert "Retried 3 times" in (info.value.why or "")
    server = script((500, {}, {"id": "internal", "message": "boom"}))
    with HerokuApi(KEY, base_url=server.url) as api, pytest.raises(TargetError):
        api.request("POST", "/apps/x/releases", "roll back", body={"release": "r"})
    assert len(server.seen) == 1  # a rollback is never sent twice


@pytest.mark.parametrize(("status", "ident", "expected_fix"), [
    (401, "unauthorized", "export HEROKU_API_KEY=$(heroku auth:token)"),
    (403, "forbidden", "heroku access:add"),
    (404, "not_found", "Check targets.heroku.app"),
    (422, "invalid_params", "Fix the value Heroku names"),
])
def test_client_errors_fail_at_once_with_a_fix_and_never_the_key(script: Any, status: int, ident: str,
                                                                  expected_fix: str) -> None:
    server = script((status, {}, {"id": ident, "message": f"refused {KEY}"}))
    with HerokuApi(KEY, base_url=server.url) as api, pytest.raises(TargetError) as info:
        api.get("/apps/iris-demo", "read app iris-demo")
    assert len(server.seen) == 1
    assert info.value.message.startswith(f"read app iris-demo: Heroku answered {status} {ident}: refused ***")
    assert expected_fix in (info.value.fix or "")
    assert KEY not in info.value.render() and KEY not in repr(api)
    server = script((404, {}, {"id": "not_found", "message": "no app"}))
    with HerokuApi(KEY, base_url=server.url) as api:
        assert api.get("/apps/gone", "read app gone", missing=True) is None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_listen_when_ready_binds_once_the_model_answers(tmp_path: Path, iris_model: Path) -> None:
    """MLSHIP_LISTEN_WHEN_READY=1 (set by the heroku target): the first moment the port accepts, /readyz is 200; a
    model that cannot load exits 1 without ever listening (a router never sends it a request)."""
    root = make_iris_project(tmp_path / "ok", iris_model)
    server = Server(root, env={"MLSHIP_LISTEN_WHEN_READY": "1"})
    try:
        server.wait_http(timeout=120)  # the first answer of any kind
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        server.stop()
    broken = make_iris_project(tmp_path / "broken", iris_model)
    (broken / "model" / "iris.joblib").write_bytes(b"not a pickle")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlship.serving", str(broken / "mlship.yaml"), "--host",
                             "127.0.0.1", "--port", str(port)], env={**os.environ, "MLSHIP_LISTEN_WHEN_READY": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_open, deadline = False, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        seen_open = seen_open or _port_open(port)
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate()[0]
    assert proc.returncode == 1 and not seen_open, output
    assert "model failed to load" in output


SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
IMAGE_ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("manifest", "kind", "config", "expected"), [
    ({"manifests": []}, "application/vnd.oci.image.index.v1+json", None, "made an OCI index or manifest list; Heroku "
                                                                         "releases only a Docker v2 schema-2"),
    ({"config": {"digest": "sha256:" + "cd" * 32}}, SCHEMA2, None, "names image sha256:cdcdcdcdcdcd, not the image"),
    ({"config": {"digest": IMAGE_ID}}, SCHEMA2, {"os": "linux", "architecture": "arm64"}, "is for linux/arm64"),
    ({"config": {"digest": IMAGE_ID}}, SCHEMA2, {"os": "linux", "architecture": "amd64"}, None),
])
def test_the_pushed_manifest_must_be_schema2_amd64_of_the_image(script: Any, manifest: dict[str, Any], kind: str,
                                                                config: dict[str, Any] | None,
                                                                expected: str | None) -> None:
    from mlship.targets.heroku.registry import MANIFEST_FIX, check_manifest

    server = script((200, {"Content-Type": kind}, manifest), (200, {"Content-Type": "application/json"}, config or {}))
    host = server.url.removeprefix("http://")
    if expected is None:
        check_manifest(host, "iris-demo/web", "v1", KEY, IMAGE_ID)
    else:
        with pytest.raises(TargetError) as info:
            check_manifest(host, "iris-demo/web", "v1", KEY, IMAGE_ID)
        assert expected in info.value.message
        assert info.value.fix == MANIFEST_FIX or kind == SCHEMA2
    assert server.seen[0][1] == "/v2/iris-demo/web/manifests/v1"
    assert server.seen[0][3]["Authorization"].startswith("Basic ")  # user _ with the key as password
