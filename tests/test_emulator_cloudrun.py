"""The Cloud Run emulator (tests/emulators/cloudrun.py), driven by the real google-cloud-run client
(REST transport) against the iris image pushed to the loopback registry ($MLSHIP_TEST_REGISTRY).
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2

from emulators.cloudrun import LABEL, CloudRunEmulator

REGISTRY = os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")
PARENT = "projects/emu-proj/locations/europe-west1"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
READY = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED


@pytest.fixture(scope="module")
def image(iris_image: tuple[Path, str], docker_engine: Any) -> Iterator[str]:
    """The iris image pushed to the loopback registry, as REGISTRY/emu/iris@sha256:... (untagged at the end
    unless a container, maybe another test session's, still uses it)."""
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5).close()
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"no registry answers on http://{REGISTRY}/v2/ ({exc}): run `bash scripts/docker-up`")
    repo, tag = f"{REGISTRY}/emu/iris", iris_image[1].split(":")[1]
    docker_engine.images.get(iris_image[1]).tag(repo, tag)
    digest = None
    for chunk in docker_engine.api.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in chunk, chunk
        digest = (chunk.get("aux") or {}).get("Digest", digest)
    assert digest, "the push reported no digest"
    yield f"{repo}@{digest}"
    with contextlib.suppress(docker.errors.APIError):
        docker_engine.images.remove(f"{repo}:{tag}")


@pytest.fixture(scope="module")
def emu(docker_engine: Any, image: str) -> Iterator[CloudRunEmulator]:
    emulator = CloudRunEmulator(docker_engine, registry=REGISTRY).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        left = docker_engine.containers.list(all=True, filters={"label": f"{LABEL}.id={emulator.id}"})
        assert not left, f"stop() left containers behind: {left}"


@pytest.fixture(scope="module")
def clients(emu: CloudRunEmulator) -> Iterator[tuple[Any, Any]]:
    opts = {"credentials": AnonymousCredentials(), "transport": "rest",
            "client_options": {"api_endpoint": emu.endpoint}}
    services, revisions = run_v2.ServicesClient(**opts), run_v2.RevisionsClient(**opts)
    yield services, revisions
    services.transport.close()
    revisions.transport.close()


def template(image: str, *, path: str | None = "/readyz", **fields: Any) -> Any:
    """One container; an HTTP startup probe on ``path`` every second (None: Cloud Run's default TCP probe)."""
    container = run_v2.Container(image=image, **fields)
    if path is not None:
        container.startup_probe = run_v2.Probe(http_get=run_v2.HTTPGetAction(path=path), period_seconds=1,
                                               timeout_seconds=1, failure_threshold=60 if path == "/readyz" else 2)
    return run_v2.RevisionTemplate(containers=[container])


def predict(uri: str) -> httpx.Response:
    return httpx.post(f"{uri}/predict", json=SETOSA, timeout=10)


@pytest.fixture(scope="module")
def service(clients: tuple[Any, Any], image: str) -> Any:
    """One service created through the API; ready before the tests that share it."""
    op = clients[0].create_service(parent=PARENT, service_id="iris", service=run_v2.Service(template=template(image)))
    return op.result(timeout=90)


def test_create_runs_the_image_and_routes_to_it(service: Any, clients: tuple[Any, Any],
                                                emu: CloudRunEmulator) -> None:
    assert service.name == f"{PARENT}/services/iris"
    assert service.terminal_condition.type_ == "Ready" and service.terminal_condition.state == READY
    assert not service.reconciling and service.observed_generation == service.generation == 1
    assert service.latest_ready_revision == service.latest_created_revision
    short = service.latest_ready_revision.rsplit("/", 1)[1]
    assert short.startswith("iris-00001-") and len(short) == len("iris-00001-abc")
    assert [(t.type_, t.revision, t.percent) for t in service.traffic_statuses] == [(LATEST, short, 100)]
    assert service.uri.startswith("http://127.0.0.1:") and service.etag
    # Cloud Run's defaults are filled in
    container = service.template.containers[0]
    assert container.ports[0].container_port == 8080 and container.resources.limits["memory"] == "512Mi"
    assert service.template.max_instance_request_concurrency == 80 and service.template.timeout.seconds == 300

    resp = predict(service.uri)
    assert resp.status_code == 200, resp.text
    assert resp.json()["label"] == "setosa"
    assert resp.headers["x-cloudrun-emulator-revision"] == short

    revision = clients[1].get_revision(name=service.latest_ready_revision)
    assert revision.service == service.name and revision.containers[0].image == container.image
    ready = {c.type_: c for c in revision.conditions}["Ready"]
    assert ready.state == READY and not revision.reconciling
    (running,) = emu.containers("iris")
    assert running.labels[LABEL] == "cloudrun" and running.labels[f"{LABEL}.revision"] == short
    env = dict(item.split("=", 1) for item in running.attrs["Config"]["Env"])
    assert env["PORT"] == "8080" and env["K_SERVICE"] == "iris" and env["K_REVISION"] == short


