"""Each distinct operator call of a model timed alone on this CPU: what its own shape costs.

The device model prices a call by its work (:mod:`profiler.engine.step_time`): calls of the
same FLOPs cost the same there, where oneDNN's kernels do not — a 7 × 7 channels-last depthwise
convolution's forward and backward over 64 channels on a 2 × 2 map took 443 µs alone, over 24
channels on 16 × 16 (24 times its FLOPs) 414 µs (timm test_convnext's last and first stages,
batch 1, 2 threads). This runs each signature of the engine's log (its recipe:
:mod:`profiler.engine.op_recipe`) on fresh tensors, one warm-up and five timed calls, and keeps
the median, as PyTorch's ``RuntimeEstimator`` does in its benchmarking mode. A call alone runs
warm, far faster than in a network (the zoo's forward passes summed to 44 % below their runs), so
the step time stays the device model's; the layers' split of it takes the signature's own time in
(:func:`profiler.engine.step_time.run_time`).

It allocates each call's tensors for real, one call at a time, so it is used where the model is
about to be measured anyway (``profile``), within a byte cap per call and a time budget.
"""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Iterable

import torch

from profiler.engine.op_recipe import arguments, key, nbytes, operator

if TYPE_CHECKING:
    from profiler.engine.op_cost import OpCost

#: the phases whose calls are split among layers (:func:`profiler.engine.step_time.run_time`)
PHASES = ("inference", "forward", "backward")
#: a call making more tensor bytes than this is not timed alone (its layer's split stays the
#: device model's)
MAX_CALL_BYTES = 256 * 2**20
#: seconds of timing, all signatures together; those left untimed keep the device model's split
BUDGET_S = 20.0
TIMED = 5


def time_alone(calls: Iterable[OpCost], *, threads: int | None = None, budget_s: float = BUDGET_S,
               max_call_bytes: int = MAX_CALL_BYTES) -> dict[str, float]:
    """Seconds of each distinct signature (:func:`~profiler.engine.op_recipe.key`) among
    ``calls`` of :data:`PHASES` that carry a recipe, median of :data:`TIMED` runs after one
    warm-up, at ``threads`` (default: torch's). A call that fails to run again (an operator that
    wants its values: the index of a sort) is left out, as are those beyond the byte cap or the
    budget."""
    wanted: dict[str, OpCost] = {}
    for cost in calls:
        if cost.phase in PHASES and cost.call is not None:
            found = key(cost)
            if found is not None and found not in wanted and nbytes(cost.call) <= max_call_bytes:
                wanted[found] = cost
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for name, cost in wanted.items():
                if time.perf_counter() - start > budget_s:
                    break
                found = _timed(cost)
                if found is not None:
                    seconds[name] = found
    finally:
        torch.set_num_threads(previous)
    return seconds


def _timed(cost: OpCost) -> float | None:
    try:
        func = operator(cost.op)
        args, kwargs = arguments(cost.call)
        func(*args, **kwargs)
        runs = []
        for _ in range(TIMED):
            begin = time.perf_counter_ns()
            func(*args, **kwargs)
            runs.append(time.perf_counter_ns() - begin)
    except Exception:   # noqa: BLE001 - any call that does not run again keeps the device model's split
        return None
    return statistics.median(runs) / 1e9
