"""Exact CPU memory measurement, at two levels.

The CPU has no allocator statistics like CUDA's ``max_memory_allocated``, and the process RSS says
nothing useful about one step (pages are reused, returned late, or never touched). Two exact
methods replace it:

- :func:`allocator_peak` records every allocation and free of the c10 CPU allocator with the
  PyTorch profiler (``profile_memory=True``), replays them in time order and returns the highest
  point above what was alive before. It sees everything a kernel allocates, temporaries inside the
  kernel included: it is the CPU counterpart of ``max_memory_allocated``.
- :class:`TensorTracker` is a dispatch mode that sees every tensor an operator returns, counts each
  new storage once and subtracts it when the storage is freed. It misses what kernels allocate and
  free internally, but it knows which phase and which module created each tensor. The difference
  between the two peaks is the kernels' workspace.

Both see the backward pass: autograd runs CPU backward operators on the calling thread with the
caller's profiler and dispatch-mode state.

A caller that wants to know *what* was alive at the allocator's peak, not only how much, opens a
:func:`capture` around a call that reaches :func:`allocator_peak` (a device's ``peak``): the
profile's event tree, allocations with their addresses and the operators around them, is filed
with it (``profiler.measuring.peak_breakdown`` reads it).
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import sys
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.engine.module_scope import OUTSIDE, ROOT   # the labels of per-module figures
from profiler.engine.op_cost import tensors_in_tree
from profiler.timeline import compact

MEMORY_EVENT = "[memory]"           # name the profiler gives allocation and free events


@dataclass(frozen=True)
class AllocatorPeak:
    """Allocator bytes relative to what was alive before the function ran."""
    peak_bytes: int   # highest prefix sum of allocations minus frees (0 if it never rose)
    net_bytes: int    # allocated minus freed at the end
    events: int       # allocation and free events replayed
    timeline: dict[str, Any] | None = None   # the running total, compact (profiler.timeline)


@dataclass
class Capture:
    """The profile of the next :func:`allocator_peak` run inside :func:`capture`.

    With ``reduce``, the run is profiled in parts (:func:`cut` ends one and starts the next) and
    each part's event tree is handed to ``reduce`` as soon as it ends; ``parts`` keeps what it
    returned, in order, and no whole-run tree is filed.
    """
    record_shapes: bool = False        # record operators' inputs too (which tensor a cast copies)
    events: list[Any] = field(default_factory=list)   # the profile's event tree (its roots)
    filed: bool = False                # whether a profiled run filed its events here
    reduce: Callable[[list[Any]], "Part"] | None = None   # one part's event tree -> what is kept of it
    parts: list["Part"] = field(default_factory=list)     # reduce's results, part by part


class Part(Protocol):
    """What a capture's ``reduce`` keeps of one part of a run profiled in parts."""

    def deltas(self) -> list[int]:
        """Bytes allocated (> 0) or freed (< 0) by the measured device's allocator, in time order
        (same-time events in their recorded order): what :func:`allocator_peak` replays."""


_CAPTURE: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("modelsize_capture", default=None)


#: the profiled run in parts going on, if any: what :func:`cut` restarts
_PARTS: contextvars.ContextVar["_Parts | None"] = contextvars.ContextVar("modelsize_parts", default=None)


@contextlib.contextmanager
def capture(*, record_shapes: bool = False,
            reduce: Callable[[list[Any]], "Part"] | None = None) -> Iterator[Capture]:
    """File the event tree of the :func:`allocator_peak` run inside the block (the last one, if several).

    A device whose ``peak`` does not replay the profiler's events (CUDA reads its allocator's
    statistics) files nothing; :func:`profiled` runs a function under the profiler for it.
    ``reduce``: profile in parts and keep only what it makes of each (see :class:`Capture`).
    """
    taken = Capture(record_shapes=record_shapes, reduce=reduce)
    token = _CAPTURE.set(taken)
    try:
        yield taken
    finally:
        _CAPTURE.reset(token)


