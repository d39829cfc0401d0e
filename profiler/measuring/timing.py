"""Wall time of a function on a device: warm-up runs, then timed repeats, median and spread.

Each run is bracketed by ``device.synchronize()`` (CPU: ``time.perf_counter_ns``; CUDA: CUDA
events), garbage collection is off while timing, and the number of CPU threads torch used is
recorded (set it with ``threads``; it is restored afterwards).
"""
from __future__ import annotations

import gc
import statistics
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from profiler.measuring.devices import Device
from profiler.errors import ModelsizeError


@dataclass(frozen=True)
class Timing:
    """Milliseconds per run over ``repeats`` timed runs that followed ``warmup`` untimed ones."""
    median_ms: float
    iqr_ms: float          # interquartile range: third quartile minus first
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    threads: int           # torch.get_num_threads() while timing
    samples_ms: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["samples_ms"] = list(self.samples_ms)
        return out


def time_fn(fn: Callable[[], object], device: Device, *, warmup: int = 3, repeats: int = 20,
            threads: int | None = None) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, one at a time."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ModelsizeError("bad number of warm-up runs", field="warmup",
                             expected="an integer >= 0", received=repr(warmup))
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ModelsizeError("bad number of timed runs", field="repeats",
                             expected="an integer >= 1", received=repr(repeats))
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ModelsizeError("bad number of threads", field="threads",
                             expected="an integer >= 1", received=repr(threads))
    previous_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        for _ in range(warmup):
            fn()
        device.synchronize()
        gc.collect()
        gc.disable()
        samples = [device.elapsed_ns(fn) / 1e6 for _ in range(repeats)]
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(previous_threads)
    return Timing(median_ms=statistics.median(samples), iqr_ms=interquartile_range(samples),
                  min_ms=min(samples), max_ms=max(samples), repeats=repeats, warmup=warmup,
                  threads=used_threads, samples_ms=tuple(samples))


def interquartile_range(samples: list[float]) -> float:
    """Q3 − Q1 with linear interpolation between order statistics (0 for fewer than two samples).

    >>> interquartile_range([1.0, 2.0, 3.0, 4.0, 5.0])
    2.0
    """
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q3 - q1
