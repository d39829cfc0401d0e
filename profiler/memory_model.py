"""Predicted memory of an inference pass and of a training step, by replaying allocations.

The model is a small allocator simulation: every tensor the real run would create is allocated
and freed in the order PyTorch does it, and the peak of live bytes is read off, with what was
alive at that moment split by category. The definitions are those the runner measures
(``profiler.runner``): a peak counts everything alive (parameters, buffers, inputs, targets,
gradients, optimizer state), and a training step is the steady-state step
``zero_grad(set_to_none=True); out = model(x); loss = loss_fn(out, y); loss.backward(); opt.step()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Peak:
    """The largest number of bytes alive at once, when it happened and what made it up."""
    bytes: int
    at: str
    breakdown: dict[str, int]

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "at": self.at, "breakdown": dict(self.breakdown)}


@dataclass
class Timeline:
    """Allocations and frees in program order; remembers the peak and its make-up."""
    live: dict[str, tuple[str, int]] = field(default_factory=dict)
    current: int = 0
    peak: Peak = field(default_factory=lambda: Peak(0, "start", {c: 0 for c in CATEGORIES}))
    phase: str = "start"

    def alloc(self, key: str, nbytes: int, category: str) -> None:
        if key in self.live:
            raise KeyError(f"{key} is allocated twice")
        self.live[key] = (category, nbytes)
        self.current += nbytes
        if self.current > self.peak.bytes:
            breakdown = {c: 0 for c in CATEGORIES}
            for cat, size in self.live.values():
                breakdown[cat] += size
            self.peak = Peak(self.current, self.phase, breakdown)

    def free(self, key: str) -> None:
        _, nbytes = self.live.pop(key)
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

    Nothing is saved; an op's input dies when the op returns unless the caller holds it (the model
    input) — so the peak is the largest input + output pair over the chain.
    """
    ops = list(ops)
    act = itemsize(s.dtype)
    t = Timeline()
    t.alloc("params", sum(op.param_bytes for op in ops) + s.buffer_bytes, "parameters")
    t.alloc("input", s.input_bytes, "inputs")
    current = "input"
    for k, op in enumerate(ops):
        t.note(f"forward {op.name}")
        if op.out_is_view or op.identity_in_eval:
            continue
        out = f"act{k}"
        t.alloc(out, op.out_elements * act, "activations")
        if current != "input":
            t.free(current)
        current = out
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

    # Forward: an op is recorded by autograd once anything before it, or its own weights, needs grad.
    holders: dict[str, set[str]] = {"input": {"caller"}}
    recorded: list[bool] = []
    needs_grad = False
    current = "input"

    def release(key: str, holder: str) -> None:
        holders[key].discard(holder)
        if not holders[key]:
            del holders[key]
            t.free(key)

    for k, op in enumerate(ops):
        t.note(f"forward {op.name}")
        records = needs_grad or op.param_bytes > 0
        recorded.append(records)
        if op.out_is_view:
            out = current
        else:
            out = f"act{k}"
            t.alloc(out, op.out_elements * act, "activations")
            holders[out] = set()
        holders[out].add("flow")
        if records:
            for i, saved in enumerate(op.saved):
                if saved.of == "new":
                    key = f"saved{k}.{i}"
                    dtype_size = act if saved.dtype == "act" else itemsize(saved.dtype)
                    t.alloc(key, saved.elements * s.batch * dtype_size, "activations")
                    holders[key] = {f"op{k}"}
                else:
                    holders[current if saved.of == "input" else out].add(f"op{k}")
        if not op.out_is_view:
            release(current, "flow")
        current = out
        needs_grad = records

    out_elements = ops[-1].out_elements
    holders[current].add("caller")          # `out` lives until the step ends
    holders[current].discard("flow")
    t.note(f"loss ({s.loss})")
    if s.loss == "cross_entropy":
        t.alloc("log_probs", out_elements * act, "activations")   # log_softmax keeps its result
    else:
        t.alloc("squared_error", out_elements * act, "temporaries")  # unreduced (out - y)², then mean
        t.free("squared_error")
    t.alloc("loss", act, "activations")

    if needs_grad:
        t.note("backward (loss)")
        if s.loss == "cross_entropy":
            # nll_loss_backward makes d loss/d log_probs; log_softmax_backward turns it into d out
            t.alloc("grad_log_probs", out_elements * act, "temporaries")
            t.alloc("grad_out", out_elements * act, "temporaries")
            t.free("grad_log_probs")
            t.free("log_probs")
        else:
            t.alloc("grad_out", out_elements * act, "temporaries")
        grad = "grad_out"
        for k in range(len(ops) - 1, -1, -1):
            op = ops[k]
            if not recorded[k]:
                break
            t.note(f"backward {op.name}")
            if op.param_bytes:
                t.alloc(f"grad{k}", op.param_bytes, "gradients")
            input_needs_grad = k > 0 and recorded[k - 1]
            grad_in = grad if op.out_is_view else None
            if input_needs_grad and not op.out_is_view:
                grad_in = f"grad_in{k}"
                t.alloc(grad_in, op.in_elements * act, "temporaries")
            for key in [key for key, who in holders.items() if f"op{k}" in who]:
                release(key, f"op{k}")
            if grad_in != grad:
                t.free(grad)
            grad = grad_in
            if grad is None:
                break

    t.note(f"optimizer step ({optimizer})")
    if first_step:
        _alloc_optimizer_state(t, optimizer, tensors)
    for i, nbytes in enumerate(_optimizer_temporaries(optimizer, tensors, s.foreach)):
        t.alloc(f"opt_tmp{i}", nbytes, "temporaries")
    return t.peak


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
    holds the sqrt and the quotient of the largest parameter together. Adam with foreach (CUDA):
    ``_foreach_sqrt`` makes one scratch tensor per parameter, all alive until the update.
    """
    if optimizer == "sgd" or not tensors:
        return []
    if foreach:
        return list(tensors)
    return [max(tensors), max(tensors)]
