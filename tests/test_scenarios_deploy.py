"""Scenarios of the deploy contract on the local target, black-box: each runs `mlship` commands on a real Docker
engine and asserts only what a user observes (exit codes, messages, what answers on the port, the engine's
containers and images). One scenario per clause that no other file covers; docs/scenarios-deploy.md maps every
clause of the deploy contract to its test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

import mlship
from mlship.cli import app
from test_recovery import (
    IRIS_ROW,
    content_tag,
    deploy_killed_at,
    edit,
    names,  # noqa: F401 - the fixture
    project,
    service_containers,
)


def mlship_cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    return " ".join(text.split())


def served_version(port: int) -> str:
    with httpx.Client(timeout=10) as client:
        answer = client.post(f"http://127.0.0.1:{port}/predict", json=IRIS_ROW)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-model-version"]


def port_of(folder: Path) -> int:
    url = mlship.status(folder, target="local").url
    assert url is not None, "nothing serves"
    return int(url.rpartition(":")[2])


def test_a_failed_deploy_of_a_changed_contract_keeps_images_tags_and_rollback(
        iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str, names: list[str],  # noqa: F811
        docker_engine: Any) -> None:
    """Issue 17: a contract change that fails only inside the container (same artifact, same version) was
    built under the serving version's tag, the gate failed, and the next `mlship rollback` failed."""
    folder = project(iris_image, tmp_path, names, version="sc-v1")
    name = names[0]
    assert mlship_cli("deploy", "-f", str(folder)).exit_code == 0
    edit(folder, version="sc-v2")
    assert mlship_cli("deploy", "-f", str(folder)).exit_code == 0
    v2, v1 = mlship.status(folder, target="local").history
    assert content_tag(name, "sc-v2").match(v2) and content_tag(name, "sc-v1").match(v1)
    ids = {tag: docker_engine.images.get(tag).id for tag in (v1, v2, f"{name}:sc-v1", f"{name}:sc-v2")}

    # the same artifact and version; an expected output only the running container can contradict
    edit(folder, examples=[{"input": IRIS_ROW, "output": {"label": "virginica"}}])
    result = mlship_cli("deploy", "-f", str(folder))
    assert result.exit_code == 3, result.output
    assert "failed `mlship test`" in plain(result.stderr) and "examples[0]" in plain(result.stderr)
    assert {tag: docker_engine.images.get(tag).id for tag in ids} == ids  # no tag moved, no image lost
    assert served_version(port_of(folder)) == "sc-v2"
    status = mlship.status(folder, target="local")
    assert status.image == v2 and status.history == [v2, v1] and status.ready
    assert [c.name for c in service_containers(docker_engine, name)] == [f"mlship-{name}"]  # no gate left

    result = mlship_cli("rollback", "-f", str(folder))
    assert result.exit_code == 0, result.output
    assert f"rolled back to {v1}" in plain(result.stdout)
    assert served_version(port_of(folder)) == "sc-v1"
    result = mlship_cli("rollback", "-f", str(folder))  # and back again: the failed deploy changed nothing
    assert result.exit_code == 0 and served_version(port_of(folder)) == "sc-v2", result.output
    assert mlship_cli("destroy", "-f", str(folder)).exit_code == 0


def test_rollback_to_an_image_that_was_removed_says_how_to_get_it_back(
        iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str, names: list[str],  # noqa: F811
        docker_engine: Any) -> None:
    folder = project(iris_image, tmp_path, names, version="sc-v1")
    name = names[0]
    assert mlship_cli("deploy", "-f", str(folder)).exit_code == 0
    edit(folder, version="sc-v2")
    assert mlship_cli("deploy", "-f", str(folder)).exit_code == 0
    v1 = mlship.status(folder, target="local").history[1]
    for tag in (v1, f"{name}:sc-v1"):
        docker_engine.images.remove(tag, force=True)

    result = mlship_cli("rollback", "-f", str(folder))
    err = plain(result.stderr)
    assert result.exit_code == 1, result.output
    assert f"Cannot roll back to {v1}: the image is no longer in the local Docker engine" in err
    assert "why: Nothing changed" in err and "fix: Check out that version and deploy it" in err
    assert served_version(port_of(folder)) == "sc-v2"  # nothing changed
    assert mlship.status(folder, target="local").history[1] == v1

    edit(folder, version="sc-v1")  # the fix, as a user does it: that version's files, deployed again
    result = mlship_cli("deploy", "-f", str(folder))
    assert result.exit_code == 0, result.output
    assert served_version(port_of(folder)) == "sc-v1"
    v1_again, _v2 = mlship.status(folder, target="local").history
    assert content_tag(name, "sc-v1").match(v1_again)
    result = mlship_cli("rollback", "-f", str(folder))  # the history works again
    assert result.exit_code == 0 and served_version(port_of(folder)) == "sc-v2", result.output
    assert mlship_cli("destroy", "-f", str(folder)).exit_code == 0


def test_destroy_after_interrupted_deploys_leaves_no_container(
        iris_image: tuple[Path, str], tmp_path: Path, base_image_env: str, names: list[str],  # noqa: F811
        docker_engine: Any) -> None:
    """Deploys killed in the switch and in the gate leave a stopped -previous and a running gate container;
    `mlship destroy` removes every container of the service (the images stay)."""
    folder = project(iris_image, tmp_path, names, version="sc-v1")
    name = names[0]
    assert mlship_cli("deploy", "-f", str(folder)).exit_code == 0
    v1 = mlship.status(folder, target="local").image
    edit(folder, version="sc-v2")

    def exists(role: str) -> Callable[[], bool]:
        # sparse: one listing, no inspect of a container the deploy removes meanwhile
        return lambda: any(((c.attrs.get("Labels") or {}).get("dev.mlship.role") == role
                            and c.attrs.get("State") == "running")
                           or (role == "previous" and f"/mlship-{name}-previous" in c.attrs.get("Names", []))
                           for c in docker_engine.containers.list(all=True, sparse=True,
                                                                  filters={"label": f"dev.mlship.service={name}"}))

    deploy_killed_at(folder, exists("previous"))  # once the old container was renamed
    deploy_killed_at(folder, exists("test"))  # once the gate runs (before the step that clears -previous)
    left = {c.name: c.labels.get("dev.mlship.role") for c in service_containers(docker_engine, name)}
    assert f"mlship-{name}-previous" in left and "test" in left.values(), left  # debris for destroy to find

    result = mlship_cli("destroy", "-f", str(folder))
    assert result.exit_code == 0, result.output
    assert service_containers(docker_engine, name) == []
    assert len([line for line in result.stdout.splitlines() if line.startswith("removed container")]) == len(left)
    assert mlship_cli("status", "-f", str(folder)).stdout.startswith("nothing deployed on local")
    assert docker_engine.images.get(str(v1))  # images stay
    result = mlship_cli("destroy", "-f", str(folder))  # destroying nothing is no error
    assert result.exit_code == 0 and "nothing removed" in result.stdout
