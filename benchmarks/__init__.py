"""Benchmarks: scripts that print measured figures (never run as tests)."""

import statistics
import time


def median_seconds(function, repeats):
    """The median wall time of `repeats` calls of `function()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
