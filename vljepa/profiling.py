"""Timing and memory figures for the benchmark scripts in ``eval/`` (and ``train.py``'s summary):
the median time of repeated calls, a stopwatch, and the process's peak resident memory.

Standard library only. Importing it still imports the ``vljepa`` package (and so torch): a
worker that measures what an import costs reads those figures before importing it.
"""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], iters: int, max_seconds: float | None = None,
              clock: Callable[[], float] = time.perf_counter, warmup: bool = True) -> float:
    """Median milliseconds of ``iters`` calls of ``fn``.

    Args:
        fn: the call to time, no arguments.
        iters: how many calls to time (at most; see ``max_seconds``).
        max_seconds: stop early once this many seconds have been spent on timed calls, after at
            least 3 (for calls that take seconds each). None: always ``iters`` calls.
        clock: seconds as a float: ``time.perf_counter`` (wall clock, the default) or e.g.
            ``time.process_time`` (this process's CPU time).
        warmup: first make one untimed call (allocator, lazy initialisation, memoised state).
            False when the caller has already made it, or when the first call is to be counted.
    Returns: the median, in milliseconds.
    """
    if warmup:
        fn()
    times: list[float] = []
    while len(times) < iters:
        t = clock()
        fn()
        times.append(clock() - t)
        if max_seconds is not None and len(times) >= 3 and sum(times) >= max_seconds:
            break
    return 1000 * statistics.median(times)


class Stopwatch:
    """Seconds elapsed on ``clock`` since the stopwatch was made; frozen when a ``with`` block
    around it ends (or at :meth:`stop`), running until then::

        with Stopwatch() as sw:
            work()
        print(f"{sw.seconds:.1f} s")

        sw = Stopwatch()
        ...
        sw.seconds  # the time so far

    Args:
        clock: seconds as a float: ``time.perf_counter`` (wall clock, the default) or e.g.
            ``time.process_time`` (this process's CPU time).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.end: float | None = None

    def __enter__(self) -> Stopwatch:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> float:
        """Freeze the reading; returns it, in seconds."""
        self.end = self.clock()
        return self.seconds

    @property
    def seconds(self) -> float:
        """Seconds from the start to the stop, or to now while running."""
        return (self.clock() if self.end is None else self.end) - self.start


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage``'s ``ru_maxrss``, which
    Linux reports in kilobytes, / 1024). On macOS, which reports bytes, the figure is 1024x too
    large."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
