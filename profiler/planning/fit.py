"""Capacity planning: the largest batch whose *predicted* peak fits a memory budget.

Solve, don't probe. :func:`solve` never touches a device: it reads every allocation of the
predicted step as a line ``a × batch + c`` (from :func:`~profiler.engine.predict.traced_steps` at
two batches; :class:`~profiler.planning.module_fit.LinearTimeline`), solves over those lines for
the largest batch ``b`` with ``peak(b) <= budget`` and proves it with predictions at ``b`` and
``b + 1`` — so ``peak(b + 1) > budget`` (when they disagree: guesses from a line and bisection over
:func:`~profiler.engine.predict.predict`) — and reports ``b``, its peak, the
headroom left and the peak at ``b + 1``. :func:`verify` is the separate, optional check: it builds
the model and measures it at ``b`` and ``b + 1``.

Why a search is sound (monotonicity). The memory model replays one fixed sequence of allocations
and frees; the sequence does not depend on the batch, only the sizes do, and every size is
``a × batch + c`` with ``a, c >= 0`` (activations, inputs, targets and per-sample saved tensors
grow with the batch; parameters, gradients, optimizer state and per-channel statistics do not).
So the bytes alive after each event are a non-decreasing function of the batch, and so is their
maximum, the peak. Rounding every block up (CUDA, below) is a non-decreasing function of a block's
size, so the CUDA figures stay non-decreasing; so does the larger of the steady and first training
steps. Checked: ``tests/test_fit.py`` walks batches 1–64 and some large ones for every seed model
and a BatchNormalization/Conv2D model, and :func:`solve` checks every batch it evaluated against
the others (a violation is a bug and raises).

Budgets (:class:`Budget`). On a CPU target the budget is tensor memory as the runner measures it —
bytes requested from the CPU allocator, unrounded — and the figure compared is the exact predicted
peak. On a CUDA target (``--device NAME`` from :mod:`profiler.planning.accelerators`, or ``--memory`` with
``--target cuda``):

- the CUDA context and library handles come off the top (``reserve``, default 512 MiB);
- a fragmentation margin is held back (default 10 % of what remains): the caching allocator keeps
  freed blocks cached, and a cached block too small or in the wrong pool cannot serve the next
  request, so ``max_memory_reserved`` runs above ``max_memory_allocated`` by an amount that depends on
  the order of requests; cuDNN's per-call convolution workspaces are not modelled either;
- every block is rounded as the caching allocator rounds it (:func:`block_bytes`: up to a multiple
  of 512 bytes, at least 512), giving the predicted ``max_memory_allocated``;
- the predicted ``max_memory_reserved`` also counts segments (:func:`segment_bytes`): requests of at
  most 1 MiB share 2 MiB segments, those below 10 MiB share 20 MiB segments, larger ones get a
  segment of their own rounded up to 2 MiB; one partly used segment of each shared kind is added;
- the cuBLAS workspace (per handle and stream, allocated through the caching allocator) is counted
  once for inference and twice for training (the backward pass runs on autograd's own thread, which
  has its own handle);
- the parameters and gradients, one block each in the memory model, are many tensors on the device:
  512 bytes per tensor are added as an upper bound of their rounding.

The figure compared with the budget on CUDA is the predicted ``max_memory_reserved``: running out of
memory means the allocator could not reserve another segment. (Constants from PyTorch's
``c10/cuda/CUDACachingAllocator.cpp``: ``kMinBlockSize`` 512, ``kSmallSize`` 1 MiB, ``kSmallBuffer``
2 MiB, ``kLargeBuffer`` 20 MiB, ``kMinLargeAlloc`` 10 MiB, ``kRoundLarge`` 2 MiB; without
``expandable_segments`` or ``roundup_power2_divisions`` in ``PYTORCH_CUDA_ALLOC_CONF``.)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Callable, Sequence

from profiler.engine.kernels import cpu_isa
from profiler.planning.accelerators import COMM_RESERVE, CONTEXT_RESERVE, Accelerator, blas_workspace_bytes, lookup
from profiler.errors import SpecError
from profiler.engine.memory_model import Peak
if TYPE_CHECKING:
    from profiler.engine.module_memory import MemoryPrediction
from profiler.planning.module_fit import PROBES, REFITS, LinearTimeline, keys
from profiler.engine.optimizers import CATALOG as OPTIMIZER_CATALOG
from profiler.engine.predict import LayerRow, Prediction, predict, traced_steps
from profiler.frontends.source import ModuleSource
from profiler.frontends.spec import ModelSpec

#: The search stops here: a batch this large that still fits is reported as capped.
MAX_BATCH = 2 ** 31
#: Share of (memory − reserve) held back on CUDA targets for fragmentation.
DEFAULT_MARGIN = 0.10
MODES = ("inference", *OPTIMIZER_CATALOG)
TARGETS = ("cpu", "cuda")

MiB = 1 << 20
BLOCK = 512                    # kMinBlockSize: every block is a multiple of this
SMALL_REQUEST = 1 * MiB        # kSmallSize: at most this comes from the small pool
SMALL_SEGMENT = 2 * MiB        # kSmallBuffer: small-pool segments
LARGE_SEGMENT = 20 * MiB       # kLargeBuffer: segments shared by requests below kMinLargeAlloc
MIN_LARGE_ALLOC = 10 * MiB     # kMinLargeAlloc: from here a request gets its own segment
ROUND_LARGE = 2 * MiB          # kRoundLarge: ... rounded up to this

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d[\d_]*(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str, *, field: str = "memory", allow_zero: bool = False) -> int:
    """Bytes from ``24GiB``, ``80GB``, ``512 MiB``, ``1.5GiB`` or plain bytes.

    KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024 (case does not matter).

    >>> parse_size("24GiB"), parse_size("80GB"), parse_size("512MiB"), parse_size("1_000")
    (25769803776, 80000000000, 536870912, 1000)
    """
    expected = ("a number of bytes with an optional unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, "
                "GiB, TiB (powers of 1024), e.g. 24GiB")
    if str(text).strip().startswith("-"):
        raise SpecError("must be positive", field=field, expected=expected, received=repr(text))
    match = _SIZE.match(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise SpecError("not a size", field=field, expected=expected, received=repr(text))
    try:
        value = Decimal(match.group(1).replace("_", "")) * _UNITS[match.group(2).lower()]
    except InvalidOperation:
        raise SpecError("not a size", field=field, expected=expected, received=repr(text)) from None
    if value != value.to_integral_value():
        raise SpecError("not a whole number of bytes", field=field, expected=expected, received=repr(text))
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError("must be positive", field=field, expected=expected, received=repr(text))
    return int(value)


def parse_margin(text: str) -> float:
    """A percentage, ``10`` or ``10%``, as a fraction in [0, 1).

    >>> parse_margin("10%"), parse_margin("2.5")
    (0.1, 0.025)
    """
    body = str(text).strip().removesuffix("%")
    try:
        percent = float(body)
    except ValueError:
        percent = math.nan
    if not 0 <= percent < 100:
        raise SpecError("not a percentage", field="margin", expected="a number from 0 to below 100, e.g. 10 or 10%",
                        received=repr(text))
    return percent / 100


def block_bytes(nbytes: int) -> int:
    """A request as the CUDA caching allocator allocates it: a multiple of 512 bytes, at least 512.

    >>> block_bytes(0), block_bytes(1), block_bytes(512), block_bytes(513)
    (0, 512, 512, 1024)
    """
    return 0 if nbytes <= 0 else -(-nbytes // BLOCK) * BLOCK


def segment_bytes(nbytes: int) -> int:
    """What a request takes of the reserved segments, packed without fragmentation.

    Below 10 MiB blocks share segments (2 MiB or 20 MiB ones): the block itself. From 10 MiB a
    request gets a segment of its own, rounded up to 2 MiB.

    >>> segment_bytes(1000), segment_bytes(5 * MiB + 1), segment_bytes(10 * MiB + 1) // MiB
    (1024, 5243392, 12)
    """
    block = block_bytes(nbytes)
    return block if block < MIN_LARGE_ALLOC else -(-block // ROUND_LARGE) * ROUND_LARGE


@dataclass(frozen=True)
class Budget:
    """The memory to fit in and what comes off it before the model's tensors."""
    memory_bytes: int                      # --memory, or the accelerator's memory
    target: str                            # "cpu" or "cuda"
    reserve_bytes: int = 0                 # outside the allocator (CUDA context, handles)
    margin: float = 0.0                    # share of memory − reserve held back (fragmentation)
    accelerator: Accelerator | None = None
    workspace_bytes: int = 0               # one cuBLAS workspace (counted in the peak on CUDA)
    comm_reserve_bytes: int = 0            # NCCL's buffers on each rank (CUDA, world size > 1)

    @property
    def margin_bytes(self) -> int:
        return math.ceil((self.memory_bytes - self.reserve_bytes - self.comm_reserve_bytes) * self.margin)

    @property
    def usable_bytes(self) -> int:
        """What the predicted figure must not exceed."""
        return self.memory_bytes - self.reserve_bytes - self.comm_reserve_bytes - self.margin_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"memory_bytes": self.memory_bytes, "target": self.target, "reserve_bytes": self.reserve_bytes,
                "comm_reserve_bytes": self.comm_reserve_bytes,
                "margin_fraction": self.margin, "margin_bytes": self.margin_bytes,
                "blas_workspace_bytes": self.workspace_bytes, "usable_bytes": self.usable_bytes,
                "accelerator": self.accelerator.as_dict() if self.accelerator else None}


