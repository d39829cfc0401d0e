"""Predicted memory of an inference pass and of a training step, by replaying allocations.

The model is a small allocator simulation: every tensor the real run would create is allocated
and freed in the order PyTorch does it, and the peak of live bytes is read off, with what was
alive at that moment split by category and by dtype. The definitions are those the runner
measures (``profiler.measuring.runner``): a peak counts everything alive (parameters, buffers, inputs,
targets, gradients, optimizer state), and a training step is the steady-state step
``zero_grad(set_to_none=True); out = model(x); loss = loss_fn(out, y); loss.backward(); opt.step()``.

Mixed precision (``Setting.amp``, PyTorch's recipe): float32 master weights; the forward pass
and the loss run under ``torch.autocast``. Matmuls and convolutions (``Op.autocast ==
"lower"``) cast their floating inputs to the low-precision dtype (a new tensor per input and
call, kept when autograd saves it) and their weights too: autocast caches the cast of each
trainable weight for the whole autocast region, so a weight is cast once, at its first use,
and the copy lives until the region exits (after the loss), or until that op's backward when
autograd saves it. Layers that run in autocast's dtype throughout (recurrent cells, attention:
``Op.weight_casts``) cast their weights themselves, once per call: those casts die with the call
unless kept for backward. Ops on autocast's float32 list cast to float32 (the losses); every other op
runs in its inputs' dtype. In backward each cast becomes a ``ToCopyBackward`` node: the
low-precision gradient of a weight is cast to a float32 gradient (then freed), so gradients and
optimizer state stay float32.

Activation checkpointing (``Op.checkpoint``, ``torch.utils.checkpoint.checkpoint(fn, x,
use_reentrant=False)``): a checkpointed call keeps for backward only its inputs and the CPU
generator's state (``RNG_STATE_BYTES``); nothing its ops save is kept. When backward reaches
the call's last op, the call's forward runs again (under the saved generator state, itself a
fork of the current state) and stops as soon as everything the ops save exists again; those
saved tensors then live until their op's backward, as usual. The inputs and the state are let
go once the call's first op has had its backward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from profiler.dtypes import itemsize
from profiler.engine.optimizers import get as optimizer_model
from profiler.rules.registry import Memory, Saved
from profiler.timeline import compact

#: What each byte of a peak is: "temporaries" are tensors an op or the optimizer makes and drops
#: (the loss's gradients, optimizer scratch), "workspace" is what kernels allocate inside (rules'
#: scratch, oneDNN scratchpads): the part a tensor-level view cannot see; "communication" is what a
#: process group's collectives allocate inside (gloo's staging copies, FSDP2's padding copies of
#: the reduce-scatter input), zero on one device.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "inputs", "activations", "weight_casts",
              "temporaries", "communication", "workspace")
from profiler.step import LOSSES  # noqa: F401  (what the spec replay models)
FLOATING = ("float32", "float16", "bfloat16", "float64")
REDUCED = ("float16", "bfloat16")

#: ``torch.get_rng_state()`` on the CPU: the Mersenne Twister generator's state as a uint8 tensor.
#: Non-reentrant checkpointing saves one per checkpointed call (``preserve_rng_state=True``) and
#: forks another while it recomputes.
RNG_STATE_BYTES = 5056


@dataclass(frozen=True)
class Op:
    """One tensor operation of the forward pass, as the memory model sees it (batch included).

    Values are named: ``inputs`` are the names of the tensors the op reads (model inputs or
    earlier ops' outputs) and ``output`` the name of the tensor it makes.
    """
    name: str
    inputs: tuple[str, ...]
    output: str
    in_elements: tuple[int, ...]       # elements of each input
    out_elements: int
    out_is_view: bool = False          # output shares its (first) input's storage
    view_grad_new: bool = False        # a view whose backward makes its input's whole gradient (a
    #                                    step picked from a sequence: zeros, then the step's gradient)
    identity_in_eval: bool = False     # returns its input unchanged in eval mode (Dropout)
    saved: tuple[Saved, ...] = ()      # kept for backward when autograd records the op
    param_bytes: int = 0               # trainable parameters (their gradients have the same size)
    param_tensors: tuple[int, ...] = ()  # bytes of each trainable parameter tensor (weight first)
    fused: bool = False                # runs inside the previous op's layer (a fused activation)
    layer: str = ""                    # the spec layer this op belongs to
    grad_passthrough: bool = False     # input gradients are the output gradient itself (Add, views)
    holds_only: bool = False           # no computation: the caller's frame holds ``inputs`` until here
    scratch: tuple[Saved, ...] = ()            # forward temporaries, freed before the op returns
    backward_scratch: tuple[Saved, ...] = ()   # backward temporaries, likewise
    # in training, forward temporaries made beside the tensors the op saves (None: ``scratch``,
    # made before them); backward temporaries added only when an input needs a gradient
    training_scratch: tuple[Saved, ...] | None = None
    input_grad_scratch: tuple[Saved, ...] = ()
    gradients_last: bool = False       # backward scratch is the node's worst moment, the gradients it
    #                                    makes on the way included: they are allocated after it
    reduced_scratch: tuple[Saved, ...] = ()   # forward temporaries instead of ``scratch`` when the op
    #                                    computes in bfloat16 or float16 (a kernel that upcasts)
    grads_strided: bool = False        # its inputs' gradients are strided slices of its output's (a
    #                                    Concatenate along an inner axis)
    dense_grad: bool = False           # its backward copies a strided incoming gradient (Embedding)
    weight_casts: tuple[str, ...] = ()   # a "lower" op that casts its own weights once per call, per
    #   trainable tensor: "" (not cast), "call" (held by the call), "kept" (kept for backward),
    #   "kept_for_input_grad" (kept when an input needs a gradient); () for autocast's cache
    weights: str = ""                  # whose parameters the op uses (the layer's first call)
    shared_call: bool = False          # a later call of a shared layer: its weights are counted already
    # -- mixed precision, kernels, checkpointing ---------------------------------------------
    autocast: str = ""                 # "lower" (matmul, conv), "float32" (autocast's fp32 list),
    #                                    "promote" (cat: inputs cast to the widest dtype), ""
    saves_weight: str = ""             # a "lower" op's weight kept for backward: "always" (conv) or
    #                                    "for_input_grad" (matmul: only when an input needs a gradient)
    frozen_tensors: tuple[int, ...] = ()  # bytes of each non-trainable weight a "lower" op casts per call
    matmul: tuple[int, int, int] = ()  # (rows, in_features, out_features) of a linear layer's matmul
    checkpoint: str = ""               # the checkpointed call the op belongs to ("" when none)
    # -- recurrent states ----------------------------------------------------------------------
    state_grads: tuple[int, ...] = ()  # inputs whose gradients backward makes among its scratch (initial
    #                                    states): when they need one, that part of the scratch is it
    cell_value: str = ""               # a second output (an LSTM's last cell state): made among the
    cell_elements: int = 0             # scratch in inference (``cell_elements``, before it), a view of
    cell_saved: int = 0                # saved tensor ``cell_saved`` when training records the op


@dataclass(frozen=True)
class Peak:
    """The largest number of bytes alive at once, when it happened and what made it up.

    ``breakdown`` is by category (``CATEGORIES``), ``by_dtype`` by the dtype of each tensor.
    """
    bytes: int
    at: str
    breakdown: dict[str, int]
    by_dtype: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"bytes": self.bytes, "at": self.at, "breakdown": dict(self.breakdown)}
        if self.by_dtype:
            out["by_dtype"] = dict(self.by_dtype)
        return out


class Timeline:
    """Allocations and frees in program order; remembers the peak and its make-up.

    With ``trace`` on, ``events`` lists every (key, ±bytes, dtype, phase) in order: the same
    sequence the CPU allocator's profiler events give for a real run, to compare them one by one.
    """

    def __init__(self, footprint: Callable[[int], int] | None = None, *, trace: bool = False,
                 also: Callable[[int], int] | None = None) -> None:
        """``footprint``: what the allocator sets aside for a request (CUDA rounds up; CPU: exact).
        ``also``: a second footprint, of which only the peak's bytes are kept (``also_peak``), so
        that one replay gives both (``planning.fit``: CUDA's allocated and reserved figures)."""
        self.footprint = footprint
        self.also = also
        self.also_live: dict[str, int] = {}
        self.also_current = self.also_peak = 0
        self.live: dict[str, tuple[str, int, str]] = {}
        self.by_category = {c: 0 for c in CATEGORIES}
        self.by_dtype: dict[str, int] = {}
        self.current = 0
        self.phase = "start"
        self.peak = Peak(0, self.phase, dict(self.by_category))
        self.events: list[tuple[str, int, str, str]] | None = [] if trace else None

    def alloc(self, key: str, nbytes: int, category: str, dtype: str) -> None:
        if key in self.live:
            raise KeyError(f"{key} is allocated twice")
        if self.also is not None:
            self.also_live[key] = also = self.also(nbytes)
            self.also_current += also
            self.also_peak = max(self.also_peak, self.also_current)
        if self.footprint is not None:
            nbytes = self.footprint(nbytes)
        self.live[key] = (category, nbytes, dtype)
        self.by_category[category] += nbytes
        self.by_dtype[dtype] = self.by_dtype.get(dtype, 0) + nbytes
        self.current += nbytes
        if self.events is not None:
            self.events.append((key, nbytes, dtype, self.phase))
        if self.current > self.peak.bytes:
            self.peak = Peak(self.current, self.phase, dict(self.by_category),
                             {d: n for d, n in self.by_dtype.items() if n})

    def free(self, key: str) -> None:
        category, nbytes, dtype = self.live.pop(key)
        if self.also is not None:
            self.also_current -= self.also_live.pop(key)
        self.by_category[category] -= nbytes
        self.by_dtype[dtype] -= nbytes
        self.current -= nbytes
        if self.events is not None:
            self.events.append((key, -nbytes, dtype, self.phase))

    def note(self, phase: str) -> None:
        """Label what happens next (shown as where the peak was)."""
        self.phase = phase

    def compact(self) -> dict[str, Any]:
        """The traced events as a compact timeline (:mod:`profiler.timeline`), from the baseline the
        events before the first label build (parameters, inputs, what the step before left)."""
        if self.events is None:
            raise ValueError("a timeline traced with trace=True")
        leading = next((i for i, e in enumerate(self.events) if e[3] != "start"), len(self.events))
        baseline = sum(e[1] for e in self.events[:leading])
        return compact((e[1] for e in self.events[leading:]), baseline=baseline)


@dataclass(frozen=True)
class Setting:
    """What the prediction is for: sizes that do not depend on the layers."""
    batch: int
    dtype: str                 # the parameters' dtype (float32 under mixed precision)
    inputs: dict[str, int]     # model input name -> bytes
    outputs: tuple[str, ...]   # values the model returns
    target_bytes: int
    buffer_bytes: int          # non-trainable state (BatchNorm's moving statistics)
    loss: str = "cross_entropy"
    foreach: bool = False      # CUDA optimizers use multi-tensor (foreach) kernels; CPU ones do not
    footprint: Callable[[int], int] | None = None   # allocator rounding of each request
    also: Callable[[int], int] | None = None        # a second rounding, its peak's bytes alone (Timeline)
    input_dtypes: dict[str, str] = field(default_factory=dict)  # model input -> dtype (default: dtype)
    input_grad: bool = False   # floating model inputs require gradients (their .grad outlives backward)
    amp: str | None = None     # autocast's low-precision dtype, or None without mixed precision
    device_kind: str = "cpu"
    gemm_scratch: Callable[[str, int, int, int], int] | None = None
    # ^ bytes a matmul kernel allocates inside itself: (kind, m, k, n) -> bytes, kind "forward"
    #   (x·Wᵀ), "grad_input" (g·W) or "grad_weight" (gᵀ·x); None: no such scratch (see
    #   kernels.onednn_matmul.onednn_bf16_gemm_scratch, used for bfloat16 matmuls on the CPU)


def inference_peak(ops: Iterable[Op], s: Setting) -> Peak:
    """``model.eval()``; under ``no_grad`` (and ``autocast`` with ``s.amp``): ``out = model(x)``,
    with model and input alive.

    Nothing is saved; a tensor dies after the layer that reads it last has returned, unless the
    caller holds it (model inputs and outputs). The autocast cache (weight casts) dies when the
    region exits, after the forward pass.
    """
    return inference_timeline(ops, s).peak


def inference_timeline(ops: Iterable[Op], s: Setting, *, trace: bool = False) -> Timeline:
    """The replay behind :func:`inference_peak` (with ``trace``, every event in order)."""
    ops = list(ops)
    t = Timeline(s.footprint, trace=trace, also=s.also)
    t.alloc("params", _trainable_bytes(ops) + s.buffer_bytes, "parameters", s.dtype)
    forward = _Forward(t, ops, s, training=False)
    forward.run()
    forward.exit_autocast()
    return t


def training_peak(ops: Iterable[Op], s: Setting, optimizer: str, *, first_step: bool = False) -> Peak:
    """One training step. Steady state: gradients and optimizer state exist from the step before."""
    return training_timeline(ops, s, optimizer, first_step=first_step).peak


def training_timeline(ops: Iterable[Op], s: Setting, optimizer: str, *, first_step: bool = False,
                      trace: bool = False) -> Timeline:
    """The replay behind :func:`training_peak` (with ``trace``, every event in order)."""
    ops = list(ops)
    trainable = _trainable_bytes(ops)
    tensors = [n for op in ops if not op.shared_call for n in op.param_tensors]
    t = Timeline(s.footprint, trace=trace, also=s.also)
    t.alloc("params", trainable + s.buffer_bytes, "parameters", s.dtype)
    target_dtype = "int64" if s.loss == "cross_entropy" else s.dtype
    t.alloc("target", s.target_bytes, "inputs", target_dtype)
    model = optimizer_model(optimizer)
    if not first_step or model.state_at_init:
        _alloc_optimizer_state(t, optimizer, tensors, s.dtype)
    if not first_step:
        t.alloc("grads", trainable, "gradients", s.dtype)
    forward = _Forward(t, ops, s, training=True)
    if not first_step:
        t.note("zero_grad")
        t.free("grads")
    forward.run()

    t.note(f"loss ({s.loss})")
    loss_dtype = _loss_forward(t, s, forward)
    forward.exit_autocast()    # PyTorch's recipe: forward and loss under autocast, backward outside

    _backward(t, ops, s, forward, loss_dtype)

    t.note(f"optimizer step ({optimizer})")
    if first_step and not model.state_at_init:
        _alloc_optimizer_state(t, optimizer, tensors, s.dtype)
    scratch = model.scratch_bytes(tensors, s.foreach, itemsize(s.dtype))
    scalar = 2 if model.scalar_bytes and scratch and not s.foreach else 0   # a double, then its cast
    for i, nbytes in enumerate(scratch):
        dtype = "float64" if scalar and i == len(scratch) - 2 else s.dtype
        # the double's float32 cast is made and freed inside the kernel that divides by it
        category = "workspace" if scalar and i == len(scratch) - 1 else "temporaries"
        t.alloc(f"opt_tmp{i}", nbytes, category, dtype)
    return t


def _loss_forward(t: Timeline, s: Setting, forward: "_Forward") -> str:
    """The loss of each output, summed over outputs; returns the loss's dtype.

    Under autocast the losses are on the float32 list: a low-precision output is cast to float32
    first (a copy alive while the loss runs, and kept for backward by ``mse_loss``).
    """
    loss_dtype = s.dtype
    total = ""
    for out in s.outputs:
        elements, dtype = forward.elements[out], forward.dtype[out]
        cast = s.amp is not None and dtype != "float32"
        if cast:
            dtype = "float32"
            t.alloc(f"loss_cast:{out}", elements * 4, "activations", "float32")
        act = itemsize(dtype)
        loss_dtype = dtype
        if s.loss == "cross_entropy":
            t.alloc(f"log_probs:{out}", elements * act, "activations", dtype)  # log_softmax keeps its result
            t.alloc(f"total_weight:{out}", act, "activations", dtype)          # nll_loss keeps its weight sum
            t.alloc(f"loss:{out}", act, "activations", dtype)
        else:   # unreduced (out - y)², then its mean into a tensor as large (the 0-d loss keeps it)
            t.alloc("squared_error", elements * act, "temporaries", dtype)
            t.alloc(f"loss:{out}", elements * act, "activations", dtype)
            t.free("squared_error")
        if cast and s.loss == "cross_entropy":   # the cast is not saved: gone when cross_entropy returns
            t.free(f"loss_cast:{out}")
        if total:   # several outputs: their losses summed one by one; a sum's addends are not kept
            t.alloc(f"loss_sum:{out}", act, "activations", dtype)
            t.free(total)
            t.free(f"loss:{out}")
            total = f"loss_sum:{out}"
        else:
            total = f"loss:{out}"
    return loss_dtype


def _trainable_bytes(ops: list[Op]) -> int:
    return sum(op.param_bytes for op in ops if not op.shared_call)


def kept_for_backward(ops: Iterable[Op], s: Setting) -> dict[str, int]:
    """Bytes each layer created in the training forward pass that are still alive when backward
    starts: what autograd saved, plus the outputs the caller holds."""
    t = Timeline(s.footprint)
    forward = _Forward(t, list(ops), s, training=True)
    forward.run()
    forward.exit_autocast()
    kept: dict[str, int] = {}
    for key, (_, nbytes, _) in t.live.items():
        if key in forward.origin:
            layer = forward.origin[key]
            kept[layer] = kept.get(layer, 0) + nbytes
    return kept


def value_dtypes(ops: Iterable[Op], s: Setting) -> dict[str, str]:
    """The dtype of every value of the forward pass (under autocast, per the ops' casts)."""
    forward = _Forward(Timeline(s.footprint), list(ops), s, training=False)
    forward.run()
    return dict(forward.dtype)


def _promote(dtypes: list[str], default: str) -> str:
    """The dtype an op computes in from its floating inputs' dtypes (PyTorch's type promotion)."""
    floats = [d for d in dtypes if d in FLOATING]
    if not floats:
        return default
    if len(set(floats)) == 1:
        return floats[0]
    widest = max(itemsize(d) for d in floats)
    return "float64" if widest == 8 else "float32"


class _Forward:
    """The forward pass over a graph of ops, tracking who keeps each storage alive.

    Holders of a storage: the caller (model inputs and outputs), the running graph (a value is
    held until the layer that reads it last has returned — so an activation fused into a layer
    runs while the layer's inputs and pre-activation are both alive), autograd (per op, for
    what the op saved), the autocast cache (weight casts, until the region exits), a call in
    progress (casts of its inputs) and a checkpointed call (its inputs, until its backward).
    A storage is freed when its last holder lets go.
    """

    def __init__(self, t: Timeline, ops: list[Op], s: Setting, *, training: bool):
        self.t, self.ops, self.s, self.training = t, ops, s, training
        self.storage: dict[str, str] = {}          # value -> storage key (views share one)
        self.elements: dict[str, int] = {}
        self.dtype: dict[str, str] = {}            # value -> dtype
        self.holders: dict[str, set[str]] = {}     # storage -> holders
        self.held: dict[str, set[str]] = {}        # holder -> storages
        self.origin: dict[str, str] = {}           # storage -> layer that created it
        self.requires_grad: dict[str, bool] = {}
        self.recorded: list[bool] = []
        self.compute: dict[int, str] = {}          # op index -> dtype it computes in
        self.casts: dict[int, dict[int, str]] = {}  # op index -> input index -> dtype it was cast from
        self.regions: dict[str, list[int]] = {}    # checkpointed call -> its ops, in order
        self.recomputed: set[str] = set()
        for k, op in enumerate(ops):
            if op.checkpoint:
                self.regions.setdefault(op.checkpoint, []).append(k)
        for name, nbytes in s.inputs.items():
            dtype = s.input_dtypes.get(name, s.dtype)
            key = f"input:{name}"   # apart from the replay's own keys (an input may be named "target")
            t.alloc(key, nbytes, "inputs", dtype)
            self.storage[name] = key
            self.dtype[name] = dtype
            self.requires_grad[name] = training and s.input_grad and dtype in FLOATING
            self.hold(key, "caller")

    # -- holders -------------------------------------------------------------------------------
    def hold(self, key: str, who: str) -> None:
        self.holders.setdefault(key, set()).add(who)
        self.held.setdefault(who, set()).add(key)

    def release(self, key: str, who: str) -> None:
        holders = self.holders.get(key)
        if holders is None or who not in holders:
            return
        holders.discard(who)
        self.held[who].discard(key)
        if not holders:
            del self.holders[key]
            self.t.free(key)

    def release_all(self, who: str) -> None:
        for key in sorted(self.held.get(who, ())):
            self.release(key, who)

    def exit_autocast(self) -> None:
        """The autocast region exits: its cache of weight casts is cleared."""
        self.release_all("autocast")

    # -- the pass ------------------------------------------------------------------------------
    def run(self) -> None:
        last_read = {}
        layer_end = self._layer_ends()
        for k, op in enumerate(self.ops):
            for value in op.inputs:
                last_read[value] = layer_end[k]
        for k, op in enumerate(self.ops):
            self.t.note(f"forward {op.name}")
            region = op.checkpoint
            if region and self.regions[region][0] == k:
                self._enter_checkpoint(region)
            self._run_op(k, op, saving=not region)
            if layer_end[k] == k:   # the layer returns: values it read last are let go
                for value in {v for j in range(self._layer_start(k), k + 1) for v in self.ops[j].inputs}:
                    if last_read[value] == k:
                        self.release(self.storage[value], f"graph:{value}")
            if region and self.regions[region][-1] == k:
                self._leave_checkpoint(region)
        for value in self.s.outputs:
            self.hold(self.storage[value], "caller")
            self.release(self.storage[value], f"graph:{value}")

    def _cast_target(self, op: Op) -> str | None:
        if self.s.amp is None:
            return None
        if op.autocast == "promote":   # autocast's promote list: every floating input to the widest dtype
            dtypes = [self.dtype[v] for v in op.inputs if self.dtype[v] in FLOATING]
            return max(dtypes, key=itemsize) if len(set(dtypes)) > 1 else None
        return {"lower": self.s.amp, "float32": "float32"}.get(op.autocast)

    def _run_op(self, k: int, op: Op, *, saving: bool, prefix: str = "", stop: str = "") -> None:
        """Run op ``k``. ``saving``: autograd keeps what the op saves (off inside a checkpointed
        call); ``prefix`` names the storages of a recomputation; ``stop`` ("before" or "after" the
        kernel) ends a recomputation at this op."""
        if op.holds_only:
            if not prefix:
                self.recorded.append(False)
            return
        records = self.training and (op.param_bytes > 0 or any(self.requires_grad[v] for v in op.inputs))
        if not prefix:
            self.recorded.append(records)
        target = self._cast_target(op)
        call = f"{prefix}call:{k}"
        # autocast evaluates the op's arguments right to left: the weights (bias, then weight),
        # then the inputs. A trainable weight's cast goes to the cache; a frozen one's does not.
        if target is not None and op.autocast == "lower":
            master = itemsize(self.s.dtype)
            for j in reversed(range(len(op.param_tensors))):
                key = self._weight_cast(op, j, prefix)
                if op.weight_casts and not op.weight_casts[j]:
                    continue   # used as it is (a layer norm's float32 weights)
                if key not in self.holders:
                    self.t.alloc(key, op.param_tensors[j] // master * itemsize(target), "weight_casts", target)
                    self.origin[key] = op.layer
                    self.hold(key, call if op.weight_casts else f"{prefix}autocast")
            for j in reversed(range(len(op.frozen_tensors))):
                key = f"{prefix}{op.output}.frozen_cast{j}"
                self.t.alloc(key, op.frozen_tensors[j] // master * itemsize(target), "weight_casts", target)
                self.origin[key] = op.layer
                self.hold(key, call)
        effective = [self.storage[v] for v in op.inputs]
        casts: dict[int, str] = {}
        for i in reversed(range(len(op.inputs))):
            dtype = self.dtype[op.inputs[i]]
            if target is not None and dtype in FLOATING and dtype != target:
                key = f"{prefix}{op.output}.cast{i}"
                self.t.alloc(key, op.in_elements[i] * itemsize(target), "activations", target)
                self.origin[key] = op.layer
                self.hold(key, call)
                effective[i] = key
                casts[i] = dtype
        if not prefix:
            self.casts[k] = casts
        compute = target or _promote([self.dtype[v] for v in op.inputs], self.s.dtype)
        self.compute[k] = compute
        weight_saved = self._kept_casts(k, prefix) if records and saving and target is not None else []
        if stop == "before":   # the last tensors packed for backward are inputs: the kernel never runs
            self._save(k, op, effective, records and saving, weight_saved, prefix, outputs=False)
            self.release_all(call)
            return
        if op.out_is_view or (op.identity_in_eval and not self.training):
            key = effective[0]
            dtype = self.dtype[op.inputs[0]]
        else:
            key = prefix + op.output
            dtype = compute
            self.t.alloc(key, op.out_elements * itemsize(dtype), "activations", dtype)
            self.origin[key] = op.layer
        self.storage[op.output] = key
        self.elements[op.output] = op.out_elements
        self.dtype[op.output] = dtype
        if not prefix:
            self.requires_grad[op.output] = records
        self.hold(key, f"{prefix}graph:{op.output}")
        if op.cell_value and not (records and saving):
            self._new_value(op.cell_value, prefix + op.cell_value, op.cell_elements, compute, op.layer, records, prefix)
        beside_saved = records and op.training_scratch is not None
        temporaries = op.reduced_scratch if op.reduced_scratch and compute in REDUCED else op.scratch
        scratch = [] if beside_saved else [self.size(s, compute) for s in temporaries]
        if op.matmul and self.s.gemm_scratch is not None and compute == "bfloat16":
            scratch = [n for n in (*scratch, self.s.gemm_scratch("forward", *op.matmul)) if n]
        _workspace(self.t, f"{prefix}{op.output}.scratch", scratch, compute)
        later = [self.size(s, compute) for s in op.training_scratch] if beside_saved else []
        if records and not saving:   # inside a checkpointed call: what the op makes to save dies now
            unsaved = [(f"{op.output}.unsaved{i}", saved) for i, saved in enumerate(op.saved) if saved.of == "new"]
            for key, saved in unsaved:
                self.t.alloc(key, self.size(saved, compute), "temporaries", self._dtype_of(saved, compute))
                if not beside_saved:
                    self.t.free(key)
            if beside_saved:
                _workspace(self.t, f"{prefix}{op.output}.training_scratch", later, compute)
                for key, _ in unsaved:
                    self.t.free(key)
        self._save(k, op, effective, records and saving, weight_saved, prefix, outputs=True)
        if op.cell_value and records and saving:   # a view of a tensor kept for backward
            self._new_value(op.cell_value, f"{prefix}{op.output}.saved{op.cell_saved}", op.cell_elements,
                            compute, op.layer, records, prefix, alloc=False)
        if beside_saved and saving:
            _workspace(self.t, f"{prefix}{op.output}.training_scratch", later, compute)
        self.release_all(call)

    def _new_value(self, value: str, key: str, elements: int, dtype: str, layer: str, records: bool, prefix: str,
                   *, alloc: bool = True) -> None:
        """A second output of an op, in storage ``key`` (allocated here unless it exists)."""
        if alloc:
            self.t.alloc(key, elements * itemsize(dtype), "activations", dtype)
            self.origin[key] = layer
        self.storage[value] = key
        self.elements[value] = elements
        self.dtype[value] = dtype
        if not prefix:
            self.requires_grad[value] = records
        self.hold(key, f"{prefix}graph:{value}")


    def _save(self, k: int, op: Op, effective: list[str], saving: bool, weight_saved: list[str],
              prefix: str, *, outputs: bool) -> None:
        """Autograd keeps what op ``k`` saves (held by ``op{k}``); ``weight_saved``: weight casts."""
        if not saving:
            return
        compute = self.compute[k]
        for key in weight_saved:
            self.hold(key, f"op{k}")
        for i, saved in enumerate(op.saved):
            if saved.of == "new":
                if not outputs and self._with_output(saved):
                    continue   # stopping before the kernel: what it makes is not there
                new = f"{prefix}{op.output}.saved{i}"
                self.t.alloc(new, self.size(saved, compute), "activations", self._dtype_of(saved, compute))
                self.origin[new] = op.layer
                self.hold(new, f"op{k}")
            elif saved.of == "output":
                if outputs:
                    self.hold(self.storage[op.output], f"op{k}")
            else:
                for i_in in ((0,) if saved.of == "input" else range(len(op.inputs))):
                    self.hold(effective[i_in], f"op{k}")

    @staticmethod
    def _with_output(saved: Saved) -> bool:
        """Whether autograd packs ``saved`` after the op's last kernel (its output, or a statistic or
        indices made with it) rather than before (an input of that kernel: a dropout mask, a padded
        input, a partial result). Told from the rule's description: see the report's rule-side note."""
        return saved.of == "output" or (saved.of == "new" and any(
            word in saved.what for word in ("indices", "mean", "1/std")))

    @staticmethod
    def _dtype_of(tensor: Saved, compute: str) -> str:
        return compute if tensor.dtype == "act" else tensor.dtype

    def size(self, tensor: Saved, compute: str | None = None) -> int:
        """Bytes of a tensor a rule describes (elements per sample unless ``per_sample`` is off);
        "act" is the dtype the op computes in."""
        return tensor.nbytes(self.s.batch, compute or self.s.dtype)

    # -- checkpointed calls -------------------------------------------------------------------
    def _region_inputs(self, region: str) -> list[str]:
        ks = self.regions[region]
        made = {self.ops[k].output for k in ks}
        return sorted({v for k in ks for v in self.ops[k].inputs if v not in made})

    def _enter_checkpoint(self, region: str) -> None:
        """``checkpoint(fn, *args)`` starts: the generator's state is saved, the args are held."""
        if self.s.device_kind == "cpu":
            self.t.alloc(f"rng_state:{region}", RNG_STATE_BYTES, "activations", "uint8")
            self.origin[f"rng_state:{region}"] = self.ops[self.regions[region][0]].layer
        if self.training:
            for value in self._region_inputs(region):
                self.hold(self.storage[value], f"checkpoint:{region}")

    def _leave_checkpoint(self, region: str) -> None:
        """The call returns. Its inputs and state live in a frame that only the holders of what its
        ops save point to: when nothing is saved (inference, an Add, a mean), they go now."""
        if not self.packing_ops(region):
            self.release_checkpoint(region)

    def packing_ops(self, region: str) -> list[int]:
        """The checkpointed call's ops that save tensors for backward (each one packed)."""
        return [k for k in self.regions[region] if not self.ops[k].holds_only and self.recorded[k]
                and (self.ops[k].saved or self._saves_weight(k))]

    def release_checkpoint(self, region: str) -> None:
        if f"rng_state:{region}" in self.t.live:
            self.t.free(f"rng_state:{region}")
        self.release_all(f"checkpoint:{region}")

    def recompute(self, region: str) -> None:
        """Backward reached the checkpointed call: run its forward again until every tensor its ops
        save exists again (early stop), with saving on; the rest of what it made is let go."""
        ks = [k for k in self.regions[region] if not self.ops[k].holds_only]
        saving_ops = self.packing_ops(region)
        self.recomputed.add(region)
        if not saving_ops:
            return
        last = saving_ops[-1]
        after = any(self._with_output(x) for x in self.ops[last].saved)
        prefix = f"re:{region}:"
        fork = f"rng_fork:{region}"
        if self.s.device_kind == "cpu":
            self.t.alloc(fork, RNG_STATE_BYTES, "temporaries", "uint8")
        layer_end = self._layer_ends()
        last_read: dict[str, int] = {}
        for k in ks:
            for value in self.ops[k].inputs:
                last_read[value] = layer_end[k]
        made: set[str] = set()
        for k in ks:
            if k > last:
                break
            op = self.ops[k]
            self._run_op(k, op, saving=True, prefix=prefix,
                         stop="" if k < last else ("after" if after else "before"))
            if k < last or after:
                made.add(op.output)
            if layer_end[k] == k and k < last:
                for value in {v for j in range(self._layer_start(k), k + 1) for v in self.ops[j].inputs}:
                    if value in made and last_read[value] == k:
                        self.release(self.storage[value], f"{prefix}graph:{value}")
        self.release_all(f"{prefix}autocast")       # the recomputation's autocast region exits,
        if fork in self.t.live:                      # then the generator's state is restored,
            self.t.free(fork)
        for value in sorted(made):                   # then what was not saved dies
            self.release(self.storage[value], f"{prefix}graph:{value}")

    def _saves_weight(self, k: int) -> bool:
        return self.s.amp is not None and bool(self._kept_casts(k, ""))

    def _kept_casts(self, k: int, prefix: str) -> list[str]:
        """The weight casts a "lower" op keeps for backward: its own casts as ``weight_casts`` says,
        else the (cached or frozen) weight's as ``saves_weight`` says."""
        op = self.ops[k]
        if op.autocast != "lower":
            return []
        wants = any(self.requires_grad[v] for v in op.inputs)
        if op.weight_casts:
            return [self._weight_cast(op, j, prefix) for j, mode in enumerate(op.weight_casts)
                    if mode == "kept" or (mode == "kept_for_input_grad" and wants)]
        if not (op.param_tensors or op.frozen_tensors) or not (
                op.saves_weight == "always" or (op.saves_weight == "for_input_grad" and wants)):
            return []
        return [self._weight_cast(op, 0, prefix) if op.param_tensors else f"{prefix}{op.output}.frozen_cast0"]

    @staticmethod
    def _weight_cast(op: Op, j: int, prefix: str) -> str:
        """Weight ``j``'s cast: in autocast's cache (one per layer), or the call's own."""
        if op.weight_casts:
            return f"{prefix}{op.output}.weight_cast{j}"
        return f"{prefix}weight_cast:{op.weights or op.layer}:{j}"

    # -- layers ----------------------------------------------------------------------------------
    def _layer_ends(self) -> list[int]:
        ends = [0] * len(self.ops)
        end = len(self.ops) - 1
        for k in range(len(self.ops) - 1, -1, -1):
            ends[k] = end
            if not self.ops[k].fused:
                end = k - 1
        return ends

    def _layer_start(self, k: int) -> int:
        while k > 0 and self.ops[k].fused:
            k -= 1
        return k


def _backward(t: Timeline, ops: list[Op], s: Setting, forward: _Forward, loss_dtype: str) -> None:
    """Gradients flow back op by op in reverse order; an op's saved tensors are freed once its
    backward has run, and a gradient reaching a value twice is added in place."""
    grads: dict[str, str] = {}          # value -> gradient storage
    refs: dict[str, int] = {}           # gradient storage -> values using it
    strided: set[str] = set()           # gradient storages its values see as strided slices

    def give(value: str, key: str) -> None:
        grads[value] = key
        refs[key] = refs.get(key, 0) + 1

    def drop(value: str) -> None:
        key = grads.pop(value)
        refs[key] -= 1
        if not refs[key]:
            del refs[key]
            t.free(key)

    t.note("backward (loss)")
    seed = itemsize(loss_dtype)
    t.alloc("grad_seed", seed, "temporaries", loss_dtype)   # backward() starts from ones_like(loss), kept to the end
    for out in reversed(s.outputs):   # autograd runs the later loss's nodes first
        if not forward.requires_grad[out]:
            continue
        elements, dtype = forward.elements[out], forward.dtype[out]
        cast = f"loss_cast:{out}"
        loss_dt = "float32" if s.amp is not None and dtype != "float32" else dtype
        act = itemsize(loss_dt)
        grad = f"grad:{out}" if loss_dt == dtype else f"grad_{loss_dt}:{out}"
        if s.loss == "cross_entropy":
            # nll_loss_backward makes d loss/d log_probs; log_softmax_backward turns it into d out
            t.alloc(f"grad_log_probs:{out}", elements * act, "temporaries", loss_dt)
            t.free(f"total_weight:{out}")
            t.alloc(grad, elements * act, "temporaries", loss_dt)
            t.free(f"grad_log_probs:{out}")
            t.free(f"log_probs:{out}")
        else:   # mse_loss_backward: zeros_like(out), filled with 2 (out − y) · grad / n
            t.alloc(grad, elements * act, "temporaries", loss_dt)
            if cast in t.live:   # mse_loss kept its float32 input
                t.free(cast)
        if loss_dt != dtype:   # ToCopyBackward: the gradient back in the output's dtype
            t.alloc(f"grad:{out}", elements * itemsize(dtype), "temporaries", dtype)
            t.free(grad)
        give(out, f"grad:{out}")
    # a checkpointed call is recomputed when the first of its saved tensors is unpacked (by its
    # last op that saved any), and its frame goes with the last holder (its first such op)
    packing = {region: forward.packing_ops(region) for region in forward.regions}
    for k in range(len(ops) - 1, -1, -1):
        op = ops[k]
        if not forward.recorded[k] or op.output not in grads:
            continue
        t.note(f"backward {op.name}")
        region = op.checkpoint
        if region and region not in forward.recomputed and k in packing[region]:
            t.note(f"backward {op.name} (recomputing {region})")
            forward.recompute(region)
            t.note(f"backward {op.name}")
        last_holder = bool(region) and bool(packing[region]) and packing[region][0] == k
        _op_backward(t, k, op, s, forward, grads, give, drop, strided,
                     release=(lambda r=region: forward.release_checkpoint(r)) if last_holder else None)
    for k in range(len(ops)):              # the graph is freed when backward ends
        forward.release_all(f"op{k}")
    for region in forward.regions:
        forward.release_checkpoint(region)
    t.free("grad_seed")


def _op_backward(t: Timeline, k: int, op: Op, s: Setting, forward: _Forward, grads: dict[str, str],
                 give: Callable[[str, str], None], drop: Callable[[str], None], strided: set[str],
                 release: Callable[[], None] | None = None) -> None:
    """One op's backward node, then (mixed precision) the ``ToCopyBackward`` nodes of its casts.

    ``strided``: gradient storages that reach their values as strided slices (a Concatenate's);
    ``release``: what goes with the node's saved tensors (a checkpointed call's frame)."""
    compute = forward.compute[k]
    casts = forward.casts.get(k, {})
    lower_amp = s.amp is not None and op.autocast == "lower"
    matmul = op.matmul and s.gemm_scratch is not None and compute == "bfloat16"
    low_inputs: list[tuple[int, str, str]] = []     # (input, low-precision gradient, original dtype)
    scratch = [forward.size(x, compute) for x in op.backward_scratch]
    if any(forward.requires_grad[v] for v in op.inputs):
        scratch += [forward.size(x, compute) for x in op.input_grad_scratch]
    # the state buffers among the scratch that become the initial states' gradients
    scratch[:1] = [scratch[0] - sum(op.in_elements[i] * itemsize(compute) for i in op.state_grads
                                    if forward.requires_grad[op.inputs[i]])] if scratch else []
    cell_grad = bool(op.cell_value) and op.cell_value in grads
    if op.cell_value and not cell_grad:   # autograd's zeros for an unused output's gradient
        scratch.append(op.cell_elements * itemsize(forward.dtype[op.cell_value]))
    out_grad = grads[op.output]
    accumulated: list[str] = []         # input gradients added into an existing one, after the node
    if op.dense_grad and out_grad in strided:   # a dense copy of the incoming gradient's slice
        scratch.append(op.out_elements * itemsize(forward.dtype[op.output]))
    if op.grads_strided:
        strided.add(out_grad)
    if op.gradients_last:   # the worst moment (gradients made on the way included), then what goes
        _workspace(t, f"backward_scratch:{k}:", scratch, compute)
        _let_go(k, op, forward, drop, release, cell_grad)
    # input gradients first (mm of the gradient with the weight), in the dtype the op computed in
    for i, value in enumerate(op.inputs):
        if not forward.requires_grad[value]:
            continue
        in_dtype = compute if i in casts else forward.dtype[value]
        if ((op.out_is_view and not op.view_grad_new) or op.grad_passthrough) and in_dtype == forward.dtype[op.output]:
            new = out_grad
        else:
            new = f"grad_in:{k}:{i}"
            t.alloc(new, op.in_elements[i] * itemsize(in_dtype), "temporaries", in_dtype)
            if matmul:
                m, n_in, n_out = op.matmul
                _scratch(t, f"grad_in_scratch:{k}:{i}", s.gemm_scratch("grad_input", m, n_out, n_in), in_dtype)
        if i in casts:   # the cast's gradient, held until its ToCopyBackward has run
            give(f"{op.output}.cast_grad{i}", new)
            low_inputs.append((i, f"{op.output}.cast_grad{i}", casts[i]))
            continue
        if value in grads:              # a second path: added in place once the node has run
            if new != out_grad:
                accumulated.append(new)
        else:
            give(value, new)
    # then the weights' gradients: low precision under autocast (cast to float32 after the node)
    owner = op.weights or op.layer
    key = f"weight_grad:{owner}"
    accumulating = bool(op.param_bytes) and f"{key}:0" in t.live   # a shared layer's next gradient
    low_weights: list[int] = []
    for j, nbytes in enumerate(op.param_tensors):
        if lower_amp and (not op.weight_casts or op.weight_casts[j]):
            low = nbytes // itemsize(s.dtype) * itemsize(compute)
            t.alloc(f"{key}:low{j}", low, "temporaries", compute)
            low_weights.append(j)
        elif accumulating:
            t.alloc(f"{key}:new{j}", nbytes, "temporaries", s.dtype)
        else:
            t.alloc(f"{key}:{j}", nbytes, "gradients", s.dtype)
        if matmul and j == 0:
            m, n_in, n_out = op.matmul
            _scratch(t, f"grad_weight_scratch:{k}", s.gemm_scratch("grad_weight", n_out, m, n_in), compute)
    if not op.gradients_last:
        _workspace(t, f"backward_scratch:{k}:", scratch, compute)
        _let_go(k, op, forward, drop, release, cell_grad)
    for added in accumulated:
        t.free(added)
    if accumulating and not lower_amp:   # AccumulateGrad: grad = grad + new, out of place, tensor by tensor
        for i in reversed(range(len(op.param_tensors))):
            t.alloc(f"{key}:sum{i}", op.param_tensors[i], "temporaries", s.dtype)
            t.free(f"{key}:new{i}")
            t.free(f"{key}:sum{i}")   # stands for the old gradient, which the sum replaces
    # ToCopyBackward nodes, latest cast first: the inputs' casts, then the weights' (weight, bias)
    for i, low, dtype in low_inputs:
        value = op.inputs[i]
        new = f"grad_in:{k}:{i}:{dtype}"
        t.alloc(new, op.in_elements[i] * itemsize(dtype), "temporaries", dtype)
        drop(low)
        if value in grads:
            t.free(new)
        else:
            give(value, new)
    for j in low_weights:
        t.alloc(f"{key}:{j}", op.param_tensors[j], "gradients", s.dtype)
        t.free(f"{key}:low{j}")


def _let_go(k: int, op: Op, forward: _Forward, drop: Callable[[str], None],
            release: Callable[[], None] | None, cell_grad: bool = False) -> None:
    """The node has run: its saved tensors (and ``release``'s frame) and the incoming gradients go."""
    forward.release_all(f"op{k}")
    if release is not None:
        release()
    drop(op.output)
    if cell_grad:
        drop(op.cell_value)


def _workspace(t: Timeline, key: str, sizes: list[int], dtype: str) -> None:
    """Temporaries alive together, then gone."""
    sizes = [n for n in sizes if n]
    for i, nbytes in enumerate(sizes):
        t.alloc(f"{key}{i}", nbytes, "workspace", dtype)
    for i in range(len(sizes)):
        t.free(f"{key}{i}")


def _scratch(t: Timeline, key: str, nbytes: int, dtype: str) -> None:
    if nbytes:
        t.alloc(key, nbytes, "workspace", dtype)
        t.free(key)


def _alloc_optimizer_state(t: Timeline, optimizer: str, tensors: list[int], dtype: str) -> None:
    model = optimizer_model(optimizer)
    sizes = model.state_bytes(tensors)
    steps = len(tensors) if model.step else 0      # a float32 scalar ``step`` per parameter, last
    for i, nbytes in enumerate(sizes):
        t.alloc(f"optimizer_state{i}", nbytes, "optimizer_state",
                "float32" if i >= len(sizes) - steps else dtype)
