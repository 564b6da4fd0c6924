"""The heroku target's life cycle on the Heroku emulator (tests/emulators/heroku*.py: the Platform API, the container
registry in front of the loopback registry, dynos run on the local engine with $PORT, the router on loopback), through
mlship's normal code path: the CLI and the pipeline with the API and registry pointed at the emulator.

deploy (the user's path: preflight, build, `mlship test`, push, release) -> predict through the app's URL -> an
unchanged redeploy (no release) -> a changed model -> a model that fails to boot (non-zero exit, automatic rollback,
the old release answers every request throughout: preboot) -> status, logs -> rollback -> destroy.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from conftest import IRIS_ROW, Hammer, build_broken_image, copy_project
from emulators import heroku_fixtures
from emulators.heroku import HerokuEmulator
from mlship.cli import app as cli
from mlship.errors import TargetError
from mlship.targets import get_target
from mlship.targets.heroku import HerokuTarget

heroku = heroku_fixtures.heroku
heroku_env = heroku_fixtures.heroku_env


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch, base_image_env: str) -> None:
    monkeypatch.setattr(HerokuTarget, "poll_s", 0.2)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def predict(url: str) -> httpx.Response:
    return httpx.post(url.rstrip("/") + "/predict", json=IRIS_ROW, timeout=10)


def retrained(root: Path) -> None:
    """Replace the project's model with one trained differently (another artifact: another version)."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    x = iris.data.set_axis(["sepal_length", "sepal_width", "petal_length", "petal_width"], axis=1)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=1000))
    model.fit(x, iris.target_names[iris.target])
    joblib.dump(model, root / "model" / "iris.joblib", compress=3)


def test_deploy_predict_redeploy_changed_broken_rollback_destroy(iris_image: tuple[Path, str], tmp_path: Path,
                                                                heroku_env: HerokuEmulator, docker_engine: Any) -> None:
    heroku = heroku_env
    app = f"iris-{uuid.uuid4().hex[:8]}"
    options = {"app": app, "create": True, "region": "eu", "dyno": "standard-1x"}
    copy_project(iris_image[0], tmp_path / "v1", name=app, targets={"heroku": options})
    root = str(tmp_path / "v1")

    started = time.monotonic()
    result = invoke("deploy", "--target", "heroku", "-f", root, "--json")
    deploy_s = time.monotonic() - started
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    url = heroku.app_url(app)
    assert first["url"] == url and first["changed"] and first["previous"] is None
    assert first["image"].startswith(f"{heroku.registry}/{app}/web@sha256:") and first["digest"]
    assert first["gate"]["memory_mb"] > 30
    assert [c["name"] for c in first["preflight"]["checks"]][-3:] == ["heroku limits", "heroku api key", "heroku app"]
    reply = predict(url)
    assert reply.status_code == 200 and reply.json()["label"] == "setosa"
    v1 = first["version"]
    assert reply.headers["x-model-version"] == v1
    posts = [p for m, p in heroku.calls if m == "POST"]
    assert posts[0] == "/apps"  # created, then marked as mlship's
    created = next(r for r in heroku.requests if r["method"] == "POST" and r["path"] == "/apps")
    assert created["body"] == {"name": app, "stack": "container", "region": "eu"}
    release_call = next(r for r in heroku.requests if r["path"] == f"/apps/{app}/formation")
    assert release_call["headers"]["Accept"].endswith("version=3.docker-releases")
    assert release_call["body"]["updates"][0]["docker_image"].startswith("sha256:")

    # Unchanged: no push, no release, no change at all.
    mark = len(heroku.calls)
    with get_target("heroku", copy_project(iris_image[0], tmp_path / "same", name=app,
                                           targets={"heroku": options})) as target:
        same = target.deploy(first["build"]["image"], print)
    assert not same.changed and same.url == url
    assert [c for c in heroku.calls[mark:] if c[0] != "GET"] == []

    # A changed model: a new release; preboot keeps every request answered while it boots.
    v2_project = copy_project(iris_image[0], tmp_path / "v2", name=app, targets={"heroku": options})
    retrained(v2_project.root)
    with Hammer(url) as during:
        result = invoke("deploy", "--target", "heroku", "-f", str(v2_project.root), "--json")
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    v2 = second["version"]
    assert v2 != v1 and second["changed"] and second["previous"].startswith(f"{heroku.registry}/{app}/web (image ")
    assert predict(url).headers["x-model-version"] == v2
    assert during.answers and {a[0] for a in during.answers} == {200}, during.answers[-5:]

    # A model that cannot load: non-zero exit, rolled back, v2 answers every request during and after.
    broken = build_broken_image(docker_engine, second["build"]["image"], "heroku")
    try:
        with Hammer(url) as during, pytest.raises(TargetError) as info, get_target("heroku", v2_project) as target:
            target.deploy(broken, print)
    finally:
        docker_engine.images.remove(broken, force=True)
    message = info.value.message
    assert message.startswith("Release v"), message
    assert "crashed" in message and "(exit status 1)" in message and "Rolled back to what v" in message, message
    assert "serving)." in message, message
    assert "Last log lines:" in (info.value.why or "") and "Process exited with status 1" in (info.value.why or "")
    assert during.answers and set(during.answers) == {(200, v2)}, set(during.answers)

    result = invoke("status", "--target", "heroku", "-f", str(v2_project.root), "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert (status["url"], status["version"], status["ready"]) == (url, v2, True)
    assert "Rollback to v" in status["history"][0] and status["history"][0].endswith("(current)")
    logs = invoke("logs", "--target", "heroku", "-f", str(v2_project.root))
    assert logs.exit_code == 0 and "app[web.1]:" in logs.stdout, logs.output

    # Rollback: back to what served before v2 (v1's image).
    result = invoke("rollback", "--target", "heroku", "-f", str(v2_project.root), "--json")
    assert result.exit_code == 0, result.output
    back = json.loads(result.stdout)
    assert back["version"] == v1 and predict(url).headers["x-model-version"] == v1

    boots = heroku.boot_seconds(app)  # dyno launch -> listening on $PORT (once the model is ready, on Heroku)
    assert boots and max(boots) < 8, boots  # the emulator's boot limit here (Heroku's: 60 s)

    result = invoke("destroy", "--target", "heroku", "-f", str(v2_project.root), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"][0].startswith(f"Heroku app {app} (created by mlship")
    assert httpx.get(f"{heroku.api_url}/apps/{app}", headers=_headers(heroku)).status_code == 404
    deadline = time.monotonic() + 15  # the dynos get SIGTERM, then SIGKILL after the stop grace (3 s here)
    while [c for c in heroku.containers(app) if c.status != "removing"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [c for c in heroku.containers(app) if c.status != "removing"] == []
    assert invoke("destroy", "--target", "heroku", "-f", str(v2_project.root), "--json").exit_code == 0
    print(f"\nheroku emulator: first deploy (preflight, build, test, push, release) {deploy_s:.1f}s; dyno start -> "
          f"$PORT bound (model loaded) {min(boots):.2f}-{max(boots):.2f}s over {len(boots)} boots; gate memory "
          f"{first['gate']['memory_mb']} MB ({first['gate']['memory_source']}) vs the standard-1x quota 512 MiB")


def _headers(heroku: HerokuEmulator) -> dict[str, str]:
    return {"Accept": "application/vnd.heroku+json; version=3", "Authorization": f"Bearer {heroku.api_key}"}