def test_get_list_errors_and_idempotent_patch(service: Any, clients: tuple[Any, Any], image: str,
                                              emu: CloudRunEmulator) -> None:
    services, revisions = clients
    assert services.get_service(name=service.name).uid == service.uid
    assert [s.name for s in services.list_services(parent=PARENT)] == [service.name]
    assert [s.name for s in services.list_services(parent="projects/emu-proj/locations/-")] == [service.name]
    assert [r.name for r in revisions.list_revisions(parent=service.name)] == [service.latest_created_revision]

    with pytest.raises(gexc.NotFound, match="'nope' of kind 'SERVICE'"):
        services.get_service(name=f"{PARENT}/services/nope")
    with pytest.raises(gexc.NotFound):
        revisions.get_revision(name=f"{service.name}/revisions/iris-00009-xyz")
    with pytest.raises(gexc.NotFound):
        services.update_service(service=run_v2.Service(name=f"{PARENT}/services/nope", template=template(image)))
    with pytest.raises(gexc.Conflict, match="already exists"):  # REST maps 409 to Conflict, not AlreadyExists
        services.create_service(parent=PARENT, service_id="iris", service=run_v2.Service(template=template(image)))

    # a get -> update round trip that changes nothing makes no revision and no new generation
    same = services.update_service(service=services.get_service(name=service.name)).result(timeout=30)
    assert same.generation == 1 and same.latest_created_revision == service.latest_created_revision
    # a label is service-level: a new generation, no revision
    current = services.get_service(name=service.name)
    current.labels["team"] = "ml"
    labelled = services.update_service(service=current).result(timeout=30)
    assert labelled.generation == 2 and labelled.labels["team"] == "ml"
    assert len(list(revisions.list_revisions(parent=service.name))) == 1


def _bad_template(image: str, case: str) -> Any:
    t = template(image)
    c = t.containers[0]
    if case == "memory":
        c.resources = run_v2.ResourceRequirements(limits={"memory": "512MB"})
    elif case == "port":
        c.ports = [run_v2.ContainerPort(container_port=70000)]
    elif case == "image":
        c.image = ""
    elif case == "foreign-image":
        c.image = "docker.io/library/python:3.11"
    elif case == "env":
        c.env = [run_v2.EnvVar(name="PORT", value="9000")]
    elif case == "probe":
        c.startup_probe.timeout_seconds = 5
    return t


@pytest.mark.parametrize(("case", "message"), [
    ("memory", "resources.limits.memory: Invalid value '512MB'"),
    ("port", "containers[0].ports"),
    ("image", "Image is required"),
    ("foreign-image", "Expected an image path like"),
    ("env", "reserved env names were provided: PORT"),
    ("probe", "startup_probe.timeout_seconds"),
])
def test_invalid_templates_are_400(case: str, message: str, clients: tuple[Any, Any], image: str,
                                   emu: CloudRunEmulator) -> None:
    with pytest.raises(gexc.BadRequest, match=re.escape(message)) as caught:
        clients[0].create_service(parent=PARENT, service_id="bad", service=run_v2.Service(
            template=_bad_template(image, case)))
    assert caught.value.code == 400
    with pytest.raises(gexc.NotFound):
        clients[0].get_service(name=f"{PARENT}/services/bad")


