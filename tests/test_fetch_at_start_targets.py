"""serve.fetch_at_start on the cloud targets: the container reads its model with the platform's identity, or the
target says exactly what to grant or set, before anything is built.

ECS against moto and the test-side agent: mlship's task role gets an inline policy for exactly the object, the
task (run by the agent on the local engine, in the host's network, with that role's credentials) fetches it from
moto's S3 and becomes healthy, destroy removes the role; a task role of yours that may not read the object is
refused in preflight (iam:SimulatePrincipalPolicy evaluates the role's own policies), and the statement the fix
names is what makes it pass. Cloud Run against the GCS emulator: preflight and plan name the bucket binding, or
`grant_artifact_access` grants it. Heroku against its emulator: missing credential config vars refused in preflight.
models:/ at start on the local engine against a real MLflow server.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import IRIS, IRIS_ROW, build_image, free_port
from emulators import ecs_fixtures, heroku_fixtures, storage_fixtures
from emulators.ecs_agent import EcsAgent
from emulators.ecs_moto import MotoServer
from emulators.heroku import HerokuEmulator
from emulators.mlflow_fixtures import MlflowServer, register
from emulators.storage_fixtures import sha256
from mlship import pipeline
from mlship.artifacts.identity import s3_statement, variable_check
from mlship.cli import app as cli
from mlship.contract_io import load_project
from mlship.errors import PreflightError
from mlship.init import init_project
from mlship.targets import get_target
from mlship.targets.cloudrun import CloudRunTarget
from mlship.targets.cloudrun import preflight as cloudrun_preflight
from mlship.targets.cloudrun.options import CloudRunOptions
from mlship.targets.ecs import EcsTarget
from mlship.targets.ecs.spec import TASK_POLICY, TASKS_TRUST

moto, agent, aws, ecs_env = ecs_fixtures.moto, ecs_fixtures.agent, ecs_fixtures.aws, ecs_fixtures.ecs_env
heroku, heroku_env = heroku_fixtures.heroku, heroku_fixtures.heroku_env
artifact_cache = storage_fixtures.artifact_cache
gcs_server, gcs = storage_fixtures.gcs_server, storage_fixtures.gcs
BUCKET = "team-models"
ACCEPT = "application/vnd.heroku+json; version=3"


@pytest.fixture(autouse=True)
def _base(base_image_env: str) -> None:
    pass


def fetching_project(uri: str, folder: Path, name: str, extra: str = "") -> Path:
    """`mlship init URI` in ``folder``, then serve.fetch_at_start (and ``extra`` YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(IRIS / "rows.csv", folder / "rows.csv")
    init_project(uri, directory=folder, sample=folder / "rows.csv", name=name)
    with (folder / "mlship.yaml").open("a") as fh:
        fh.write("serve:\n  fetch_at_start: true\n" + extra)
    return folder


def put_model(data: bytes, key: str) -> str:
    """The model in moto's S3 (bucket team-models, versioned, in the ECS tests' region); returns its s3:// URI."""
    import boto3

    s3 = boto3.Session(region_name=ecs_fixtures.REGION).client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": ecs_fixtures.REGION})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def checks_of(found: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in found}


# --- ECS ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def host_network(agent: EcsAgent) -> Iterator[EcsAgent]:
    agent.host_network = True  # the task reaches moto's S3 on loopback, as a Fargate task reaches S3
    yield agent
    agent.host_network = False


def test_ecs_task_role_reads_exactly_the_object_and_the_task_fetches_it_at_start(
        ecs_env: MotoServer, host_network: EcsAgent, iris_model: Path, artifact_cache: Path, tmp_path: Path,
        docker_engine: Any) -> None:
    import boto3

    data, svc = iris_model.read_bytes(), f"fas-{uuid.uuid4().hex[:8]}"
    uri = put_model(data, f"{svc}/iris.joblib")
    project = load_project(fetching_project(uri, tmp_path / svc, svc))
    target = get_target("ecs", project)
    assert isinstance(target, EcsTarget)
    access = checks_of(target.preflight())["artifact access"]
    assert access.ok and access.detail == (f"the deploy grants the task role it makes s3:GetObject, "
                                           f"s3:GetObjectVersion on arn:aws:s3:::{BUCKET}/{svc}/iris.joblib")
    plan = "\n".join(target.plan(f"{svc}:v1"))
    assert f"task role mlship-{svc}-task (created: trusts ecs-tasks.amazonaws.com, tagged) with the inline policy " \
           f"{TASK_POLICY}" in plan and f"arn:aws:s3:::{BUCKET}/{svc}/iris.joblib" in plan
    image = build_image(project)
    steps: list[str] = []
    try:
        deployment = target.deploy(image, steps.append)
        iam = boto3.Session(region_name=ecs_fixtures.REGION).client("iam")
        role = iam.get_role(RoleName=f"mlship-{svc}-task")["Role"]
        policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=TASK_POLICY)["PolicyDocument"]
        assert policy["Statement"] == [s3_statement(uri)] and policy["Statement"][0]["Resource"] == \
            f"arn:aws:s3:::{BUCKET}/{svc}/iris.joblib"
        assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == [TASK_POLICY]
        ecs = boto3.Session(region_name=ecs_fixtures.REGION).client("ecs")
        served = ecs.describe_services(cluster="mlship", services=[svc])["services"][0]["taskDefinition"]
        assert ecs.describe_task_definition(taskDefinition=served)["taskDefinition"]["taskRoleArn"] == role["Arn"]
        assert any(f"granting mlship-{svc}-task read access to {uri}" in s for s in steps), steps
        answer = httpx.post(f"{host_network.url(deployment.url or '')}/predict", json=IRIS_ROW, timeout=10)
        assert answer.status_code == 200 and answer.json()["label"] == "setosa", answer.text
        task = next(c for c in host_network.containers() if c.status == "running")
        code, out = task.exec_run(["ls", f"/tmp/mlship-cache/blobs/{sha256(data)}"])
        assert code == 0 and out.decode().split() == ["iris.joblib"], out  # fetched at start, checked ...
        code, out = task.exec_run(["find", "/app", "-name", "*.joblib"])
        assert code == 0 and out.decode().strip() == "", out  # ... and the image carries no model
        env = dict(e.split("=", 1) for e in task.attrs["Config"]["Env"])
        assert env["AWS_SESSION_TOKEN"] and "AWS_PROFILE" not in env  # the role's credentials, as ECS gives them
        # the role mlship made, named as a task role of yours: the simulation of its own policy allows the read
        yours = EcsTarget(project, {"task_role_arn": role["Arn"]})
        assert checks_of(yours.preflight())["artifact access"].detail == (
            f"{role['Arn']} may s3:GetObject, s3:GetObjectVersion on arn:aws:s3:::{BUCKET}/{svc}/iris.joblib")
        yours.close()
    finally:
        removed = target.destroy()
        target.close()
        ecs_fixtures.remove_pushed(docker_engine, svc)
        docker_engine.images.remove(image, force=True)
    assert f"task role mlship-{svc}-task and its policy {TASK_POLICY}" in removed, removed
    assert ecs_fixtures.tagged_left(svc) == []


