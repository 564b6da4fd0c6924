"""`mlship test`: start the built image, wait for /readyz, replay the contract's examples over HTTP,
and check cold start and image size against the contract's budgets. Nothing is left running.

The container gets the environment the deploy target will give the service (``Target.runtime_env()``; for
`mlship test` alone: PORT and ``$<serve.api_keys_env>`` from your shell when set), so ``serve.auth: api_key``
is tested with real keys; the example requests send the first key. Keys are never put in the image, the
report or the output. The container is labelled ``dev.mlship.role=test`` plus whatever the caller passes
(a deploy: the service, the deploy id and the owner PID@HOST, so a re-run can clear a gate left by a kill).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlship import client as http
from mlship.contract_io import Project
from mlship.errors import ClientError, GateError
from mlship.examples import check_example
from mlship.image import engine
from mlship.reports import GateResult


@dataclass
class GateReport:
    image: str
    size_mb: float
    ready_s: float = 0.0  # container start -> /readyz 200
    first_prediction_s: float = 0.0  # container start -> first successful prediction
    memory_mb: float | None = None  # peak memory of the container up to the last example (see peak_memory)
    memory_source: str | None = None  # where that figure was read
    examples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    logs: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data.pop("logs")
        return data

    def result(self) -> GateResult:
        """The report as the JSON document of `mlship test --json` (and the ``gate`` of a deploy report)."""
        return GateResult.model_validate(self.as_dict())


def default_env(project: Project) -> dict[str, str]:
    """The gate's environment without a target: PORT, and the API keys of your shell when set."""
    env = {"PORT": "8080"}
    keys_env = project.contract.serve.api_keys_env
    if os.environ.get(keys_env):
        env[keys_env] = os.environ[keys_env]
    return env


def api_key(project: Project, env: dict[str, str]) -> str | None:
    """The key the example requests send: the first of ``env[serve.api_keys_env]`` when serve.auth is api_key."""
    serve = project.contract.serve
    if serve.auth != "api_key":
        return None
    keys = [k.strip() for k in env.get(serve.api_keys_env, "").split(",") if k.strip()]
    return keys[0] if keys else None


def run_gate(project: Project, image: str, timeout_s: float | None = None, *, env: dict[str, str] | None = None,
             labels: dict[str, str] | None = None) -> GateReport:
    """Run the image like the target will (``env``, default :func:`default_env`; SIGTERM to stop) and check it."""
    info = engine.inspect(image)
    report = GateReport(image=image, size_mb=round(info.size / 1e6, 1))
    environment = {**(env if env is not None else default_env(project)), "PORT": "8080"}
    with start_cache(project) as volumes:
        return _run(project, image, report, environment, timeout_s, labels, volumes)


@contextlib.contextmanager
def start_cache(project: Project) -> Iterator[dict[str, dict[str, str]]]:
    """``serve.fetch_at_start``: the bind mount that gives the gate's container this machine's checked copy of the
    artifact as its start cache, so it starts as on the platform without the platform's identity (no credentials
    enter the container; the fetch itself is the platform's: its readiness waits for the digest check). A copy
    readable by the image's non-root user, removed afterwards. No mount for a baked model."""
    if not (project.remote and project.contract.serve.fetch_at_start):
        yield {}
        return
    from mlship.artifacts.image import START_CACHE

    with tempfile.TemporaryDirectory(prefix="mlship-gate-cache-") as tmp:
        fill_start_cache(project, Path(tmp))
        yield {tmp: {"bind": START_CACHE, "mode": "ro"}}


def fill_start_cache(project: Project, root: Path) -> None:
    """Add this machine's checked copy of the project's artifact (and its provenance) to ``root``, laid out as the
    image's start cache (``blobs/<sha256>/<name>``, ``meta/``), readable by the image's non-root user."""
    from mlship.artifacts.cache import meta_file
    from mlship.artifacts.resolve import resolve_artifact

    artifact = resolve_artifact(project)
    blob = root / "blobs" / str(artifact.sha256)
    blob.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact.path, blob / artifact.path.name)
    meta = meta_file(str(artifact.sha256))
    if meta.is_file():
        (root / "meta").mkdir(exist_ok=True)
        shutil.copyfile(meta, root / "meta" / meta.name)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _run(project: Project, image: str, report: GateReport, environment: dict[str, str], timeout_s: float | None,
         labels: dict[str, str] | None, volumes: dict[str, dict[str, str]]) -> GateReport:
    budgets = project.contract.test
    key = api_key(project, environment)
    cli = engine.client()
    started = time.monotonic()
    name = f"mlship-test-{uuid.uuid4().hex[:12]}"  # found by name if an interrupt lands before run() returns
    try:
        container = cli.containers.run(image, detach=True, name=name, ports={"8080/tcp": ("127.0.0.1", None)},
                                       environment=environment, labels={**(labels or {}), "dev.mlship.role": "test"},
                                       volumes=volumes or None)
    except BaseException as exc:  # Ctrl-C may land while the engine makes it: it finishes the create all the same
        _remove_named(cli, name, wait_s=2.0 if isinstance(exc, KeyboardInterrupt) else 0.0)
        raise
    try:
        container.reload()
        # no binding when the container exited before the engine published the port
        bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get("8080/tcp")
        timeout = timeout_s or budgets.ready_timeout_s
        if bindings:
            url = f"http://127.0.0.1:{bindings[0]['HostPort']}"
            report.ready_s = _wait_ready(url, started, started + timeout, container)
        else:
            report.ready_s = -1.0
        if report.ready_s < 0:
            report.problems.append(_not_ready(container, timeout))
        else:
            _replay(project, url, report, started, key)
            report.memory_mb, report.memory_source = peak_memory(cli, container)
        if budgets.max_cold_start_s is not None and report.first_prediction_s > budgets.max_cold_start_s:
            report.problems.append(f"cold start {report.first_prediction_s:.2f}s is over the budget "
                                   f"test.max_cold_start_s={budgets.max_cold_start_s:g}")
        if budgets.max_image_mb is not None and report.size_mb > budgets.max_image_mb:
            report.problems.append(f"image is {report.size_mb:g} MB, over test.max_image_mb={budgets.max_image_mb:g}")
    finally:
        try:
            container.stop(timeout=10)
            report.logs = _redact(container.logs().decode(errors="replace")[-4000:], environment, project)
        finally:  # also when Ctrl-C lands in the stop: nothing is left running
            container.remove(force=True)
    return report


