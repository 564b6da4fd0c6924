"""The local deploy target on the real Docker engine, and the deploy/status/logs/rollback/destroy CLI.

Images: the session's iris image (v1), one rebuild of it with `version: lt-v2` (v2), and a derived
image whose model file is garbage (built from v1 in a fraction of a second, no build of its own).
Every service gets a unique name and a free host port; finalizers remove its containers even when a
test fails, and the tests assert that nothing labelled with the service is left behind.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import TEST_BASE_IMAGE, build_broken_image, build_image, copy_project, free_port
from mlship import plugins
from mlship.cli import app
from mlship.contract_io import Project, load_project
from mlship.errors import ContractError, PluginError, TargetError
from mlship.targets import get_target
from mlship.targets.local import LocalTarget

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
LABEL = "dev.mlship.service"


def make_project(source: Path, dest: Path, *, name: str | None = None, local: dict[str, Any] | None = None,
                 **changes: Any) -> Project:
    """A copy of an iris project folder with a new name, targets.local options and other keys changed."""
    return copy_project(source, dest, name=name, targets=None if local is None else {"local": local}, **changes)


def unique_name() -> str:
    return f"lt-{uuid.uuid4().hex[:8]}"


def containers(engine: Any, service: str) -> list[Any]:
    return list(engine.containers.list(all=True, filters={"label": f"{LABEL}={service}"}))


def predict(url: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(f"{url}/predict", json=IRIS_ROW)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def services(docker_engine: Any) -> Iterator[list[str]]:
    """Service names a test deploys; their containers are force-removed afterwards, pass or fail."""
    names: list[str] = []
    yield names
    for name in names:
        for container in containers(docker_engine, name):
            container.remove(force=True)


@pytest.fixture
def service(iris_image: tuple[Path, str], tmp_path: Path, services: list[str]) -> Iterator[LocalTarget]:
    """A LocalTarget for a uniquely named copy of the iris project on a free port."""
    name = unique_name()
    services.append(name)
    project = make_project(iris_image[0], tmp_path / name, name=name, local={"port": free_port()})
    target = get_target("local", project)
    assert isinstance(target, LocalTarget)
    with target:
        yield target


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """The wheelhouse cache the session's images were built with (before the per-test temp HOME)."""
    from mlship.image import wheelhouse

    return wheelhouse.cache_dir()