def test_ecs_task_role_of_yours_without_the_read_is_refused_before_any_build(
        ecs_env: MotoServer, iris_model: Path, artifact_cache: Path, tmp_path: Path, docker_engine: Any) -> None:
    import boto3

    svc = f"fas-{uuid.uuid4().hex[:8]}"
    uri = put_model(iris_model.read_bytes(), f"{svc}/iris.joblib")
    iam = boto3.Session(region_name=ecs_fixtures.REGION).client("iam")
    role = iam.create_role(RoleName=f"{svc}-yours", AssumeRolePolicyDocument=json.dumps(TASKS_TRUST))["Role"]
    iam.put_role_policy(RoleName=role["RoleName"], PolicyName="list-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
                                                "Resource": f"arn:aws:s3:::{BUCKET}"}]}))
    folder = fetching_project(uri, tmp_path / svc, svc, f"targets:\n  ecs:\n    task_role_arn: {role['Arn']}\n")
    try:
        with pytest.raises(PreflightError) as err:
            pipeline.deploy(folder, "ecs")
        failed = {c.name: c for c in err.value.report.checks if not c.ok}
        assert list(failed) == ["artifact access"], failed
        assert failed["artifact access"].detail == (
            f"serve.fetch_at_start: your task role {role['Arn']} may not s3:GetObject, s3:GetObjectVersion on "
            f"arn:aws:s3:::{BUCKET}/{svc}/iris.joblib, so the task could not read its model")
        fix = failed["artifact access"].fix or ""
        assert fix.startswith(f"Add this statement to a policy of {svc}-yours: ")
        assert list(docker_engine.images.list(name=svc)) == []  # nothing was built
        statement = json.loads(fix.split(": ", 1)[1].split(" (or remove", 1)[0])
        iam.put_role_policy(RoleName=role["RoleName"], PolicyName="model-read",  # the fix, as written
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
        assert checks_of(pipeline.preflight(folder, "ecs").checks)["artifact access"].ok
    finally:
        for name in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
            iam.delete_role_policy(RoleName=role["RoleName"], PolicyName=name)
        iam.delete_role(RoleName=role["RoleName"])


def test_ecs_refuses_gs_and_needs_nothing_for_https() -> None:
    gs = variable_check("gs://models/iris.joblib", "ecs", set())
    assert not gs.ok and "Application Default Credentials" in gs.detail
    assert "Remove serve.fetch_at_start" in (gs.fix or "") and "S3 (the task role reads it)" in (gs.fix or "")
    assert variable_check("https://models.example.com/iris.joblib", "ecs", set()).ok


# --- Cloud Run ------------------------------------------------------------------------------------------------------
def test_cloudrun_names_the_bucket_binding_or_grants_it(gcs: Any, iris_model: Path, tmp_path: Path) -> None:
    blob = gcs.blob("iris/model.joblib")
    blob.upload_from_string(iris_model.read_bytes())
    uri, account = "gs://models/iris/model.joblib", "runner@proj-123.iam.gserviceaccount.com"
    folder = fetching_project(uri, tmp_path / "svc", "fas-run", "targets:\n  cloudrun:\n    project: proj-123\n    "
                              f"region: europe-west1\n    service_account: {account}\n")
    target = get_target("cloudrun", load_project(folder))
    assert isinstance(target, CloudRunTarget)
    command = ("gcloud storage buckets add-iam-policy-binding gs://models "
               f"--member=serviceAccount:{account} --role=roles/storage.objectViewer")
    assert any(command in line for line in target.plan("fas-run:v1"))
    check = cloudrun_preflight.artifact_access(target.opts, uri)
    assert not check.ok and check.detail == f"serve.fetch_at_start: {account} has no role that reads gs://models"
    assert check.fix == f"{command} (or set targets.cloudrun.grant_artifact_access: true)"
    granting = CloudRunOptions(**{**target.opts.model_dump(exclude_unset=True), "grant_artifact_access": True})
    assert cloudrun_preflight.artifact_access(granting, uri).detail == (
        f"the deploy grants roles/storage.objectViewer on gs://models to {account} (grant_artifact_access)")
    steps: list[str] = []
    cloudrun_preflight.grant_artifact_access(granting, uri, steps.append)
    cloudrun_preflight.grant_artifact_access(granting, uri, steps.append)  # a second deploy: already granted
    assert steps == [f"granted roles/storage.objectViewer on gs://models to serviceAccount:{account}"]
    bindings = gcs.get_iam_policy(requested_policy_version=3).bindings
    assert [b for b in bindings if f"serviceAccount:{account}" in b["members"]] == [
        {"role": "roles/storage.objectViewer", "members": {f"serviceAccount:{account}"}}]
    assert cloudrun_preflight.artifact_access(target.opts, uri).ok  # now without the option too


def test_cloudrun_s3_needs_the_keys_as_secrets() -> None:
    opts = CloudRunOptions(project="proj-123", region="europe-west1")
    check = cloudrun_preflight.artifact_access(opts, "s3://team-models/iris.joblib")
    assert not check.ok and "needs AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in check.detail
    assert check.fix == ("Store each in Secret Manager (`printf ... | gcloud secrets create NAME --data-file=-`) and "
                         "add under targets.cloudrun.secrets: AWS_ACCESS_KEY_ID: aws-access-key-id:latest, "
                         "AWS_SECRET_ACCESS_KEY: aws-secret-access-key:latest")
    keyed = CloudRunOptions(project="proj-123", region="europe-west1", secrets={
        "AWS_ACCESS_KEY_ID": "aws-access-key-id:latest", "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key:latest"})
    assert cloudrun_preflight.artifact_access(keyed, "s3://team-models/iris.joblib").ok


# --- Heroku ---------------------------------------------------------------------------------------------------------
def test_heroku_refuses_missing_credential_config_vars_before_any_build(
        aws: MotoServer, heroku_env: HerokuEmulator, iris_model: Path, artifact_cache: Path, tmp_path: Path,
        docker_engine: Any) -> None:
    name = f"fas-{uuid.uuid4().hex[:8]}"
    uri = put_model(iris_model.read_bytes(), f"{name}/iris.joblib")
    folder = fetching_project(uri, tmp_path / name, name, f"targets:\n  heroku:\n    app: {name}\n")
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {heroku_env.api_key}"}
    created = httpx.post(f"{heroku_env.api_url}/apps", json={"name": name, "stack": "container"}, headers=headers)
    assert created.status_code == 201, created.text
    result = CliRunner().invoke(cli, ["deploy", "--target", "heroku", "-f", str(folder), "--json"])
    assert result.exit_code == 4, result.output
    failed = {c["name"]: c for c in json.loads(result.stdout)["preflight"]["checks"] if not c["ok"]}
    assert list(failed) == ["artifact access"], failed
    assert failed["artifact access"]["detail"] == (
        f"serve.fetch_at_start: the container on heroku needs AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY to read {uri} "
        "(AWS keys as config vars (Heroku has no platform identity)); AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "are not in the app's config vars")
    assert failed["artifact access"]["fix"] == \
        f"heroku config:set AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... -a {name}"
    assert list(docker_engine.images.list(name=name)) == []
    patched = httpx.patch(f"{heroku_env.api_url}/apps/{name}/config-vars", headers=headers,
                          json={"AWS_ACCESS_KEY_ID": "AKIA-TEST", "AWS_SECRET_ACCESS_KEY": "secret"})
    assert patched.status_code == 200, patched.text
    result = CliRunner().invoke(cli, ["deploy", "--target", "heroku", "-f", str(folder), "--dry-run", "--json"])
    document = json.loads(result.stdout)
    assert result.exit_code == 0 and document["ok"], result.output
    access = {c["name"]: c for c in document["preflight"]["checks"]}["artifact access"]
    assert access["detail"] == (f"{uri}: the container reads it at start; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                                "from the app's config vars")
    assert any("AWS keys as config vars" in line for line in document["plan"]), document["plan"]
    assert list(docker_engine.images.list(name=name)) == []
    httpx.delete(f"{heroku_env.api_url}/apps/{name}", headers=headers)


def test_heroku_cannot_read_gs_and_https_needs_nothing() -> None:
    assert not variable_check("gs://models/iris.joblib", "heroku", set()).ok
    assert variable_check("https://models.example.com/iris.joblib", "heroku", set()).ok


# --- models:/ --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("mlflow")
    with MlflowServer(folder) as server:
        yield server, register(server.url, ["logreg"], folder / "v1.json", alias="champion")


def test_models_uri_at_start_needs_a_pinned_version_and_a_reachable_server(
        mlflow_server: tuple[MlflowServer, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    alias = variable_check("models:/iris@champion", "ecs", set())
    assert not alias.ok and "Pin a version for serve.fetch_at_start: artifact: models:/iris/<version>" in \
        (alias.fix or "")
    loopback = variable_check("models:/iris/1", "cloudrun", set())
    assert not loopback.ok and f"MLFLOW_TRACKING_URI is {server.url}, which the container on cloudrun cannot " \
        "reach" in loopback.detail
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    token = variable_check("models:/iris/1", "heroku", set())
    assert not token.ok and token.fix == "heroku config:set MLFLOW_TRACKING_TOKEN=... -a <app>"
    assert variable_check("models:/iris/1", "ecs", {"MLFLOW_TRACKING_TOKEN"}).ok


@pytest.fixture
def container(docker_engine: Any) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for c in made:
        c.remove(force=True)


def test_models_uri_fetched_at_start_on_the_local_engine(
        mlflow_server: tuple[MlflowServer, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, artifact_cache: Path,
        tmp_path: Path, docker_engine: Any, container: list[Any]) -> None:
    server, versions = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    project = load_project(fetching_project("models:/iris/1", tmp_path / "svc", "fas-mlflow"))
    sha = project.contract.artifact_sha256
    assert sha is not None
    tag = build_image(project)
    try:
        config = docker_engine.images.get(tag).attrs["Config"]
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["MLFLOW_TRACKING_URI"] == server.url and env["MLSHIP_ARTIFACT_SHA256"] == sha
        port = free_port()  # the host's network: the server listens on loopback only
        run_env = {"PORT": str(port), "MLSHIP_HOST": "127.0.0.1"}
        container.append(docker_engine.containers.run(tag, detach=True, network_mode="host", environment=run_env))
        url, deadline, ready = f"http://127.0.0.1:{port}", time.monotonic() + 120, False
        while time.monotonic() < deadline and not ready:
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            time.sleep(0.2)
        assert ready, container[0].logs().decode()[-3000:]
        answer = httpx.post(f"{url}/predict", json=IRIS_ROW, timeout=10).json()
        assert answer["label"] == "setosa" and "setosa" in versions["1"]["classes"]
        code, out = container[0].exec_run(["ls", f"/tmp/mlship-cache/blobs/{sha}"])
        assert code == 0 and out.decode().split() == ["model.skops"], out
        code, out = container[0].exec_run(["find", "/app", "-name", "model.skops"])
        assert code == 0 and out.decode().strip() == "", out
    finally:
        for c in container:
            c.remove(force=True)
        container.clear()
        docker_engine.images.remove(tag, force=True)