def test_update_moves_traffic_broken_revision_never_does_and_delete_cleans_up(
        clients: tuple[Any, Any], image: str, emu: CloudRunEmulator) -> None:
    services, revisions = clients
    name = f"{PARENT}/services/upd"
    # upsert: PATCH with allowMissing creates the service
    first = services.update_service(request={"service": run_v2.Service(name=name, template=template(image, path=None)),
                                             "allow_missing": True}).result(timeout=90)
    assert first.template.containers[0].startup_probe.tcp_socket.port == 8080  # the default probe
    rev1 = first.latest_ready_revision.rsplit("/", 1)[1]

    current = services.get_service(name=name)
    current.template.containers[0].env.append(run_v2.EnvVar(name="LOG_LEVEL", value="debug"))
    second = services.update_service(service=current).result(timeout=90)
    rev2 = second.latest_ready_revision.rsplit("/", 1)[1]
    assert rev2.startswith("upd-00002-") and second.generation == 2
    assert [(t.revision, t.percent) for t in second.traffic_statuses] == [(rev2, 100)]
    assert predict(second.uri).headers["x-cloudrun-emulator-revision"] == rev2
    env = {c.labels[f"{LABEL}.revision"]: c.attrs["Config"]["Env"] for c in emu.containers("upd")}
    assert "LOG_LEVEL=debug" in env[rev2] and "LOG_LEVEL=debug" not in env[rev1]  # rev1 keeps running

    # a revision whose startup probe never passes fails; LATEST traffic stays on the last ready one
    current = services.get_service(name=name)
    current.template = template(image, path="/nope")
    with pytest.raises(gexc.FailedPrecondition, match=r"is not ready and cannot serve traffic\. STARTUP HTTP probe "
                                                      r'failed 2 times consecutively .* on path "/nope"'):
        services.update_service(service=current).result(timeout=90)
    broken = services.get_service(name=name)
    rev3 = broken.latest_created_revision.rsplit("/", 1)[1]
    assert rev3.startswith("upd-00003-") and broken.latest_ready_revision.endswith(rev2)
    assert broken.terminal_condition.state == FAILED and "Container log tail:" in broken.terminal_condition.message
    assert [(t.revision, t.percent) for t in broken.traffic_statuses] == [(rev2, 100)]
    failed = {c.type_: c for c in revisions.get_revision(name=broken.latest_created_revision).conditions}["Ready"]
    assert failed.state == FAILED and '"/nope"' in failed.message
    resp = predict(broken.uri)
    assert resp.status_code == 200 and resp.headers["x-cloudrun-emulator-revision"] == rev2

    # a traffic split by revision (the template is unchanged: no new revision), by weighted choice
    broken.traffic = [run_v2.TrafficTarget(type_=BY_REVISION, revision=rev1, percent=50),
                      run_v2.TrafficTarget(type_=BY_REVISION, revision=rev2, percent=50)]
    split = services.update_service(service=broken).result(timeout=30)
    assert [(t.revision, t.percent) for t in split.traffic_statuses] == [(rev1, 50), (rev2, 50)]
    assert split.terminal_condition.state == FAILED  # the latest created revision is still the broken one
    conditions = {c.type_: c.state for c in split.conditions}
    assert conditions == {"RoutesReady": READY, "ConfigurationsReady": FAILED}
    with pytest.raises(gexc.BadRequest, match="is serving traffic"):
        revisions.delete_revision(name=f"{name}/revisions/{rev1}")
    assert len(list(revisions.list_revisions(parent=name))) == 3
    seen = {predict(split.uri).headers["x-cloudrun-emulator-revision"] for _ in range(40)}
    assert seen == {rev1, rev2}

    deleted = services.delete_service(name=name).result(timeout=60)
    assert deleted.name == name
    assert emu.containers("upd") == []
    with pytest.raises(gexc.NotFound):
        services.get_service(name=name)
    with pytest.raises(httpx.TransportError):
        predict(split.uri)