def make_budget(*, memory: str | None = None, device: str | None = None, target: str | None = None,
                reserve: str | None = None, margin: str | None = None, comm_reserve: str | None = None,
                world: int = 1) -> Budget:
    """The budget from the command line's strings; errors name the field. ``world`` ranks on a CUDA
    target each set aside ``comm_reserve`` (default :data:`COMM_RESERVE`) for NCCL's buffers."""
    if (memory is None) == (device is None):
        raise SpecError("give exactly one of --memory SIZE or --device NAME", field="memory")
    accelerator = lookup(device) if device is not None else None
    if accelerator is not None and target == "cpu":
        raise SpecError("--device names a GPU; a CPU budget is --memory SIZE --target cpu", field="target",
                        received=repr(target))
    if target is not None and target not in TARGETS:
        raise SpecError("unknown target", field="target", expected=" or ".join(TARGETS), received=repr(target))
    kind = "cuda" if accelerator is not None else (target or "cpu")
    total = accelerator.memory_bytes if accelerator is not None else parse_size(memory, field="memory")
    on_cuda = kind == "cuda"
    nccl = on_cuda and world > 1
    if comm_reserve is not None and not nccl:
        raise SpecError("--comm-reserve is NCCL's share of a CUDA rank's memory", field="comm-reserve",
                        expected="a CUDA target (--device NAME or --target cuda) and --world-size above 1",
                        received=repr(comm_reserve))
    budget = Budget(
        memory_bytes=total, target=kind,
        reserve_bytes=parse_size(reserve, field="reserve", allow_zero=True) if reserve is not None
        else (CONTEXT_RESERVE if on_cuda else 0),
        margin=parse_margin(margin) if margin is not None else (DEFAULT_MARGIN if on_cuda else 0.0),
        accelerator=accelerator, workspace_bytes=blas_workspace_bytes(accelerator) if on_cuda else 0,
        comm_reserve_bytes=(parse_size(comm_reserve, field="comm-reserve", allow_zero=True)
                            if comm_reserve is not None else COMM_RESERVE) if nccl else 0)
    if budget.usable_bytes <= 0:
        raise SpecError("the reserve and margin leave no memory for the model", field="reserve",
                        received=f"reserve {budget.reserve_bytes:,} B, NCCL {budget.comm_reserve_bytes:,} B and "
                                 f"margin {budget.margin_bytes:,} B of {total:,} B")
    return budget


