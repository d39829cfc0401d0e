"""Wall time of a function on a device: warm-up runs, then timed repeats, median and spread; and
the time of each operator inside it, by module and by operator.

Each run is bracketed by ``device.synchronize()`` (CPU: ``time.perf_counter_ns``; CUDA: CUDA
events), garbage collection is off while timing, and the number of CPU threads torch used is
recorded (set it with ``threads``; it is restored afterwards).

:class:`OpTimer` times every aten operator one at a time (a ``TorchDispatchMode``: each call
between two synchronisations, through the same ``Device.elapsed_ns``) and books it to the module
running, as the memory engine does (:class:`profiler.engine.module_scope.ModuleScope`: global
module hooks in the forward pass, the autograd node's module in backward), so no module gets a
hook of its own and no code path changes (``nn.TransformerEncoderLayer`` keeps its fused
inference operator). What it measures is the operators' own time: the Python between them, the
module calls and autograd's bookkeeping are not in it, so on a model of large operators its total
is below a plain run's time. Each operator's time includes its call from Python (a few
microseconds), so on operators of microseconds the total can exceed a plain run's: the digits MLP
(batch 32, one thread) read 0.049 ms of operators in a 0.027 ms forward pass.
"""
from __future__ import annotations

import gc
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.engine.module_scope import ModuleScope, backward_module
from profiler.engine.python_calls import PythonCalls
from profiler.measuring.devices import Device
from profiler.measuring.memory_trace import OUTSIDE, ROOT
from profiler.errors import ModelsizeError

#: timed runs a time budget never cuts below (the median of 5 is still one)
LEAST_REPEATS = 5


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
    requested: int | None = None   # timed runs asked for, when a time budget ran fewer (see time_fn)
    budget_s: float | None = None  # the time budget the runs were held to, if any

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["samples_ms"] = list(self.samples_ms)
        return out

    def samples_per_s(self, batch: int) -> float | None:
        """Throughput at the median: ``batch`` samples per median run."""
        return batch * 1000.0 / self.median_ms if self.median_ms > 0 else None


