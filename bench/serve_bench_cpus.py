"""The machine under serve_bench.py: which CPUs the server and the load generator get, a process's CPU seconds
and memory (PSS), a CPU's busy ticks, the load average.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

# CPUs this process may use, read before main() pins it to one
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# -- CPUs ------------------------------------------------------------------------------------------
def plan_cpus() -> tuple[int | None, int | None]:
    """(server CPU, load-generator CPU): the first two CPUs this process may use, or None if < 2."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def proc_cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of a process (all its threads), from /proc; None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(cpu: int | None) -> tuple[float, float] | None:
    """(busy, steal) seconds of one CPU since boot, from /proc/stat; None where unavailable."""
    if cpu is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
                tck = os.sysconf("SC_CLK_TCK")
                return busy / tck, (v[7] if len(v) > 7 else 0) / tck
    return None


def memory_mb(pid: int) -> dict[str, float] | None:
    """PSS and RSS of a process in MB (10^6 bytes), from /proc/PID/smaps_rollup; None where unavailable.

    PSS (proportional set size) charges each shared page to the processes sharing it in equal parts, so the
    shared libraries this process maps count only for its share: the number to add up across processes."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if line.endswith(" kB")}
    if "Pss" not in kb:
        return None
    return {"pss_mb": kb["Pss"] * 1024 / 1e6, "rss_mb": kb.get("Rss", 0) * 1024 / 1e6}


def load_average() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return None


def pinning(m: dict[str, Any], server: str, ceiling: str) -> str:
    """The report's pinning line from machine(): `server` has a {} for the server's CPU."""
    if m["server_cpu"] is None:
        return "none (fewer than 2 usable CPUs): servers and load generator share cores"
    return (f"{server.format(m['server_cpu'])}, load generator + in-process {ceiling} on CPU {m['generator_cpu']} "
            f"({m['generator_loop']})")
