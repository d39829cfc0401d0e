"""How fast this machine runs now against when it was calibrated: a fraction of a second of the
calibration's kinds of call, timed at calibration and again whenever the cached model is used.

A shared machine's speed moves by tens of percent over minutes to hours (with the host's other
work), and the calibration's twenty seconds catch one moment of it. On this
project's machine (Intel Xeon, 2 threads), three calibrations of the same code within 40 minutes
priced the same 52 forward passes 4-17 % apart (median over the cases). In one benchmark run, three
passes measured the same models within 1 % of each other, yet each pass's own calibration predicted
them 14 % high and 27 % low against the passes' median. Scaling one calibration by the ratio of the
other's curves over eight kernel families brought the eleven pairs that were more than 10 % apart
to within 3-13 % (median 4.5 %).

So the cached model is scaled by the probe's time now over its time then (:func:`drift_now`), and
the result says by how much.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence

import torch

#: rounds of the probe: each round every call in turn, run once and timed on its second run (as
#: the calibration times its micro-benchmarks); each call's time the median over the rounds
ROUNDS = 9
#: probes (of :data:`ROUNDS` rounds, about 0.07 s each) whose drifts' median is the drift now: the
#: machine's bursts last a few tenths of a second (sixty probes in a row read 0.95-1.11 against
#: their median; medians of five, 0.98-1.05)
PROBES = 5
#: the most the probe may scale a model: beyond it the machine is another machine (or the probe
#: was disturbed), and only recalibrating says how it runs now
LIMIT = 2.0


def probe_calls() -> list[Callable[[], object]]:
    """The probe's calls, of tens to hundreds of microseconds each: matrix multiplies small and
    large, convolutions of torch's and oneDNN's kernels forward and backward, a depthwise one,
    element-wise calls in cache and from memory, a softmax and a layer norm."""
    aten = torch.ops.aten
    a, b = torch.randn(64, 256), torch.randn(256, 256)
    big_a, big_b = torch.randn(256, 512), torch.randn(512, 512)
    x1, w1 = torch.randn(1, 32, 16, 16), torch.randn(32, 32, 3, 3)
    x4, w4 = torch.randn(4, 64, 16, 16), torch.randn(64, 64, 3, 3)
    g4 = torch.conv2d(x4, w4, padding=1)
    xd, wd = torch.randn(4, 64, 16, 16), torch.randn(64, 1, 3, 3)
    small, large = torch.randn(2 ** 16), torch.randn(2 ** 21)
    # results kept where torch takes one: a fresh 8 MiB buffer's page faults would be the heap's
    # history (the calibration's process keeps its pages, :func:`calibrate._steady_heap`), not speed
    out_a, out_big, out_large = torch.empty(64, 256), torch.empty(256, 512), torch.empty(2 ** 21)
    rows = torch.randn(256, 128)
    weight, bias = torch.ones(128), torch.zeros(128)
    return [lambda: torch.mm(a, b, out=out_a), lambda: torch.mm(big_a, big_b, out=out_big),
            lambda: torch.conv2d(x1, w1, padding=1), lambda: torch.conv2d(x4, w4, padding=1),
            lambda: aten.convolution_backward(g4, x4, w4, [0], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                              [True, True, False]),
            lambda: torch.conv2d(xd, wd, padding=1, groups=64),
            lambda: torch.add(small, small), lambda: torch.add(large, large, out=out_large),
            lambda: torch.softmax(rows, -1), lambda: torch.layer_norm(rows, [128], weight, bias)]


def probe_seconds(threads: int | None = None, rounds: int = ROUNDS) -> tuple[float, ...]:
    """Each probe call's typical seconds on this machine now, at ``threads`` (default: torch's)."""
    previous = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        with torch.no_grad():
            calls = probe_calls()
            found: list[list[float]] = [[] for _ in calls]
            for _ in range(rounds):
                for call, times in zip(calls, found):
                    call()
                    start = time.perf_counter_ns()
                    call()
                    times.append((time.perf_counter_ns() - start) * 1e-9)
    finally:
        torch.set_num_threads(previous)
    return tuple(statistics.median(times) for times in found)


def typical(probes: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """Each call's median over several probes (a calibration's, taken before, amid and after it)."""
    return tuple(statistics.median(times) for times in zip(*probes))


def drift_now(then: Sequence[float], threads: int | None = None) -> float:
    """How many times slower the machine runs now than when it timed ``then``: the median of
    :data:`PROBES` probes' :func:`drift`; 1 without ``then`` (a model calibrated before the probe)."""
    if not then:
        return 1.0
    return statistics.median(drift(then, probe_seconds(threads)) for _ in range(PROBES))


def drift(then: Sequence[float], now: Sequence[float]) -> float:
    """How many times slower the machine runs now than then: the median of the probe calls'
    ratios (each call's, now over then, on log axes), within :data:`LIMIT` either way; 1 when the
    two were not made of the same calls.

    >>> round(drift((1.0, 2.0, 4.0), (1.1, 2.2, 5.0)), 3)
    1.1
    >>> drift((1.0,), (5.0,))
    2.0
    """
    if not then or len(then) != len(now) or min(then) <= 0 or min(now) <= 0:
        return 1.0
    ratio = math.exp(statistics.median(math.log(b / a) for a, b in zip(then, now)))
    return min(max(ratio, 1 / LIMIT), LIMIT)
