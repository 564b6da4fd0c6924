#!/usr/bin/env python
"""The layer table of the example images, where the bytes of their Python layer go, and a model-only rebuild.

    python bench/image_layers.py                             # iris, keras-digits, torch-digits
    python bench/image_layers.py --examples torch --json layers.json

Each example is trained into a temp dir under a unique service name and built the way `mlship build` does
(plan_project -> write_context -> engine.build, on $MLSHIP_BASE_IMAGE or mlship-test-base:bookworm, the compiled
model converted and checked). For each image: every layer above the base (`docker history`) with its size and what
it holds, the largest site-packages entries (`du` inside the image), then the model re-trained (new bytes, same
contract) and `mlship build` run again in a fresh process, timed (wall, and mlship's own count), and the rebuilt
image run through `mlship.gate.run_gate` (container start -> first prediction). For keras-digits the
time a fresh Python takes to import TensorFlow is printed too: a changed Keras model has to be converted, and that
needs TensorFlow on the host. Every image and container it creates is removed at the end (also on errors).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image_bench
import tensor_bench
import yaml
from image_bench import TEST_BASE, Created, build_once, cleanup, layers

EXAMPLES = ("iris", "keras", "torch")
#: what each kind of layer mlship adds holds (templates/Dockerfile.j2)
WHAT = {"COPY --from=deps": "Python environment /opt/venv: the locked dependencies + mlship",
        "COPY dir": "Python environment /opt/venv: the locked dependencies + mlship",
        "COPY model/": "the model (and .mlship/compiled: model.onnx + record.json)",
        "COPY contract/": "mlship.yaml and the files it names"}
SITE_PACKAGES = "cd /opt/venv/lib/python3*/site-packages && du -sb -- * | sort -rn | head -n 14"


def make(kind: str, root: Path) -> Path:
    """The example's project in root/kind under a unique service name; returns the project folder."""
    name = f"mlship-bench-{kind}-{secrets.token_hex(3)}"
    if kind == "iris":
        image_bench.make_project(root / kind, name)
        return root / kind
    directory = root / kind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensor_bench.make_project(kind, directory)
    contract = directory / "mlship.yaml"
    contract.write_text(yaml.safe_dump({**yaml.safe_load(contract.read_text()), "name": name}, sort_keys=False))
    return directory


