"""Fixtures of the Cloud Run tests (tests/test_batch_cloudrun*.py, tests/test_target_cloudrun_deploy.py):
``gcp_project`` (a project id of its own per module), ``emu`` (the Cloud Run emulator with jobs; at the end every
container it ran is checked gone and the images pushed to or pulled from the project's registry path are removed),
``fast_polling`` and the helpers ``target_options`` and ``delete_job``. A test module names what it uses:
``emu = cloudrun_fixtures.emu``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emulators.cloudrun import LABEL, CloudRunEmulator

REGION = "europe-west1"


@pytest.fixture(scope="module")
def gcp_project() -> str:
    return f"mlb-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def emu(docker_engine: Any, registry: str, gcp_project: str) -> Iterator[CloudRunEmulator]:
    from docker.errors import ImageNotFound

    emulator = CloudRunEmulator(docker_engine, registry=registry).start()
    try:
        yield emulator
    finally:
        emulator.stop()
        left = docker_engine.containers.list(all=True, filters={"label": f"{LABEL}.id={emulator.id}"})
        for image in docker_engine.images.list():
            for ref in image.tags + image.attrs.get("RepoDigests", []):
                if ref.startswith(f"{registry}/{gcp_project}/"):  # the pushes' tags, the tasks' pulls
                    with contextlib.suppress(ImageNotFound):
                        docker_engine.images.remove(ref)
        assert not left, f"containers left behind: {left}"


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlship.targets.cloudrun import CloudRunTarget

    monkeypatch.setattr(CloudRunTarget, "poll_s", 0.05)
    monkeypatch.setattr(CloudRunTarget, "retry_delay_s", 0.02)


def target_options(emu: CloudRunEmulator, gcp_project: str, registry: str, **options: Any) -> dict[str, Any]:
    """targets.cloudrun pointing every API (Cloud Run, Artifact Registry, Cloud Logging) at the emulator."""
    return {"project": gcp_project, "region": REGION, "api_endpoint": emu.endpoint,
            "artifact_registry_endpoint": emu.endpoint, "logging_endpoint": emu.endpoint, "registry": registry,
            **options}


def jobs_client(emu: CloudRunEmulator) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    return run_v2.JobsClient(credentials=AnonymousCredentials(), transport="rest",
                             client_options={"api_endpoint": emu.endpoint})


def delete_job(emu: CloudRunEmulator, gcp_project: str, service: str) -> None:
    """Delete the batch job of ``service`` (``<service>-batch``) if it exists, through the API."""
    name = f"projects/{gcp_project}/locations/{REGION}/jobs/{service}-batch"
    if name in emu.jobs.jobs:
        client = jobs_client(emu)
        client.delete_job(name=name).result()
        client.transport.close()