def allocator_peak(fn: Callable[[], object], baseline_bytes: int = 0) -> AllocatorPeak:
    """Run ``fn`` once under the profiler and replay the CPU allocator's events in time order.

    Each ``[memory]`` event carries the bytes allocated (positive) or freed (negative); frees of
    tensors alive before ``fn`` make the running sum go below zero, which is right: the peak is
    measured from what was alive at the start. But such a free is reported only if its block was
    allocated while memory profiling was on: the CPU allocator records block sizes only then, and
    otherwise logs "Memory block of unknown size was allocated before the profiling started" and
    reports nothing. So whatever ``fn`` may free must have been created under the profiler too
    (the runner creates gradients and optimizer state in profiled steps); a gradient made by an
    unprofiled warm-up step and freed by ``zero_grad(set_to_none=True)`` would otherwise never be
    subtracted, and the peak would be too high by its size.

    ``baseline_bytes``: what was alive before, where the compact ``timeline`` starts.
    """
    taken = _CAPTURE.get()
    if taken is None:   # nobody reads the operators: the allocator's events alone, in parts
        taken = Capture(reduce=_memory_deltas)
        _Parts(taken, scopes=_NO_EAGER_SCOPE, read="events").run(fn)
        deltas = [delta for part in taken.parts for delta in part.deltas()]
    elif taken.reduce is not None:   # profiled in parts: each part's own events
        profiled(fn)
        deltas = [delta for part in taken.parts for delta in part.deltas()]
    else:
        deltas = _memory_deltas(_raw_events(profiled(fn))).deltas()
    current = peak = 0
    for delta in deltas:
        current += delta
        peak = max(peak, current)
    return AllocatorPeak(peak_bytes=peak, net_bytes=current, events=len(deltas),
                         timeline=compact(deltas, baseline=baseline_bytes))


def profiled(fn: Callable[[], object]) -> profile | None:
    """Run ``fn`` once under the profiler, memory events on; file the event tree if capturing.

    A capture with ``reduce`` profiles in parts (returns None): see :class:`_Parts`.
    """
    taken = _CAPTURE.get()
    if taken is not None and taken.reduce is not None:
        _Parts(taken, scopes=_OPERATOR_SCOPE, read="experimental_event_tree").run(fn)
        return None
    shapes = taken is not None and taken.record_shapes
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                            record_shapes=shapes) as prof:
        fn()
    if taken is not None:
        taken.events = _event_tree(prof)
        taken.filed = True
    return prof


class _Parts:
    """One run profiled as consecutive profiler sessions, each reduced as soon as it ends.

    Why: a whole training step's profile of a deep model is large (a 10,000-layer Dense step:
    ~1.5 million events, ~2.1 KiB each while the profiler holds them and they are read; ~2 KiB
    per event of the allocator's alone); a part holds one phase's, or less
    (:class:`PartMarks`). Nothing is lost between parts: a session stops and the next starts in
    the caller's thread with no operator between them, and the CPU allocator keeps the sizes of
    blocks allocated under any session, so a free in a later part is reported. Parts are
    consecutive in time, so their allocator events, each part's in time order, follow each other
    as one session's would.

    The sessions record the operators and ranges of ``scopes`` only, and ``read`` names what is
    reduced of each (``kineto_results.<read>()``). A part must not end inside an operator or range
    it records: one that ends after its session would write into that session's freed events (a
    crash). The breakdown's parts record the operators' scope alone: what the breakdown reads of a
    run in parts (operators, the Annotator's ranges) is in it, and the user's ranges
    (``record_function``: the optimizer's step and zero_grad are in one, and a part may end inside
    them) are not; nor are autograd's node ranges (~5 of backward's 44 events per Dense layer;
    its part at 2,000 layers: +84 -> +74 MB while post-processed). The distributed ranks, which
    read user ranges (FSDP's, a backend's work), profile their run whole. The allocator's events
    alone record no scope an eager operator has.
    """

    def __init__(self, taken: Capture, *, scopes: set[Any], read: str):
        self._taken = taken
        self._scopes = scopes
        self._read = read
        self._on = False

    def run(self, fn: Callable[[], object]) -> None:
        self._taken.parts = []
        token = _PARTS.set(self)
        try:
            with _native_stderr_silenced():
                self._start()
                try:
                    fn()
                finally:
                    self._stop()
        finally:
            _PARTS.reset(token)
        self._taken.filed = True

    def cut(self) -> None:
        self._stop()
        self._start()

    def _start(self) -> None:
        _start_session(record_shapes=self._taken.record_shapes, scopes=self._scopes)
        self._on = True

    def _stop(self) -> None:
        if not self._on:
            return
        self._on = False
        read = _kineto(_stop_session(), self._read)   # the session's results go with this frame
        assert self._taken.reduce is not None
        self._taken.parts.append(self._taken.reduce(read))
        del read
        _trim()


