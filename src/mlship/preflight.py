"""Preflight: cheap, read-only checks that run before anything is built, so that a deploy that cannot work
fails in seconds (goal: under 5 s) rather than after a minute of building and testing.

The core checks what every build needs (a Docker engine, the base image present or pullable); the target
adds its own (:meth:`mlship.targets.base.Target.preflight`: credentials, options, port, registry,
permissions). The checks run in threads under one deadline, so one that hangs (a network call with no
answer) is reported as such instead of stalling the deploy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from mlship.artifacts.checks import artifact_group
from mlship.contract_io import Project
from mlship.errors import MlshipError, PreflightError
from mlship.events import Events
from mlship.reports import Check, PreflightReport
from mlship.targets.base import Target

DEADLINE_S = 4.5  # all checks together
PULL_CHECK_S = 3.0  # asking the base image's registry for its manifest

CheckFn = Callable[[], list[Check]]


def _engine_checks(project: Project, base_image: str | None) -> list[Check]:
    from mlship.image import engine
    from mlship.image.context import base_image as choose_base

    try:
        cli = engine.client()
    except MlshipError as exc:
        return [Check(name="docker engine", ok=False, detail=exc.message, fix=exc.fix)]
    version = cli.version().get("Version", "?")
    checks = [Check(name="docker engine", ok=True, detail=f"Docker engine {version} answers")]
    try:
        image = choose_base(project, base_image)
    except MlshipError as exc:
        return [*checks, Check(name="base image", ok=False, detail=exc.message, fix=exc.fix)]
    return [*checks, _base_image_check(cli, image)]


def _base_image_check(cli: object, image: str) -> Check:
    from docker.errors import DockerException, ImageNotFound

    from mlship.image import engine

    try:
        cli.images.get(image)  # type: ignore[attr-defined]
        return Check(name="base image", ok=True, detail=f"{image} is in the local engine")
    except ImageNotFound:
        pass
    pool = ThreadPoolExecutor(max_workers=1)  # the engine asks the image's registry: bound the wait
    future = pool.submit(cli.images.get_registry_data, image)  # type: ignore[attr-defined]
    try:
        future.result(timeout=PULL_CHECK_S)
        return Check(name="base image", ok=True, detail=f"{image} will be pulled from its registry")
    except DockerException as exc:
        reason = str(exc).splitlines()[0][:200]
    except TimeoutError:
        reason = f"its registry did not answer within {PULL_CHECK_S:g}s"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return Check(name="base image", ok=False,
                 detail=f"{image} is not in the local engine and cannot be pulled: {reason}",
                 fix=engine.base_image_fix(image))


def run_checks(name: str, groups: dict[str, CheckFn], events: Events) -> PreflightReport:
    """Run each group of checks in its own thread under :data:`DEADLINE_S`; returns every check."""
    started = time.perf_counter()
    checks: list[Check] = []
    with events.stage("preflight", f"preflight for {name}: {', '.join(groups)}") as stage:
        pool = ThreadPoolExecutor(max_workers=len(groups))
        futures = {label: pool.submit(fn) for label, fn in groups.items()}
        wait(futures.values(), timeout=DEADLINE_S)
        pool.shutdown(wait=False, cancel_futures=True)
        for label, future in futures.items():
            if not future.done():
                checks.append(Check(name=label, ok=False, detail=f"no answer within {DEADLINE_S:g}s",
                                    fix="Check the network path to the platform and try again."))
            elif future.exception() is not None:
                exc = future.exception()
                detail = exc.message if isinstance(exc, MlshipError) else f"{type(exc).__name__}: {exc}"
                checks.append(Check(name=label, ok=False, detail=detail,
                                    fix=exc.fix if isinstance(exc, MlshipError) else None))
            else:
                checks.extend(future.result())
        for check in checks:
            (stage.step if check.ok else stage.note)(f"{'ok' if check.ok else 'FAILED'} {check.name}: {check.detail}")
        failed = [c for c in checks if not c.ok]
        stage.summary = (f"{len(checks)} checks passed" if not failed
                         else f"{len(failed)} of {len(checks)} checks failed: {', '.join(c.name for c in failed)}")
    return PreflightReport(target=name, ok=not failed, checks=checks, seconds=round(time.perf_counter() - started, 3))


def run_core_checks(project: Project, name: str, *, base_image: str | None, events: Events) -> PreflightReport:
    return run_checks(name, {"docker engine": lambda: _engine_checks(project, base_image),
                             **artifact_group(project)}, events)


def run_preflight(project: Project, target: Target, *, base_image: str | None, events: Events) -> PreflightReport:
    """The core checks and ``target.preflight()``, together under one deadline."""
    return run_checks(target.name, {"docker engine": lambda: _engine_checks(project, base_image),
                                    **artifact_group(project),  # a remote artifact: readable (mlship.artifacts)
                                    f"{target.name} target": target.preflight}, events)


def require(report: PreflightReport) -> None:
    """PreflightError (exit 4) naming each failed check and its fix, when any failed."""
    failed = [c for c in report.checks if not c.ok]
    if not failed:
        return
    raise PreflightError(
        f"Preflight for {report.target} failed; nothing was built or changed:\n  "
        + "\n  ".join(f"{c.name}: {c.detail}" for c in failed),
        why="mlship checks what a deploy needs before it builds anything.",
        fix="\n".join(f"{c.name}: {c.fix}" for c in failed if c.fix) or None,
        report=report)
