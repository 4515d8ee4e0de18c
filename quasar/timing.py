"""Timing helpers shared by the benchmark workers (runtime path in evaluate, torch
reference path in export). Standard library only."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict, Sequence


def timed(run, files: Sequence[str], batch_size: int, first: float,
          repeats: int = 2) -> Dict[str, Any]:
    """One untimed warm-up pass over ``files`` batch by batch (allocator and kernel caches
    reach their steady state, as on a long run), then ``repeats`` timed passes: images/s
    from the median pass, latency = median batch time."""
    for i in range(0, len(files), batch_size):
        run(files[i:i + batch_size])
    passes, lat = [], []
    for _ in range(max(1, int(repeats))):
        total = 0.0
        for i in range(0, len(files), batch_size):
            tb = time.perf_counter()
            run(files[i:i + batch_size])
            dt = time.perf_counter() - tb
            lat.append(dt)
            total += dt
        passes.append(total)
    return {
        "first_score_at": first,
        "images_per_s": len(files) / statistics.median(passes),
        "batch_latency_s": statistics.median(lat),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` of /proc/self/status.

    (``getrusage().ru_maxrss`` is not used: Linux carries the parent's peak across
    fork + exec, so a worker spawned by a parent holding torch would report torch's memory.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
