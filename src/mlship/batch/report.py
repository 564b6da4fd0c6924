"""The final report of a batch job, read from what its tasks wrote: each task's manifest
(``<output>/_mlship/task-<index:05d>.json``), which exists only when the task finished. A task whose manifest is
missing, or whose part is not the size its manifest says, did not finish."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlship.batch.jobs import BatchJob, manifest_name
from mlship.batch.storage import info, locate, read_bytes


@dataclass
class Collected:
    rows: int = 0
    rejects: int = 0
    finished: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    rejects_files: list[str] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)


def collect(job: BatchJob) -> Collected:
    """Read every task's manifest from the job's output (a missing one: the task did not finish)."""
    out = locate(job.output_uri)
    got = Collected()
    for index in range(job.tasks):
        raw = read_bytes(out.child(manifest_name(index)))
        manifest: dict[str, Any] = {}
        if raw is not None:
            try:
                manifest = json.loads(raw)
            except ValueError:
                manifest = {}
        part = out.child(str(manifest.get("part", "")))
        if not manifest or manifest.get("count") != job.tasks or info(part).size != manifest.get("part_bytes"):
            got.missing.append(index)
            continue
        got.finished.append(index)
        got.rows += int(manifest["rows"])
        got.rejects += int(manifest["rejects"])
        got.parts.append(part.uri)
        if manifest.get("rejects"):
            got.rejects_files.append(out.child(str(manifest["rejects_file"])).uri)
        got.task_seconds.append(float(manifest.get("seconds", 0.0)))
    return got
