#!/usr/bin/env python
"""`mlship deploy --target ecs` of the iris example against the emulators, timed: preflight, build, test, and the
deploy stage split into push / resources / rollout / smoke test; then an unchanged re-deploy (its calls, and how many
change anything: should be 0) and `mlship destroy` (what is left tagged: should be nothing).

    python bench/ecs_deploy.py                  # base image $MLSHIP_BASE_IMAGE or the test one; registry 127.0.0.1:5555
    python bench/ecs_deploy.py --json ecs.json

The emulators are the test suite's (tests/emulators/): moto in server mode on loopback, the agent that runs each task's
image on the local Docker engine and serves the load balancer (public: true, so the smoke test goes through it), and
the loopback registry that stands in for ECR ($MLSHIP_TEST_REGISTRY). Rollout polling is every 0.1 s here (5 s in
production): the rollout figure is what the emulated ECS takes, not AWS's minutes. Bounded by --timeout (default
900 s); the service, its images and the agent's containers are removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]
TEST_BASE = "mlship-test-base:bookworm"
REGION = "eu-west-1"


def _stopwatch(marks: dict[str, float]) -> Any:
    """An events listener that notes when the deploy stage's lines that split it first appear."""
    firsts = {"pushing ": "push_start", "pushed ": "pushed", "creating ECS service": "rollout_start",
              "updating ECS service": "rollout_start", "smoke test": "smoke_start"}

    def listen(event: Any) -> None:
        if event.stage == "deploy" and event.kind == "start":
            marks.setdefault("deploy_start", event.at)
        for prefix, name in firsts.items():
            if event.stage == "deploy" and event.message.startswith(prefix):
                marks.setdefault(name, event.at)
        if event.stage == "deploy" and event.kind == "done":
            marks.setdefault("deploy_done", event.at)
    return listen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"over {args.timeout:g}s")))
    signal.alarm(int(args.timeout))
    os.environ.setdefault("MLSHIP_BASE_IMAGE", TEST_BASE)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: one line per request otherwise

    sys.path.insert(0, str(REPO / "examples" / "iris-sklearn"))
    import train as iris_train

    from emulators.ecs_agent import EcsAgent
    from emulators.ecs_fixtures import IRIS_ROW, remove_pushed, tagged_left
    from emulators.ecs_moto import MotoServer, aws_environment
    from mlship import pipeline
    from mlship.events import Events
    from mlship.image import engine
    from mlship.init import init_project
    from mlship.targets.ecs import EcsTarget

    EcsTarget.poll_s = 0.1
    figures: dict[str, Any] = {}
    docker = engine.client()
    with tempfile.TemporaryDirectory(prefix="ecs-bench-") as tmp, MotoServer() as moto:
        root = Path(tmp) / "iris"
        model = iris_train.train(root / "model" / "iris.joblib")
        for name in ("rows.csv", "MODEL.md"):
            (root / name).write_bytes((REPO / "examples" / "iris-sklearn" / name).read_bytes())
        init_project(model, directory=root, sample=root / "rows.csv")
        service = f"bench-{uuid.uuid4().hex[:6]}"
        text = (root / "mlship.yaml").read_text()
        (root / "mlship.yaml").write_text(text.replace("name: iris", f"name: {service}", 1)
                                          + "targets:\n  ecs: {public: true}\n")
        agent = EcsAgent(docker, moto, REGION).start()
        env = {**aws_environment(moto.endpoint, REGION, tmp), "HTTP_PROXY": agent.proxy_url,
               "http_proxy": agent.proxy_url, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
               "MLSHIP_ECR_REGISTRY": os.environ.get("MLSHIP_TEST_REGISTRY", "127.0.0.1:5555")}
        os.environ.update(env)
        urllib.request.install_opener(urllib.request.build_opener())  # with the proxy just set
        moto.use(_NoPatch(), REGION, tmp)
        try:
            marks: dict[str, float] = {}
            started = time.monotonic()
            report = pipeline.deploy(str(root), "ecs", events=Events(_stopwatch(marks)))
            figures["first_deploy_s"] = round(time.monotonic() - started, 2)
            figures["stages_s"] = {k: round(v, 2) for k, v in report.timings.items()}
            figures["deploy_split_s"] = {
                "push": round(marks["pushed"] - marks["push_start"], 2),
                "resources": round(marks["rollout_start"] - marks["pushed"], 2),
                "rollout": round(marks["smoke_start"] - marks["rollout_start"], 2),
                "smoke_test": round(marks["deploy_done"] - marks["smoke_start"], 2)}
            assert report.url
            request = urllib.request.Request(f"{report.url}/predict", data=json.dumps(IRIS_ROW).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:  # through the agent's proxy
                figures["predict_status"] = answer.status
            mark = moto.mark()
            started = time.monotonic()
            again = pipeline.deploy(str(root), "ecs", skip_test=True)
            figures["noop_redeploy"] = {"seconds": round(time.monotonic() - started, 2), "changed": again.changed,
                                        "aws_calls": len(moto.since(mark)),
                                        "mutating_calls": len(moto.since(mark, mutating=True))}
            started = time.monotonic()
            pre = pipeline.preflight(str(root), "ecs")
            figures["preflight_s"] = round(time.monotonic() - started, 3)
            figures["preflight_ok"] = pre.ok
            pipeline.destroy(str(root), "ecs")
            figures["tagged_left_after_destroy"] = len(tagged_left(service))
        finally:
            with contextlib.suppress(Exception):  # already destroyed, unless the run stopped half-way
                pipeline.destroy(str(root), "ecs")
            agent.stop()
            remove_pushed(docker, service)
            for image in docker.images.list(name=service):
                for tag in image.tags:
                    docker.images.remove(tag)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


class _NoPatch:
    """monkeypatch.setenv for MotoServer.use outside pytest: the environment is set for the whole run."""

    def setenv(self, key: str, value: str) -> None:
        os.environ[key] = value


if __name__ == "__main__":
    raise SystemExit(main())