@dataclass(frozen=True)
class Evaluation:
    """The predicted memory of one mode at one batch size."""
    batch: int
    bytes: int                      # the figure compared with the budget
    allocated_bytes: int            # CPU: the peak; CUDA: predicted max_memory_allocated
    reserved_bytes: int | None      # CUDA: predicted max_memory_reserved (== bytes); CPU: None
    at: str                         # where the peak happens
    breakdown: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "bytes": self.bytes, "allocated_bytes": self.allocated_bytes,
                "reserved_bytes": self.reserved_bytes, "at": self.at, "breakdown": dict(self.breakdown)}


def evaluate(spec: ModelSpec, batch: int, budget: Budget, *, mode: str, dtype: str = "float32",
             loss: str = "cross_entropy", amp: str | None = None, threads: int | None = None) -> Evaluation:
    """Predict the figure that is compared with ``budget`` at ``batch`` (see the module docstring)."""
    _check_mode(mode)
    options = {"batch": batch, "dtype": dtype, "loss": loss, "device_kind": budget.target, "amp": amp,
               "optimizers": () if mode == "inference" else (mode,), "threads": threads, "peaks_only": True}
    if budget.target == "cpu":
        peak = _mode_peak(predict(spec, **options), mode)
        return Evaluation(batch, peak.bytes, peak.bytes, None, peak.at, dict(peak.breakdown))
    prediction = predict(spec, footprint=segment_bytes, also=block_bytes, **options)   # one replay, both figures
    reserved = _mode_peak(prediction, mode)
    extra, extra_reserved = _cuda_extras(budget, mode)
    extra["per_tensor_rounding"] = BLOCK * _tensor_blocks(prediction.rows)
    allocated_bytes = max(prediction.also_peaks[key] for key in keys(mode)) + sum(extra.values())
    extra.update(extra_reserved)
    reserved_bytes = reserved.bytes + sum(extra.values())
    return Evaluation(batch, reserved_bytes, allocated_bytes, reserved_bytes, reserved.at,
                      {**reserved.breakdown, **extra})


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise SpecError("unknown mode", field="train", expected=" or ".join(MODES), received=repr(mode))