def test_a_container_that_exits_fails_its_revision(clients: tuple[Any, Any], image: str,
                                                   emu: CloudRunEmulator) -> None:
    services = clients[0]
    crash = template(image, path=None, command=["sh", "-c", "echo model failed to load >&2; exit 3"])
    with pytest.raises(gexc.FailedPrecondition, match="exited with code 3") as caught:
        services.create_service(parent=PARENT, service_id="crash", service=run_v2.Service(template=crash)).result(
            timeout=90)
    assert "model failed to load" in caught.value.message
    failed = services.get_service(name=f"{PARENT}/services/crash")
    assert failed.terminal_condition.state == FAILED and not failed.latest_ready_revision
    assert not failed.traffic_statuses or not failed.traffic_statuses[0].revision
    assert predict(failed.uri).status_code == 503  # no ready revision takes traffic
    services.delete_service(name=failed.name).result(timeout=60)
    assert emu.containers("crash") == []

    ghost = template(image.split("@")[0] + ":no-such-tag")
    with pytest.raises(gexc.FailedPrecondition, match=r"Image '.*:no-such-tag' not found"):
        services.create_service(parent=PARENT, service_id="ghost", service=run_v2.Service(template=ghost)).result(
            timeout=90)
    services.delete_service(name=f"{PARENT}/services/ghost").result(timeout=60)


def test_iam_policy_round_trip_and_invoker_check(service: Any, clients: tuple[Any, Any],
                                                 emu: CloudRunEmulator) -> None:
    services = clients[0]
    empty = services.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=service.name))
    assert list(empty.bindings) == [] and empty.etag
    binding = policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"])
    emu.enforce_invoker_iam = True
    try:
        assert predict(service.uri).status_code == 403
        stored = services.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(
            resource=service.name, policy=policy_pb2.Policy(bindings=[binding], etag=empty.etag)))
        assert stored.etag != empty.etag
        got = services.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=service.name))
        assert [(b.role, list(b.members)) for b in got.bindings] == [("roles/run.invoker", ["allUsers"])]
        assert got.etag == stored.etag
        assert predict(service.uri).status_code == 200
    finally:
        emu.enforce_invoker_iam = False
    with pytest.raises(gexc.Conflict, match="concurrent policy changes"):  # a stale etag
        services.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(
            resource=service.name, policy=policy_pb2.Policy(bindings=[binding], etag=empty.etag)))
    assert ("GET", f"/v2/{service.name}:getIamPolicy") in emu.calls  # getIamPolicy is a GET in REST


def test_fail_next_injects_errors(service: Any, clients: tuple[Any, Any], image: str, emu: CloudRunEmulator) -> None:
    services = clients[0]
    emu.fail_next("POST", r"/services$", 503)
    with pytest.raises(gexc.ServiceUnavailable, match="Injected fault"):
        services.create_service(parent=PARENT, service_id="x", service=run_v2.Service(template=template(image)))
    emu.fail_next("PATCH", r"/services/iris$", 429)
    with pytest.raises(gexc.TooManyRequests):
        services.update_service(service=services.get_service(name=service.name))
    # get_service retries UNAVAILABLE by itself (its default retry), so one 503 goes unnoticed
    emu.calls.clear()
    emu.fail_next("GET", r"/services/iris$", 503)
    assert services.get_service(name=service.name).name == service.name
    assert emu.calls == [("GET", f"/v2/{service.name}")] * 2


def test_artifact_registry_repositories(emu: CloudRunEmulator) -> None:
    url = f"{emu.endpoint}/v1/projects/emu-proj/locations/europe-west1/repositories"
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{url}/mlship").json()["error"]["status"] == "NOT_FOUND"
        op = http.post(url, params={"repositoryId": "mlship"}, json={"format": "DOCKER"}).json()
        assert op["done"] and op["response"]["name"].endswith("/repositories/mlship")
        assert http.get(f"{emu.endpoint}/v1/{op['name']}").json()["done"] is True
        repo = http.get(f"{url}/mlship").json()
        assert repo["format"] == "DOCKER" and repo["registryUri"] == f"{REGISTRY}/emu-proj/mlship"
        again = http.post(url, params={"repositoryId": "mlship"}, json={"format": "DOCKER"})
        assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
