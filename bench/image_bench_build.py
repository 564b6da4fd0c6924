"""image_bench.py's builds: the iris project (trained, re-trained), a timed `mlship build` (plan, context, docker
build) and the steps its log shows, the layers mlship adds, /opt/venv's size, cold starts, and the clean-up of every
image and container the benchmark made.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris-sklearn"


REBUILD_GOAL_S = 10.0
RETRAIN_C = 0.5  # the example trains LogisticRegression with the default C=1.0
BENCH_LABEL = {"dev.mlship.role": "bench"}


# -- project ---------------------------------------------------------------------------------------
def iris_train() -> ModuleType:
    sys.path.insert(0, str(IRIS))
    try:
        import train  # examples/iris-sklearn/train.py
    finally:
        sys.path.remove(str(IRIS))
    return train


def make_project(directory: Path, name: str) -> Path:
    """Train the iris example into directory/model and write directory/mlship.yaml; returns the artifact."""
    from mlship.init import init_project

    artifact = iris_train().train(directory / "model" / "iris.joblib")
    init_project(artifact, directory=directory, sample=IRIS / "rows.csv", name=name)
    return artifact


def retrain(artifact: Path, c: float) -> None:
    """Fit the same pipeline again with LogisticRegression(C=c): new model bytes, still loadable."""
    import joblib
    import pandas as pd
    from sklearn.datasets import load_iris

    model = joblib.load(artifact)
    model.set_params(logisticregression__C=c)
    iris = load_iris()
    model.fit(pd.DataFrame(iris.data, columns=iris_train().FEATURES), iris.target_names[iris.target])
    joblib.dump(model, artifact, compress=3)


# -- builds ----------------------------------------------------------------------------------------
@dataclass
class Step:
    number: int
    instruction: str
    image: str | None = None
    cached: bool = False


@dataclass
class Created:
    """What this run put in the engine; removed by cleanup()."""

    tags: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # short ids, in creation order


def parse_log(text: str) -> list[Step]:
    """The classic builder's `Step i/n : X` / ` ---> Using cache` / ` ---> <id>` lines, as steps."""
    steps: list[Step] = []
    for line in text.splitlines():
        line = line.strip()
        head = re.match(r"^Step (\d+)/\d+ : (.*)$", line)
        if head:
            steps.append(Step(int(head.group(1)), head.group(2)))
        elif steps and line == "---> Using cache":
            steps[-1].cached = True
        elif steps and re.match(r"^---> [0-9a-f]{12,}$", line):
            steps[-1].image = line.split()[-1]
    return steps


@contextlib.contextmanager
def timed_calls(module: ModuleType, names: tuple[str, ...], into: dict[str, float]) -> Iterator[None]:
    """Add the wall time of each call to ``module.<name>`` to ``into[name]`` while the block runs."""
    originals = {n: getattr(module, n) for n in names}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into[name] = into.get(name, 0.0) + time.perf_counter() - t0
        return timed

    for n, fn in originals.items():
        setattr(module, n, wrap(n, fn))
    try:
        yield
    finally:
        for n, fn in originals.items():
            setattr(module, n, fn)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_once(root: Path, base: str, label: str, created: Created, nocache: bool = False) -> dict[str, Any]:
    """plan_project -> write_context -> engine.build, as `mlship build` runs them, each timed (the plan loads the
    model once: its pins, and the compiled model converted, checked and put in the image)."""
    from mlship.contract_io import load_project
    from mlship.image import engine, wheelhouse
    from mlship.image.context import plan_project, write_context

    print(f"{label} ...", flush=True)
    t0 = time.perf_counter()
    project = load_project(root)
    plan = plan_project(project, base)
    t1 = time.perf_counter()
    key = wheelhouse.cache_dir() / "wheelhouse" / wheelhouse.wheel_key(plan.requirements, plan.python)
    wheels_cached = (key / ".complete").is_file()
    parts: dict[str, float] = {}
    with timed_calls(wheelhouse, ("download", "mlship_wheel"), parts):
        ctx = write_context(plan, root / ".mlship" / "build")
    t2 = time.perf_counter()
    log_path = root / ".mlship" / f"build-{len(created.tags)}.log"
    for tag in (plan.tag, engine.stage_cache_tag(project.contract.name)):  # the build tags its deps stage too
        if tag not in created.tags:
            created.tags.append(tag)
    try:
        image = engine.build(ctx, plan.tag, log_path=log_path, nocache=nocache)
    finally:
        steps = parse_log(log_path.read_text()) if log_path.is_file() else []
        # cache hits on layers this run did not make: other builds on the engine share the layer cache
        foreign = sum(1 for st in steps if st.cached and st.image not in created.images)
        for step in steps:  # FROM steps name the base; cached steps reuse images made before
            is_from = step.instruction.upper().startswith("FROM ")
            if step.image and not step.cached and not is_from and step.image not in created.images:
                created.images.append(step.image)
    t3 = time.perf_counter()
    runnable = [s for s in steps if not s.instruction.upper().startswith("FROM ")]
    return {
        "label": label, "tag": plan.tag, "image_id": image.id, "nocache": nocache,
        "plan_s": t1 - t0, "context_s": t2 - t1, "docker_build_s": t3 - t2, "total_s": t3 - t0,
        "wheelhouse_s": parts.get("download", 0.0), "mlship_wheel_s": parts.get("mlship_wheel", 0.0),
        "wheel_cache": "hit" if wheels_cached else "miss (pip download)",
        "context_mb": dir_bytes(ctx) / 1e6, "wheels_mb": dir_bytes(ctx / "wheels") / 1e6,
        "steps": len(runnable), "steps_cached": sum(s.cached for s in runnable), "foreign_cache_hits": foreign,
        "rebuilt_steps": [s.instruction[:80] for s in runnable if not s.cached],
        "model_sha256": image.labels.get("dev.mlship.model-sha256"),
        "mlship_wheel": next((w.name for w in (ctx / "mlship").glob("*.whl")), None),
        "_steps": steps,
    }