def time_fn(fn: Callable[[], object], device: Device, *, warmup: int = 3, repeats: int = 20,
            threads: int | None = None, collect: bool = True, budget_s: float | None = None,
            least: int = LEAST_REPEATS) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, one at a time.

    ``collect``: a full garbage collection before the timed runs (about 0.2 s with torch loaded;
    a caller timing several functions in a row collects once itself).

    ``budget_s``: a model whose run takes seconds (a 10,000-layer training step) would spend
    minutes on 3 + 20 runs. With a budget, as ``timeit``'s autorange and pytest-benchmark do, the
    warm-up runs stop after the first once they have taken ``budget_s`` in all, and the timed runs
    stop after ``least`` once they have; ``repeats`` of the result is the number run and
    ``requested`` the number asked for (when fewer ran). A model whose runs take milliseconds
    runs them all. Without a budget (the default) every run asked for is run."""
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
        # warm-ups are timed (each between two synchronisations) only when a budget counts them
        def warm() -> float:
            if budget_s is None:
                fn()
                return 0.0
            return device.elapsed_ns(fn) / 1e6

        warmed = _budgeted(warm, warmup, min(1, warmup), budget_s)
        device.synchronize()
        if collect:
            gc.collect()
        gc.disable()
        samples = _budgeted(lambda: device.elapsed_ns(fn) / 1e6, repeats, min(least, repeats), budget_s)
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(previous_threads)
    cut = len(samples) < repeats or len(warmed) < warmup
    return Timing(median_ms=statistics.median(samples), iqr_ms=interquartile_range(samples),
                  min_ms=min(samples), max_ms=max(samples), repeats=len(samples), warmup=len(warmed),
                  threads=used_threads, samples_ms=tuple(samples), requested=repeats if cut else None,
                  budget_s=budget_s if cut else None)


def _budgeted(run: Callable[[], float], count: int, least: int, budget_s: float | None) -> list[float]:
    """Up to ``count`` results of ``run()`` (milliseconds each); with a budget, no more once at
    least ``least`` have run and they took ``budget_s`` in all."""
    done: list[float] = []
    while len(done) < count:
        done.append(run())
        if budget_s is not None and len(done) >= least and sum(done) >= budget_s * 1000:
            break
    return done


def interquartile_range(samples: list[float]) -> float:
    """Q3 − Q1 with linear interpolation between order statistics (0 for fewer than two samples).

    >>> interquartile_range([1.0, 2.0, 3.0, 4.0, 5.0])
    2.0
    """
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q3 - q1


@dataclass(frozen=True)
class OpTimes:
    """One instrumented run: milliseconds spent inside operators, by phase and module and by
    operator (``aten.addmm``); both add up to ``total_ms``."""
    total_ms: float
    modules: dict[str, dict[str, float]]   # phase -> module ("(root)", "(outside modules)") -> ms
    ops: dict[str, float]                  # operator -> ms
    phases: dict[str, float]               # phase -> ms
    runs: int = 1                          # instrumented runs this one is the median of

    def by_module(self, phase: str) -> dict[str, float]:
        return dict(self.modules.get(phase, {}))


class OpTimer(TorchDispatchMode):
    """Time each operator run while active and book it to its phase, module and operator.

    ``names``: ``id(module) -> name`` from the model's ``named_modules()``. ``mark(phase)`` names
    the phase that starts (the runner's phases: "forward", "backward", "optimizer"). In the
    forward pass an operator belongs to the innermost module running; in backward, to the module
    that created the autograd node running it (or the module running, when backward re-runs a
    forward: activation checkpointing); elsewhere to "(outside modules)".
    """

    def __init__(self, device: Device, names: dict[int, str],
                 on_call: Callable[[Any, tuple, dict, Any, float], None] | None = None,
                 python: PythonCalls | None = None):
        """``on_call(func, args, kwargs, out, ns)``: also told of each call as it returns (the
        time model's calibration prices each one, :mod:`profiler.measuring.calibrate`);
        ``python``: then says in ``began`` whether Python issued the call."""
        super().__init__()
        self._device = device
        self._on_call = on_call
        self._python = python
        self.began, self.python_mark = True, 0   # the call being timed: see PythonCalls.began
        self._scope = ModuleScope(names)
        self.phase: str | None = None
        #: each call as it ran: (phase, module, operator, nanoseconds)
        self.calls: list[tuple[str, str, str, float]] = []

    @property
    def module_calls(self) -> int:
        """Module calls begun while active."""
        return self._scope.calls

    def mark(self, phase: str | None) -> None:
        self.phase = phase

    def __enter__(self) -> "OpTimer":
        self._scope.__enter__()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._scope.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if self._python is None:
            return self._timed(func, args, kwargs)
        self.began, self.python_mark = self._python.began()
        self._python.enter_handler()
        try:
            return self._timed(func, args, kwargs)
        finally:
            self._python.leave_handler()

    def _timed(self, func, args, kwargs):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result: list[Any] = []
        ns = self._device.elapsed_ns(lambda: result.append(func(*args, **kwargs)))
        self.calls.append((self.phase or "(no phase)", self._module(), str(getattr(func, "overloadpacket", func)), ns))
        if self._on_call is not None:
            self._on_call(func, args, kwargs, result[0], ns)
        return result[0]

    def _module(self) -> str:
        name = self._scope.current
        if name is None and self.phase == "backward":
            name, _ = backward_module()
        if name is None:
            return OUTSIDE
        return name or ROOT

    def times(self) -> OpTimes:
        return _op_times(self.calls)


def _op_times(calls: list[tuple[str, str, str, float]]) -> OpTimes:
    """Calls (phase, module, operator, ns) summed by phase and module and by operator."""
    modules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    ops: dict[str, float] = defaultdict(float)
    for phase, module, op, ns in calls:
        modules[phase][module] += ns / 1e6
        ops[op] += ns / 1e6
    out = {phase: dict(by) for phase, by in modules.items()}
    return OpTimes(total_ms=sum(ops.values()), modules=out, ops=dict(ops),
                   phases={phase: sum(by.values()) for phase, by in out.items()})


def _per_call_median(runs: list[list[tuple[str, str, str, float]]]) -> list[tuple[str, str, str, float]] | None:
    """Each call's median time over ``runs`` when every run made the same calls in the same order
    (None otherwise). A call slowed by the machine's other work (a descheduled thread costs a
    time slice, 100 times a small operator) then moves its own median, not a module's whole time:
    with the median run instead, one such call decides which of several identical layers is the
    slowest."""
    first = runs[0]
    if any(len(run) != len(first) or any(a[:3] != b[:3] for a, b in zip(run, first)) for run in runs[1:]):
        return None
    return [(*call[:3], statistics.median(run[i][3] for run in runs)) for i, call in enumerate(first)]


def time_ops(fn: Callable[[Callable[[str | None], None]], object], device: Device,
             names: dict[int, str], *, runs: int, warmup: int = 1, collect: bool = True,
             budget_s: float | None = None) -> OpTimes:
    """Run ``fn(mark)`` ``warmup`` times and then ``runs`` times under an :class:`OpTimer`: each
    operator call's median time over the runs (:func:`_per_call_median`), summed by module and by
    operator, so that both add up to the total reported; when the runs made different calls, the
    run whose total is the median (the lower middle one for an even count). (``collect``: as
    :func:`time_fn`'s.)
    (The first operator calls under a
    dispatch mode can be slow: 17 ms for Adam's first ``aten.sqrt`` of a 0.3 ms step, once.)
    ``budget_s``: the runs after the first counted one stop once all of them, warm-up included,
    took that long (wall time); the result's ``runs`` says how many were counted."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ModelsizeError("bad number of instrumented runs", field="layer_repeats",
                             expected="an integer >= 1", received=repr(runs))
    gc_was_enabled = gc.isenabled()
    found: list[list[tuple[str, str, str, float]]] = []
    try:
        device.synchronize()
        if collect:
            gc.collect()
        gc.disable()
        start = time.perf_counter()
        for run in range(warmup + runs):
            with OpTimer(device, names) as timer:
                fn(timer.mark)
            if run >= warmup:
                found.append(timer.calls)
                if budget_s is not None and time.perf_counter() - start >= budget_s:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    median = _per_call_median(found)
    if median is not None:
        return replace(_op_times(median), runs=len(found))
    totals = [_op_times(calls) for calls in found]
    return replace(sorted(totals, key=lambda t: t.total_ms)[(len(found) - 1) // 2], runs=len(found))
