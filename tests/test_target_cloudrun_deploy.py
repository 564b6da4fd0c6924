"""The cloudrun target's life cycle against the Cloud Run emulator (tests/emulators/cloudrun.py) with the real
google-cloud-run client (REST), the session's iris image pushed to the loopback registry and run on the local
engine: deploy, redeploy, upgrade, a broken image, rollback, destroy, retries, a deploy killed at each step.

Every test uses its own service name; finalizers delete the services and the local registry tags, and the
emulator fixture (emulators/cloudrun_fixtures.py) checks that no container is left behind.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker.errors import ImageNotFound

from cli_helpers import invoke
from conftest import IRIS_ROW, build_broken_image, build_image, copy_project
from emulators import cloudrun_fixtures
from emulators.cloudrun import CloudRunEmulator
from mlship.errors import TargetError
from mlship.targets import get_target
from mlship.targets.cloudrun import CloudRunTarget
from mlship.targets.cloudrun import target as cloudrun  # the deploy policy's module (tests patch its names)
from mlship.targets.cloudrun.api import Gcp
from mlship.targets.cloudrun.options import CloudRunOptions

gcp_project = cloudrun_fixtures.gcp_project
emu = cloudrun_fixtures.emu
fast_polling = cloudrun_fixtures.fast_polling


@pytest.fixture
def make_target(iris_image: tuple[Path, str], emu: CloudRunEmulator, gcp_project: str, registry: str,
                tmp_path: Path) -> Iterator[Any]:
    """make_target(name=None, **options) -> a CloudRunTarget on the emulator for the test's uniquely named
    service (or ``name``); every service made is deleted afterwards, pass or fail."""
    made: list[CloudRunTarget] = []
    default = f"cr-{uuid.uuid4().hex[:8]}"

    def make(name: str | None = None, **options: Any) -> CloudRunTarget:
        opts = {"project": gcp_project, "region": "europe-west1", "api_endpoint": emu.endpoint,
                "artifact_registry_endpoint": emu.endpoint, "registry": registry, **options}
        service = name or default
        project = copy_project(iris_image[0], tmp_path / f"{service}-{len(made)}", name=service,
                               targets={"cloudrun": opts})
        target = get_target("cloudrun", project)
        assert isinstance(target, CloudRunTarget)
        made.append(target)
        return target

    yield make
    for target in {t.service: t for t in made}.values():
        target.destroy()
        assert emu.containers(target.service) == []
    for target in made:
        target.close()


@pytest.fixture(scope="module")
def v1_image(iris_image: tuple[Path, str], docker_engine: Any) -> Iterator[str]:
    """The session's iris image under a tag of this module's own (other runs on the engine may rebuild
    the session tag meanwhile, which would change the digest between two deploys)."""
    tag = f"iris:cr-v1-{uuid.uuid4().hex[:6]}"
    docker_engine.images.get(iris_image[1]).tag(*tag.split(":"))
    yield tag
    docker_engine.images.remove(tag)


@pytest.fixture(scope="module")
def v2_image(iris_image: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The iris project rebuilt as version cr-v2 (every layer but the contract and labels cached)."""
    project = copy_project(iris_image[0], tmp_path_factory.mktemp("cr") / "v2", version="cr-v2")
    return build_image(project)


@pytest.fixture(scope="module")
def broken_image(v1_image: str, docker_engine: Any) -> Iterator[str]:
    """The iris image with a model file that cannot be loaded: the server exits 1 at start-up."""
    tag = build_broken_image(docker_engine, v1_image, "cr")
    yield tag
    docker_engine.images.remove(tag, force=True)