@dataclass(frozen=True)
class _Deltas:
    """A part of a run whose allocator events alone were recorded (:class:`Part`)."""
    values: list[int]

    def deltas(self) -> list[int]:
        return self.values


def _memory_deltas(events: list[Any]) -> _Deltas:
    """The CPU allocator's bytes in ``events`` (a session's ``events()``), in time order (stable:
    same-time events keep their recorded order)."""
    memory = [e for e in events if e.name() == MEMORY_EVENT and e.device_type() == DeviceType.CPU]
    memory.sort(key=lambda e: e.start_ns())
    return _Deltas([e.nbytes() for e in memory])


def _trim() -> None:
    """Hand the freed pages of a part's profile back to the system (glibc's ``malloc_trim``):
    what the next part records would not reuse all of them, and the process's peak RSS would
    grow with each part. Elsewhere nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):   # not glibc
        pass


def cut() -> None:
    """End the part of a run profiled in parts and start the next (nothing outside one): call it
    where no profiler range is open (the runner's phase marks)."""
    parts = _PARTS.get()
    if parts is not None:
        parts.cut()


#: calls into C made by torch.optim's code between two parts inside the optimizer's phase
#: (:class:`PartMarks`): in Adam's update such a part holds ~22,000 allocations and frees and their
#: operators, +60-80 MB while the profiler post-processes it (measured, whatever the depth)
CALLS_PER_PART = 10_000
SPLIT_PHASE = "optimizer"
OPTIMIZER_CODE = os.path.dirname(torch.optim.__file__) + os.sep


class PartMarks:
    """Where a run profiled in parts ends a part: at each phase mark, and inside the optimizer's
    phase every :data:`CALLS_PER_PART` calls of a C function (an operator's binding among them)
    made by torch.optim's code. Outside a run in parts, nothing.

    Why inside: the optimizer's phase of a deep model's first Adam step is the largest (~124
    profiler events per Dense layer against 18 in forward and 44 in backward; ~1.24 million at
    10,000 layers, ~2.6 GB while post-processed), and no hook runs inside ``optimizer.step()``.
    Python's profile hook (``sys.setprofile``, this thread) sees each such call before it runs;
    torch.optim's code runs outside every operator and module call. Nothing a tensor allocates
    changes. Not while another profile hook is set (a Python profiler's).

    ``split`` ends a part inside the phase (the Annotator closes its phase's range around it).
    """

    def __init__(self, split: Callable[[], None] | None = None):
        self._split = split or cut
        self._inside = contextlib.ExitStack()

    def mark(self, phase: str | None, *, cut_here: bool = True) -> None:
        """A phase starts (``None``: the last one ended); ``cut_here``: outside every module
        call, where a part may end (the caller closed what it had open)."""
        self._inside.close()
        if cut_here:
            cut()
        if cut_here and phase == SPLIT_PHASE and _PARTS.get() is not None and sys.getprofile() is None:
            self._inside.enter_context(_cuts_between_calls(self._split))

    def close(self) -> None:
        self._inside.close()


@contextlib.contextmanager
def _cuts_between_calls(split: Callable[[], None]) -> Iterator[None]:
    count, every = 0, CALLS_PER_PART

    def hook(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event == "c_call" and frame.f_code.co_filename.startswith(OPTIMIZER_CODE):
            count += 1
            if count >= every:
                count = 0
                split()

    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(None)


def _start_session(*, record_shapes: bool, scopes: set[Any]) -> None:
    """Start a CPU profiler session with memory events, recording only operators and ranges of
    ``scopes``: what ``torch.profiler.profile`` does (private entry points), with its scopes."""
    try:
        from torch._C._profiler import ProfilerConfig, ProfilerState, _ExperimentalConfig
        from torch.autograd import _enable_profiler, _prepare_profiler
        config = ProfilerConfig(ProfilerState.KINETO, record_shapes, True, False, False, False,
                                _ExperimentalConfig(), "")
    except (ImportError, AttributeError, TypeError) as err:   # another torch version's layout
        raise RuntimeError(f"torch {torch.__version__}: the profiler's entry points are not where "
                           "profiler.measuring.memory_trace expects them") from err
    activities = {ProfilerActivity.CPU}
    _prepare_profiler(config, activities)
    _enable_profiler(config, activities, scopes)


def _stop_session() -> Any:
    """End the session :func:`_start_session` started: its results (``_kineto`` reads them)."""
    from torch.autograd import _disable_profiler
    return _disable_profiler()


#: what runs in parts record (see :class:`_Parts`): the breakdown's (operators, the Annotator's
#: ranges), and the allocator's events
#: alone (callbacks registered for a scope no eager operator has, the lite interpreter's: the same
#: allocations and frees in the same order, ~56 events per Dense layer in Adam's first step
#: instead of ~190)
_OPERATOR_SCOPE = {torch._C._profiler.RecordScope.FUNCTION}
_NO_EAGER_SCOPE = {torch._C._profiler.RecordScope.LITE_INTERPRETER}


@contextlib.contextmanager
def _native_stderr_silenced():
    """Kineto prints a "profiler_start/stop" line to the C-level stderr on every run; hide it.

    Python exceptions are unaffected (they are raised, not written, inside the block).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):   # no real stderr (e.g. captured): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _kineto(results: Any, method: str) -> list[Any]:
    """``results.<method>()`` as a list, ``results`` a session's (``prof.profiler.kineto_results``):
    a private layout, checked once here."""
    try:
        return list(getattr(results, method)())
    except AttributeError as err:   # the private layout moved in another torch version
        raise RuntimeError(f"torch {torch.__version__}: the profiler's results are not where "
                           f"profiler.measuring.memory_trace expects them (kineto_results.{method})"
                           ) from err


def _raw_events(prof: profile) -> list[Any]:
    return _kineto(getattr(prof.profiler, "kineto_results", None), "events")


def _event_tree(prof: profile) -> list[Any]:
    """The roots of the profile's event tree (operators, ranges, allocations, nested by thread)."""
    return _kineto(getattr(prof.profiler, "kineto_results", None), "experimental_event_tree")


@dataclass
class _Live:
    nbytes: int
    phase: str
    module: str


class TensorTracker(TorchDispatchMode):
    """Live bytes of tensor storages, with the phase and module that created each one.

    ``alive`` lists tensors that exist before tracking starts (parameters, gradients, optimizer
    state, inputs): their storages are counted in the baseline and subtracted when freed, so
    ``current_bytes`` and ``peak_bytes`` are absolute tensor-level figures comparable with an
    allocator peak that counts everything alive. A storage returned by an operator is new unless it
    is already known or belongs to one of the operator's inputs (views, in-place results).

    The current module is the innermost one whose forward is running, followed with the *global*
    module hooks: per-module hooks would change code paths (``TransformerEncoderLayer`` leaves its
    fast path when a module has hooks). The runner names phases with :meth:`set_phase`; leaving a
    phase records what it created that is still alive (``retained``), which for the forward pass is
    what autograd saved for backward plus the output.

    What it cannot see: kernel-internal buffers (a fused operator such as
    ``_transformer_encoder_layer_fwd`` shows only its output), and tensors made by ``torch.tensor``
    (its constructor skips the Python dispatch key; Adam's 4-byte ``step`` tensors are one case).
    And a dispatch mode changes a run a little: scalar arguments are wrapped in small tensors, and
    composite operators and autograd take their out-of-place branches (``linear`` adds its bias out
    of place, gradient accumulation is out of place), so compare it with an allocator peak of the
    same tracked run.
    """

    def __init__(self, root: torch.nn.Module | None = None, alive: Iterable[torch.Tensor] = (),
                 phase: str | None = "forward"):
        super().__init__()
        # A dispatch mode's first __torch_dispatch__ imports torch._dynamo (torch wraps it with
        # _disable_dynamo): not inside the tracked call, where the import's caught exceptions would
        # hold the frames of the module calls running, and their tensors, in reference cycles
        # until the next collection (paused there). torch.profiler.profile imports it too.
        import torch._dynamo  # noqa: F401
        self._names: dict[int, str] = {}
        if root is not None:
            self._names = {id(m): (name or ROOT) for name, m in root.named_modules()}
        self._live: dict[int, _Live] = {}
        # a weak reference per storage whose callback subtracts it (dropping the reference stops
        # it: cheaper than weakref.finalize, ~16 µs each on a deep model's 20,000 storages)
        self._finalizers: list[weakref.ref] = []
        self._stack: list[torch.nn.Module] = []
        self._hooks: list[Any] = []
        self.phase = phase
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_phase = phase
        #: phase → module → bytes of the storages created there
        self.created: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        #: phase → module → bytes created in that phase and still alive when it ended
        self.retained: dict[str, dict[str, int]] = {}
        # Registered now and not kept: a reference held here would keep a gradient alive that
        # zero_grad(set_to_none=True) is meant to free.
        self._seed(alive)
        self.baseline_bytes = self.peak_bytes = self.current_bytes

    def _seed(self, alive: Iterable[torch.Tensor]) -> None:
        for tensor in alive:
            storage = _storage(tensor)
            if storage is not None and id(storage) not in self._live:
                self._add(storage, count=False)

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> "TensorTracker":
        self.baseline_bytes = self.peak_bytes = self.current_bytes
        self._hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._enter_module),
            torch.nn.modules.module.register_module_forward_hook(self._leave_module,
                                                                 always_call=True),
        ]
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.set_phase(None)
        self.close()

    def close(self) -> None:
        """Stop counting frees (storages outlive the tracker); ``__exit__`` calls it."""
        self._finalizers = []

    def set_phase(self, phase: str | None) -> None:
        """Start a new phase (``None`` ends the current one); records what the old one retained."""
        if phase == self.phase:
            return
        if self.phase is not None:
            self.retained[self.phase] = self.live_created_in(self.phase)
        self.phase = phase

    def live_created_in(self, phase: str) -> dict[str, int]:
        """Module → bytes of storages created in ``phase`` that are alive now."""
        out: dict[str, int] = defaultdict(int)
        for live in self._live.values():
            if live.phase == phase:
                out[live.module] += live.nbytes
        return dict(out)

    def created_in(self, phase: str) -> dict[str, int]:
        return dict(self.created.get(phase, {}))

    # -- module stack ------------------------------------------------------------------------
    def _enter_module(self, module: torch.nn.Module, args: object) -> None:
        self._stack.append(module)

    def _leave_module(self, module: torch.nn.Module, args: object, output: object) -> None:
        while self._stack:
            if self._stack.pop() is module:
                break

    def _module_label(self) -> str:
        if not self._stack:
            return OUTSIDE
        module = self._stack[-1]
        return self._names.get(id(module)) or f"({type(module).__name__})"

    # -- storages ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {id(s) for s in map(_storage, tensors_in_tree((args, kwargs))) if s is not None}
        for tensor in tensors_in_tree(out):
            storage = _storage(tensor)
            if storage is None or id(storage) in inputs:
                continue
            known = self._live.get(id(storage))
            if known is None:
                self._add(storage, count=True)
            elif known.nbytes != storage.nbytes():   # resized in place (out= variants)
                self._change(known.nbytes, storage.nbytes())
                known.nbytes = storage.nbytes()
        return out

    def _add(self, storage: torch.UntypedStorage, *, count: bool) -> None:
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        key = id(storage)
        module = self._module_label() if count else "(alive before)"
        phase = (self.phase or "(no phase)") if count else "(alive before)"
        self._live[key] = _Live(nbytes, phase, module)
        self._finalizers.append(weakref.ref(storage, lambda _, key=key: self._free(key)))
        if count:
            self.created[phase][module] += nbytes
        self._change(0, nbytes)

    def _free(self, key: int) -> None:
        live = self._live.pop(key, None)
        if live is not None:
            self._change(live.nbytes, 0)

    def _change(self, old: int, new: int) -> None:
        self.current_bytes += new - old
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_phase = self.phase


def _storage(tensor: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage, or ``None`` for tensors without one (sparse, nested, meta)."""
    if tensor.device.type == "meta":
        return None
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
