"""A memory timeline in a compact form, for result files and the HTML report's chart.

A step's timeline is the running total of live bytes after each allocation and free, starting
from what was alive before the step (its baseline). A large model makes tens of thousands of
events, so the saved form keeps, for each of at most ``points`` equal runs of events, the
lowest and the highest total in the order they came: the curve's shape, and its peak exactly.
Beside each kept point, the bytes allocated so far (``allocated``): a measured run makes small
allocations a replay does not book one by one (scalars, profiler records), so two runs of one
step line up better by bytes allocated than by event number.

>>> compact([10, 5, -5, 20, -30], baseline=100, points=8)  # doctest: +NORMALIZE_WHITESPACE
{'events': 5, 'x': [0, 1, 2, 3, 4, 5], 'bytes': [100, 110, 115, 110, 130, 100],
 'allocated': [0, 10, 15, 15, 35, 35], 'peak_x': 4, 'peak_bytes': 130}
>>> compact([1] * 1000, baseline=0, points=2)['bytes']
[0, 1, 500, 501, 1000]
"""
from __future__ import annotations

from typing import Any, Iterable

#: runs of events kept per timeline (two points each): about 10 KB of JSON per timeline
POINTS = 120


def compact(deltas: Iterable[int], *, baseline: int = 0, points: int = POINTS) -> dict[str, Any]:
    """``deltas`` (bytes allocated > 0, freed < 0, in order) as the compact timeline: ``x`` (event
    number, 0 = the baseline before the first event), ``bytes`` (live total after it) and
    ``allocated`` (bytes allocated by then)."""
    totals, allocated = [baseline], [0]
    for delta in deltas:
        totals.append(totals[-1] + delta)
        allocated.append(allocated[-1] + max(delta, 0))
    n = len(totals) - 1
    peak_x = max(range(len(totals)), key=totals.__getitem__)
    if n <= 2 * points:
        kept = list(range(len(totals)))
    else:
        kept = [0]
        edges = [1 + (n * k) // points for k in range(points + 1)]
        for lo, hi in zip(edges, edges[1:]):
            run = range(lo, hi)
            low = min(run, key=totals.__getitem__)
            high = max(run, key=totals.__getitem__)
            kept.extend(sorted({low, high}))
    return {"events": n, "x": kept, "bytes": [totals[i] for i in kept],
            "allocated": [allocated[i] for i in kept], "peak_x": peak_x, "peak_bytes": totals[peak_x]}
