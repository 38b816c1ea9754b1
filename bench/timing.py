"""The timing helper of the bench scripts (imported by name: a script's folder is on sys.path)."""

import time

import numpy as np


def median_seconds(call, repeats):
    """The median wall time of ``repeats`` calls of ``call``, after one untimed warm-up call
    (tracing, allocation, weight packing)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