def retrain(kind: str, project: Path) -> None:
    """New model bytes under the same contract: iris with another C, the digits nets with fewer epochs."""
    if kind == "iris":
        image_bench.retrain(project / "model" / "iris.joblib", image_bench.RETRAIN_C)
        return
    artifact = project / "model" / ("digits.pt" if kind == "torch" else "digits.keras")
    before = artifact.read_bytes()
    spec = importlib.util.spec_from_file_location(f"{kind}_retrain", tensor_bench.EXAMPLES[kind] / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.train(artifact, epochs=19)
    if artifact.read_bytes() == before:
        raise RuntimeError(f"re-training {kind} gave the same model bytes")


def site_packages(cli: Any, tag: str) -> list[tuple[str, int]]:
    out = cli.containers.run(tag, entrypoint=["sh", "-c", SITE_PACKAGES], remove=True, labels=image_bench.BENCH_LABEL)
    return [(name, int(size)) for size, name in (line.split("\t", 1) for line in out.decode().splitlines())]


def tensorflow_import_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def cli_build(project: Path, base: str, created: Created) -> dict[str, Any]:
    """`mlship build --json` in a fresh process, as a user runs it after changing the model: the wall time (Python
    start, imports, plan, context, docker build) and mlship's own count; the images it makes go into ``created``."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlship", "build", "-f", str(project), "--base-image", base, "--json"],
                          capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mlship build exited {proc.returncode}: {proc.stdout[-1000:]}{proc.stderr[-2000:]}")
    built = json.loads(proc.stdout)
    from mlship.image import engine

    created.tags += [t for t in (built["image"], built["image"].rsplit("-", 1)[0],
                                 engine.stage_cache_tag(built["service"])) if t not in created.tags]
    steps = [s for s in image_bench.parse_log((project / ".mlship" / "build.log").read_text())
             if not s.instruction.upper().startswith("FROM ")]
    created.images += [s.image for s in steps if s.image and not s.cached and s.image not in created.images]
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"\[(\w+)\] done in ([\d.]+)s", proc.stderr)}
    return {"tag": built["image"], "wall_s": wall, "plan_s": stages.get("plan"), "build_s": stages.get("build"),
            "steps": len(steps), "rebuilt_steps": [s.instruction[:80] for s in steps if not s.cached]}


def bench(kind: str, root: Path, base: Any, cli: Any, created: Created) -> dict[str, Any]:
    from mlship.contract_io import load_project
    from mlship.gate import run_gate

    project = make(kind, root)
    first = build_once(project, base.tag, f"{kind}: build", created)
    size = cli.images.get(first["tag"]).attrs["Size"]
    table = [{**layer, "what": next((w for k, w in WHAT.items() if layer["step"].startswith(k)), "")}
             for layer in layers(cli, first["tag"], base.id, first.pop("_steps"))]
    packages = site_packages(cli, first["tag"])
    retrain(kind, project)
    print(f"{kind}: mlship build after a model-only change ...", flush=True)
    rebuilt = cli_build(project, base.tag, created)
    gate = run_gate(load_project(project), rebuilt["tag"])
    if not gate.ok:
        raise RuntimeError(f"run_gate({rebuilt['tag']}) failed: {gate.problems}\n{gate.logs[-1500:]}")
    return {"tag": first["tag"], "compiled": cli.images.get(first["tag"]).labels.get("dev.mlship.compiled"),
            "image_bytes": size, "base_bytes": base.size, "layers": table, "site_packages": packages,
            "rebuild": rebuilt, "rebuilt_first_prediction_s": gate.first_prediction_s,
            "tensorflow_import_s": tensorflow_import_s() if kind == "keras" else None}


def report(kind: str, r: dict[str, Any]) -> None:
    mb = image_bench.mb
    print(f"\n{kind} ({'compiled: onnxruntime' if r['compiled'] == 'onnx' else 'native'}): {mb(r['image_bytes'])} "
          f"= base {mb(r['base_bytes'])} + {mb(r['image_bytes'] - r['base_bytes'])}")
    for layer in r["layers"]:
        print(f"  {image_bench.small(layer['bytes']):>10}  {layer['step'][:44]:<44}  {layer['what']}")
    print("  site-packages: " + ", ".join(f"{name} {size / 1e6:.1f}" for name, size in r["site_packages"]) + " (MB)")
    b = r["rebuild"]
    print(f"  model-only rebuild (`mlship build`, a fresh process): {b['wall_s']:.2f} s wall = Python and mlship's "
          f"imports + plan {b['plan_s']} s (load, convert, check) + build {b['build_s']} s (context, docker); "
          f"steps rebuilt {len(b['rebuilt_steps'])}/{b['steps']}")
    print(f"    ({', '.join(image_bench.step_names(b['rebuilt_steps']))}); the new image's first prediction "
          f"{r['rebuilt_first_prediction_s']:.2f} s after start")
    if r["tensorflow_import_s"] is not None:
        print(f"  a fresh Python imports TensorFlow in {r['tensorflow_import_s']:.2f} s (in the plan of every "
              "changed Keras model: converting it needs TensorFlow)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", choices=EXAMPLES, default=list(EXAMPLES))
    parser.add_argument("--base-image", default=TEST_BASE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from mlship.image import engine

    cli = engine.client()
    base = engine.inspect(args.base_image)
    created = Created()
    root = Path(tempfile.mkdtemp(prefix="mlship-image-layers-"))
    results: dict[str, Any] = {"load_average_at_start": image_bench.load_average(), "base_image": base.tag}
    try:
        for kind in args.examples:
            results[kind] = bench(kind, root, base, cli, created)
            report(kind, results[kind])
    finally:
        left = cleanup(cli, created)
        shutil.rmtree(root, ignore_errors=True)
        if left:
            print(f"could not remove: {', '.join(left)}", file=sys.stderr)
    print(f"\nload average {results['load_average_at_start']} at start (2 shared CPUs: times move with it)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