def _cuda_extras(budget: Budget, mode: str) -> tuple[dict[str, int], dict[str, int]]:
    """What the CUDA figures add to the tensors' peak: (to max_memory_allocated, to
    max_memory_reserved). The cuBLAS workspace is one per handle: autograd's backward thread has
    its own, so training has two."""
    handles = 1 if mode == "inference" else 2
    allocated = {"blas_workspace": handles * block_bytes(budget.workspace_bytes)}
    reserved = {"blas_workspace": handles * segment_bytes(budget.workspace_bytes),
                "shared_segments": SMALL_SEGMENT + LARGE_SEGMENT}
    return allocated, reserved


def module_evaluation(prediction: "MemoryPrediction", batch: int, budget: Budget, mode: str) -> Evaluation:
    """The figure compared with ``budget`` from one full replay of a torch module: its exact peak
    on a CPU target; on CUDA, each block of the replayed timeline rounded as the caching allocator
    rounds it (every tensor is its own block here, so no per-tensor allowance is needed)."""
    peaks = ([prediction.inference] if mode == "inference"
             else [prediction.training[mode], prediction.first_step[mode]])
    worst = max(peaks, key=lambda p: p.bytes)
    at = worst.at if worst is peaks[0] else f"first step: {worst.at}"
    if budget.target == "cpu":
        return Evaluation(batch, worst.bytes, worst.bytes, None, at, dict(worst.breakdown))
    timelines = [prediction.timelines[k] for k in keys(mode)]
    extra_allocated, extra_reserved = _cuda_extras(budget, mode)
    allocated = max(t.peak(block_bytes) for t in timelines) + sum(extra_allocated.values())
    reserved = max(t.peak(segment_bytes) for t in timelines) + sum(extra_reserved.values())
    return Evaluation(batch, reserved, allocated, reserved, at, {**worst.breakdown, **extra_reserved})


def replayed_bytes(timelines: Sequence[Any], budget: Budget, mode: str) -> int:
    """The compared figure from whole replayed timelines (each with ``peak(footprint)``)."""
    if budget.target == "cpu":
        return max(t.peak() for t in timelines)
    return max(t.peak(segment_bytes) for t in timelines) + sum(_cuda_extras(budget, mode)[1].values())


def modelled_bytes(lines: Sequence[LinearTimeline], batch: int, budget: Budget, mode: str, extra: int = 0) -> int:
    """The compared figure at ``batch`` from the lines of a mode's timelines (``extra``: what a
    spec's figure adds besides, its per-tensor rounding on CUDA)."""
    if budget.target == "cpu":
        return max(line.peak(batch) for line in lines)
    return (max(line.peak(batch, segment_bytes) for line in lines) + sum(_cuda_extras(budget, mode)[1].values())
            + extra)


def _mode_peak(prediction: Prediction, mode: str) -> Peak:
    """Inference, or the larger of the steady and the first training step (a loop runs both)."""
    if mode == "inference":
        return prediction.inference
    steady, first = prediction.training[mode], prediction.first_step[mode]
    if first.bytes > steady.bytes:
        return Peak(first.bytes, f"first step: {first.at}", first.breakdown)
    return steady


