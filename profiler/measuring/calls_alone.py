"""Each distinct operator call of a model timed alone on this CPU: what its own shape costs.

The device model prices a call by its work (:mod:`profiler.engine.step_time`): calls of the
same FLOPs cost the same there, where oneDNN's kernels do not — a 7 × 7 channels-last depthwise
convolution's forward and backward over 64 channels on a 2 × 2 map took 443 µs alone, over 24
channels on 16 × 16 (24 times its FLOPs) 414 µs (timm test_convnext's last and first stages,
batch 1, 2 threads). This runs each signature of the engine's log (its recipe:
:mod:`profiler.engine.op_recipe`) on fresh tensors and keeps its median time. A call alone runs
warm, far faster than in a network (the zoo's forward passes summed to 44 % below their runs), so
the step time stays the device model's; the layers' split of it takes the signature's own time in
(:func:`profiler.engine.step_time.run_time`).

The signatures are timed in interleaved rounds, as the calibration's micro-benchmarks are: each
round runs every signature of a group once untimed and then :data:`PER_ROUND` times timed, and a
signature's time is the median of all its rounds' runs. Timed back to back instead (one warm-up
and five runs, as PyTorch's ``RuntimeEstimator`` benchmarks an operator), a burst of the machine's
other work slowed every run of the signatures it fell on: two such timings of the 52
time-benchmark cases, one after the other, differed by 10 % for the median signature (34 % at the
upper quartile; each case's own median ratio taken out), and the layers' split they gave (session
22's, price plus time alone) named the measured top three in 30 and 32 of the 52, against 35 by
the prices alone; two interleaved timings differed by 3.6 % (9.5 %) and named it in 35 and 38
(session 23, offline: timed on an AMD EPYC, scored against the measurements and calibrations
stored by session 22's last benchmark run, an Intel Xeon's).

It allocates the calls' tensors for real, a group of signatures at a time (:data:`GROUP_BYTES`),
so it is used where the model is about to be measured anyway (``profile``), within a byte cap per
call and a time budget.
"""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from profiler.engine.op_recipe import arguments, key, nbytes, operator

if TYPE_CHECKING:
    from profiler.engine.op_cost import OpCost

#: the phases whose calls are split among layers (:func:`profiler.engine.step_time.run_time`)
PHASES = ("inference", "forward", "backward")
#: a call making more tensor bytes than this is not timed alone (its layer's split stays the
#: device model's)
MAX_CALL_BYTES = 256 * 2**20
#: the tensors held at once: signatures are grouped until their bytes reach this, and each group
#: is timed in its own rounds
GROUP_BYTES = 512 * 2**20
#: seconds of timing, all signatures together; no round starts past it, and signatures left
#: untimed keep the device model's split
BUDGET_S = 20.0
ROUNDS = 5
PER_ROUND = 3


def time_alone(calls: Iterable[OpCost], *, threads: int | None = None, budget_s: float = BUDGET_S,
               max_call_bytes: int = MAX_CALL_BYTES, rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds of each distinct signature (:func:`~profiler.engine.op_recipe.key`) among
    ``calls`` of :data:`PHASES` that carry a recipe: the median of its runs over ``rounds``
    interleaved rounds (see the module doc), at ``threads`` (default: torch's). A call that fails
    to run again (an operator that wants its values: the index of a sort) is left out, as are
    those beyond the byte cap or not reached within the budget."""
    wanted: dict[str, OpCost] = {}
    for cost in calls:
        if cost.phase in PHASES and cost.call is not None:
            found = key(cost)
            if found is not None and found not in wanted and nbytes(cost.call) <= max_call_bytes:
                wanted[found] = cost
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    runs: dict[str, list[int]] = {}
    deadline = time.perf_counter() + budget_s
    try:
        with torch.no_grad():
            for group in _groups(wanted):
                _time_group(group, rounds, deadline, runs)
    finally:
        torch.set_num_threads(previous)
    return {name: statistics.median(found) / 1e9 for name, found in runs.items() if found}


def _groups(wanted: dict[str, OpCost]) -> Iterator[list[tuple[str, OpCost]]]:
    group: list[tuple[str, OpCost]] = []
    held = 0
    for name, cost in wanted.items():
        group.append((name, cost))
        held += nbytes(cost.call)
        if held >= GROUP_BYTES:
            yield group
            group, held = [], 0
    if group:
        yield group


def _time_group(group: list[tuple[str, OpCost]], rounds: int, deadline: float,
                runs: dict[str, list[int]]) -> None:
    """``group``'s signatures made and each run once, then ``rounds`` rounds over those that ran,
    each round every one in turn (nanoseconds appended to ``runs``), none started past
    ``deadline``."""
    if time.perf_counter() > deadline:
        return
    ready = []
    for name, cost in group:
        try:
            func = operator(cost.op)
            args, kwargs = arguments(cost.call)
            func(*args, **kwargs)
        except Exception:   # noqa: BLE001 - a call that does not run again keeps the device model's split
            continue
        ready.append((runs.setdefault(name, []), func, args, kwargs))
    for _ in range(rounds):
        if time.perf_counter() > deadline:
            return
        for found, func, args, kwargs in ready:
            func(*args, **kwargs)   # untimed: the round's other calls ran since its last
            for _ in range(PER_ROUND):
                begin = time.perf_counter_ns()
                func(*args, **kwargs)
                found.append(time.perf_counter_ns() - begin)
