"""Ctrl-C (SIGINT) at each step of a local deploy: the interrupted run cleans up on its way out (exit 130, an
"interrupted" message, no traceback; no gate or candidate left, one container serving), and a re-run converges
with the history intact. The SIGKILL half of the matrix is in test_recovery.py, whose helpers this file shares.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

import mlship
from test_recovery import (
    IRIS_ROW,
    assert_converged,
    content_tag,
    deploy_signalled_at,
    edit,
    interrupt_points,
    names,  # noqa: F401 - the fixture
    orphans,
    project,
)


@pytest.mark.timeout(900)  # seven deploys interrupted and seven re-runs
def test_deploy_interrupted_at_each_step_cleans_up_and_converges(iris_image: tuple[Path, str], tmp_path: Path,
                                                                 base_image_env: str, names: list[str],  # noqa: F811
                                                                 docker_engine: Any) -> None:
    folder = project(iris_image, tmp_path, names, version="rc-v1")
    name = names[0]
    v1 = mlship.deploy(folder, target="local").image
    edit(folder, version="rc-v2")
    v2 = mlship.build(folder).image  # built once (cached after), so each step starts from the same image
    assert v1 is not None and v2 is not None and v2 != v1
    points = interrupt_points(docker_engine, name)
    left_by_interrupt: dict[str, list[str]] = {}
    left_after_rerun: dict[str, list[str]] = {}
    for step, when in points:
        as_json = step == "gate starts"  # one step with --json: the document says it was interrupted
        run = deploy_signalled_at(folder, when, signal.SIGINT, *(["--json"] if as_json else []))
        err = "\n".join(run.lines)
        tail = (step, run.lines[-12:])  # what an assertion shows (pytest cuts long messages)
        assert run.returncode == 130, tail
        assert "interrupted: stopped by Ctrl-C (SIGINT)" in err and "Traceback" not in err, tail
        if as_json:
            doc = json.loads(run.stdout)
            assert (doc["kind"], doc["exit_code"], doc["error"]["type"]) == ("error", 130, "Interrupted")
        # the interrupted run itself left one container serving (v1, or v2 when the switch had finished)
        left_by_interrupt[step] = orphans(docker_engine, name)
        serving = docker_engine.containers.get(f"mlship-{name}")
        assert serving.status == "running" and left_by_interrupt[step] == [], (left_by_interrupt, *tail)
        assert serving.labels["dev.mlship.image"] in (v1, v2), tail
        if step in ("stop", "final start"):  # Ctrl-C in the switch: the run says which version it left serving,
            # unless the signal landed after the switch (the reader runs behind a busy machine): then v2 serves
            assert re.search(r"serves \S+ again|became ready: it serves", err) \
                or serving.labels["dev.mlship.image"] == v2, tail
        with httpx.Client(timeout=10) as client:
            assert client.post(f"http://127.0.0.1:{serving.ports['8080/tcp'][0]['HostPort']}/predict",
                               json=IRIS_ROW).status_code == 200, tail

        report = mlship.deploy(folder, target="local")  # the re-run
        assert report.image is not None and content_tag(name, "rc-v2").match(report.image), tail
        v2 = report.image
        left_after_rerun[step] = orphans(docker_engine, name)
        assert_converged(docker_engine, name, [v2, v1])
        status = mlship.status(folder, target="local")
        assert status.history == [v2, v1] and status.ready, (step, status)
        back = mlship.rollback(folder, target="local")  # v1 serves again, for the next step
        assert back.image == v1 and mlship.status(folder, target="local").history == [v1, v2]
    print(f"SIGINT matrix: orphans left by the interrupted runs {sum(map(len, left_by_interrupt.values()))}, "
          f"after the re-runs {sum(map(len, left_after_rerun.values()))}")
    assert {step: left for step, left in left_by_interrupt.items() if left} == {}
    assert {step: left for step, left in left_after_rerun.items() if left} == {}
    assert len(mlship.destroy(folder, target="local").removed) == 1
    assert orphans(docker_engine, name) == []
