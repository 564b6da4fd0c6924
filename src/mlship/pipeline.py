"""The deploy pipeline: one implementation of build -> test gate -> deploy, used by the CLI, the Python API
(``mlship.deploy(...)``) and the tests alike.

    load mlship.yaml (once) -> target plugin (options validated) -> preflight (the engine, the base image and
    the target's own checks; a failure stops here, before anything is built) -> plan the image -> build ->
    test gate (`mlship test`) -> Target.deploy -> DeployReport

Every step runs as a stage of :class:`mlship.events.Events`, so a terminal shows a live spinner, a CI log one
timestamped line per stage and per build step, and a Python caller whatever its listener does with them.
Errors are :class:`mlship.errors.MlshipError` subclasses; a failed test gate raises ``GateError`` (exit 3) and a
failed preflight ``PreflightError`` (exit 4), each carrying its report.

    import mlship
    report = mlship.deploy("examples/iris-sklearn", target="local")
    print(report.url, report.digest, report.gate.ready_s)
    mlship.destroy("examples/iris-sklearn", target="local")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlship.artifacts.checks import serving_of
from mlship.artifacts.resolve import one_resolution
from mlship.contract_io import Project, load_project
from mlship.events import Events
from mlship.reports import (
    BuildReport,
    DeployReport,
    DestroyReport,
    GateResult,
    PreflightReport,
    RollbackReport,
    StatusReport,
)
from mlship.targets.base import LABEL_DEPLOY, LABEL_OWNER, LABEL_SERVICE, Target, owner_label

ProjectLike = str | os.PathLike[str] | Project
TargetLike = str | Target


def open_project(project: ProjectLike) -> Project:
    """A loaded project from a folder, an mlship.yaml path, or a Project (returned as it is)."""
    return project if isinstance(project, Project) else load_project(Path(project))


@contextmanager
def open_target(target: TargetLike, project: Project) -> Iterator[Target]:
    """The target plugin for ``project`` (its options validated); closed afterwards unless it was passed in."""
    if isinstance(target, Target):
        yield target
        return
    from mlship.targets import get_target

    with get_target(target, project) as tgt:
        yield tgt


@one_resolution()  # each call resolves the artifact afresh (a moved alias), once
def preflight(project: ProjectLike = ".", target: TargetLike = "local", *, base_image: str | None = None,
              events: Events | None = None) -> PreflightReport:
    """Run the checks ``deploy`` runs before building (read-only); the report says which failed and how to fix."""
    from mlship.preflight import run_preflight

    proj = open_project(project)
    with open_target(target, proj) as tgt:
        return run_preflight(proj, tgt, base_image=base_image, events=events or Events())


@one_resolution()  # each call resolves the artifact afresh (a moved alias), once
def build(project: ProjectLike = ".", *, base_image: str | None = None, dry_run: bool = False,
          events: Events | None = None) -> BuildReport:
    """Build the image: tagged with its content tag NAME:VERSION-<12 hex of the build inputs> (never moved; the
    report's ``image``) and NAME:VERSION (the human tag, moved by each build; the default of `mlship test` and
    `mlship push`). ``dry_run``: only plan it and return the Dockerfile."""
    from mlship.image import engine
    from mlship.preflight import require, run_core_checks

    ev, proj = events or Events(), open_project(project)
    if not dry_run:
        require(run_core_checks(proj, "build", base_image=base_image, events=ev))
    report, _new = _build(proj, base_image, dry_run, ev)
    if not dry_run:
        engine.add_tag(report.image, f"{proj.contract.name}:{proj.version}")
    return report


def _build(project: Project, base_image: str | None, dry_run: bool, ev: Events) -> tuple[BuildReport, bool]:
    """Plan and build; the report's image is the content tag (NAME:VERSION in a dry run). Also returns whether
    the build made that tag (False: an identical image was there already)."""
    from mlship.image import engine
    from mlship.image.context import content_tag, plan_project, write_context

    name = project.contract.name
    with ev.stage("plan", f"planning the image of {name} (loads the model to read its versions)") as stage:
        plan = plan_project(project, base_image, dry_run=dry_run)
        for note in plan.notes:
            stage.note(note)
        stage.summary = f"image {plan.tag} from {plan.base_image}, {len(plan.requirements)} requirements"
    report = BuildReport(service=name, image=plan.tag, base_image=plan.base_image, requirements=plan.requirements,
                         notes=plan.notes, files=[ctx for _src, ctx in plan.files], dry_run=dry_run)
    if dry_run:
        report.dockerfile = plan.dockerfile
        report.notes.append(f"the build tags it {plan.tag}-<12 hex of the build inputs> too (its content tag)")
        return report, False
    with ev.stage("build", f"building {plan.tag}") as stage:
        ctx = write_context(plan, project.root / ".mlship" / "build", progress=stage.step)
        tag = content_tag(plan, ctx, engine.image_id(plan.base_image))
        stage.step(f"build context ready: {ctx}; content tag {tag}")
        new = engine.image_id(tag) is None
        image = engine.build(ctx, tag, progress=stage.step, log_path=project.root / ".mlship" / "build.log")
        stage.summary = f"built {image.tag} ({image.size / 1e6:.1f} MB) in {image.seconds:.1f}s"
    report.image = tag
    report.image_id, report.size_mb, report.seconds = image.id, round(image.size / 1e6, 1), round(image.seconds, 3)
    return report, new


@one_resolution()  # each call resolves the artifact afresh (a moved alias), once
def test(project: ProjectLike = ".", image: str | None = None, *, events: Events | None = None,
         env: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> GateResult:
    """`mlship test`: run the image, replay the examples, check the budgets; GateError (exit 3) if it fails.
    ``env``: the container's environment (default: PORT and the API keys of your shell, see gate.default_env);
    a deploy passes the target's ``runtime_env()``. ``labels`` go on the test container."""
    from mlship.gate import require_ok, run_gate

    ev, proj = events or Events(), open_project(project)
    ref = image or f"{proj.contract.name}:{proj.version}"
    with ev.stage("test", f"testing {ref}: /readyz, {len(proj.contract.examples)} example(s), budgets") as stage:
        gate = run_gate(proj, ref, env=env, labels=labels)
        require_ok(gate)
        stage.summary = (f"tested {ref}: ready in {gate.ready_s:.2f}s, {len(gate.examples)} example(s) ok, "
                         f"{gate.size_mb:g} MB" + (f", peak memory {gate.memory_mb:g} MB" if gate.memory_mb else ""))
    return gate.result()


