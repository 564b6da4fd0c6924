"""The cloudrun target: options, plan and spec (pure), then the life cycle against the Cloud Run emulator
(tests/emulators/cloudrun.py) with the real google-cloud-run client (REST), the session's iris image pushed
to the loopback registry ($MLSHIP_TEST_REGISTRY, default 127.0.0.1:5555) and run on the local engine.

Every end-to-end test uses its own service name; finalizers delete the services and the local registry
tags, and the emulator's stop() asserts that no container is left behind.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker.errors import ImageNotFound
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from typer.testing import CliRunner

from conftest import build_broken_image, build_image, copy_project
from emulators.cloudrun import LABEL, CloudRunEmulator
from mlship import __version__, plugins
from mlship.cli import app
from mlship.contract_io import Project, load_project
from mlship.errors import ContractError, TargetError
from mlship.targets import get_target
from mlship.targets.cloudrun import CloudRunTarget
from mlship.targets.cloudrun import target as cloudrun  # the deploy policy's module (tests patch its names)
from mlship.targets.cloudrun.api import Gcp, anonymous, api_error
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.cloudrun.spec import label_value, render_template, service_labels, template_differences

REGISTRY = os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
BASE = {"project": "my-project-123", "region": "europe-west1"}
DIGEST = "europe-west1-docker.pkg.dev/my-project-123/mlship/iris@sha256:" + "a" * 64


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def make_project(source: Path, dest: Path, *, name: str | None = None, cloudrun: dict[str, Any] | None = None,
                 **changes: Any) -> Project:
    """A copy of an iris project folder with a new name, targets.cloudrun options and other keys changed."""
    targets = None if cloudrun is None else {"cloudrun": cloudrun}
    return copy_project(source, dest, name=name, targets=targets, **changes)


def template(opts: dict[str, Any], image: str = DIGEST, version: str = "v1") -> Any:
    o = CloudRunOptions(**{**BASE, **opts})
    labels = service_labels(o, version=version, model_sha="ab" * 32)
    return run_v2.RevisionTemplate(render_template(o, image, labels, ready_timeout_s=60))


# --- options (pure) ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    ({"region": "europe-west1"}, "targets.cloudrun.project: Field required"),
    ({**BASE, "regoin": "x"}, "targets.cloudrun.regoin: unknown key `regoin`; did you mean `region`?"),
    ({**BASE, "memory": "1GB"}, "targets.cloudrun.memory: expected e.g. 512Mi or 1Gi, got '1GB'"),
    ({**BASE, "cpu": 3}, 'targets.cloudrun.cpu: expected "1", "2", "4", "6", "8", or millicpu such as "500m", got 3'),
    ({**BASE, "region": "Europe West"}, "targets.cloudrun.region: expected a region such as europe-west1"),
    ({**BASE, "project": "My_Project"}, "targets.cloudrun.project: expected a project ID such as my-project-123"),
    ({**BASE, "concurrency": 0}, "targets.cloudrun.concurrency: Input should be greater than or equal to 1"),
    ({**BASE, "min_instances": 3, "max_instances": 2}, "targets.cloudrun.max_instances: must be at least "
                                                       "min_instances (3), got 2"),
    ({**BASE, "env": {"PORT": "1"}}, "targets.cloudrun.env.PORT: PORT is set by Cloud Run"),
    ({**BASE, "secrets": {"DB": "db-password"}}, "targets.cloudrun.secrets: DB: expected SECRET_NAME:VERSION"),
    ({**BASE, "secrets": {"A": "s:1"}, "env": {"A": 1}}, "targets.cloudrun.secrets: 'A' is in both env and secrets"),
    ({**BASE, "labels": {"Team": "ml"}}, "targets.cloudrun.labels: Team: label keys and values are lowercase"),
    ({**BASE, "labels": {"model-sha": "x"}}, "targets.cloudrun.labels: 'model-sha' is set by mlship"),
    ({**BASE, "api_endpoint": "run.googleapis.com"}, "targets.cloudrun.api_endpoint: expected a URL such as"),
    ({**BASE, "service_account": "me@example.com"}, "targets.cloudrun.service_account: expected a service account"),
])
def test_invalid_options_name_the_key(iris_dir: Path, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ContractError) as info:
        CloudRunTarget(load_project(iris_dir), options)
    assert expected in info.value.message
    assert info.value.exit_code == 2


def test_shutdown_grace_must_fit_cloud_runs_ten_seconds(tmp_path: Path, iris_dir: Path) -> None:
    assert CloudRunTarget(make_project(iris_dir, tmp_path / "ok", serve={"shutdown_grace_s": 9.5}), BASE)
    with pytest.raises(TargetError) as info:
        CloudRunTarget(make_project(iris_dir, tmp_path / "long", serve={"shutdown_grace_s": 12}), BASE)
    assert info.value.message == "serve.shutdown_grace_s is 12s, but Cloud Run kills a container 10s after SIGTERM."
    assert info.value.fix is not None and "below 10" in info.value.fix


@pytest.mark.parametrize("name", ["API_KEY", "GITHUB_TOKEN", "db_password", "CLIENT_SECRET"])
def test_secret_looking_env_is_refused_without_showing_the_value(iris_dir: Path, name: str) -> None:
    with pytest.raises(ContractError) as info:
        CloudRunTarget(load_project(iris_dir), {**BASE, "env": {name: "hunter2-value"}})
    message = info.value.message
    assert f"targets.cloudrun.env.{name}: '{name}' looks like a secret" in message
    assert f"`secrets: {{{name}: SECRET_NAME:latest}}`" in message
    assert "hunter2" not in info.value.render()


def test_defaults_and_derived_values(iris_dir: Path) -> None:
    target = CloudRunTarget(load_project(iris_dir), {**BASE, "cpu": 2, "env": {"LOG_LEVEL": "info", "DEBUG": True}})
    o = target.opts
    assert (o.repository, o.memory, o.cpu, o.concurrency, o.min_instances, o.max_instances, o.timeout_s,
            o.public) == ("mlship", "512Mi", "2", 80, 0, 10, 300, False)
    assert o.registry_host == "europe-west1-docker.pkg.dev"
    assert o.registry_path == "europe-west1-docker.pkg.dev/my-project-123/mlship"
    assert o.environment() == {"LOG_LEVEL": "info", "DEBUG": "true"}
    assert target.full_name == "projects/my-project-123/locations/europe-west1/services/iris"
    assert plugins.get("target", "cloudrun") is CloudRunTarget
    assert label_value("V2.1+build") == "v2_1_build" and len(label_value("x" * 100)) == 63


def test_credentials_are_anonymous_only_for_an_emulator(iris_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.delenv("MLSHIP_GCP_ANONYMOUS", raising=False)
    assert anonymous(CloudRunOptions(**BASE, api_endpoint="http://127.0.0.1:8123"))
    assert not anonymous(CloudRunOptions(**BASE))
    assert not anonymous(CloudRunOptions(**BASE, api_endpoint="https://proxy.example.com"))
    monkeypatch.setenv("MLSHIP_GCP_ANONYMOUS", "1")
    assert anonymous(CloudRunOptions(**BASE))
    monkeypatch.delenv("MLSHIP_GCP_ANONYMOUS")
    # No Application Default Credentials: a clear error, before any API call.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    target = CloudRunTarget(load_project(iris_dir), BASE)
    with pytest.raises(TargetError) as info:
        target.status()
    assert info.value.message.startswith("No Google Cloud credentials:")
    assert info.value.fix is not None and "gcloud auth application-default login" in info.value.fix


# --- plan and spec (pure) ----------------------------------------------------------------------------
def test_plan_is_pure_private_by_default(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlship.image import engine

    def no_engine() -> None:
        raise AssertionError("plan() must not talk to the engine")

    monkeypatch.setattr(engine, "client", no_engine)
    monkeypatch.setattr(Gcp, "credentials", property(lambda self: pytest.fail("plan() must not get credentials")))
    target = CloudRunTarget(load_project(iris_dir), {**BASE, "env": {"LOG_LEVEL": "info"},
                                                     "secrets": {"DB_URL": "db-url:3"}, "memory": "1Gi"})
    text = "\n".join(target.plan("iris:v9"))
    assert "repositories/mlship (format DOCKER) if missing" in text
    assert "push iris:v9 to europe-west1-docker.pkg.dev/my-project-123/mlship/iris:v9 (Docker login as " \
           "oauth2accesstoken" in text
    assert "image europe-west1-docker.pkg.dev/my-project-123/mlship/iris@sha256:<digest of the push>, port 8080" in text
    assert "cpu 1, memory 1Gi, concurrency 80, instances 0..10, request timeout 300s" in text
    assert "env LOG_LEVEL; secrets DB_URL=db-url:3" in text
    assert f"dev-mlship-version={label_value(__version__)}, model-version=v9" in text
    assert "startup probe GET /readyz every 1s, up to 60 failures" in text and "GET /healthz" in text
    assert "traffic stays 100% on the current ready revision" in text
    assert "keep the service private: no allUsers in roles/run.invoker (removed if present)" in text
    assert "grant roles/run.invoker to allUsers" not in text


def test_plan_public(iris_dir: Path) -> None:
    target = CloudRunTarget(load_project(iris_dir), {**BASE, "public": True, "registry": "127.0.0.1:5555"})
    text = "\n".join(target.plan("iris:v9"))
    assert "grant roles/run.invoker to allUsers (public: true" in text
    assert "push iris:v9 to 127.0.0.1:5555/my-project-123/mlship/iris:v9\n" in text + "\n"  # no login line


def test_api_key_auth_needs_a_secret(tmp_path: Path, iris_model: Path) -> None:
    from conftest import make_iris_project

    root = make_iris_project(tmp_path, iris_model, "serve: {auth: api_key}\n")
    expected = r"serve\.auth is api_key but targets\.cloudrun\.secrets has no MLSHIP_API_KEYS"
    with pytest.raises(TargetError, match=expected):
        CloudRunTarget(load_project(root), BASE).plan("iris:v1")
    steps = CloudRunTarget(load_project(root), {**BASE, "secrets": {"MLSHIP_API_KEYS": "keys:latest"}}).plan("iris:v1")
    assert any("$MLSHIP_API_KEYS comes from Secret Manager (keys:latest)" in s for s in steps)


def test_rendered_template() -> None:
    t = template({"env": {"B": "2", "A": 1}, "secrets": {"TOKEN": "api-token:7"}, "service_account":
                  "runner@my-project-123.iam.gserviceaccount.com", "labels": {"team": "ml"}, "cpu": "500m",
                  "concurrency": 4, "min_instances": 1, "max_instances": 3, "timeout_s": 30})
    c = t.containers[0]
    assert c.image == DIGEST and [(p.name, p.container_port) for p in c.ports] == [("http1", 8080)]
    assert [(e.name, e.value) for e in c.env[:2]] == [("A", "1"), ("B", "2")]
    assert c.env[2].name == "TOKEN" and c.env[2].value_source.secret_key_ref.secret == "api-token"
    assert c.env[2].value_source.secret_key_ref.version == "7" and c.env[2].value == ""
    assert dict(c.resources.limits) == {"cpu": "500m", "memory": "512Mi"}
    assert (c.startup_probe.http_get.path, c.startup_probe.period_seconds, c.startup_probe.failure_threshold) == \
        ("/readyz", 1, 60)
    assert (c.liveness_probe.http_get.path, c.liveness_probe.http_get.port) == ("/healthz", 8080)
    assert (t.scaling.min_instance_count, t.scaling.max_instance_count) == (1, 3)
    assert (t.max_instance_request_concurrency, t.timeout.total_seconds()) == (4, 30)
    assert t.service_account == "runner@my-project-123.iam.gserviceaccount.com"
    labels = dict(t.labels)
    assert labels == {"managed-by": "mlship", "dev-mlship-version": label_value(__version__), "model-version": "v1",
                      "model-sha": "abababababab", "team": "ml"}
    assert all(k == k.lower() and len(k) <= 63 and len(v) <= 63 for k, v in labels.items())


def test_unchanged_spec_comparison() -> None:
    base = template({"env": {"A": 1, "B": 2}})
    assert template_differences(template({"env": {"B": 2, "A": 1}}), base, service_account=False) == []
    assert template_differences(template({"memory": "1Gi"}, version="v1"), template({}), service_account=False) \
        == ["limits"]
    assert template_differences(template({}, version="v2"), template({}), service_account=False) == ["labels"]
    assert template_differences(template({}, image=DIGEST[:-1] + "b"), template({}), service_account=False) == \
        ["image"]
    # Cloud Run fills in the default compute account when none is set: it only counts when one is named.
    current = template({})
    current.service_account = "1234-compute@developer.gserviceaccount.com"
    assert template_differences(template({}), current, service_account=False) == []
    assert template_differences(template({}), current, service_account=True) == ["service_account"]


def test_api_errors_say_what_to_do() -> None:
    opts = CloudRunOptions(**BASE, service_account="runner@my-project-123.iam.gserviceaccount.com")
    err = api_error(gexc.PermissionDenied("Permission 'run.services.create' denied"), "create service iris", opts,
                    "create")
    assert err.message == "create service iris: permission denied in project my-project-123: Permission " \
                          "'run.services.create' denied"
    assert err.why is not None and "roles/run.developer and roles/iam.serviceAccountUser on runner@" in err.why
    assert err.fix is not None and "--role=roles/run.developer" in err.fix
    err = api_error(gexc.PermissionDenied("Cloud Run Admin API has not been used in project 1 before or it is "
                                          "disabled."), "get service iris", opts, "get")
    assert err.fix is not None and err.fix.startswith("gcloud services enable run.googleapis.com")
    err = api_error(gexc.NotFound("Project 'nope' not found"), "create service iris", opts, "create")
    assert err.fix is not None and "targets.cloudrun.project" in err.fix
    err = api_error(gexc.InvalidArgument("spec.template.containers[0].resources.limits.memory: bad"), "x", opts)
    assert "Cloud Run refused the request: spec.template.containers[0].resources.limits.memory: bad" in err.message


def test_retries_transient_errors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    gcp = Gcp(CloudRunOptions(**BASE), tries=5, retry_delay_s=0.5, poll_s=0.1, op_timeout_s=10)
    answers: list[Exception | str] = [gexc.ServiceUnavailable("x"), gexc.TooManyRequests("y"),
                                      gexc.InternalServerError("z"), "ok"]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert gcp.call("get service iris", "get", flaky) == "ok"
    assert sleeps == [0.5, 1.0, 2.0]
    answers[:] = [gexc.Forbidden("denied"), "never reached"]
    with pytest.raises(TargetError, match="permission denied"):
        gcp.call("get service iris", "get", flaky)
    assert answers == ["never reached"]  # 4xx: no retry
    answers[:] = [gexc.ServiceUnavailable("down")] * 5
    with pytest.raises(TargetError, match="Google Cloud kept failing: down"):
        gcp.call("get service iris", "get", flaky)


def test_logs_point_to_cloud_logging(iris_dir: Path) -> None:
    with pytest.raises(TargetError) as info:
        CloudRunTarget(load_project(iris_dir), BASE).logs(tail=20)
    assert "mlship does not read Cloud Run logs" in info.value.message
    assert info.value.fix is not None
    assert "gcloud logging read 'resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"iris\"' " \
           "--project my-project-123 --limit 20" in info.value.fix


def test_cli_deploy_dry_run_prints_the_plan(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                            base_image_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no Google credentials a dry run prints the failed preflight (exit 4) and the whole plan."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    folder = tmp_path_factory.mktemp("dry") / "p"
    make_project(iris_dir, folder, cloudrun={**BASE, "public": True})
    result = invoke("deploy", "--target", "cloudrun", "--dry-run", "-f", str(folder))
    assert result.exit_code == 4, result.output
    out = result.stdout
    assert "preflight for cloudrun: FAILED" in out and "FAILED credentials: No Google Cloud credentials" in out
    assert "fix: gcloud auth application-default login" in out
    assert "1. build iris:" in out and "2. test iris:" in out
    assert "3. create Artifact Registry repository projects/my-project-123/locations/europe-west1/repositories/" \
           "mlship (format DOCKER) if missing" in out
    assert "service projects/my-project-123/locations/europe-west1/services/iris via https://run.googleapis.com" in out
    assert "grant roles/run.invoker to allUsers" in out
    assert "dry run: nothing was built or deployed" in out
    result = invoke("logs", "--target", "cloudrun", "-f", str(folder))
    assert result.exit_code == 1 and "gcloud logging read" in result.output


# --- the life cycle on the emulator ------------------------------------------------------------------
@pytest.fixture(scope="module")
def gcp_project() -> str:
    """A project id of its own per run: registry paths and services never collide with another run."""
    return f"mlt-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def emu(docker_engine: Any, registry: str, gcp_project: str) -> Iterator[CloudRunEmulator]:
    emulator = CloudRunEmulator(docker_engine, registry=registry).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        left = docker_engine.containers.list(all=True, filters={"label": f"{LABEL}.id={emulator.id}"})
        for image in docker_engine.images.list(name=f"{registry}/{gcp_project}/mlship/iris"):
            # the tags the pushes made and the digest references the emulator's pulls made
            for ref in image.tags + image.attrs.get("RepoDigests", []):
                if ref.startswith(f"{registry}/{gcp_project}/"):
                    with contextlib.suppress(ImageNotFound):  # gone with the image's last other name
                        docker_engine.images.remove(ref)
        assert not left, f"containers left behind: {left}"


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CloudRunTarget, "poll_s", 0.05)
    monkeypatch.setattr(CloudRunTarget, "retry_delay_s", 0.02)


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
        project = make_project(iris_image[0], tmp_path / f"{service}-{len(made)}", name=service, cloudrun=opts)
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
    project = make_project(iris_image[0], tmp_path_factory.mktemp("cr") / "v2", version="cr-v2")
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
