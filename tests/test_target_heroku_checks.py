"""What the heroku target refuses, on the Heroku emulator through the CLI, and when: preflight failures (no key, a bad
key, a missing app, a key that may not deploy to the app) and a serving timeout over the router's 30 s stop the
deploy before any build; memory over the dyno's quota stops it after `mlship test`, before anything is pushed or
released; `--dry-run` shows the plan without a key. Also: destroy of an app mlship did not create, and the client's
retries of 429s through the normal code path."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import copy_project
from emulators import heroku_fixtures
from emulators.heroku import HerokuEmulator
from mlship.cli import app as cli

heroku = heroku_fixtures.heroku
heroku_env = heroku_fixtures.heroku_env
ACCEPT = "application/vnd.heroku+json; version=3"


@pytest.fixture(autouse=True)
def _base(base_image_env: str) -> None:
    pass


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def project(iris_image: tuple[Path, str], tmp_path: Path, docker_engine: Any) -> Iterator[Any]:
    """project(**heroku options, serve=...): a copy of the iris project for an app of its own; afterwards, no image
    of that service may exist unless the test built one on purpose (it is removed)."""
    names: list[str] = []

    def make(serve: dict[str, Any] | None = None, **options: Any) -> tuple[str, str]:
        name = f"iris-{uuid.uuid4().hex[:8]}"
        names.append(name)
        changes = {"serve": serve} if serve else {}
        copy_project(iris_image[0], tmp_path / name, name=name, targets={"heroku": {"app": name, **options}},
                     **changes)
        return name, str(tmp_path / name)

    yield make
    for name in names:
        for image in docker_engine.images.list(name=name):
            docker_engine.images.remove(image.id, force=True)


def built(docker_engine: Any, name: str) -> list[Any]:
    return list(docker_engine.images.list(name=name))


def error_document(result: Any, code: int) -> dict[str, Any]:
    assert result.exit_code == code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def failed_checks(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in document["preflight"]["checks"] if not c["ok"]}


def test_no_key_and_bad_key_fail_before_any_build(project: Any, heroku_env: HerokuEmulator, docker_engine: Any,
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name, root = project(create=True)
    monkeypatch.delenv("HEROKU_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    failed = failed_checks(error_document(invoke("deploy", "--target", "heroku", "-f", root, "--json"), 4))
    assert list(failed) == ["heroku api key"]
    assert failed["heroku api key"]["detail"].startswith("No Heroku API key found.")
    assert failed["heroku api key"]["fix"].startswith("export HEROKU_API_KEY=$(heroku auth:token)")
    monkeypatch.setenv("HEROKU_API_KEY", "not-a-key")
    failed = failed_checks(error_document(invoke("deploy", "--target", "heroku", "-f", root, "--json"), 4))
    assert list(failed) == ["heroku api key"]
    assert "key from $HEROKU_API_KEY: GET /account: Heroku answered 401 unauthorized" in \
        failed["heroku api key"]["detail"]
    assert built(docker_engine, name) == []
    # the key in ~/.netrc, as `heroku login` writes it
    monkeypatch.delenv("HEROKU_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.heroku.com\n  login me@example.com\n  password {heroku_env.api_key}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    result = invoke("deploy", "--target", "heroku", "-f", root, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"]
    checks = {c["name"]: c for c in json.loads(result.stdout)["preflight"]["checks"]}
    assert checks["heroku api key"]["detail"].startswith(f"from {tmp_path / 'netrc'} (machine api.heroku.com)")
    assert checks["heroku app"]["detail"].startswith(f"{name} does not exist yet: the deploy creates it")


def test_missing_app_and_an_app_the_key_may_not_deploy(project: Any, heroku_env: HerokuEmulator,
                                                       docker_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    name, root = project()  # create: false
    document = error_document(invoke("deploy", "--target", "heroku", "-f", root, "--json"), 4)
    assert document["preflight"]["seconds"] < 5
    failed = failed_checks(document)
    assert failed["heroku app"]["detail"] == f"app {name} does not exist"
    assert failed["heroku app"]["fix"].startswith("Set targets.heroku.create: true in mlship.yaml")
    created = httpx.post(f"{heroku_env.api_url}/apps", json={"name": name, "stack": "container"},
                         headers={"Accept": ACCEPT, "Authorization": f"Bearer {heroku_env.api_key}"})
    assert created.status_code == 201, created.text
    monkeypatch.setenv("HEROKU_API_KEY", heroku_env.other_key)  # an account that is no collaborator
    failed = failed_checks(error_document(invoke("deploy", "--target", "heroku", "-f", root, "--json"), 4))
    assert list(failed) == ["heroku app"], failed
    assert "Heroku answered 403" in failed["heroku app"]["detail"] or "404" in failed["heroku app"]["detail"]
    assert built(docker_engine, name) == []
    assert [c for c in heroku_env.calls if c[0] != "GET" and name in c[1]] == []


def test_timeout_over_the_router_refused_at_plan_time_and_dry_run_needs_no_key(
        project: Any, heroku_env: HerokuEmulator, docker_engine: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    name, root = project(serve={"timeout_s": 45}, create=True)
    document = error_document(invoke("deploy", "--target", "heroku", "-f", root, "--json"), 4)
    failed = failed_checks(document)
    assert list(failed) == ["heroku limits"]
    assert "serve.timeout_s is 45s, but Heroku's router answers 503 (H12)" in failed["heroku limits"]["detail"]
    assert "Set serve.timeout_s to at most 30 in mlship.yaml" in document["error"]["fix"]
    assert built(docker_engine, name) == []
    monkeypatch.delenv("HEROKU_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    name, root = project(create=True, dyno="standard-2x", quantity=2)
    result = invoke("deploy", "--target", "heroku", "-f", root, "--dry-run", "--json")
    report = json.loads(result.stdout)
    assert report["dry_run"] and not report["ok"] and report["gate"] is None
    plan = "\n".join(report["plan"])
    assert f"create app {name} (stack container) if it does not exist" in plan
    assert f"push {name}:" in plan and f"{heroku_env.registry}/{name}/web" in plan
    assert "web formation: 2 x standard-2x (1024 MiB, $50/month); preboot on" in plan
    assert built(docker_engine, name) == []


def test_memory_over_the_quota_refused_before_anything_is_pushed(project: Any, heroku_env: HerokuEmulator) -> None:
    name, root = project(create=True, quota_mb=20)
    document = error_document(invoke("deploy", "--target", "heroku", "-f", root, "--json"), 1)
    message = document["error"]["message"]
    assert "`mlship test` measured a peak of" in message and f"for {name}, over targets.heroku.quota_mb (20 MiB)" \
        in message and message.endswith("Nothing was pushed or released."), message
    assert document["error"]["fix"].startswith("Raise targets.heroku.quota_mb to at least ")
    # preflight read the app (it did not exist yet); after the gate, not one call: nothing created, pushed, released
    assert [c for c in heroku_env.calls if name in c[1]] == [("GET", f"/apps/{name}")]


def test_destroy_keeps_an_app_mlship_did_not_create_and_429s_are_retried(project: Any,
                                                                        heroku_env: HerokuEmulator) -> None:
    name, root = project()
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {heroku_env.api_key}"}
    assert httpx.post(f"{heroku_env.api_url}/apps", json={"name": name}, headers=headers).status_code == 201
    heroku_env.inject("GET", rf"^/apps/{name}$", 429, times=2)  # Retry-After: 1
    result = invoke("status", "--target", "heroku", "-f", root, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == f"app {name} exists; no image released"
    assert heroku_env.calls.count(("GET", f"/apps/{name}")) >= 3
    result = invoke("destroy", "--target", "heroku", "-f", root, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"] == [
        f"web dynos of {name} (scaled to 0); kept: app {name}, which mlship did not create (`heroku apps:destroy "
        f"{name}` deletes it)"]
    web = httpx.get(f"{heroku_env.api_url}/apps/{name}/formation/web", headers=headers).json()
    assert web["quantity"] == 0
    assert httpx.get(f"{heroku_env.api_url}/apps/{name}", headers=headers).status_code == 200
