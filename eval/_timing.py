"""Wall-clock timing shared by the benchmark scripts in eval/ (run as ``python eval/NAME.py``,
so this directory is on ``sys.path``)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], iters: int, max_seconds: float | None = None) -> float:
    """Median wall-clock milliseconds of ``iters`` calls of ``fn`` after one warm-up call
    (allocator, lazy initialisation). With ``max_seconds``, stops early once that much time has
    been spent, after at least 3 calls (for calls that take seconds each)."""
    fn()
    times: list[float] = []
    while len(times) < iters:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if max_seconds is not None and len(times) >= 3 and sum(times) >= max_seconds:
            break
    return 1000 * statistics.median(times)
