"""Time predicted from the engine's operator log: each call's work priced by a device model, summed.

The engine's replay (:mod:`profiler.engine.module_memory`) logs every aten operator call of the
inference pass, the training forward, loss and backward, and each optimizer's update, with the
module it ran in (:class:`~profiler.engine.op_cost.OpCost`). A :class:`DeviceModel` prices one
call:

- **measured** (this machine, :mod:`profiler.measuring.calibrate`): the time of a call of the same
  kind (matrix multiply, convolution, attention, memory-bound) and dtype with the same work (FLOPs,
  or bytes moved for memory-bound calls), read off a curve of micro-benchmarks by interpolation on
  log–log axes (small calls are slower per FLOP than large ones); no call is faster than what its
  bytes take at the machine's measured bandwidth. Around the operators, what Python and autograd
  cost per call in each phase, fitted on calibration models, and (measured by micro-benchmarks)
  more per call that Python issued than per call that C++ did
  (:mod:`profiler.engine.python_calls`), per module call and per host call the model's Python
  makes outside any operator (:mod:`profiler.engine.host_calls`), and per optimizer step. The
  curves were measured on warm tensors; reads of tensors last touched far back in the loop
  (:mod:`profiler.engine.reuse`) take what a cold read measured per byte at that distance, the
  call's own time hiding the share of them measured on a multiply with arithmetic of its own; a
  call whose kernel last ran far back (a layer of its own) adds what its kind measured more run
  cold, and a buffer large enough to be mapped fresh from the system at each allocation adds its
  page faults, measured per byte.
- **roofline** (a catalog accelerator you don't have): the larger of FLOPs at the card's
  datasheet peak for the dtype and bytes at its memory bandwidth, and no call shorter than a
  kernel launch: a roofline prediction, until measured on that card.

A training step is ``zero_grad`` + forward + loss + backward + the optimizer's update, the runner's
definition (:mod:`profiler.measuring.runner`).
"""
from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:   # no torch import here: a spec's summary runs without it
    from profiler.engine.op_cost import OpCost

#: the phases of the operator log: inference's forward, and a training step's four
PHASES = ("inference", "forward", "loss", "backward", "optimizer")


@dataclass(frozen=True)
class Curve:
    """Seconds of one call against its work (FLOPs or bytes), measured points sorted by work."""
    work: tuple[float, ...]
    seconds: tuple[float, ...]

    def __call__(self, work: float) -> float:
        """Log–log interpolation; below the smallest point its time (a call's floor), above the
        largest its throughput."""
        if work <= self.work[0]:
            return self.seconds[0]
        if work >= self.work[-1]:
            return self.seconds[-1] * work / self.work[-1]
        i = bisect.bisect_right(self.work, work)
        w0, w1, s0, s1 = self.work[i - 1], self.work[i], self.seconds[i - 1], self.seconds[i]
        f = (math.log(work) - math.log(w0)) / (math.log(w1) - math.log(w0))
        return math.exp(math.log(s0) + f * (math.log(s1) - math.log(s0)))

    @classmethod
    def of(cls, points: Iterable[tuple[float, float]]) -> "Curve":
        # keep the time non-decreasing in the work: noise must not make a bigger call cheaper
        ordered = sorted(points)
        work, seconds, longest = [], [], 0.0
        for w, s in ordered:
            longest = max(longest, s)
            work.append(float(w))
            seconds.append(longest)
        return cls(tuple(work), tuple(seconds))