def _tensor_blocks(rows: Sequence[LayerRow]) -> int:
    """Blocks the memory model counts as one (all parameters; a layer's gradients): an upper bound
    on how many device tensors they are — each trainable tensor twice (weight and gradient) and up
    to three buffers per layer with non-trainable state (BatchNorm's mean, variance and
    num_batches_tracked)."""
    count = 0
    for row in rows:
        if row.type == "Model":   # a nested model's row sums its inner rows, which are counted
            continue
        trainable = len(row.params.tensors) or (1 if row.params.trainable else 0)
        count += 2 * trainable + (3 if row.params.non_trainable else 0)
    return count


@dataclass(frozen=True)
class Fit:
    """The answer: the largest batch that fits (0 when none does) and the evidence around it."""
    model: str
    mode: str
    dtype: str
    loss: str
    budget: Budget
    batch: int
    at_batch: Evaluation | None     # None when nothing fits
    at_next: Evaluation             # batch + 1: over the budget unless the search was capped
    capped: bool                    # MAX_BATCH still fits; larger batches were not tried
    max_batch: int
    predict_calls: int              # spec: predictions; torch module: full fake-tensor replays
    amp: str | None = None          # autocast's dtype (mixed precision), None without
    method: str = "predictions: guesses from a line, proven by neighbours, then bisection"
    notes: tuple[str, ...] = ()

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.at_batch is None else self.budget.usable_bytes - self.at_batch.bytes

    @property
    def headroom_fraction(self) -> float | None:
        return None if self.at_batch is None else self.headroom_bytes / self.budget.usable_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "mode": self.mode, "dtype": self.dtype, "amp": self.amp, "loss": self.loss,
                "target": self.budget.target, "budget": self.budget.as_dict(), "batch": self.batch,
                "fits": self.batch > 0, "capped": self.capped, "max_batch": self.max_batch,
                "peak": self.at_batch.as_dict() if self.at_batch else None, "next": self.at_next.as_dict(),
                "headroom_bytes": self.headroom_bytes, "headroom_fraction": self.headroom_fraction,
                "predict_calls": self.predict_calls, "method": self.method, "notes": list(self.notes),
                "warnings": cpu_isa.warnings(dtype=self.dtype, amp=self.amp, device_kind=self.budget.target)}


def solve(spec: ModelSpec | ModuleSource, budget: Budget, *, mode: str, dtype: str = "float32",
          loss: str = "cross_entropy", max_batch: int = MAX_BATCH, amp: str | None = None,
          threads: int | None = None) -> Fit:
    """The largest batch ``b <= max_batch`` with ``evaluate(b).bytes <= budget.usable_bytes``.

    A spec: doubling from 1 until a batch does not fit, then bisecting: about ``2 log2(b)``
    predictions, each remembered, so ``b + 1`` is usually known already when the search ends.
    A torch module: solved from two replays and proven by two more (:mod:`.module_fit`).
    """
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise SpecError("must be a positive integer", field="max_batch", received=repr(max_batch))
    _check_mode(mode)
    if isinstance(spec, ModuleSource):
        return _solve_module(spec, budget, mode=mode, dtype=dtype, loss=loss, max_batch=max_batch, amp=amp,
                             threads=threads)
    return _solve_spec(spec, budget, mode=mode, dtype=dtype, loss=loss, max_batch=max_batch, amp=amp, threads=threads)


def _solve_spec(spec: ModelSpec, budget: Budget, *, mode: str, dtype: str, loss: str, max_batch: int,
                amp: str | None, threads: int | None) -> Fit:
    """Two traced predictions give every allocation as ``a × batch + c``; the batch solved over
    those lines is proven by predictions at ``b`` and ``b + 1`` (a 10,000-layer spec's fit on a
    GPU took 36 predictions of ~4 s by bisection). When the lines miss: guesses from a line and
    bisection over predictions."""
    seen: dict[int, Evaluation] = {}
    traced = 0
    options = {"dtype": dtype, "loss": loss, "amp": amp, "threads": threads}

    def at(batch: int) -> Evaluation:
        if batch not in seen:
            seen[batch] = evaluate(spec, batch, budget, mode=mode, **options)
        return seen[batch]

    def read(pair: tuple[int, int]) -> Callable[[int], int] | None:
        nonlocal traced
        (rows, steps1), (_, steps2) = (traced_steps(spec, mode, batch=b, device_kind=budget.target, **options)
                                       for b in pair)
        traced += 2
        lines = [LinearTimeline.fit(pair[0], [e[:2] for e in t1.events], pair[1], [e[:2] for e in t2.events])
                 for t1, t2 in zip(steps1, steps2)]
        if None in lines:
            return None
        extra = BLOCK * _tensor_blocks(rows) if budget.target == "cuda" else 0
        return lambda b: modelled_bytes(lines, b, budget, mode, extra)

    method = "predictions: guesses from a line, proven by neighbours, then bisection"
    # a batch b >= 1 proven (b fits, b + 1 does not) needs no prediction at batch 1: 1 fits too
    batch, found, notes = _solve_by_lines(at, read, seen, budget.usable_bytes, max_batch, "predictions")
    if batch:
        method = found
    elif at(1).bytes > budget.usable_bytes:
        batch, notes = 0, []
    else:
        batch = guided_largest_fitting(lambda b: at(b).bytes, budget.usable_bytes, max_batch)
    result = Fit(spec.name, mode, dtype, loss, budget, batch, at(batch) if batch else None, at(batch + 1),
                 batch == max_batch, max_batch, len(seen) + traced, amp, method, tuple(notes))
    _check_monotone(seen)
    return result


