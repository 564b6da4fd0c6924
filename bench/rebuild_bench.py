#!/usr/bin/env python
"""A model-only rebuild of the tensor examples, in one run: cold (the build converts in-process), the first build
with the conversion worker (it starts one) and warm (the worker running), each `mlship build` in a fresh process.

    python bench/rebuild_bench.py                       # torch-digits and keras-digits, 3 warm rebuilds each
    python bench/rebuild_bench.py --examples keras --warm 5 --json rebuild.json

Each example is trained into a temp dir under a unique service name (bench/image_layers.py's make) and built once
(the dependency layers; not timed). Then, per measured rebuild, the model's weights change (a small seeded
perturbation: the same architecture, new bytes, same contract) and `mlship build --json` runs in a fresh process:
wall time, mlship's plan (load or worker, convert, prove) and build (context, docker) stages, the Dockerfile steps
rebuilt. A step list that includes `COPY mlship/` means mlship's own source changed during the run (another edit):
that rebuild is not model-only, and is marked. The last image is run through the gate (its examples answered,
first prediction timed). The worker is stopped and every image made is removed at the end (also on errors).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from image_bench import TEST_BASE, Created, build_once, cleanup
from image_layers import cli_build, make

ARTIFACT = {"torch": "digits.pt", "keras": "digits.keras"}


def perturb(kind: str, project: Path, seed: int) -> None:
    """New weights for the same network: each tensor plus seeded noise of 1e-3 (the labels stay the same)."""
    rng = np.random.default_rng(seed)
    path = project / "model" / ARTIFACT[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torch":
            import torch

            module = torch.jit.load(str(path))
            with torch.no_grad():
                for tensor in module.parameters():
                    tensor.add_(torch.from_numpy(rng.normal(0, 1e-3, tuple(tensor.shape)).astype("float32")))
            torch.jit.save(module, str(path))
            return
        import keras

        model = keras.models.load_model(path)
        model.set_weights([w + rng.normal(0, 1e-3, w.shape).astype(w.dtype) for w in model.get_weights()])
        model.save(path)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def rebuild(kind: str, project: Path, base: str, created: Created, seed: int, worker: bool) -> dict[str, Any]:
    perturb(kind, project, seed)
    os.environ["MLSHIP_CONVERT_WORKER"] = "1" if worker else "0"
    result = cli_build(project, base, created)
    result["model_only"] = not any(s.startswith("COPY mlship/") for s in result["rebuilt_steps"])
    return result


def bench(kind: str, root: Path, base: Any, warm: int, created: Created) -> dict[str, Any]:
    from mlship import convert_worker
    from mlship.contract_io import load_project
    from mlship.gate import run_gate

    project = make(kind, root)
    os.environ["MLSHIP_CONVERT_WORKER"] = "0"
    build_once(project, base.tag, f"{kind}: first build (not timed)", created)
    print(f"{kind}: model-only rebuilds ...", flush=True)
    try:
        runs = {"cold": [rebuild(kind, project, base.tag, created, 1, worker=False)],
                "first": [rebuild(kind, project, base.tag, created, 2, worker=True)],
                "warm": [rebuild(kind, project, base.tag, created, 3 + i, worker=True) for i in range(warm)]}
    finally:
        convert_worker.stop(project)
    gate = run_gate(load_project(project), runs["warm"][-1]["tag"])
    if not gate.ok:
        raise RuntimeError(f"run_gate failed: {gate.problems}\n{gate.logs[-1500:]}")
    return {"runs": runs, "first_prediction_s": gate.first_prediction_s}


def report(kind: str, r: dict[str, Any]) -> None:
    print(f"\n{kind}-digits: model-only rebuild (`mlship build` in a fresh process; wall = Python start and "
          "imports + plan + build)")
    for name, what in (("cold", "in-process conversion (MLSHIP_CONVERT_WORKER=0, as in CI)"),
                       ("first", "the first build with the worker: it starts one"),
                       ("warm", "the worker running")):
        for run in r["runs"][name]:
            mark = "" if run["model_only"] else "  (mlship's source changed meanwhile: its layer rebuilt too)"
            print(f"  {name:>5}: {run['wall_s']:5.2f} s wall = plan {run['plan_s']} s + build {run['build_s']} s; "
                  f"{len(run['rebuilt_steps'])}/{run['steps']} steps rebuilt  -- {what}{mark}")
    clean = [run["wall_s"] for run in r["runs"]["warm"] if run["model_only"]] or [
        run["wall_s"] for run in r["runs"]["warm"]]
    cold = r["runs"]["cold"][0]["wall_s"]
    print(f"  warm median {statistics.median(clean):.2f} s (goal <= 5 s), {cold / statistics.median(clean):.1f}x "
          f"faster than cold; the last image's first prediction {r['first_prediction_s']:.2f} s after start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", choices=tuple(ARTIFACT), default=list(ARTIFACT))
    parser.add_argument("--warm", type=int, default=3, help="warm rebuilds per example")
    parser.add_argument("--base-image", default=TEST_BASE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from mlship.image import engine

    os.environ.pop("CI", None)  # the worker is off in CI; this measures it
    base = engine.inspect(args.base_image)
    created = Created()
    root = Path(tempfile.mkdtemp(prefix="mlship-rebuild-"))
    results: dict[str, Any] = {"uptime_at_start": uptime(), "base_image": base.tag}
    print(results["uptime_at_start"], flush=True)
    try:
        for kind in args.examples:
            results[kind] = bench(kind, root, base, args.warm, created)
            report(kind, results[kind])
    finally:
        left = cleanup(engine.client(), created)
        shutil.rmtree(root, ignore_errors=True)
        if left:
            print(f"could not remove: {', '.join(left)}", file=sys.stderr)
    results["uptime_at_end"] = uptime()
    print(f"\nat start: {results['uptime_at_start']}\nat end:   {results['uptime_at_end']}\n(2 shared CPUs: "
          "times move with the load; compare the rows of one run)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