@pytest.fixture(scope="session")
def v2_image(iris_image: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The iris project rebuilt as version lt-v2 (every layer but the contract and labels cached)."""
    project = make_project(iris_image[0], tmp_path_factory.mktemp("lt") / "v2", version="lt-v2")
    return build_image(project)


@pytest.fixture(scope="session")
def broken_image(iris_image: tuple[Path, str], docker_engine: Any) -> Iterator[str]:
    """The iris image with a model file that cannot be loaded: the server exits 1 at start-up."""
    tag = build_broken_image(docker_engine, iris_image[1], "lt")
    yield tag
    docker_engine.images.remove(tag, force=True)


# --- options, plan, plugin lookup (no containers) --------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    ({"prot": 8081}, "targets.local.prot: unknown key `prot`; did you mean `port`? Valid keys: port, host, env, "
                     "restart"),
    ({"port": 0}, "targets.local.port: Input should be greater than or equal to 1"),
    ({"host": "localhost"}, "targets.local.host: expected an IP address"),
    ({"env": {"PORT": 1}}, "targets.local.env: PORT is set by mlship"),
    ({"env": {"bad name": "x"}}, "targets.local.env: 'bad name' is not a valid environment variable name"),
    ({"restart": "sometimes"}, "targets.local.restart: Input should be 'no', 'always', 'unless-stopped' or"),
])
def test_invalid_options_name_the_key(iris_dir: Path, options: dict[str, Any], expected: str) -> None:
    project = load_project(iris_dir)
    with pytest.raises(ContractError) as info:
        LocalTarget(project, options)
    assert expected in info.value.message
    assert info.value.exit_code == 2
    assert info.value.why is not None and "port, host, env, restart" in info.value.why


def test_invalid_options_from_mlship_yaml_fail_in_the_cli(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory
                                                          ) -> None:
    folder = tmp_path_factory.mktemp("bad-options") / "p"
    make_project(iris_dir, folder, local={"port": 8080, "hots": "0.0.0.0"})
    result = invoke("deploy", "--dry-run", "-f", str(folder))
    assert result.exit_code == 2
    assert "targets.local.hots: unknown key `hots`; did you mean `host`?" in result.output


def test_plan_is_pure(iris_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlship.image import engine

    def no_engine() -> None:
        raise AssertionError("plan() must not talk to the engine")

    monkeypatch.setattr(engine, "client", no_engine)
    project = load_project(iris_dir)
    target = LocalTarget(project, {"env": {"LOG_LEVEL": "debug", "DEBUG": True}})
    steps = target.plan("iris:v9")
    text = "\n".join(steps)
    assert "mlship-iris-candidate" in text and "iris:v9" in text
    assert "127.0.0.1:8080" in text and "restart: unless-stopped" in text
    assert "SIGTERM, 10s grace" in text  # serve.shutdown_grace_s 8 + 2
    assert "env PORT, DEBUG, LOG_LEVEL" in text
    assert steps[-1] == "serve at http://127.0.0.1:8080"
    assert target.opts.environment() == {"LOG_LEVEL": "debug", "DEBUG": "true"}


def test_unknown_target_lists_the_available_ones(iris_dir: Path) -> None:
    assert plugins.get("target", "local") is LocalTarget
    with pytest.raises(PluginError, match=r"^Unknown target `x`\. Available: cloudrun, ecs, heroku, local\.$"):
        plugins.get("target", "x")
    result = invoke("status", "--target", "x", "-f", str(iris_dir))
    assert result.exit_code == 2
    assert "Unknown target `x`. Available: cloudrun, ecs, heroku, local." in result.output


def test_cli_deploy_dry_run_builds_nothing(iris_dir: Path, docker_engine: Any) -> None:
    """--dry-run runs the (read-only) preflight and prints the plans; it builds, starts and writes nothing."""
    before = {image.id for image in docker_engine.images.list(all=True)}
    result = invoke("deploy", "--dry-run", "-f", str(iris_dir), "--base-image", TEST_BASE_IMAGE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "preflight for local: ok" in out and "ok docker engine" in out and "ok port" in out
    assert f"base {TEST_BASE_IMAGE}" in out
    assert "1. build iris:" in out and "2. test iris:" in out
    assert "start candidate mlship-iris-candidate" in out
    assert "serve at http://127.0.0.1:8080" in out
    assert "dry run: nothing was built or deployed" in out
    assert not (iris_dir / ".mlship").exists()
    assert {image.id for image in docker_engine.images.list(all=True)} <= before
    assert containers(docker_engine, "iris") == []


# --- the life cycle on the engine ------------------------------------------------------------------
def test_deploy_upgrade_rollback_status_logs_destroy(service: LocalTarget, iris_image: tuple[Path, str],
                                                     v2_image: str, docker_engine: Any) -> None:
    v1 = iris_image[1]
    v1_version = v1.rpartition(":")[2]
    steps: list[str] = []

    first = service.deploy(v1, steps.append)
    assert first.changed and first.image == v1 and first.version == v1_version and first.previous is None
    assert first.url == service.url
    reply = predict(first.url)
    assert reply.status_code == 200 and reply.json()["label"] == "setosa"
    assert reply.headers["x-model-version"] == v1_version
    assert any("smoke test passed" in s for s in steps)

    [container] = containers(docker_engine, service.service)
    attrs = container.attrs
    assert container.name == f"mlship-{service.service}"
    assert attrs["Config"]["Labels"]["dev.mlship.target"] == "local"
    assert attrs["Config"]["Labels"]["dev.mlship.image"] == v1
    assert attrs["Config"]["Labels"]["dev.mlship.previous"] == ""
    assert "PORT=8080" in attrs["Config"]["Env"]
    assert attrs["Config"]["StopSignal"] == "SIGTERM"
    assert attrs["Config"]["StopTimeout"] == 10
    assert attrs["Config"]["User"] == "10001:10001"  # what the image sets; never overridden
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert attrs["HostConfig"]["PortBindings"]["8080/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(service.opts.port)}]

    steps.clear()
    again = service.deploy(v1, steps.append)
    assert not again.changed and again.image == v1
    assert steps == [f"mlship-{service.service} already runs {v1} and is ready; nothing changed"]
    assert [c.id for c in containers(docker_engine, service.service)] == [container.id]

    second = service.deploy(v2_image, steps.append)
    assert second.changed and second.version == "lt-v2" and second.previous == v1
    assert predict(second.url or "").headers["x-model-version"] == "lt-v2"

    status = service.status()
    assert (status.image, status.version, status.state, status.ready) == (v2_image, "lt-v2", "running", True)
    assert status.history == [v2_image, v1] and status.url == service.url

    back = service.rollback(steps.append)
    assert back.image == v1 and back.previous == v2_image and back.version == v1_version
    assert predict(service.url).headers["x-model-version"] == v1_version
    assert service.status().history == [v1, v2_image]  # a second rollback would undo the first

    logs = service.logs(tail=20)
    assert "ready" in logs and len(logs.splitlines()) <= 20

    [final] = containers(docker_engine, service.service)
    assert final.name == f"mlship-{service.service}"  # no candidate left behind
    removed = service.destroy()
    assert removed == [f"container mlship-{service.service} ({v1})"]
    assert containers(docker_engine, service.service) == []
    assert service.destroy() == []
    status = service.status()
    assert (status.state, status.image, status.url, status.history) == ("not deployed", None, None, [])
    with pytest.raises(TargetError, match="Nothing is deployed"):
        service.logs()


def test_failed_deploy_keeps_the_old_version_serving(service: LocalTarget, iris_image: tuple[Path, str],
                                                     broken_image: str, v2_image: str, docker_engine: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = iris_image[1]
    service.deploy(v1, lambda _line: None)
    [old] = containers(docker_engine, service.service)

    with pytest.raises(TargetError) as info:
        service.rollback(lambda _line: None)
    assert info.value.message == f"No previous version of `{service.service}` to roll back to."
    assert info.value.fix is not None

    with pytest.raises(TargetError) as info:
        service.deploy(broken_image, lambda _line: None)
    err = info.value
    assert f"{broken_image} did not become ready: the container exited with code 1" in err.message
    assert f"still serves {v1}" in err.message
    assert err.why is not None and "Candidate log tail" in err.why and "iris.joblib" in err.why
    assert [c.id for c in containers(docker_engine, service.service)] == [old.id]  # no candidate left
    assert predict(service.url).status_code == 200

    # The final container cannot start (e.g. the port was taken during the switch-over): the previous
    # image is started again on the port.
    from docker.errors import APIError

    real_run = service._run

    def run(image: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if image == v2_image and kwargs["role"] == "service":
            raise APIError("port is already allocated")
        return real_run(image, name, *args, **kwargs)

    monkeypatch.setattr(service, "_run", run)
    with pytest.raises(TargetError) as info:
        service.deploy(v2_image, lambda _line: None)
    assert "failed to start" in info.value.message and "port is already allocated" in info.value.message
    assert f"Restarted the previous image {v1}" in info.value.message
    [restored] = containers(docker_engine, service.service)
    assert restored.labels["dev.mlship.image"] == v1 and restored.labels["dev.mlship.previous"] == ""
    assert predict(service.url).headers["x-model-version"] == v1.rpartition(":")[2]

    assert service.destroy() == [f"container mlship-{service.service} ({v1})"]
    assert containers(docker_engine, service.service) == []


def test_deploy_to_a_busy_port_starts_nothing(service: LocalTarget, iris_image: tuple[Path, str],
                                              docker_engine: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", service.opts.port))
        busy.listen()
        with pytest.raises(TargetError, match=rf"Port {service.opts.port} on 127.0.0.1 is already in use"):
            service.deploy(iris_image[1], lambda _line: None)
    assert containers(docker_engine, service.service) == []


def test_deploy_of_a_missing_image(service: LocalTarget) -> None:
    with pytest.raises(TargetError, match=r"No image iris:does-not-exist in the local Docker engine"):
        service.deploy("iris:does-not-exist", lambda _line: None)


# --- the CLI ---------------------------------------------------------------------------------------
def test_cli_destroy_status_logs_when_nothing_is_deployed(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                                          docker_engine: Any) -> None:
    name = unique_name()
    folder = str(make_project(iris_dir, tmp_path_factory.mktemp("nothing") / name, name=name).root)
    result = invoke("destroy", "-f", folder)
    assert result.exit_code == 0, result.output
    assert f"nothing deployed on local for {name}; nothing removed" in result.output
    result = invoke("status", "-f", folder)
    assert result.exit_code == 0 and f"nothing deployed on local for {name}" in result.output
    result = invoke("logs", "-f", folder)
    assert result.exit_code == 1 and f"Nothing is deployed for `{name}` on the local target." in result.output
    result = invoke("rollback", "-f", folder)
    assert result.exit_code == 1 and "mlship deploy --target local" in result.output


def test_cli_deploy_end_to_end(iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str,
                               services: list[str], docker_engine: Any, wheel_cache: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """build (cached layers) -> mlship test -> deploy -> status/logs -> rollback refused -> destroy."""
    monkeypatch.setenv("MLSHIP_CACHE", str(wheel_cache))  # the session's wheels: no download, cache hits
    name = unique_name()
    services.append(name)
    port = free_port()
    project = make_project(iris_image[0], tmp_path / name, name=name, local={"port": port, "env": {"A": 1}})
    folder = str(project.root)
    tag = f"{name}:{project.version}"
    try:
        result = invoke("deploy", "--target", "local", "-f", folder)
        assert result.exit_code == 0, result.output
        assert f"built {tag}" in result.output and f"tested {tag}" in result.output
        assert "note: serving the compiled model: onnxruntime" in result.output  # the build's notes are shown
        content = f"{tag}-{result.output.split(f'deployed {tag}-')[1][:12]}"  # the content tag
        assert f"deployed {content} (version {project.version}) on local" in result.output
        assert result.output.rstrip().endswith(f"http://127.0.0.1:{port}")
        assert predict(f"http://127.0.0.1:{port}").status_code == 200

        result = invoke("status", "-f", folder)
        assert result.exit_code == 0
        assert f"state: running, ready\nurl: http://127.0.0.1:{port}\nimage: {content}\n" in result.output
        assert f"history: {content}" in result.output
        result = invoke("logs", "--tail", "5", "-f", folder)
        assert result.exit_code == 0 and result.output.strip()
        result = invoke("rollback", "-f", folder)
        assert result.exit_code == 1 and f"No previous version of `{name}`" in result.output
        result = invoke("destroy", "-f", folder)
        assert result.exit_code == 0
        assert f"removed container mlship-{name} ({content})" in result.output
        assert containers(docker_engine, name) == []
    finally:
        for container in containers(docker_engine, name):
            container.remove(force=True)
        for image in docker_engine.images.list(name=name):
            for ref in image.tags:
                if ref.startswith(f"{name}:") and "mlship-deps-cache" not in ref:
                    docker_engine.images.remove(ref)