def _solve_by_lines(exact: Callable[[int], Evaluation], read: Callable[[tuple[int, int]], Callable[[int], int] | None],
                    seen: dict[int, Evaluation], usable: int, max_batch: int,
                    what: str) -> tuple[int | None, str, list[str]]:
    """The batch solved over lines (``read(pair)``: the figure at any batch from runs at the two
    batches, None when they allocate differently) and proven by ``exact`` at ``b`` and ``b + 1``;
    a guess not proven has the lines read again beside it, :data:`REFITS` times. Returns (batch
    or None, how it was found, notes); ``seen``: the exact figures so far, which bound the search."""
    notes: list[str] = []
    pair = PROBES
    for _ in range(1 + REFITS):
        figure = read(pair)
        if figure is None:
            notes.append(f"the kernels allocate differently at batches {pair[0]} and {pair[1]}: no linear model")
            break
        fitting = [b for b, e in seen.items() if e.bytes <= usable]
        over = [b for b, e in seen.items() if e.bytes > usable]
        guess = largest_fitting(figure, usable, max_batch, lo=max(fitting, default=0), hi=min(over, default=None))
        fits_guess = guess == 0 or exact(guess).bytes <= usable
        over_next = guess == max_batch or exact(guess + 1).bytes > usable
        if fits_guess and over_next:
            return guess, (f"every allocation as a × batch + c from {what} at batches {pair[0]} and {pair[1]}; "
                           f"confirmed by {what} at {guess} and {guess + 1}"), notes
        notes.append(f"lines read at batches {pair[0]} and {pair[1]} gave batch {guess}, which {what} did not "
                     "confirm (the kernels allocate differently at that batch size)")
        pair = (guess, guess + 1) if fits_guess else (max(guess - 1, 1), guess)
        if pair[0] == pair[1] or pair[0] < 1:
            break
    return None, "", notes


def _solve_module(source: ModuleSource, budget: Budget, *, mode: str, dtype: str, loss: str, max_batch: int,
                  amp: str | None, threads: int | None) -> Fit:
    """Two replays give every allocation as ``a × batch + c``; the batch is solved over those lines
    and proven by replays at ``b`` and ``b + 1`` (see :mod:`.module_fit`)."""
    from profiler.planning.module_fit import linear_model, replay

    usable = budget.usable_bytes
    raw: dict[int, MemoryPrediction] = {}
    replays: dict[int, Evaluation] = {}

    def exact(batch: int) -> Evaluation:
        if batch not in replays:
            raw[batch] = replay(source, batch, mode=mode, dtype=dtype, loss=loss, amp=amp, threads=threads,
                                device_kind=budget.target)
            replays[batch] = module_evaluation(raw[batch], batch, budget, mode)
        return replays[batch]

    def read(pair: tuple[int, int]) -> Callable[[int], int] | None:
        for b in pair:
            exact(b)
        lines = linear_model({b: raw[b] for b in pair}, mode)
        return None if lines is None else (lambda b: modelled_bytes(list(lines.values()), b, budget, mode))

    batch, method, notes = _solve_by_lines(exact, read, replays, usable, max_batch, "replays")
    if batch is None:
        fitting = [b for b, e in replays.items() if e.bytes <= usable]
        over = [b for b, e in replays.items() if e.bytes > usable]
        batch = largest_fitting(lambda b: exact(b).bytes, usable, max_batch, lo=max(fitting, default=0),
                                hi=min(over, default=None))
        method = "bisection over full replays"
    at_next = exact(min(batch + 1, max_batch))
    return Fit(source.name, mode, dtype, loss, budget, batch, exact(batch) if batch else None, at_next,
               batch == max_batch, max_batch, len(replays), amp, method, tuple(notes))