def peak_memory(cli: Any, container: Any) -> tuple[float | None, str | None]:
    """The container's peak memory in MB (10^6 bytes) so far, and where it was read; (None, why) when it cannot be.

    It is the memory cgroup's high-water mark: the model's load, its warm-up and the examples' predictions, page
    cache included (as platforms count a container's memory against its quota). cgroup v1: the engine's stats API
    reports it (``max_usage``, from memory.max_usage_in_bytes). cgroup v2: the stats API has no peak, so
    ``memory.peak`` (Linux 5.19+) is read inside the container, through the engine (so a remote engine works too).
    Failing both, the current usage is a lower bound, and the source says so.
    """
    from docker.errors import APIError

    try:
        stats = cli.api.stats(container.id, stream=False, one_shot=True)
    except APIError as exc:
        return None, f"the engine gave no stats: {exc.explanation or exc}"
    memory = stats.get("memory_stats") or {}
    if memory.get("max_usage"):
        return round(memory["max_usage"] / 1e6, 1), "cgroup v1 memory.max_usage_in_bytes (engine stats API)"
    try:
        code, out = container.exec_run(["cat", "/sys/fs/cgroup/memory.peak"])
    except APIError:
        code, out = 1, b""
    if code == 0 and out.strip().isdigit():
        return round(int(out) / 1e6, 1), "cgroup v2 memory.peak (read in the container)"
    if memory.get("usage"):
        return round(memory["usage"] / 1e6, 1), "current usage, a lower bound (this engine reports no peak)"
    return None, "the engine reported no memory figures"


def _remove_named(cli: Any, name: str, wait_s: float = 0.0) -> None:
    """Remove the container ``name`` once the engine made it, looking for up to ``wait_s`` seconds."""
    from docker.errors import NotFound

    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(NotFound):
            cli.containers.get(name).remove(force=True)
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _wait_ready(url: str, started: float, deadline: float, container: Any) -> float:
    """Seconds from ``started`` until /readyz is 200; -1 if the deadline passes or the container dies."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:  # noqa: S310 - loopback http
                if resp.status == 200:
                    return round(time.monotonic() - started, 3)
        except (urllib.error.URLError, OSError):
            container.reload()
            if container.status in ("exited", "dead"):
                return -1.0
        time.sleep(0.05)
    return -1.0


def _not_ready(container: Any, timeout: float) -> str:
    container.reload()
    if container.status in ("exited", "dead"):
        code = (container.attrs.get("State") or {}).get("ExitCode")
        return f"the container exited (code {code}) before /readyz answered 200"
    return f"not ready within {timeout:g}s"


def _replay(project: Project, url: str, report: GateReport, started: float, key: str | None) -> None:
    examples = project.contract.examples
    if not examples:
        report.problems.append("mlship.yaml has no examples to replay")
        return
    for i, example in enumerate(examples):
        try:
            got = http.post_json(f"{url}/predict", example.input, key, timeout=30)
        except ClientError as exc:
            report.examples.append({"index": i, "ok": False, "problems": [exc.message]})
            report.problems.append(f"examples[{i}]: {exc.message}")
            continue
        if i == 0:
            report.first_prediction_s = round(time.monotonic() - started, 3)
        result = check_example(i, example, got)
        report.examples.append({"index": i, "ok": result.ok, "got": got, "problems": result.problems})
        report.problems += [f"examples[{i}]: {p}" for p in result.problems]


def _redact(text: str, env: dict[str, str], project: Project) -> str:
    """``text`` with every API key replaced by ***: the log tail ends up in errors and reports."""
    for key in env.get(project.contract.serve.api_keys_env, "").split(","):
        if key.strip():
            text = text.replace(key.strip(), "***")
    return text


def require_ok(report: GateReport) -> None:
    if not report.ok:
        raise GateError(f"{report.image} failed `mlship test`:\n  " + "\n  ".join(report.problems),
                        why="Container log tail:\n" + report.logs[-1500:] if report.logs else None,
                        fix="Fix the model or the expected outputs in mlship.yaml, rebuild, and test again.",
                        report=report.result())