@one_resolution()  # each call resolves the artifact afresh (a moved alias), once
def deploy(project: ProjectLike = ".", target: TargetLike = "local", *, base_image: str | None = None,
           skip_test: bool = False, dry_run: bool = False, events: Events | None = None) -> DeployReport:
    """Preflight -> build -> test gate -> deploy. A dry run runs the preflight and plans, and changes nothing:
    its report has ``ok: false`` when a preflight check failed (a real deploy raises PreflightError)."""
    from mlship.image import engine
    from mlship.preflight import require, run_preflight

    ev, proj = events or Events(), open_project(project)
    with open_target(target, proj) as tgt:
        checks = run_preflight(proj, tgt, base_image=base_image, events=ev)
        report = DeployReport(service=proj.contract.name, target=tgt.name, version=proj.version, preflight=checks,
                              ok=checks.ok, dry_run=dry_run)
        if not dry_run:
            require(checks)
        env = tgt.runtime_env() if not (dry_run or skip_test) else {}
        built, new = _build(proj, base_image, dry_run, ev)
        report.build = built
        report.plan = [f"build {built.image} (`mlship build --dry-run` shows the Dockerfile)",
                       "skip `mlship test` (--skip-test)" if skip_test else
                       f"test {built.image}: /readyz, replay {len(proj.contract.examples)} example(s), check budgets "
                       "(with the environment the target gives it)",
                       *tgt.plan(built.image)]
        if dry_run:
            ev.skip("deploy", "dry run: nothing was built or deployed")
            report.timings = dict(ev.timings)
            return report
        if skip_test:
            ev.skip("test", f"mlship test skipped (--skip-test): {built.image} goes out untested")
        else:
            labels = {LABEL_SERVICE: proj.contract.name, LABEL_DEPLOY: tgt.deploy_id, LABEL_OWNER: owner_label()}
            try:
                report.gate = test(proj, built.image, events=ev, env=env, labels=labels)
            except BaseException:
                if new:  # a candidate nobody ran before: gone, so no tag names a failed image
                    engine.remove_unused(built.image)
                raise
        engine.add_tag(built.image, f"{proj.contract.name}:{proj.version}")  # the human tag, for test/push
        if report.gate is not None:  # the target checks what it measured against its platform's limits
            tgt.spec = tgt.spec.measured(report.gate.memory_mb, report.gate.memory_source, report.gate.ready_s)
        with ev.stage("deploy", f"deploying {built.image} to {tgt.name}") as stage:
            dep = tgt.deploy(built.image, stage.step)
            if proj.remote and proj.contract.artifact.startswith("models:/"):  # the MLflow registry round trip
                from mlship.artifacts.mlflow_registry import after_deploy

                for line in after_deploy(proj, tgt.name, dep.previous, dep.url, dep.digest or _digest_of(dep.image)):
                    stage.note(line)
            stage.summary = (f"{'deployed' if dep.changed else 'unchanged'}: {dep.image} (version {dep.version})"
                             + (f" at {dep.url}" if dep.url else ""))
    report.url, report.image, report.version, report.previous, report.changed = (
        dep.url, dep.image, dep.version, dep.previous, dep.changed)
    report.digest = dep.digest or _digest_of(dep.image)
    report.timings = dict(ev.timings)
    return report