def guided_largest_fitting(figure: Callable[[int], int], usable: int, max_batch: int) -> int:
    """:func:`largest_fitting` for figures that are costly and close to linear in the batch (a
    spec's predicted peak): a line through the two points nearest the budget guesses the answer,
    which is then proven by its neighbour (``b`` fits, ``b + 1`` does not); four guesses at most,
    then doubling and bisection between what the guesses proved. A 10,000-layer spec's fit took
    16 predictions by bisection alone; a linear figure takes 4."""
    known: dict[int, int] = {}

    def f(batch: int) -> int:
        if batch not in known:
            known[batch] = figure(batch)
        return known[batch]

    if f(1) > usable:
        return 0
    lo, hi = 1, None
    if max_batch == 1:
        return 1
    if f(2) <= usable:
        lo = 2
    else:
        return 1
    for _ in range(4):
        if lo >= max_batch or (hi is not None and hi - lo <= 1):
            break
        below = [(b, v) for b, v in known.items() if v <= usable]
        above = [(b, v) for b, v in known.items() if v > usable]
        near = sorted(below, key=lambda p: -p[0])[:1] + sorted(above, key=lambda p: p[0])[:1]
        if len(near) < 2:
            near = sorted(known.items(), key=lambda p: -p[0])[:2]
        (b1, v1), (b2, v2) = near
        if b1 == b2 or v1 == v2 or (v2 - v1) * (b2 - b1) <= 0:
            break
        guess = b1 + int((usable - v1) * (b2 - b1) // (v2 - v1))
        guess = max(lo + 1, min(guess, (hi - 1) if hi is not None else max_batch))
        if f(guess) <= usable:
            lo = guess
            if guess < max_batch and f(guess + 1) > usable:
                return guess
            if guess >= max_batch:
                return max_batch
            lo = guess + 1
        else:
            hi = guess
            if guess - 1 > lo and f(guess - 1) <= usable:
                return guess - 1
            if guess - 1 > lo:
                hi = guess - 1
    return largest_fitting(f, usable, max_batch, lo=lo, hi=hi)


def largest_fitting(figure: Callable[[int], int], usable: int, max_batch: int, *, lo: int = 0,
                    hi: int | None = None) -> int:
    """The largest ``b <= max_batch`` with ``figure(b) <= usable`` for a non-decreasing figure
    (0 when batch 1 does not fit): doubling, then bisection. ``lo`` is a batch known to fit (0:
    none known), ``hi`` one known not to: the search stays between them."""
    if lo == 0:
        if hi == 1 or figure(1) > usable:
            return 0
        lo = 1
    if hi is None:
        hi = lo * 2
        while hi <= max_batch and figure(hi) <= usable:
            lo, hi = hi, hi * 2
        if hi > max_batch:
            if figure(max_batch) <= usable:
                return max_batch
            hi = max_batch
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if figure(mid) <= usable else (lo, mid)
    return lo


def _check_monotone(seen: dict[int, Evaluation]) -> None:
    ordered = [seen[b] for b in sorted(seen)]
    for smaller, larger in zip(ordered, ordered[1:]):
        if larger.bytes < smaller.bytes:
            raise RuntimeError(f"predicted memory is not monotone in the batch: {smaller.bytes} B at batch "
                               f"{smaller.batch}, {larger.bytes} B at batch {larger.batch} (a bug in the memory model)")


# Verification: build the model and measure it at the solved batch and the next one.

#: A CPU measurement is not started when its predicted peak exceeds this share of the RAM available:
#: the operating system's out-of-memory killer would end the process rather than raise an error.
CPU_RAM_SHARE = 0.8


@dataclass(frozen=True)
class Check:
    """One measurement against the budget."""
    batch: int
    predicted_bytes: int
    measured_bytes: int | None = None           # the figure comparable with predicted_bytes
    measured_allocated_bytes: int | None = None
    does_not_fit: str | None = None             # the measurement ran out of memory
    skipped: str | None = None                  # not measured, and why

    def within(self, budget_bytes: int) -> bool | None:
        """Whether it fitted: None when not measured; False when it ran out of memory."""
        if self.skipped:
            return None
        if self.does_not_fit:
            return False
        return self.measured_bytes <= budget_bytes

    def as_dict(self, budget_bytes: int) -> dict[str, Any]:
        return {"batch": self.batch, "predicted_bytes": self.predicted_bytes, "measured_bytes": self.measured_bytes,
                "measured_allocated_bytes": self.measured_allocated_bytes, "does_not_fit": self.does_not_fit,
                "skipped": self.skipped, "within_budget": self.within(budget_bytes)}


@dataclass(frozen=True)
class Verification:
    device: str
    figure: str                     # what was measured: "peak" (CPU) or "max_memory_reserved" (CUDA)
    budget_bytes: int
    at_batch: Check | None          # None when nothing fits (no batch to check)
    at_next: Check

    @property
    def fits_at_batch(self) -> bool | None:
        return True if self.at_batch is None else self.at_batch.within(self.budget_bytes)

    @property
    def over_at_next(self) -> bool | None:
        within = self.at_next.within(self.budget_bytes)
        return None if within is None else not within

    @property
    def held(self) -> bool | None:
        """Measured within the budget at the batch and over it at the next one (None: not measured)."""
        if self.fits_at_batch is None or self.over_at_next is None:
            return None
        return self.fits_at_batch and self.over_at_next

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "figure": self.figure, "budget_bytes": self.budget_bytes,
                "at_batch": self.at_batch.as_dict(self.budget_bytes) if self.at_batch else None,
                "next": self.at_next.as_dict(self.budget_bytes), "fits_at_batch": self.fits_at_batch,
                "over_at_next": self.over_at_next, "held": self.held}