@dataclass(frozen=True)
class DeviceModel:
    """How long operator calls take on one device (see the module docstring)."""
    name: str
    method: str                                  # "measured" or "roofline"
    curves: dict[str, Curve] = field(default_factory=dict)   # by kind: "matmul/float32", "memory", ...
    op_curves: dict[str, Curve] = field(default_factory=dict)   # by operator: see :func:`curve_key`
    view_s: float = 0.0                          # a call that moves no data
    bandwidth: float = 0.0                       # bytes per second, large copies
    #: the fastest a matrix multiply or convolution family moved its bytes (by curve key): a call
    #: with little arithmetic per byte (a large weight applied to a few samples) takes at least this
    op_bandwidth: dict[str, float] = field(default_factory=dict)
    peak_flops: dict[str, float] = field(default_factory=dict)   # dtype -> FLOP/s (roofline)
    launch_s: float = 0.0                        # a call's shortest time (roofline: a kernel launch)
    per_op_s: dict[str, float] = field(default_factory=dict)      # phase -> Python/autograd per call
    #: phase -> the same for a call C++ issued, in its place where fitted (timed one by one, a chain
    #: of small calls C++ issues loses more than calls Python issued: fitted apart)
    per_cpp_s: dict[str, float] = field(default_factory=dict)
    #: phase -> more per call that Python issued (its argument parsing, the module's Python around
    #: it) than per call from C++ (a recurrent layer's 300 small operators, backward's nodes)
    per_python_s: dict[str, float] = field(default_factory=dict)
    module_s: float = 0.0                        # a module call (``nn.Module.__call__``), from Python
    #: an optimizer step's own time beyond its calls (``Optimizer.step``'s wrappers, its Python
    #: before the first update), once per step: fitted with the update's per-call figure
    optimizer_step_s: float = 0.0
    #: a host call the model's Python makes (:mod:`profiler.engine.host_calls`): measured on this
    #: machine; 0 on a roofline (a card's driver answers it at once)
    host_call_s: float = 0.0
    threads: int | None = None
    source: str = ""                             # where the figures come from
    timer_inflation_s: float = 0.0               # taken off each timed call while calibrating
    #: (reuse distance in bytes, seconds per byte more than a warm read), ascending: a read's cost
    #: when its tensor was last touched that far back (:mod:`profiler.engine.reuse`); flat beyond
    cold_read: tuple[tuple[float, float], ...] = ()
    #: the share of the shorter of a call's own time and its cold reads' time that adds to the
    #: longer (:meth:`cold_seconds`): 0 when the call's arithmetic hides its reads whole, 1 when
    #: nothing overlaps (the default: calibrations before session 24 added them whole)
    cold_exposed: float = 1.0
    #: a buffer of at least ``fresh_from`` bytes is new memory from the system at each allocation
    #: (glibc maps it and unmaps it when freed), its pages faulted in as they are first written:
    #: ``fresh_byte_s`` seconds per byte more than writing memory already mapped
    fresh_from: int = 0
    fresh_byte_s: float = 0.0
    #: by :func:`cold_kind`: seconds more a call takes when no call of its signature (the same
    #: kernel call: :func:`~profiler.engine.reuse.signature`) ran since its caches were flushed
    #: (its kernel's code and state, beyond its data's cold reads), measured on the micro-benchmarks;
    #: nearer, the same fraction of it as a read's cold cost (``cold_read``) at that distance
    cold_call_s: dict[str, float] = field(default_factory=dict)

    def op_seconds(self, op: OpCost) -> float:
        """One call's time: its own (:meth:`base_seconds`) with ``per_op_s`` of its phase
        (``per_cpp_s`` for a call C++ issued, where fitted), never
        below a view's, and then what issuing it cost: ``per_python_s`` when Python issued it,
        ``module_s`` per module call begun since the previous call and ``host_call_s`` per host call
        made since. Those are measured micro-benchmarks (a view issued from Python pays them as any
        call does); only the fitted figures, which may be negative, stop at a view's time."""
        issue = (self.per_python_s.get(op.phase, 0.0) if op.python else 0.0) + self.module_s * op.modules \
            + self.host_call_s * op.host_calls
        fitted = self.per_op_s.get(op.phase, 0.0)
        if not op.python:
            fitted = self.per_cpp_s.get(op.phase, fitted)
        return max(self.base_seconds(op) + fitted, self.view_s) + issue

    def base_seconds(self, op: OpCost) -> float:
        """The call itself, before what its phase and issuing it add: a view's time; on a roofline,
        the larger of FLOPs at peak, bytes at bandwidth and a launch; measured, its kernel's curve,
        but no faster than its bytes at the machine's or its operator family's bandwidth."""
        if op.kind == "view":
            return self.view_s
        memory_bound = op.bytes / self.bandwidth if self.bandwidth else 0.0
        if self.method == "roofline":
            peak = self.peak_flops.get(op.dtype) or self.peak_flops.get("float32", 0.0)
            compute = op.flops / peak if peak else 0.0
            return max(compute, memory_bound, self.launch_s)
        stream = next((self.op_bandwidth[key] for key in curve_keys(op) if key in self.op_bandwidth), None)
        if stream:
            memory_bound = max(memory_bound, op.bytes / stream)
        return max(self._kernel_seconds(op), memory_bound)

    def cold_seconds(self, op: OpCost, reads: Sequence[tuple[int, float]]) -> float:
        """What reading ``op``'s inputs ((bytes, reuse distance) each) from farther than the
        caches costs beyond its own time (:meth:`base_seconds`): its reads at what each distance
        costs more than its own bytes' (its curves were measured on a call repeated at once, whose
        reads were that far back), of which the call's own time hides part. The cold rate is a
        read-bound call's whole time per byte, so the call takes the longer of its own time and
        its reads' plus ``cold_exposed`` of the shorter, as measured on a 16-row multiply
        (``calibrate._cold_reads``, with the figures that set it). Added whole, timm
        mixer_s16's channel MLPs at batch 1 were priced 0.87 ms a forward call (0.51 from
        their curve, 0.36 of cold reads) where one takes 0.55 ms cycled over 24 weights of its
        size; its forward pass 17.5 ms against 12.5 measured."""
        if not self.cold_read or not reads:
            return 0.0
        warm = self.cold_per_byte(op.bytes)
        reading = sum(nbytes * max(self.cold_per_byte(distance) - warm, 0.0) for nbytes, distance in reads)
        if not reading:
            return 0.0
        return reading - (1.0 - self.cold_exposed) * min(self.base_seconds(op), reading)

    def cold_call_seconds(self, op: OpCost, distance: float) -> float:
        """What ``op`` costs more when a call of its signature last ran ``distance`` bytes back
        (:func:`~profiler.engine.reuse.call_distances`): the layer of its own in a network, whose
        kernel ran a whole step before (timm test_convnext's stem and downsampling convolutions,
        replayed in order: 1.9-3.1 x their time repeated, the second of two identical layers
        1.1-1.3 x)."""
        extra = self.cold_call_s.get(cold_kind(op), 0.0)
        if not extra or not self.cold_read or self.cold_read[-1][1] <= 0:
            return 0.0
        return extra * min(self.cold_per_byte(distance) / self.cold_read[-1][1], 1.0)

    def fresh_seconds(self, op: OpCost) -> float:
        """What mapping in the buffers ``op`` allocated costs (those at least ``fresh_from``)."""
        if not self.fresh_byte_s:
            return 0.0
        return self.fresh_byte_s * sum(n for n in op.allocated if n >= self.fresh_from)

    def cold_per_byte(self, distance: float) -> float:
        """Seconds per byte a read at ``distance`` costs more than a warm one: linear between the
        measured distances, flat beyond them."""
        points = self.cold_read
        if distance <= points[0][0]:
            return points[0][1]
        if distance >= points[-1][0]:
            return points[-1][1]
        i = bisect.bisect_right([d for d, _ in points], distance)
        (d0, s0), (d1, s1) = points[i - 1], points[i]
        return s0 + (s1 - s0) * (distance - d0) / (d1 - d0)

    def _kernel_seconds(self, op: OpCost) -> float:
        """The call itself, from its operator's own curve (kernel family and dtype where measured):
        interpolated within the sizes measured; below them it follows its kind's curve down from
        its smallest call (small calls cost about the same, whatever their size); above them a
        matrix multiply or convolution runs at its largest call's throughput, and a memory-bound
        call follows the memory curve up from its largest (a calibration model's largest ``cat``,
        a few kilobytes, priced timm densenet121's 0.5 MB ones at 2.7 GB/s: 10.6 ms of them
        against 1.7 ms measured, batch 4). An operator never measured is priced by its kind's curve."""
        own = next((self.op_curves[key] for key in curve_keys(op) if key in self.op_curves), None)
        kind = self._kind_curve(op)
        if own is None:
            return kind(op.work) if kind is not None else 0.0
        if kind is None or own.work[0] <= op.work <= own.work[-1] or (op.work > own.work[-1] and op.kind != "memory"):
            return own(op.work)
        end = 0 if op.work < own.work[0] else -1   # from its smallest call down, or its largest up
        return own.seconds[end] * kind(op.work) / kind(own.work[end])

    def _kind_curve(self, op: OpCost) -> Curve | None:
        if op.kind not in ("matmul", "conv", "attention") or op.bytes_bound:
            return self.curves.get("memory")
        kind = cold_kind(op)
        return next((self.curves[key] for key in (f"{kind}/{op.dtype}", f"{kind}/float32",
                                                  f"matmul/{op.dtype}", "matmul/float32")
                     if key in self.curves), None)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("curves", "op_curves"):
            out[name] = {k: {"work": list(c.work), "seconds": list(c.seconds)}
                         for k, c in getattr(self, name).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeviceModel":
        data = dict(data)
        for name in ("curves", "op_curves"):
            data[name] = {k: Curve(tuple(c["work"]), tuple(c["seconds"])) for k, c in data.get(name, {}).items()}
        data["cold_read"] = tuple((float(d), float(s)) for d, s in data.get("cold_read", ()))
        return cls(**data)


#: the per-module entry of the host calls' time (:mod:`profiler.engine.host_calls`): spent in the
#: model's Python between operators, which no operator timed one by one measures, so it is not
#: booked to the module whose Python made them
HOST_CALLS = "(host calls)"

#: the suffix of a kernel family's channels-last variant ("depthwise_cl"): its own curve where the
#: calibration timed one, else its contiguous family's
CHANNELS_LAST = "_cl"


def cold_kind(op: OpCost) -> str:
    """The kind of call a kind's curve and cold cost are kept by: its kind ("matmul", "conv",
    "memory", ...), a convolution's backward apart ("conv_backward")."""
    return f"{op.kind}_backward" if op.kind == "conv" and "backward" in op.op else op.kind


def curve_key(op: OpCost) -> str:
    """The most specific name of an operator's own curve: operator, kernel family, dtype."""
    return curve_keys(op)[0]


def curve_keys(op: OpCost) -> tuple[str, ...]:
    """An operator's curve names, most specific first: "aten.convolution/onednn/float32",
    "aten.convolution/onednn", "aten.convolution/float32", "aten.convolution"; a channels-last
    family's ("onednn_cl") followed by its contiguous family's. A bytes-bound family's
    (:data:`~profiler.engine.op_cost.BYTES_BOUND`) are its own alone: the operator's others are
    curves of FLOPs."""
    packet = op.packet
    kernel = f"{packet}/{op.kernel}" if op.kernel else packet
    own = (f"{kernel}/{op.dtype}", kernel)
    if op.kernel.endswith(CHANNELS_LAST):
        contiguous = kernel.removesuffix(CHANNELS_LAST)
        own += (f"{contiguous}/{op.dtype}", contiguous)
    return own if op.kernel and op.bytes_bound and op.flops else (*own, f"{packet}/{op.dtype}", packet)


@dataclass(frozen=True)
class RunTime:
    """Predicted seconds of one run (inference or a training step): total, per phase, per module."""
    seconds: float
    phases: dict[str, float]
    modules: dict[str, dict[str, float]]   # phase ("forward", "backward") -> module (and HOST_CALLS) -> seconds
    ops: dict[str, float]                  # aten operator -> seconds
    calls: int


def run_time(model: DeviceModel, costs: Sequence[OpCost], alone: dict[str, float] | None = None) -> RunTime:
    """The predicted time of the calls ``costs``, run as a loop (their reads' distances:
    :mod:`profiler.engine.reuse`); an optimizer's update among them adds its step's own time.
    ``alone``: seconds of call signatures timed alone (:mod:`profiler.measuring.calls_alone`),
    which split each phase's time among its modules (:func:`_split_by_calls_alone`)."""
    from profiler.engine.reuse import call_distances
    phases: dict[str, float] = {}
    ops: dict[str, float] = {}
    booked: dict[str, list[tuple[OpCost, float]]] = {}   # phase -> (call, its seconds but host calls')
    host: dict[str, float] = {}
    distances = call_distances(costs) if model.cold_read else [((), 0.0)] * len(costs)
    for op, (reads, since) in zip(costs, distances):
        seconds = model.op_seconds(op) + model.cold_seconds(op, reads) + model.cold_call_seconds(op, since) \
            + model.fresh_seconds(op)
        phases[op.phase] = phases.get(op.phase, 0.0) + seconds
        ops[op.op] = ops.get(op.op, 0.0) + seconds
        if op.phase in ("inference", "forward", "backward"):
            made = model.host_call_s * op.host_calls
            booked.setdefault(op.phase, []).append((op, seconds - made))
            host[op.phase] = host.get(op.phase, 0.0) + made
    modules: dict[str, dict[str, float]] = {}
    for phase, calls in booked.items():
        per = modules[phase] = _split_by_calls_alone(calls, alone) if alone else _by_module(calls)
        if host[phase]:
            per[HOST_CALLS] = per.get(HOST_CALLS, 0.0) + host[phase]
    if "optimizer" in phases:
        phases["optimizer"] += model.optimizer_step_s
    return RunTime(sum(phases.values()), phases, modules, ops, len(costs))


def _by_module(calls: Iterable[tuple[OpCost, float]]) -> dict[str, float]:
    per: dict[str, float] = {}
    for op, seconds in calls:
        per[op.module] = per.get(op.module, 0.0) + seconds
    return per


def _split_by_calls_alone(calls: list[tuple[OpCost, float]], alone: dict[str, float]) -> dict[str, float]:
    """A phase's seconds split among its modules half by the calls' prices and half by their
    signatures' times alone, each split of the phase's seconds on its own: the curves price calls
    of one work alike whatever their shape, a call alone tells its shape's own cost (a view's is
    none). Alone, calls run warm, far faster than in the network (44 % below the plain runs over
    the zoo), so the times alone are scaled to the phase's seconds before the two are averaged
    (session 22 added them unscaled, a third of the weight: offline, on two benchmark runs'
    measurements, an Intel Xeon's and an AMD EPYC's, and two timings each on the EPYC, the top
    three layers were the measured in 35, 38, 39 and 37 of 52 cases averaged, 35, 38, 36 and 35
    added, 35, 35, 28 and 28 by the prices alone). A call that is no view and was not timed alone
    counts at its price times the phase's median ratio of time alone to price; a phase with none
    timed is split by the prices.

    >>> from profiler.engine.op_cost import OpCost
    >>> def call(module, flops):
    ...     return OpCost("aten.mm.default", "matmul", "forward", module, "float32", "", flops, 0, 0,
    ...                   call={"args": [flops]})
    >>> a, b, c = call("a", 1), call("b", 2), call("c", 3)
    >>> from profiler.engine.op_recipe import key
    >>> _split_by_calls_alone([(a, 1.0), (b, 1.0)], {key(a): 0.0, key(b): 0.2})
    {'a': 0.5, 'b': 1.5}
    >>> _split_by_calls_alone([(a, 1.0), (b, 1.0), (c, 2.0)], {key(a): 0.5, key(b): 0.5})   # c: 2 x 0.5
    {'a': 1.0, 'b': 1.0, 'c': 2.0}
    >>> _split_by_calls_alone([(a, 1.0), (b, 3.0)], {key(a): 0.0, key(b): 0.0})   # nothing timed: the prices
    {'a': 1.0, 'b': 3.0}
    """
    from profiler.engine.op_recipe import key
    extra: list[float | None] = [0.0 if op.kind == "view" else alone.get(key(op) or "") for op, _ in calls]
    ratios = [more / seconds for (op, seconds), more in zip(calls, extra)
              if op.kind != "view" and more is not None and seconds > 0]
    if not ratios:
        return _by_module(calls)
    typical = statistics.median(ratios)
    filled = [seconds * typical if more is None else more for (_, seconds), more in zip(calls, extra)]
    total, timed = sum(seconds for _, seconds in calls), sum(filled)
    if timed <= 0:
        return _by_module(calls)
    scale = total / timed
    return _by_module((op, (seconds + more * scale) / 2) for (op, seconds), more in zip(calls, filled))


def predict_times(model: DeviceModel, costs: dict[str, list[OpCost]], batch: int,
                  alone: dict[str, float] | None = None) -> dict[str, Any]:
    """The ``predicted_time`` of a result: inference and each optimizer's steady training step, in
    milliseconds, with samples/s, per phase and per module (forward and backward); ``alone``: see
    :func:`run_time`."""
    out: dict[str, Any] = {"device": model.name, "method": model.method, "threads": model.threads,
                           "source": model.source}
    layers: dict[str, dict[str, float]] = {}
    if "inference" in costs:
        inference = run_time(model, costs["inference"], alone)
        out["forward_ms"] = inference.seconds * 1e3
        out["forward_samples_per_s"] = _rate(batch, inference.seconds)
        layers["inference"] = {m: s * 1e3 for m, s in inference.modules.get("inference", {}).items()}
    if "training" in costs:
        # each step a loop of its own: the update's reads (and the next forward's) are as far
        # back as that optimizer's traffic makes them; the layers are the first optimizer's step's
        steps = {key: run_time(model, [*costs["training"], *(costs[key] if key else ())], alone)
                 for key in [key for key in costs if key.startswith("step_")] or [""]}
        for key, step in steps.items():
            if key:
                name = key.removeprefix("step_")
                out[f"train_{name}_ms"] = step.seconds * 1e3
                out[f"train_{name}_samples_per_s"] = _rate(batch, step.seconds)
                out[f"train_{name}_phases_ms"] = {p: s * 1e3 for p, s in step.phases.items()}
        training = next(iter(steps.values()))
        layers["forward"] = {m: s * 1e3 for m, s in training.modules.get("forward", {}).items()}
        layers["backward"] = {m: s * 1e3 for m, s in training.modules.get("backward", {}).items()}
    out["layers"] = layers
    if alone:   # the layers' split took each call's time alone in (run_time)
        out["layer_split"] = {"signatures_timed_alone": len(alone)}
    return out


def _rate(batch: int, seconds: float) -> float | None:
    return batch / seconds if seconds > 0 else None
