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
The builds and clean-up are in image_bench_build.py, the report in image_bench_report.py (re-exported here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from image_bench_build import (
    BENCH_LABEL,
    IRIS,
    REBUILD_GOAL_S,
    REPO,
    RETRAIN_C,
    Created,
    Step,
    build_once,
    cleanup,
    cold_starts,
    dir_bytes,
    iris_train,
    layers,
    make_project,
    parse_log,
    retrain,
    timed_calls,
    venv_bytes,
)
from image_bench_report import mb, print_report, small, step_names
from serve_bench_cpus import cpu_model, load_average

# the names image_layers.py imports from here
__all__ = ["BENCH_LABEL", "IRIS", "REBUILD_GOAL_S", "REPO", "RETRAIN_C", "Created", "Step", "build_once", "cleanup",
           "cold_starts", "cpu_model", "dir_bytes", "iris_train", "layers", "load_average", "make_project", "mb",
           "parse_log", "print_report", "retrain", "small", "step_names", "timed_calls", "venv_bytes"]


TEST_BASE = "mlship-test-base:bookworm"
SLIM_MB = 125.0  # python:3.11-slim, uncompressed, as `docker images` shows it (about 125 MB)


class BenchTimeout(Exception):
    pass


# -- machine ---------------------------------------------------------------------------------------
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
