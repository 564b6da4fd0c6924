"""The Heroku emulator's own tests, driven with plain httpx and the Docker SDK (not through mlship's target): the
Platform API's auth and error bodies, the registry's login and manifest rules, and the dyno manager and router
running real containers (R10, H12, R14/R15, preboot, rollback, log sessions, injected 429s).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from docker.errors import APIError

from emulators import heroku_fixtures, heroku_helpers
from emulators.heroku import HerokuEmulator
from emulators.heroku_helpers import (
    ACCEPT,
    DOCKER_V2,
    deploy_up,
    dyno_states,
    log_text,
    push,
    release,
    wait_for,
)

heroku = heroku_fixtures.heroku
web_image, api, new_app = heroku_helpers.web_image, heroku_helpers.api, heroku_helpers.new_app


# --- API: auth, errors ------------------------------------------------------------------------------
def test_auth_is_refused_without_or_with_a_wrong_key(heroku: HerokuEmulator) -> None:
    none = httpx.get(f"{heroku.api_url}/account", headers={"Accept": ACCEPT})
    assert none.status_code == 401 and none.json()["id"] == "unauthorized"
    assert "Authorization" in none.json()["message"]
    wrong = httpx.get(f"{heroku.api_url}/account", headers={"Accept": ACCEPT, "Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json() == {"id": "unauthorized", "message": "Invalid credentials provided."}
    basic = base64.b64encode(f"owner@mlship.test:{heroku.api_key}".encode()).decode()
    ok = httpx.get(f"{heroku.api_url}/account", headers={"Accept": ACCEPT, "Authorization": f"Basic {basic}"})
    assert ok.status_code == 200 and ok.json()["email"] == "owner@mlship.test"
    versionless = httpx.get(f"{heroku.api_url}/account", headers={"Authorization": f"Bearer {heroku.api_key}"})
    assert versionless.status_code == 400 and versionless.json()["id"] == "missing_version"


def test_apps_create_get_delete_and_404(api: httpx.Client, heroku: HerokuEmulator,
                                        new_app: Callable[..., str]) -> None:
    missing = api.get("/apps/no-such-app-here")
    assert missing.status_code == 404 and missing.json()["id"] == "not_found" and missing.json()["resource"] == "app"
    name = new_app()
    app = api.get(f"/apps/{name}").json()
    assert (app["name"], app["stack"]["name"], app["region"]["name"]) == (name, "container", "eu")
    assert app["web_url"] == heroku.app_url(name)
    taken = api.post("/apps", json={"name": name})
    assert taken.status_code == 422 and taken.json() == {"id": "invalid_params", "message": "Name is already taken"}
    stranger = api.get(f"/apps/{name}", headers={"Authorization": f"Bearer {heroku.other_key}"})
    assert stranger.status_code == 403 and stranger.json()["id"] == "forbidden"
    versions = [r["version"] for r in api.get(f"/apps/{name}/releases").json()]
    assert versions == [1, 2]
    assert api.delete(f"/apps/{name}").status_code == 200
    assert api.get(f"/apps/{name}").status_code == 404
    team = api.post("/teams/apps", json={"name": f"t-{name}"[:30], "team": "no-team", "stack": "container"})
    assert team.status_code == 404 and team.json()["resource"] == "team"


def test_injected_429_carries_retry_after_then_clears(api: httpx.Client, heroku: HerokuEmulator) -> None:
    heroku.inject("GET", r"^/account$", 429, times=2, headers={"Retry-After": "2"})
    for _ in range(2):
        limited = api.get("/account")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
        assert limited.json()["id"] == "rate_limit"
    assert api.get("/account").status_code == 200
    assert heroku.calls[-3:] == [("GET", "/account")] * 3


def test_releases_page_by_range_with_next_range(api: httpx.Client, new_app: Callable[..., str]) -> None:
    app = new_app()
    for value in ("a", "b"):
        assert api.patch(f"/apps/{app}/config-vars", json={"X": value}).json() == {"X": value}
    first = api.get(f"/apps/{app}/releases", headers={"Range": "version ..; max=2, order=desc"})
    assert first.status_code == 206 and [r["version"] for r in first.json()] == [4, 3]
    assert [r["current"] for r in first.json()] == [True, False]
    assert first.json()[0]["description"] == "Set X config vars"
    rest = api.get(f"/apps/{app}/releases", headers={"Range": first.headers["Next-Range"]})
    assert rest.status_code == 200 and [r["version"] for r in rest.json()] == [2, 1]
    assert [r["version"] for r in api.get(f"/apps/{app}/releases").json()] == [1, 2, 3, 4]
    assert api.get(f"/apps/{app}/releases/3").json()["status"] == "succeeded"
    bad = api.get(f"/apps/{app}/releases", headers={"Range": "color ..; max=2"})
    assert bad.status_code == 400 and "Range" in bad.json()["message"]


# --- registry -------------------------------------------------------------------------------------
def test_registry_login_and_push_need_the_key(docker_engine: Any, heroku: HerokuEmulator, web_image: str,
                                              new_app: Callable[..., str]) -> None:
    v2 = httpx.get(f"http://{heroku.registry}/v2/")
    assert v2.status_code == 401 and v2.headers["WWW-Authenticate"].startswith("Basic ")
    assert v2.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert httpx.get(f"http://{heroku.registry}/v2/", auth=("_", "wrong")).status_code == 401
    assert httpx.get(f"http://{heroku.registry}/v2/", auth=("_", heroku.api_key)).status_code == 200
    with pytest.raises(APIError, match=r"401|unauthorized|authentication required"):
        docker_engine.login(username="_", password="wrong", registry=heroku.registry, reauth=True)
    assert docker_engine.login(username="_", password=heroku.api_key, registry=heroku.registry, reauth=True)
    app = new_app()
    with pytest.raises(APIError, match=r"authentication required|unauthorized"):
        push(docker_engine, heroku, web_image, app, key="wrong")
    with pytest.raises(APIError, match="denied"):
        push(docker_engine, heroku, web_image, app, key=heroku.other_key)
    image_id = push(docker_engine, heroku, web_image, app)
    manifest = httpx.get(f"http://{heroku.registry}/v2/{app}/web/manifests/latest", auth=("_", heroku.api_key),
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert manifest.status_code == 200 and manifest.json()["config"]["digest"] == image_id


def test_an_oci_index_is_refused(heroku: HerokuEmulator, new_app: Callable[..., str]) -> None:
    app = new_app()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    resp = httpx.put(f"http://{heroku.registry}/v2/{app}/web/manifests/latest", auth=("_", heroku.api_key),
                     content=json.dumps(index), headers={"Content-Type": index["mediaType"]})
    assert resp.status_code == 405
    assert resp.json()["errors"][0] == {"code": "UNSUPPORTED", "message": "The operation is unsupported.",
                                        "detail": None}


def test_only_linux_amd64_schema_2_manifests_are_kept(heroku: HerokuEmulator, new_app: Callable[..., str]) -> None:
    app = new_app()
    with httpx.Client(base_url=f"http://{heroku.registry}", auth=("_", heroku.api_key), timeout=30) as reg:
        def manifest_for(config: dict[str, str]) -> dict[str, Any]:
            blob = json.dumps(config).encode()
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            upload = reg.post(f"/v2/{app}/web/blobs/uploads/")
            assert upload.status_code == 202 and upload.headers["Location"].startswith(f"/v2/{app}/web/")
            done = reg.put(f"{upload.headers['Location']}&digest={digest}", content=blob)  # keeps _state
            assert done.status_code == 201, done.text
            return {"schemaVersion": 2, "mediaType": DOCKER_V2, "layers": [],
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(blob),
                               "digest": digest}}

        arm = reg.put(f"/v2/{app}/web/manifests/arm", content=json.dumps(manifest_for({"architecture": "arm64",
                                                                                         "os": "linux"})),
                      headers={"Content-Type": DOCKER_V2})
        assert arm.status_code == 400 and "linux/arm64" in arm.json()["errors"][0]["message"]
        amd = manifest_for({"architecture": "amd64", "os": "linux"})
        oci = reg.put(f"/v2/{app}/web/manifests/oci", content=json.dumps(amd),
                      headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert oci.status_code == 405
        kept = reg.put(f"/v2/{app}/web/manifests/amd", content=json.dumps(amd), headers={"Content-Type": DOCKER_V2})
        assert kept.status_code == 201 and reg.get(f"/v2/{app}/web/tags/list").json()["tags"] == ["amd"]
    assert heroku.apps[app].images == {amd["config"]["digest"]: kept.headers["Docker-Content-Digest"]}


# --- dynos and the router ---------------------------------------------------------------------------
def test_release_runs_a_dyno_that_answers_through_web_url(docker_engine: Any, api: httpx.Client,
                                                          heroku: HerokuEmulator, web_image: str,
                                                          new_app: Callable[..., str]) -> None:
    app = new_app()
    api.patch(f"/apps/{app}/config-vars", json={"VERSION": "one"})
    zeros = {"updates": [{"type": "web", "docker_image": "sha256:" + "0" * 64}]}
    plain = api.patch(f"/apps/{app}/formation", json=zeros)
    assert plain.status_code == 422 and "docker-releases" in plain.json()["message"]
    first = release(api, app, push(docker_engine, heroku, web_image, app))
    assert first["version"] == 4 and first["description"].startswith("Deployed web")
    wait_for(lambda: dyno_states(api, app) == [("web.1", 4, "up")], what="web.1 up")
    answer = httpx.get(heroku.app_url(app), timeout=10)
    assert answer.status_code == 200 and answer.text == "web.1 one 10000"  # root in the image: a non-root uid
    [boot] = heroku.boot_seconds(app)
    assert 0 < boot < 5, boot  # python3 binding $PORT (~0.2 s), seen within the dyno manager's 0.1 s ticks
    assert api.get(f"/apps/{app}/releases/4").json()["status"] == "succeeded"
    logs = log_text(api, app)
    assert "app[web.1]: listening on" in logs and "heroku[web.1]: State changed from starting to up" in logs
    assert 'heroku[router]: at=info method=GET path="/"' in logs and "status=200" in logs
    before = api.get(f"/apps/{app}/dynos/web.1").json()
    assert (before["size"], before["release"]["version"]) == ("basic", 4)
    assert api.delete(f"/apps/{app}/dynos").status_code == 202  # restart: a new dyno of the same release
    wait_for(lambda: [(d["id"] != before["id"], d["state"]) for d in api.get(f"/apps/{app}/dynos").json()]
             == [(True, "up")], what="restarted web.1 up")
    assert api.get(f"/apps/{app}/dynos/web.9").status_code == 404


def test_r10_when_the_process_never_binds_port_and_h10_after(docker_engine: Any, api: httpx.Client,
                                                            heroku: HerokuEmulator, web_image: str,
                                                            new_app: Callable[..., str]) -> None:
    heroku.set_limits(boot_s=3)
    app = new_app()
    api.patch(f"/apps/{app}/config-vars", json={"NEVER_BIND": "1"})
    release(api, app, push(docker_engine, heroku, web_image, app))
    wait_for(lambda: dyno_states(api, app) == [("web.1", 4, "starting")], what="web.1 starting")
    started = time.monotonic()
    held = httpx.get(heroku.app_url(app), timeout=30)  # held while the dyno boots, then H20
    assert held.status_code == 503 and "Application Error" in held.text
    wait_for(lambda: dyno_states(api, app) == [("web.1", 4, "crashed")], what="web.1 crashed")
    assert time.monotonic() - started < 10
    crashed = httpx.get(heroku.app_url(app), timeout=10)
    assert crashed.status_code == 503
    heroku_lines = log_text(api, app, source="heroku", dyno="web")
    assert ("heroku[web.1]: Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 3 seconds of "
            "launch") in heroku_lines
    assert "Process exited with status 137" in heroku_lines
    assert "State changed from starting to crashed" in heroku_lines
    assert "app[" not in heroku_lines and "router" not in heroku_lines
    router = log_text(api, app, dyno="router")
    assert 'code=H20 desc="App boot timeout"' in router and 'code=H10 desc="App crashed"' in router


def test_h12_when_a_request_outlasts_the_router_timeout(docker_engine: Any, api: httpx.Client,
                                                        heroku: HerokuEmulator, web_image: str,
                                                        new_app: Callable[..., str]) -> None:
    heroku.set_limits(router_timeout_s=2)
    app = new_app()
    deploy_up(api, heroku, docker_engine, web_image, app)
    assert httpx.get(f"{heroku.app_url(app)}sleep?s=0.1", timeout=10).status_code == 200
    slow = httpx.get(f"{heroku.app_url(app)}sleep?s=4", timeout=10)
    assert slow.status_code == 503 and "Application Error" in slow.text
    assert 'at=error code=H12 desc="Request timeout" method=GET path="/sleep?s=4"' in log_text(api, app)
    assert dyno_states(api, app) == [("web.1", 3, "up")]  # the dyno lives on


def test_r14_above_the_quota_and_r15_kills_above_twice(docker_engine: Any, api: httpx.Client,
                                                       heroku: HerokuEmulator, web_image: str,
                                                       new_app: Callable[..., str]) -> None:
    heroku.set_limits(quota_mb={"basic": 64})
    app = new_app()
    deploy_up(api, heroku, docker_engine, web_image, app)
    assert httpx.get(f"{heroku.app_url(app)}alloc?mb=70", timeout=10).status_code == 200
    wait_for(lambda: "Error R14 (Memory quota exceeded)" in log_text(api, app), what="R14")
    assert dyno_states(api, app) == [("web.1", 3, "up")]
    with pytest.raises(httpx.HTTPError):  # the dyno is killed while it allocates: the router answers 503 or not at all
        assert httpx.get(f"{heroku.app_url(app)}alloc?mb=80", timeout=10).status_code == 503
        raise httpx.HTTPError("503")
    wait_for(lambda: dyno_states(api, app) == [("web.1", 3, "crashed")], what="web.1 crashed")
    logs = log_text(api, app, source="heroku")
    assert "Error R15 (Memory quota vastly exceeded)" in logs and "Process exited with status 137" in logs
    over = r"heroku\[web\.1\]: Process running mem=\d+M\(1\d\d\.\d%\)\n\S+ heroku\[web\.1\]: Error R14 "
    assert re.search(over, logs), logs


def test_preboot_keeps_the_old_dyno_serving_through_a_crashing_release_then_rollback(
        docker_engine: Any, api: httpx.Client, heroku: HerokuEmulator, web_image: str,
        new_app: Callable[..., str]) -> None:
    app = new_app()
    basic = api.patch(f"/apps/{app}/features/preboot", json={"enabled": True})
    assert basic.status_code == 422 and "Standard" in basic.json()["message"]
    assert api.patch(f"/apps/{app}/formation/web", json={"size": "Standard-1X"}).json()["size"] == "standard-1X"
    assert api.patch(f"/apps/{app}/features/preboot", json={"enabled": True}).json()["enabled"] is True
    api.patch(f"/apps/{app}/config-vars", json={"VERSION": "good"})
    good = deploy_up(api, heroku, docker_engine, web_image, app)
    answers: list[str] = []
    with httpx.Client(timeout=10) as client:
        def serve_through(until: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 40
            while not until():
                assert time.monotonic() < deadline, what
                resp = client.get(heroku.app_url(app))
                answers.append(f"{resp.status_code} {resp.text}")
                time.sleep(0.05)

        api.patch(f"/apps/{app}/config-vars", json={"CRASH": "1"})  # a new release whose dyno exits at boot
        crash_version = good["version"] + 1
        serve_through(lambda: ("web.1", crash_version, "crashed") in dyno_states(api, app), "crash")
        assert ("web.1", good["version"], "up") in dyno_states(api, app)
        assert set(answers) == {"200 web.1 good 10000"}, set(answers)
        back = api.post(f"/apps/{app}/releases", json={"release": good["id"]})
        assert back.status_code == 201 and back.json()["description"] == f"Rollback to v{good['version']}"
        serve_through(lambda: dyno_states(api, app) == [("web.1", back.json()["version"], "up")], "rollback")
    assert set(answers) == {"200 web.1 good 10000"}, set(answers)
    assert "CRASH" not in api.get(f"/apps/{app}/config-vars").json()
    current = [r for r in api.get(f"/apps/{app}/releases").json() if r["current"]]
    assert [r["version"] for r in current] == [back.json()["version"]]
    assert "app[web.1]: crashing on purpose" in log_text(api, app, source="app")


def test_without_preboot_the_old_dyno_stops_before_the_new_one_starts(
        docker_engine: Any, api: httpx.Client, heroku: HerokuEmulator, web_image: str,
        new_app: Callable[..., str]) -> None:
    app = new_app()
    deploy_up(api, heroku, docker_engine, web_image, app)
    api.patch(f"/apps/{app}/config-vars", json={"VERSION": "two"})
    wait_for(lambda: dyno_states(api, app) == [("web.1", 4, "up")], what="v4 up")
    assert httpx.get(heroku.app_url(app), timeout=10).text == "web.1 two 10000"
    lines = log_text(api, app, source="heroku", dyno="web.1").splitlines()
    stopped = next(i for i, line in enumerate(lines) if "Stopping all processes with SIGTERM" in line)
    started = [i for i, line in enumerate(lines) if "State changed from down to starting" in line]
    assert len(started) == 2 and started[0] < stopped < started[1]
    assert "Process exited with status 0" in lines[stopped + 1]  # SIGTERM handled: no R12
    assert "State changed from up to down" in lines[stopped + 2]
    api.patch(f"/apps/{app}/config-vars", json={"IGNORE_TERM": "1"})
    wait_for(lambda: dyno_states(api, app) == [("web.1", 5, "up")], what="v5 up")
    assert api.patch(f"/apps/{app}/formation/web", json={"quantity": 0}).status_code == 200
    wait_for(lambda: dyno_states(api, app) == [], what="scaled to 0")
    assert ("Error R12 (Exit timeout) -> At least one process failed to exit within 3 seconds of SIGTERM"
            in log_text(api, app, source="heroku"))
    assert httpx.get(heroku.app_url(app), timeout=10).status_code == 503
    assert 'code=H14 desc="No web processes running"' in log_text(api, app, dyno="router")
