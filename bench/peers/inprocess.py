"""What a model does without HTTP, in the bench's own process on its core: the references' shared measurements."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import serve_bench
from servers import Point

Call = Callable[[], Any]


def point_ceilings(points: list[Point], call_for: Callable[[str, int], Call], seconds: float, windows: int = 1,
                   model: str | None = None) -> dict[str, float]:
    """Rows/s per point key (of `model`, or all): call_for(model, rows)() calls the model once on `rows` prebuilt
    rows; the best of `windows` windows of `seconds` (other work on the machine only ever lowers a window's rate)."""
    out: dict[str, float] = {}
    calls: dict[tuple[str, int], float] = {}
    for point in points:
        if model is not None and point.model != model:
            continue
        if (point.model, point.rows) not in calls:
            call = call_for(point.model, point.rows)
            calls[point.model, point.rows] = max(serve_bench.calls_per_second(call, seconds) for _ in range(windows))
        out[point.key] = calls[point.model, point.rows] * point.rows
    return out


def median_call_ms(call: Call, seconds: float, max_calls: int = 100_000) -> float:
    """Median ms of `call()` over `seconds` (at most `max_calls` calls)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(times) < max_calls:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3
