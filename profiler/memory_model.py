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
from typing import Iterable

from .dtypes import itemsize
from .registry import Saved

CATEGORIES = ("parameters", "gradients", "optimizer_state", "inputs", "activations", "temporaries")
OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class Op:
    """One tensor operation of the forward pass, as the memory model sees it (batch included)."""
    name: str
    in_elements: int
    out_elements: int
    out_is_view: bool = False          # output shares its input's storage
    identity_in_eval: bool = False     # returns its input unchanged in eval mode (Dropout)
    saved: tuple[Saved, ...] = ()      # kept for backward when autograd records the op
    param_bytes: int = 0               # trainable parameters (their gradients have the same size)
    param_tensors: tuple[int, ...] = ()  # bytes of each trainable parameter tensor
    fused: bool = False                # runs inside the previous op's layer (a fused activation)
    layer: str = ""                    # the spec layer this op belongs to


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

    def __init__(self) -> None:
        self.live: dict[str, tuple[str, int]] = {}
        self.by_category = {c: 0 for c in CATEGORIES}
        self.current = 0
        self.phase = "start"
        self.peak = Peak(0, self.phase, dict(self.by_category))

    def alloc(self, key: str, nbytes: int, category: str) -> None:
        if key in self.live:
            raise KeyError(f"{key} is allocated twice")
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
    input_bytes: int
    target_bytes: int
    buffer_bytes: int          # non-trainable state (BatchNorm's moving statistics)
    loss: str = "cross_entropy"
    foreach: bool = False      # CUDA optimizers use multi-tensor (foreach) kernels; CPU ones do not


def inference_peak(ops: Iterable[Op], s: Setting) -> Peak:
    """``model.eval()``; under ``no_grad``: ``out = model(x)``, with model and input alive.

    Nothing is saved; a layer's input dies when the layer returns unless the caller holds it (the
    model input).
    """
    ops = list(ops)
    t = Timeline()
    t.alloc("params", sum(op.param_bytes for op in ops) + s.buffer_bytes, "parameters")
    t.alloc("input", s.input_bytes, "inputs")
    _forward(t, ops, s, training=False)
    return t.peak


def training_peak(ops: Iterable[Op], s: Setting, optimizer: str, *, first_step: bool = False) -> Peak:
    """One training step. Steady state: gradients and optimizer state exist from the step before."""
    ops = list(ops)
    act = itemsize(s.dtype)
    trainable = sum(op.param_bytes for op in ops)
    tensors = [n for op in ops for n in op.param_tensors]
    t = Timeline()
    t.alloc("params", trainable + s.buffer_bytes, "parameters")
    t.alloc("input", s.input_bytes, "inputs")
    t.alloc("target", s.target_bytes, "inputs")
    if not first_step:
        _alloc_optimizer_state(t, optimizer, tensors)
        for k, op in enumerate(ops):
            if op.param_bytes:
                t.alloc(f"grad{k}", op.param_bytes, "gradients")
        t.note("zero_grad")
        for k, op in enumerate(ops):
            if op.param_bytes:
                t.free(f"grad{k}")

    holders, recorded = _forward(t, ops, s, training=True)
    out_elements = ops[-1].out_elements
    t.note(f"loss ({s.loss})")
    if s.loss == "cross_entropy":
        t.alloc("log_probs", out_elements * act, "activations")   # log_softmax keeps its result
        t.alloc("total_weight", act, "activations")               # nll_loss keeps its weight sum
    else:
        t.alloc("squared_error", out_elements * act, "temporaries")  # unreduced (out - y)², then mean
        t.free("squared_error")
    t.alloc("loss", act, "activations")

    if any(recorded):
        _backward(t, ops, s, holders, recorded)

    t.note(f"optimizer step ({optimizer})")
    if first_step:
        _alloc_optimizer_state(t, optimizer, tensors)
    for i, nbytes in enumerate(_optimizer_temporaries(optimizer, tensors, s.foreach)):
        t.alloc(f"opt_tmp{i}", nbytes, "temporaries")
    return t.peak


class _Holders:
    """Who keeps each activation alive: the layer running, autograd (per op), the caller."""

    def __init__(self, t: Timeline):
        self.t = t
        self.by_key: dict[str, set[str]] = {}
        self.by_holder: dict[str, set[str]] = {}
        self.origin: dict[str, str] = {}   # activation key -> layer that created it
        self.hold("input", "caller")

    def hold(self, key: str, who: str) -> None:
        self.by_key.setdefault(key, set()).add(who)
        self.by_holder.setdefault(who, set()).add(key)

    def release(self, key: str, who: str) -> None:
        holders = self.by_key.get(key)
        if holders is None or who not in holders:
            return
        holders.discard(who)
        self.by_holder[who].discard(key)
        if not holders:
            del self.by_key[key]
            self.t.free(key)

    def held_by(self, who: str) -> list[str]:
        return sorted(self.by_holder.get(who, ()))


