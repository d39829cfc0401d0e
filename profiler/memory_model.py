"""Predicted memory of an inference pass and of a training step, by replaying allocations.

The model is a small allocator simulation: every tensor the real run would create is allocated
and freed in the order PyTorch does it, and the peak of live bytes is read off, with what was
alive at that moment split by category. The definitions are those the runner measures
(``profiler.runner``): a peak counts everything alive (parameters, buffers, inputs, targets,
gradients, optimizer state), and a training step is the steady-state step
``zero_grad(set_to_none=True); out = model(x); loss = loss_fn(out, y); loss.backward(); opt.step()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .dtypes import itemsize
from .optimizers import get as optimizer_model
from .registry import Saved

CATEGORIES = ("parameters", "gradients", "optimizer_state", "inputs", "activations", "temporaries")
LOSSES = ("cross_entropy", "mse")


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
    identity_in_eval: bool = False     # returns its input unchanged in eval mode (Dropout)
    saved: tuple[Saved, ...] = ()      # kept for backward when autograd records the op
    param_bytes: int = 0               # trainable parameters (their gradients have the same size)
    param_tensors: tuple[int, ...] = ()  # bytes of each trainable parameter tensor
    fused: bool = False                # runs inside the previous op's layer (a fused activation)
    layer: str = ""                    # the spec layer this op belongs to
    grad_passthrough: bool = False     # input gradients are the output gradient itself (Add, views)
    holds_only: bool = False           # no computation: the caller's frame holds ``inputs`` until here
    scratch: tuple[Saved, ...] = ()            # forward temporaries, freed before the op returns
    backward_scratch: tuple[Saved, ...] = ()   # backward temporaries, likewise
    weights: str = ""                  # whose parameters the op uses (the layer's first call)
    shared_call: bool = False          # a later call of a shared layer: its weights are counted already


@dataclass(frozen=True)
class Peak:
    """The largest number of bytes alive at once, when it happened and what made it up."""
    bytes: int
    at: str
    breakdown: dict[str, int]

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "at": self.at, "breakdown": dict(self.breakdown)}


class Timeline:
    """Allocations and frees in program order; remembers the peak and its make-up."""

    def __init__(self, footprint: Callable[[int], int] | None = None) -> None:
        """``footprint``: what the allocator sets aside for a request (CUDA rounds up; CPU: exact)."""
        self.footprint = footprint
        self.live: dict[str, tuple[str, int]] = {}
        self.by_category = {c: 0 for c in CATEGORIES}
        self.current = 0
        self.phase = "start"
        self.peak = Peak(0, self.phase, dict(self.by_category))

    def alloc(self, key: str, nbytes: int, category: str) -> None:
        if key in self.live:
            raise KeyError(f"{key} is allocated twice")
        if self.footprint is not None:
            nbytes = self.footprint(nbytes)
        self.live[key] = (category, nbytes)
        self.by_category[category] += nbytes
        self.current += nbytes
        if self.current > self.peak.bytes:
            self.peak = Peak(self.current, self.phase, dict(self.by_category))

    def free(self, key: str) -> None:
        category, nbytes = self.live.pop(key)
        self.by_category[category] -= nbytes
        self.current -= nbytes

    def note(self, phase: str) -> None:
        """Label what happens next (shown as where the peak was)."""
        self.phase = phase


@dataclass(frozen=True)
class Setting:
    """What the prediction is for: sizes that do not depend on the layers."""
    batch: int
    dtype: str
    inputs: dict[str, int]     # model input name -> bytes
    outputs: tuple[str, ...]   # values the model returns
    target_bytes: int
    buffer_bytes: int          # non-trainable state (BatchNorm's moving statistics)
    loss: str = "cross_entropy"
    foreach: bool = False      # CUDA optimizers use multi-tensor (foreach) kernels; CPU ones do not
    footprint: Callable[[int], int] | None = None   # allocator rounding of each request


def inference_peak(ops: Iterable[Op], s: Setting) -> Peak:
    """``model.eval()``; under ``no_grad``: ``out = model(x)``, with model and input alive.

    Nothing is saved; a tensor dies after the layer that reads it last has returned, unless the
    caller holds it (model inputs and outputs).
    """
    ops = list(ops)
    t = Timeline(s.footprint)
    t.alloc("params", _trainable_bytes(ops) + s.buffer_bytes, "parameters")
    _Forward(t, ops, s, training=False).run()
    return t.peak


def training_peak(ops: Iterable[Op], s: Setting, optimizer: str, *, first_step: bool = False) -> Peak:
    """One training step. Steady state: gradients and optimizer state exist from the step before."""
    ops = list(ops)
    act = itemsize(s.dtype)
    trainable = _trainable_bytes(ops)
    tensors = [n for op in ops if not op.shared_call for n in op.param_tensors]
    t = Timeline(s.footprint)
    t.alloc("params", trainable + s.buffer_bytes, "parameters")
    t.alloc("target", s.target_bytes, "inputs")
    model = optimizer_model(optimizer)
    if not first_step or model.state_at_init:
        _alloc_optimizer_state(t, optimizer, tensors)
    if not first_step:
        t.alloc("grads", trainable, "gradients")
    forward = _Forward(t, ops, s, training=True)
    if not first_step:
        t.note("zero_grad")
        t.free("grads")
    forward.run()

    t.note(f"loss ({s.loss})")
    for out in s.outputs:
        elements = forward.elements[out]
        if s.loss == "cross_entropy":
            t.alloc(f"log_probs:{out}", elements * act, "activations")  # log_softmax keeps its result
            t.alloc(f"total_weight:{out}", act, "activations")          # nll_loss keeps its weight sum
        else:
            t.alloc("squared_error", elements * act, "temporaries")     # unreduced (out - y)², then mean
            t.free("squared_error")
        t.alloc(f"loss:{out}", act, "activations")
    if len(s.outputs) > 1:
        t.alloc("loss", act, "activations")                            # the sum of the outputs' losses

    _backward(t, ops, s, forward)

    t.note(f"optimizer step ({optimizer})")
    if first_step and not model.state_at_init:
        _alloc_optimizer_state(t, optimizer, tensors)
    for i, nbytes in enumerate(model.scratch_bytes(tensors, s.foreach, act)):
        t.alloc(f"opt_tmp{i}", nbytes, "temporaries")
    return t.peak


def _trainable_bytes(ops: list[Op]) -> int:
    return sum(op.param_bytes for op in ops if not op.shared_call)


def kept_for_backward(ops: Iterable[Op], s: Setting) -> dict[str, int]:
    """Bytes each layer created in the training forward pass that are still alive when backward
    starts: what autograd saved, plus the outputs the caller holds."""
    t = Timeline(s.footprint)
    forward = _Forward(t, list(ops), s, training=True)
    forward.run()
    kept: dict[str, int] = {}
    for key, (_, nbytes) in t.live.items():
        if key in forward.origin:
            layer = forward.origin[key]
            kept[layer] = kept.get(layer, 0) + nbytes
    return kept


class _Forward:
    """The forward pass over a graph of ops, tracking who keeps each storage alive.

    Holders of a storage: the caller (model inputs and outputs), the running graph (a value is
    held until the layer that reads it last has returned — so an activation fused into a layer
    runs while the layer's inputs and pre-activation are both alive), and autograd (per op, for
    what the op saved). A storage is freed when its last holder lets go.
    """

    def __init__(self, t: Timeline, ops: list[Op], s: Setting, *, training: bool):
        self.t, self.ops, self.s, self.training = t, ops, s, training
        self.act = itemsize(s.dtype)
        self.storage: dict[str, str] = {}          # value -> storage key (views share one)
        self.elements: dict[str, int] = {}
        self.holders: dict[str, set[str]] = {}     # storage -> holders
        self.held: dict[str, set[str]] = {}        # holder -> storages
        self.origin: dict[str, str] = {}           # storage -> layer that created it
        self.requires_grad: dict[str, bool] = {}
        self.recorded: list[bool] = []
        for name, nbytes in s.inputs.items():
            t.alloc(name, nbytes, "inputs")
            self.storage[name] = name
            self.requires_grad[name] = False
            self.hold(name, "caller")

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

    def run(self) -> None:
        last_read = {}
        layer_end = self._layer_ends()
        for k, op in enumerate(self.ops):
            for value in op.inputs:
                last_read[value] = layer_end[k]
        for k, op in enumerate(self.ops):
            self.t.note(f"forward {op.name}")
            self._run_op(k, op)
            if layer_end[k] == k:   # the layer returns: values it read last are let go
                for value in {v for j in range(self._layer_start(k), k + 1) for v in self.ops[j].inputs}:
                    if last_read[value] == k:
                        self.release(self.storage[value], f"graph:{value}")
        for value in self.s.outputs:
            self.hold(self.storage[value], "caller")
            self.release(self.storage[value], f"graph:{value}")

    def _run_op(self, k: int, op: Op) -> None:
        if op.holds_only:
            self.recorded.append(False)
            return
        records = self.training and (op.param_bytes > 0 or any(self.requires_grad[v] for v in op.inputs))
        self.recorded.append(records)
        if op.out_is_view or (op.identity_in_eval and not self.training):
            key = self.storage[op.inputs[0]]
        else:
            key = op.output
            self.t.alloc(key, op.out_elements * self.act, "activations")
            self.origin[key] = op.layer
        self.storage[op.output] = key
        self.elements[op.output] = op.out_elements
        self.requires_grad[op.output] = records
        self.hold(key, f"graph:{op.output}")
        scratch = [self.size(s) for s in op.scratch]
        for i, nbytes in enumerate(scratch):
            self.t.alloc(f"{op.output}.scratch{i}", nbytes, "temporaries")
        for i in range(len(scratch)):
            self.t.free(f"{op.output}.scratch{i}")
        if not records:
            return
        for i, saved in enumerate(op.saved):
            if saved.of == "new":
                new = f"{op.output}.saved{i}"
                self.t.alloc(new, self.size(saved), "activations")
                self.origin[new] = op.layer
                self.hold(new, f"op{k}")
            else:
                values = {"input": op.inputs[:1], "inputs": op.inputs, "output": (op.output,)}[saved.of]
                for value in values:
                    self.hold(self.storage[value], f"op{k}")

    def size(self, tensor: Saved) -> int:
        """Bytes of a tensor a rule describes (elements per sample unless ``per_sample`` is off)."""
        itemsize_ = self.act if tensor.dtype == "act" else itemsize(tensor.dtype)
        return tensor.elements * (self.s.batch if tensor.per_sample else 1) * itemsize_

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


def _backward(t: Timeline, ops: list[Op], s: Setting, forward: _Forward) -> None:
    """Gradients flow back op by op in reverse order; an op's saved tensors are freed once its
    backward has run, and a gradient reaching a value twice is added in place."""
    act = itemsize(s.dtype)
    grads: dict[str, str] = {}          # value -> gradient storage
    refs: dict[str, int] = {}           # gradient storage -> values using it

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
    t.alloc("grad_seed", act, "temporaries")   # backward() starts from ones_like(loss), kept to the end
    for out in s.outputs:
        if not forward.requires_grad[out]:
            continue
        elements = forward.elements[out]
        if s.loss == "cross_entropy":
            # nll_loss_backward makes d loss/d log_probs; log_softmax_backward turns it into d out
            t.alloc(f"grad_log_probs:{out}", elements * act, "temporaries")
            t.free(f"total_weight:{out}")
            t.alloc(f"grad:{out}", elements * act, "temporaries")
            t.free(f"grad_log_probs:{out}")
            t.free(f"log_probs:{out}")
        else:   # mse_loss_backward: 2 (out − y) · grad / n, the difference made first
            t.alloc(f"difference:{out}", elements * act, "temporaries")
            t.alloc(f"grad:{out}", elements * act, "temporaries")
            t.free(f"difference:{out}")
        give(out, f"grad:{out}")
    for k in range(len(ops) - 1, -1, -1):
        op = ops[k]
        if not forward.recorded[k] or op.output not in grads:
            continue
        t.note(f"backward {op.name}")
        key = f"weight_grad:{op.weights or op.layer}"
        accumulating = bool(op.param_bytes) and key in t.live   # a shared layer's next gradient
        if accumulating:
            for i, nbytes in enumerate(op.param_tensors):
                t.alloc(f"{key}:new{i}", nbytes, "temporaries")
        elif op.param_bytes:
            t.alloc(key, op.param_bytes, "gradients")
        for i, value in enumerate(op.inputs):
            if not forward.requires_grad[value]:
                continue
            if op.out_is_view or op.grad_passthrough:
                new = grads[op.output]
            else:
                new = f"grad_in:{k}:{i}"
                t.alloc(new, op.in_elements[i] * act, "temporaries")
            if value in grads:              # a second path: accumulated in place, then dropped
                if new != grads[op.output]:
                    t.free(new)
            else:
                give(value, new)
        scratch = [forward.size(s) for s in op.backward_scratch]
        for i, nbytes in enumerate(scratch):
            t.alloc(f"backward_scratch:{k}:{i}", nbytes, "temporaries")
        for i in range(len(scratch)):
            t.free(f"backward_scratch:{k}:{i}")
        forward.release_all(f"op{k}")
        drop(op.output)
        if accumulating:   # AccumulateGrad: grad = grad + new, out of place, tensor by tensor
            for i in reversed(range(len(op.param_tensors))):
                t.alloc(f"{key}:sum{i}", op.param_tensors[i], "temporaries")
                t.free(f"{key}:new{i}")
                t.free(f"{key}:sum{i}")   # stands for the old gradient, which the sum replaces
    for k in range(len(ops)):              # the graph is freed when backward ends
        forward.release_all(f"op{k}")
    t.free("grad_seed")


def _alloc_optimizer_state(t: Timeline, optimizer: str, tensors: list[int]) -> None:
    for i, nbytes in enumerate(optimizer_model(optimizer).state_bytes(tensors)):
        t.alloc(f"optimizer_state{i}", nbytes, "optimizer_state")
