"""The cloudrun target without a cloud: options, plan and spec (pure), API error messages, retries of transient
errors, logs and the dry-run CLI. The life cycle against the Cloud Run emulator is in test_target_cloudrun_deploy.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from cli_helpers import invoke
from conftest import copy_project
from mlship import __version__, plugins
from mlship.contract_io import Project, load_project
from mlship.errors import ContractError, TargetError
from mlship.targets.cloudrun import CloudRunTarget
from mlship.targets.cloudrun.api import Gcp, anonymous, api_error
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.cloudrun.spec import label_value, render_template, service_labels, template_differences

BASE = {"project": "my-project-123", "region": "europe-west1"}
DIGEST = "europe-west1-docker.pkg.dev/my-project-123/mlship/iris@sha256:" + "a" * 64


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