def kept_for_backward(ops: Iterable[Op], s: Setting) -> dict[str, int]:
    """Bytes each layer created in the training forward pass that are still alive when backward
    starts: what autograd saved, plus the output the caller holds."""
    ops = list(ops)
    t = Timeline()
    holders, _ = _forward(t, ops, s, training=True)
    kept: dict[str, int] = {}
    for key, (_, nbytes) in t.live.items():
        if key in holders.origin:
            layer = holders.origin[key]
            kept[layer] = kept.get(layer, 0) + nbytes
    return kept


def _forward(t: Timeline, ops: list[Op], s: Setting, *, training: bool) -> tuple[_Holders, list[bool]]:
    """Run the ops; return who holds what afterwards and which ops autograd recorded.

    A layer's input stays alive until the whole layer returns (the caller's frame holds it), so an
    activation fused into a layer runs while the layer's input and pre-activation are both alive.
    An op is recorded by autograd once anything before it, or its own weights, needs a gradient.
    """
    act = itemsize(s.dtype)
    holders = _Holders(t)
    recorded: list[bool] = []
    needs_grad = False
    current = "input"
    holders.hold(current, "layer")
    for k, op in enumerate(ops):
        t.note(f"forward {op.name}")
        records = training and (needs_grad or op.param_bytes > 0)
        recorded.append(records)
        if op.out_is_view or (op.identity_in_eval and not training):
            out = current
        else:
            out = f"act{k}"
            t.alloc(out, op.out_elements * act, "activations")
            holders.origin[out] = op.layer
        holders.hold(out, "layer")
        if records:
            for i, saved in enumerate(op.saved):
                if saved.of == "new":
                    key = f"saved{k}.{i}"
                    size = act if saved.dtype == "act" else itemsize(saved.dtype)
                    count = saved.elements * (s.batch if saved.per_sample else 1)
                    t.alloc(key, count * size, "activations")
                    holders.origin[key] = op.layer
                    holders.hold(key, f"op{k}")
                else:
                    holders.hold(current if saved.of == "input" else out, f"op{k}")
        last_of_layer = k + 1 == len(ops) or not ops[k + 1].fused
        if last_of_layer:  # the layer returns: its input and intermediates lose the frame's hold
            for key in holders.held_by("layer"):
                if key != out:
                    holders.release(key, "layer")
        current = out
        needs_grad = needs_grad or records
    holders.hold(current, "caller")      # `out` lives until the step ends
    holders.release(current, "layer")
    return holders, recorded


def _backward(t: Timeline, ops: list[Op], s: Setting, holders: _Holders, recorded: list[bool]) -> None:
    """Gradients flow back op by op; each op's saved tensors are freed once its backward has run."""
    act = itemsize(s.dtype)
    out_elements = ops[-1].out_elements
    t.note("backward (loss)")
    if s.loss == "cross_entropy":
        # nll_loss_backward makes d loss/d log_probs; log_softmax_backward turns it into d out
        t.alloc("grad_log_probs", out_elements * act, "temporaries")
        t.alloc("grad_out", out_elements * act, "temporaries")
        t.free("grad_log_probs")
        t.free("log_probs")
    else:
        t.alloc("grad_out", out_elements * act, "temporaries")
    grad: str | None = "grad_out"
    for k in range(len(ops) - 1, -1, -1):
        op = ops[k]
        if not recorded[k] or grad is None:
            break
        t.note(f"backward {op.name}")
        if op.param_bytes:
            t.alloc(f"grad{k}", op.param_bytes, "gradients")
        input_needs_grad = k > 0 and recorded[k - 1]
        grad_in = None
        if input_needs_grad:
            grad_in = grad if op.out_is_view else f"grad_in{k}"
            if grad_in != grad:
                t.alloc(grad_in, op.in_elements * act, "temporaries")
        for key in holders.held_by(f"op{k}"):
            holders.release(key, f"op{k}")
        if grad_in != grad:
            t.free(grad)
        grad = grad_in


def optimizer_state_bytes(optimizer: str, tensors: list[int]) -> int:
    """SGD without momentum keeps nothing; Adam keeps exp_avg and exp_avg_sq plus a float32 step."""
    if optimizer == "sgd":
        return 0
    return 2 * sum(tensors) + 4 * len(tensors)


def _alloc_optimizer_state(t: Timeline, optimizer: str, tensors: list[int]) -> None:
    if optimizer == "adam":
        for i, nbytes in enumerate(tensors):
            t.alloc(f"exp_avg{i}", nbytes, "optimizer_state")
            t.alloc(f"exp_avg_sq{i}", nbytes, "optimizer_state")
            t.alloc(f"step{i}", 4, "optimizer_state")


def _optimizer_temporaries(optimizer: str, tensors: list[int], foreach: bool) -> list[int]:
    """Scratch tensors alive together at the optimizer's worst moment.

    SGD updates in place. Adam, one tensor at a time (CPU): ``denom = (v.sqrt() / bc2).add_(eps)``
    holds the sqrt and the quotient of the largest parameter together, and the Python float ``bc2``
    becomes a 0-d float64 tensor (8 B). Adam with foreach (CUDA):
    ``_foreach_sqrt`` makes one scratch tensor per parameter, all alive until the update.
    """
    if optimizer == "sgd" or not tensors:
        return []
    if foreach:
        return list(tensors)
    return [max(tensors), max(tensors), 8]
