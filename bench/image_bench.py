#!/usr/bin/env python
"""Build times, image size and container cold start of a real `mlship build` of the iris example.

    python bench/image_bench.py                      # base image: $MLSHIP_BASE_IMAGE or mlship-test-base:bookworm
    python bench/image_bench.py --starts 5 --json image.json
    python bench/image_bench.py --base-image python:3.11-slim --cold-wheels

Trains the iris example into a temp dir, writes mlship.yaml with `mlship.init.init_project` under a unique
service name, and then, the way `mlship build` does it (plan_project -> write_context -> engine.build, the
compiled model converted, checked and put in the image):

1. a full build with no engine layer cache (``nocache``), timing the plan, the build context (locked
   wheelhouse, mlship wheel, model, contract) and the docker build separately;
2. a rebuild with nothing changed, and a rebuild after re-training the model with another hyper-parameter
   (goal: <= 10 s);
3. image sizes from the engine (base image, built image, the layers mlship adds) and ``du -sb /opt/venv``;
4. cold start with `mlship.gate.run_gate` (container start -> /readyz 200 -> first prediction).

Every image and container it creates is removed at the end, also on errors, Ctrl-C and --timeout.
See bench/README.md for how to read it. The layer table of all three examples (iris, keras-digits, torch-digits),
their site-packages by package and their model-only rebuilds: bench/image_layers.py (it reuses this module).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris-sklearn"
TEST_BASE = "mlship-test-base:bookworm"
SLIM_MB = 125.0  # python:3.11-slim, uncompressed, as `docker images` shows it (about 125 MB)
REBUILD_GOAL_S = 10.0
RETRAIN_C = 0.5  # the example trains LogisticRegression with the default C=1.0
BENCH_LABEL = {"dev.mlship.role": "bench"}


class BenchTimeout(Exception):
    pass


# -- machine ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return None


def machine(cli: Any) -> dict[str, Any]:
    import mlship

    info: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        info = cli.info()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load_average_1m_at_start": load_average(),
        "mlship": mlship.__version__,
        "docker_server": cli.version().get("Version", "?"),
        "docker_storage_driver": info.get("Driver", "?"),
        "docker_ncpu": info.get("NCPU"),
        "builder": "classic (Docker SDK api.build, as mlship uses it)",
    }


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


# -- report ----------------------------------------------------------------------------------------
def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def small(n: float) -> str:
    return mb(n) if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def step_names(instructions: list[str]) -> list[str]:
    """Short names for rebuilt steps: COPY with its source, the rest by keyword, repeats counted."""
    names: list[str] = []
    for text in instructions:
        word, _, rest = text.partition(" ")
        names.append(f"COPY {rest.split()[0].strip(chr(34))}" if word.upper() == "COPY" else word.upper())
    out: list[str] = []
    for name in names:
        if name not in out:
            out.append(name)
    return [f"{n} x{names.count(n)}" if names.count(n) > 1 else n for n in out]


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print()
    print(f"machine   : {m['cpu_model']}, nproc {m['nproc']}; {m['python']} on {m['platform']}")
    print(f"engine    : Docker {m['docker_server']}, {m['docker_storage_driver']}, {m['builder']}")
    if m["load_average_1m_at_start"] is not None:
        print(f"load      : 1-min load average {m['load_average_1m_at_start']:.2f} at start")
    print(f"project   : iris example (examples/iris-sklearn), mlship {m['mlship']}, base image {r['base_image']}")
    print()
    cols = (f"{'build':<40}{'plan s':>8}{'context s':>11}{'docker s':>10}{'total s':>9}"
            f"{'cached steps':>14}")
    print(cols)
    print("-" * len(cols))
    for b in r["builds"]:
        print(f"{b['label']:<40}{b['plan_s']:>8.2f}{b['context_s']:>11.2f}{b['docker_build_s']:>10.2f}"
              f"{b['total_s']:>9.2f}{str(b['steps_cached']) + '/' + str(b['steps']):>14}")
    print()
    cold = r["builds"][0]
    print(f"context   : {cold['context_mb']:.1f} MB, {cold['wheels_mb']:.1f} MB of it wheels. In the cold build: "
          f"wheelhouse {cold['wheelhouse_s']:.2f} s")
    print(f"            (mlship wheel cache: {cold['wheel_cache']}), mlship wheel {cold['mlship_wheel_s']:.2f} s; "
          "plan = load the model (pins, compiled model) + plan_build")
    model = r["builds"][2]
    verdict = "met" if model["total_s"] <= REBUILD_GOAL_S else "MISSED"
    print(f"rebuild   : model re-trained (LogisticRegression C=1.0 -> {RETRAIN_C:g}, new bytes): "
          f"{model['total_s']:.2f} s = {model['total_s'] / REBUILD_GOAL_S:.2f} x the {REBUILD_GOAL_S:g} s goal "
          f"({verdict})")
    rebuilt = textwrap.fill(", ".join(step_names(model["rebuilt_steps"])), 106, initial_indent=" " * 12,
                            subsequent_indent=" " * 12)
    print(f"            steps rebuilt ({len(model['rebuilt_steps'])}):\n{rebuilt}")
    print(f"            the new image {model['tag']} passes run_gate: {'yes' if r['rebuilt_gate_ok'] else 'NO'}")
    s = r["sizes"]
    print()
    print("image sizes (uncompressed, from the engine; MB = 10^6 bytes):")
    print(f"  {'base image ' + r['base_image']:<68}{mb(s['base_bytes']):>14}")
    print(f"  {'built image ' + s['tag']:<68}{mb(s['image_bytes']):>14}")
    print(f"  {'added by mlship on top of the base':<68}{mb(s['added_bytes']):>14}")
    for layer in s["layers"]:
        print(f"    {'layer ' + layer['step'][:60]:<66}{small(layer['bytes']):>14}")
    print(f"  {'Python layer: /opt/venv (du -sb inside the image)':<68}{mb(s['venv_bytes']):>14}")
    if s["estimated_slim_bytes"] is not None:
        print(f"  {'ESTIMATE on python:3.11-slim = image - test base + 125 MB':<68}"
              f"{'~' + mb(s['estimated_slim_bytes']):>14}")
        print("  Real users build on python:3.11-slim (~125 MB); the test base is a debootstrap'ed bookworm with")
        print("  Debian's python3, so the slim-based size is an estimate, not a measurement.")
    c = r["cold_start"]
    print()
    print(f"cold start (mlship.gate.run_gate, {c['runs']} runs; seconds from container start):")
    print(f"  -> /readyz 200        median {c['ready_median_s']:.2f} s   "
          f"(runs: {', '.join(f'{v:.2f}' for v in c['ready_s'])})")
    print(f"  -> first prediction   median {c['first_prediction_median_s']:.2f} s   "
          f"(runs: {', '.join(f'{v:.2f}' for v in c['first_prediction_s'])})")
    print()
    left = r["cleanup"]["left"]
    made = len(r["cleanup"]["images"])
    print(f"cleanup   : removed both tags and {made - len(left)} of the {made} images this run made; "
          f"left: {'nothing' if not left else len(left)}")
    children = [ref.split()[0] for ref in left if "dependent child images" in ref]
    if children:
        print(textwrap.fill(f"{len(children)} layers that images of other builds on this engine now use as parents "
                            f"(they go when those images are removed): {', '.join(children)}", 106,
                            initial_indent=" " * 12, subsequent_indent=" " * 12))
    for ref in left:
        if "dependent child images" not in ref:
            print(f"            {ref}")
    print(f"time      : {r['elapsed_s']:.1f} s in all. Build times move +-20% between runs; compare within a run.")
    load = m["load_average_1m_at_start"]
    if load is not None and m["nproc"] and load > 0.5 * m["nproc"]:
        print(f"!! the 1-min load average was {load:.2f} on {m['nproc']} CPUs at start: other work competed "
              "with the build and the containers; expect slower, noisier numbers")
    same = r["builds"][1]
    if same["steps_cached"] < same["steps"]:
        print(f"!! the rebuild with nothing changed re-ran {same['steps'] - same['steps_cached']} steps")
    wheels = [b["mlship_wheel"] for b in r["builds"]]
    if len(set(wheels)) > 1:
        print(f"!! mlship's source changed during the run (mlship wheels: {' -> '.join(wheels)}),\n"
              "   so builds after the change re-ran the mlship install and the /opt/venv copy: run it again")
    foreign = {b["label"]: b["foreign_cache_hits"] for b in r["builds"] if b["foreign_cache_hits"]}
    if foreign:
        hits = ", ".join(f"{label}: {n}" for label, n in foreign.items())
        print(f"!! cache hits on layers other builds on this engine made ({hits}); the engine then follows\n"
              "   their chain, which can re-run later steps (e.g. another iris image with the same model but "
              "another name)")


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-image", default=os.environ.get("MLSHIP_BASE_IMAGE") or TEST_BASE,
                   help=f"base image to build on (default: $MLSHIP_BASE_IMAGE or {TEST_BASE}); must be local")
    p.add_argument("--starts", type=int, default=3, help="cold starts to measure with run_gate (default 3)")
    p.add_argument("--cold-wheels", action="store_true",
                   help="use an empty mlship wheel cache, so the cold build downloads every wheel (needs an index)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="give up (and clean up) after this many seconds (default 900)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the results as JSON")
    args = p.parse_args(argv)
    if args.starts < 1:
        p.error("--starts must be at least 1")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind through the finally blocks that clean up


def _alarm(signum: int, frame: Any) -> None:
    raise BenchTimeout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from docker.errors import DockerException

    from mlship.errors import MlshipError
    from mlship.image import engine

    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(args.timeout)))
    tmp = Path(tempfile.mkdtemp(prefix="mlship-image-bench-"))
    if args.cold_wheels:
        os.environ["MLSHIP_CACHE"] = str(tmp / "cache")
    created = Created()
    cli = None
    result: dict[str, Any] = {}
    code = 0
    try:
        cli = engine.client()
        base = engine.inspect(args.base_image)  # local only: nothing is pulled
        root = tmp / "iris"
        name = f"mlship-bench-iris-{secrets.token_hex(3)}"
        print(f"training the iris example into {root} (service {name}) ...", flush=True)
        artifact = make_project(root, name)
        builds = [build_once(root, base.tag, "cold build (no engine cache, nocache)", created, nocache=True)]
        tag = builds[0]["tag"]
        print("measuring sizes ...", flush=True)
        added = engine.inspect(tag).size - base.size
        sizes = {
            "tag": tag, "base_bytes": base.size, "image_bytes": engine.inspect(tag).size, "added_bytes": added,
            "layers": layers(cli, tag, base.id, builds[0]["_steps"]),
            "venv_bytes": venv_bytes(cli, tag),
            "estimated_slim_bytes": (added + SLIM_MB * 1e6) if base.tag == TEST_BASE else None,
        }
        cold = cold_starts(root, tag, args.starts)
        builds.append(build_once(root, base.tag, "rebuild, nothing changed", created))
        before = artifact.read_bytes()
        retrain(artifact, RETRAIN_C)
        if artifact.read_bytes() == before:
            raise RuntimeError("re-training gave the same model bytes")
        builds.append(build_once(root, base.tag, f"rebuild, model re-trained (C={RETRAIN_C:g})", created))
        print("checking the rebuilt image answers its contract ...", flush=True)
        rebuilt = cold_starts(root, builds[2]["tag"], 1)
        result = {
            "machine": machine(cli), "base_image": base.tag,
            "builds": [{k: v for k, v in b.items() if k != "_steps"} for b in builds],
            "rebuild_goal_s": REBUILD_GOAL_S, "rebuild_ratio_to_goal": builds[2]["total_s"] / REBUILD_GOAL_S,
            "sizes": sizes, "slim_mb_assumed": SLIM_MB, "cold_start": cold,
            "rebuilt_gate_ok": bool(rebuilt["runs"]),
        }
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except BenchTimeout:
        print(f"\nerror: gave up after --timeout {args.timeout:g} s", file=sys.stderr)
        code = 1
    except MlshipError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        code = 1
    except (RuntimeError, DockerException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.alarm(0)
        left = cleanup(cli, created) if cli is not None else []
        shutil.rmtree(tmp, ignore_errors=True)
    if code:
        if left:
            print(f"could not remove: {', '.join(left)}", file=sys.stderr)
        return code
    result["cleanup"] = {"tags": created.tags, "images": created.images, "left": left}
    result["elapsed_s"] = time.perf_counter() - started
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