def predict(url: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(f"{url}/predict", json=IRIS_ROW)


def mutating(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """API calls that change something (getIamPolicy may be a POST in REST; it changes nothing)."""
    return [c for c in calls if c[0] != "GET" and not c[1].endswith(":getIamPolicy")]


def test_deploy_redeploy_upgrade_broken_rollback_destroy(make_target: Any, iris_image: tuple[Path, str],
                                                         v1_image: str, v2_image: str, broken_image: str,
                                                         emu: CloudRunEmulator, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    target = make_target()
    v1, v1_version = v1_image, iris_image[1].rpartition(":")[2]
    steps: list[str] = []

    started = time.monotonic()
    first = target.deploy(v1, steps.append)
    cold_s = time.monotonic() - started
    assert first.changed and first.version == v1_version and first.previous is None
    assert first.image.startswith(f"{target.opts.registry_path}/iris@sha256:")
    assert first.url is not None and first.url.startswith("http://127.0.0.1:")
    reply = predict(first.url)
    assert reply.status_code == 200 and reply.json()["label"] == "setosa"
    assert reply.headers["x-model-version"] == v1_version
    assert any(s.startswith("smoke test passed: 1 example(s)") for s in steps)
    [created] = [r for r in emu.requests if r["method"] == "POST" and r["path"].endswith("/services")]
    sent = created["body"]["template"]
    assert sent["containers"][0]["image"] == first.image  # by digest
    assert sent["containers"][0]["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert created["body"]["labels"]["managed-by"] == "mlship"

    # Unchanged: no call that changes anything.
    mark = len(emu.calls)
    started = time.monotonic()
    again = target.deploy(v1, steps.append)
    unchanged_s = time.monotonic() - started
    assert not again.changed and again.image == first.image
    assert mutating(emu.calls[mark:]) == [], emu.calls[mark:]

    # A new version is created with traffic pinned to the serving revision and smoke-tested before it
    # takes traffic. Its tagged URL is made to reach the old version here: the smoke test fails, traffic
    # stays where it was.
    mark = len(emu.requests)
    with monkeypatch.context() as patched:
        patched.setattr(cloudrun, "tag_url", lambda service, tag: str(service.uri))
        with pytest.raises(TargetError) as info:
            target.deploy(v2_image, steps.append)
    assert f"examples[0]: answered by model version {v1_version}, expected cr-v2" in info.value.message
    v1_revision = target.status().history[1].split()[0]
    assert info.value.message.endswith(f"Traffic stays on {v1_revision}, which keeps serving.")
    assert predict(first.url or "").headers["x-model-version"] == v1_version
    patches = [r["body"] for r in emu.requests[mark:] if r["method"] == "PATCH"]
    new_revision = patches[0]["template"]["revision"]
    assert [(t.get("revision"), t.get("percent", 0), t.get("tag")) for t in patches[0]["traffic"]] == \
        [(v1_revision, 100, None), (new_revision, 0, "mlship-candidate")]
    assert [(t.get("revision"), t.get("percent", 0), t.get("tag")) for t in patches[1]["traffic"]] == \
        [(v1_revision, 100, None)]

    # Deployed again: the candidate revision is there and ready; it is checked and takes the traffic.
    mark = len(emu.requests)
    second = target.deploy(v2_image, steps.append)
    assert second.changed and second.version == "cr-v2" and second.previous == first.image
    assert predict(second.url or "").headers["x-model-version"] == "cr-v2"
    patches = [r["body"] for r in emu.requests[mark:] if r["method"] == "PATCH"]
    assert len(patches) == 1 and patches[0]["template"]["revision"] == new_revision  # no new revision
    assert [t["percent"] for t in patches[0]["traffic"]] == [100] and "revision" not in patches[0]["traffic"][0]

    # A broken version never takes traffic; the error names the revision and why.
    with pytest.raises(TargetError) as info:
        target.deploy(broken_image, steps.append)
    message = info.value.message
    assert "did not become ready: Revision '" in message and "is not ready and cannot serve traffic" in message
    assert "exited with code 1" in message
    assert f"Traffic stays on {new_revision}, which keeps serving." in message
    broken_revision = message.split()[1]
    for _ in range(5):
        assert predict(second.url or "").headers["x-model-version"] == "cr-v2"

    status = target.status()
    assert (status.url, status.version, status.image, status.ready) == (second.url, "cr-v2", second.image, True)
    assert status.state.startswith(f"serving; the latest revision {broken_revision} failed:")
    assert [h.split(" (")[0] for h in status.history] == [broken_revision, new_revision, v1_revision]
    assert status.history[0].endswith("failed)") and status.history[1] == f"{new_revision} (cr-v2, ready, 100% traffic)"

    # Rollback: the newest ready revision older than the serving one.
    back = target.rollback(steps.append)
    assert (back.image, back.version, back.previous) == (first.image, v1_version, second.image)
    assert predict(second.url or "").headers["x-model-version"] == v1_version
    assert target.status().version == v1_version
    with pytest.raises(TargetError, match=r"No previous ready revision of `cr-\w+` to roll back to"):
        target.rollback(steps.append)

    # Deploying v2 again after the rollback gives it the traffic back.
    assert predict(target.deploy(v2_image, steps.append).url or "").headers["x-model-version"] == "cr-v2"

    removed = target.destroy()
    assert len(removed) == 1 and removed[0].startswith(f"Cloud Run service {target.full_name} (4 revisions)")
    assert f"its images are kept (delete them with `gcloud artifacts docker images delete " \
           f"{target.opts.registry_path}/iris`)" in removed[0]
    assert target.status().state == "not deployed" and target.destroy() == []
    assert emu.containers(target.service) == []
    print(f"\ncloudrun emulator: cold deploy {cold_s:.2f}s, unchanged re-deploy {unchanged_s:.2f}s")


def test_transient_errors_are_retried_and_403_fails_fast(make_target: Any, v1_image: str,
                                                         emu: CloudRunEmulator) -> None:
    target = make_target()
    service_path = rf"/services/{target.service}$"
    emu.fail_next("GET", service_path, 503, times=2)
    emu.fail_next("POST", r"/services$", 503)
    emu.fail_next("GET", r"/operations/", 429)
    mark = len(emu.calls)
    deployed = target.deploy(v1_image, lambda _line: None)
    assert predict(deployed.url or "").status_code == 200
    posts = [c for c in emu.calls[mark:] if c[0] == "POST" and c[1].endswith("/services")]
    assert len(posts) == 2  # the 503 and the retry

    other = make_target(name=f"{target.service}-b")
    emu.fail_next("POST", r"/services$", 403, message="Permission 'run.services.create' denied on resource "
                                                      f"'{other.full_name}' (or it may not exist).")
    mark = len(emu.calls)
    with pytest.raises(TargetError) as info:
        other.deploy(v1_image, lambda _line: None)
    assert info.value.message.startswith(f"create service {other.service}: permission denied in project "
                                         f"{other.opts.project}: Permission 'run.services.create' denied")
    assert info.value.fix is not None and "--role=roles/run.developer" in info.value.fix
    assert len([c for c in emu.calls[mark:] if c[0] == "POST" and c[1].endswith("/services")]) == 1
    assert other.status().state == "not deployed"


def test_interrupted_deploy_converges_and_iam_follows_public(make_target: Any, v1_image: str,
                                                             emu: CloudRunEmulator) -> None:
    target = make_target(public=True)
    emu.fail_next("GET", r"/operations/", 400, message="Request contains an invalid argument.")
    with pytest.raises(TargetError, match="waiting for the operation"):
        target.deploy(v1_image, lambda _line: None)

    mark = len(emu.calls)
    deployed = target.deploy(v1_image, lambda _line: None)
    assert predict(deployed.url or "").status_code == 200
    assert mutating(emu.calls[mark:]) == [("POST", f"/v2/{target.full_name}:setIamPolicy")]  # IAM had not run
    policy = emu.services[target.full_name].policy
    assert {"role": "roles/run.invoker", "members": ["allUsers"]} in policy["bindings"]

    private = make_target(public=False)
    mark = len(emu.calls)
    assert not private.deploy(v1_image, lambda _line: None).changed
    assert mutating(emu.calls[mark:]) == [("POST", f"/v2/{target.full_name}:setIamPolicy")]
    bindings = emu.services[target.full_name].policy.get("bindings", [])
    assert all("allUsers" not in b.get("members", []) for b in bindings)


def test_a_failed_first_deploy_leaves_nothing(make_target: Any, broken_image: str, emu: CloudRunEmulator) -> None:
    target = make_target()
    with pytest.raises(TargetError) as info:
        target.deploy(broken_image, lambda _line: None)
    assert f"Revision {target.service}-00001-" in info.value.message
    assert "Removed the service: it had no working revision to fall back to." in info.value.message
    assert info.value.fix is not None and "resource.labels.revision_name" in info.value.fix
    assert target.status().state == "not deployed"
    assert emu.containers(target.service) == []


def test_cli_status_and_destroy_through_the_emulator(make_target: Any, v1_image: str) -> None:
    target = make_target()
    folder = str(target.project.root)
    result = invoke("status", "--target", "cloudrun", "-f", folder)
    assert result.exit_code == 0 and f"nothing deployed on cloudrun for {target.service}" in result.output
    deployed = target.deploy(v1_image, lambda _line: None)
    result = invoke("status", "--target", "cloudrun", "-f", folder)
    assert result.exit_code == 0, result.output
    assert f"state: serving, ready\nurl: {deployed.url}\nimage: {deployed.image}\n" in result.output
    assert f"history: {target.service}-00001-" in result.output and "100% traffic" in result.output
    result = invoke("rollback", "--target", "cloudrun", "-f", folder)
    assert result.exit_code == 1 and "No previous ready revision" in result.output
    result = invoke("destroy", "--target", "cloudrun", "-f", folder)
    assert result.exit_code == 0 and f"removed Cloud Run service {target.full_name} (1 revision)" in result.output


def test_cli_deploy_prints_a_url_that_predicts(make_target: Any, base_image_env: str, docker_engine: Any,
                                               registry: str) -> None:
    """`mlship deploy --target cloudrun`: build (cached layers) -> mlship test -> push -> deploy -> wait ready
    -> smoke test; the last line printed is the URL, and it predicts."""
    target = make_target()
    folder, tag = str(target.project.root), f"{target.service}:{target.project.version}"
    try:
        result = invoke("deploy", "--target", "cloudrun", "-f", folder)
        assert result.exit_code == 0, result.output
        assert f"built {tag}" in result.output and f"tested {tag}" in result.output
        assert f"deployed {target.opts.registry_path}/{target.service}@sha256:" in result.output
        url = result.output.rstrip().splitlines()[-1]
        assert url.startswith("http://127.0.0.1:")
        reply = predict(url)
        assert reply.status_code == 200 and reply.json()["label"] == "setosa"
        assert reply.headers["x-model-version"] == target.project.version

        result = invoke("deploy", "--target", "cloudrun", "-f", folder)  # nothing changed: nothing to do
        assert result.exit_code == 0, result.output
        assert f"unchanged {target.opts.registry_path}/{target.service}@sha256:" in result.output
        assert result.output.rstrip().splitlines()[-1] == url
    finally:
        target.destroy()  # its containers first: they hold the images
        for image in docker_engine.images.list(name=target.service) + docker_engine.images.list(
                name=f"{registry}/{target.opts.project}/mlship/{target.service}"):
            for ref in image.tags + image.attrs.get("RepoDigests", []):
                with contextlib.suppress(ImageNotFound):
                    docker_engine.images.remove(ref)


class Killed(BaseException):
    """The deploy process dying at some point (a BaseException: no `except Exception` may catch it)."""


def arm(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Kill the next deploy right after ``point``: `push` (the image is in the registry), or the n-th API
    call that changes something (`1`, `2`: the request was accepted; its operation goes on without us)."""
    if point == "push":
        original_push = cloudrun.registry.push

        def push(*args: Any) -> str:
            original_push(*args)
            raise Killed("after the push")

        monkeypatch.setattr(cloudrun.registry, "push", push)
        return
    original_rpc, count = Gcp.rpc, [0]

    def rpc(self: Gcp, what: str, role: str, method: Any, request: dict[str, Any]) -> Any:
        result = original_rpc(self, what, role, method, request)
        if role in ("create", "update", "delete") or what.startswith("set IAM"):
            count[0] += 1
            if count[0] == int(point):
                raise Killed(f"after {what}")
        return result

    monkeypatch.setattr(Gcp, "rpc", rpc)


@pytest.mark.parametrize("point", ["push", "1", "2"])
def test_a_deploy_killed_at_each_step_converges_when_run_again(point: str, make_target: Any, v1_image: str,
                                                               v2_image: str, emu: CloudRunEmulator,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """First deploy (create service, grant IAM) and upgrade (new revision, move traffic), each killed after
    the push or after its first or second mutating call; the re-run finishes the job with no extra
    revision, and a third run changes nothing."""
    target = make_target(public=True)
    for image, revisions in ((v1_image, 1), (v2_image, 2)):
        with monkeypatch.context() as patched:
            arm(patched, point)
            with pytest.raises(Killed):
                target.deploy(image, lambda _line: None)
        deployed = target.deploy(image, lambda _line: None)
        assert predict(deployed.url or "").headers["x-model-version"] == deployed.version
        status = target.status()
        assert (status.version, status.ready, len(status.history)) == (deployed.version, True, revisions), status
        assert status.history[0].endswith(", ready, 100% traffic)")
        service = emu.services[target.full_name]
        assert {"role": "roles/run.invoker", "members": ["allUsers"]} in service.policy["bindings"]
        mark = len(emu.calls)
        assert not target.deploy(image, lambda _line: None).changed
        assert mutating(emu.calls[mark:]) == []


def test_artifact_registry_push_logs_the_engine_in_with_the_access_token(
        v1_image: str, registry: str, gcp_project: str, docker_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The *.pkg.dev path (ADC access token as oauth2accesstoken), run against the loopback registry: the
    token goes to the engine's login only, never into a progress line."""
    import docker

    from mlship.targets.cloudrun import registry as cloudrun_registry

    opts = CloudRunOptions(project=gcp_project, region="europe-west1", registry=registry)
    gcp = Gcp(opts, tries=1, retry_delay_s=0, poll_s=0.05, op_timeout_s=10)
    monkeypatch.setattr(gcp, "access_token", lambda: "ya29.not-a-real-token")
    logins: list[dict[str, Any]] = []
    login = docker.DockerClient.login

    def record(self: Any, **kwargs: Any) -> Any:
        logins.append(kwargs)
        return login(self, **kwargs)

    monkeypatch.setattr(docker.DockerClient, "login", record)
    lines: list[str] = []
    ref = cloudrun_registry._push_with_token(gcp, v1_image, opts.registry_path, lines.append)
    name = v1_image.partition(":")[0]
    assert ref.startswith(f"{opts.registry_path}/{name}@sha256:")
    assert logins == [{"username": "oauth2accesstoken", "password": "ya29.not-a-real-token",
                       "registry": f"https://{registry}", "reauth": True}]
    assert lines and not any("ya29" in line for line in lines)
    pushed = f"{opts.registry_path}/{v1_image}"
    docker_engine.images.remove(pushed)