def _digest_of(ref: str) -> str | None:
    return ref.partition("@")[2] or None


def status(project: ProjectLike = ".", target: TargetLike = "local") -> StatusReport:
    """What the target runs for the service now."""
    proj = open_project(project)
    with open_target(target, proj) as tgt:
        st = tgt.status()
        return StatusReport(service=proj.contract.name, target=tgt.name, deployed=st.image is not None, url=st.url,
                            image=st.image, version=st.version, state=st.state, ready=st.ready, history=st.history,
                            events=st.events, failed_deployment=st.failed, serving=st.serving or serving_of(st.image))


def rollback(project: ProjectLike = ".", target: TargetLike = "local", *,
             events: Events | None = None) -> RollbackReport:
    """Give the traffic back to the previous version (a second rollback undoes the first)."""
    ev, proj = events or Events(), open_project(project)
    with open_target(target, proj) as tgt, ev.stage("rollback", f"rolling back {proj.contract.name} on "
                                                                  f"{tgt.name}") as stage:
        dep = tgt.rollback(stage.step)
        serving = dep.serving or serving_of(dep.image)  # the code+model pair it returns to
        stage.summary = f"rolled back to {dep.image} (version {dep.version})" + (f": {serving}" if serving else "")
        return RollbackReport(service=proj.contract.name, target=tgt.name, url=dep.url, image=dep.image,
                              digest=dep.digest or _digest_of(dep.image), version=dep.version,
                              previous=dep.previous, serving=serving)


def destroy(project: ProjectLike = ".", target: TargetLike = "local") -> DestroyReport:
    """Remove everything the target runs for the service (images stay); nothing deployed is not an error."""
    proj = open_project(project)
    with open_target(target, proj) as tgt:
        return DestroyReport(service=proj.contract.name, target=tgt.name, removed=tgt.destroy())


def logs(project: ProjectLike = ".", target: TargetLike = "local", *, tail: int = 100) -> str:
    """The service's last ``tail`` log lines."""
    proj = open_project(project)
    with open_target(target, proj) as tgt:
        return tgt.logs(tail=tail)