def verify(spec: ModelSpec, fit: Fit, isolate_from: dict[str, Any] | None = None) -> Verification:
    """Measure the solved mode only, on the budget's kind of device, at ``batch`` and ``batch + 1``.

    A measurement that runs out of memory counts as "does not fit". On the CPU a measurement whose
    predicted peak exceeds :data:`CPU_RAM_SHARE` of the available RAM is skipped, not attempted.
    ``isolate_from``: each measurement in a child process (``workflow.measure``), so that one
    killed by the kernel is a "does not fit" row and the other still runs.
    """
    from profiler.measuring.devices import get_device

    device = get_device(fit.budget.target)   # "cuda" raises a one-line DeviceError without a GPU
    checks = [_measure(spec, fit, evaluation, device, isolate_from) for evaluation in (fit.at_batch, fit.at_next)
              if evaluation is not None]
    return Verification(device.name, "peak" if fit.budget.target == "cpu" else "max_memory_reserved",
                        fit.budget.usable_bytes, checks[0] if fit.at_batch else None, checks[-1])


def _measure(spec: ModelSpec, fit: Fit, evaluation: Evaluation, device,
             isolate_from: dict[str, Any] | None = None) -> Check:
    import psutil

    from profiler.measuring.devices import DoesNotFit
    from profiler.workflow import measure

    batch = evaluation.batch
    if device.name == "cpu":
        available = psutil.virtual_memory().available
        if evaluation.bytes > CPU_RAM_SHARE * available:
            return Check(batch, evaluation.bytes,
                         skipped=f"needs {evaluation.bytes:,} B; {available:,} B of RAM available")
    try:
        measured, _ = measure(spec, batch=batch, dtype=fit.dtype, loss=fit.loss, device=device.name, warmup=0,
                              repeats=1, threads=None, optimizers=() if fit.mode == "inference" else (fit.mode,),
                              amp=fit.amp, predicted_peak=evaluation.bytes, isolate_from=isolate_from,
                              layer_repeats=0)   # per-module timing's dispatch mode may allocate more
    except DoesNotFit as error:
        return Check(batch, evaluation.bytes, does_not_fit=str(error))
    finally:
        _release(device.name)
    if fit.mode == "inference":
        allocated = measured["inference_peak_bytes"]
    else:   # the larger of the steady and the first step, as predicted
        allocated = max(measured[f"train_peak_bytes_{fit.mode}"], measured[f"train_first_step_peak_bytes_{fit.mode}"])
    compared = allocated if device.name == "cpu" else measured["max_memory_reserved_bytes"]
    return Check(batch, evaluation.bytes, compared, allocated)


def _release(device: str) -> None:
    """Free what a measurement left cached, so the next one starts from the same place."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch
        torch.cuda.empty_cache()