# -- images and containers -------------------------------------------------------------------------
def layers(cli: Any, tag: str, base_id: str, steps: list[Step]) -> list[dict[str, Any]]:
    """The layers above the base image with a size, named by their Dockerfile step."""
    names = {s.image: s.instruction for s in steps if s.image}
    out = []
    for entry in cli.images.get(tag).history():
        entry_id = str(entry.get("Id", ""))
        if entry_id == base_id:
            break
        if entry.get("Size", 0) > 0:
            short = entry_id.removeprefix("sha256:")[:12]
            out.append({"step": names.get(short, str(entry.get("CreatedBy", ""))[:80]),
                        "bytes": int(entry["Size"])})
    return list(reversed(out))


def venv_bytes(cli: Any, tag: str) -> int:
    """`docker run --rm IMAGE du -sb /opt/venv`, with the container removed in any case."""
    container = cli.containers.create(tag, ["du", "-sb", "/opt/venv"], labels=BENCH_LABEL)
    try:
        container.start()
        status = container.wait(timeout=120)
        out = container.logs().decode(errors="replace").strip()
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"du -sb /opt/venv in {tag} exited {status.get('StatusCode')}: {out[-300:]}")
        return int(out.split()[0])
    finally:
        container.remove(force=True)


def cold_starts(root: Path, tag: str, runs: int) -> dict[str, Any]:
    from mlship.contract_io import load_project
    from mlship.gate import run_gate

    project = load_project(root)
    reports = []
    for i in range(runs):
        print(f"cold start {i + 1}/{runs} (mlship.gate.run_gate) ...", flush=True)
        report = run_gate(project, tag)
        if not report.ok:
            raise RuntimeError(f"run_gate({tag}) failed: {report.problems}\n{report.logs[-1500:]}")
        reports.append(report)
    ready = [r.ready_s for r in reports]
    first = [r.first_prediction_s for r in reports]
    return {"runs": runs, "ready_s": ready, "first_prediction_s": first,
            "ready_median_s": statistics.median(ready), "first_prediction_median_s": statistics.median(first)}


def cleanup(cli: Any, created: Created) -> list[str]:
    """Remove this run's containers, tags and images (children first); returns what could not go."""
    from docker.errors import APIError, ImageNotFound, NotFound

    left: list[str] = []
    for ref in [*created.tags, *created.images]:  # run_gate's and du's containers, if any survived
        with contextlib.suppress(APIError):
            for container in cli.containers.list(all=True, filters={"ancestor": ref}):
                container.remove(force=True)
    for ref in [*created.tags, *reversed(created.images)]:
        try:
            image = cli.images.get(ref)
            foreign = [t for t in image.tags if t not in created.tags]
            if ref in created.images and foreign:  # someone tagged it since: not ours to remove
                left.append(f"{ref} (tagged {', '.join(foreign)})")
                continue
            cli.images.remove(ref, noprune=True)
        except (ImageNotFound, NotFound):
            continue
        except APIError as exc:  # e.g. another build on this engine reused the layer as its cache
            why = str(exc.explanation or exc).splitlines()[0]
            left.append(f"{ref} ({why[:100]})")
    return left
