"""What a step computes its loss on, in one place for the engine (fake tensors) and the runner
(real ones).

A training step is ``opt.zero_grad(set_to_none=True); out = model(*x); loss = loss_fn(out, y);
loss.backward(); opt.step()`` (see ``profiler.measuring.runner`` for what is measured around it).
The loss is computed on each tensor the model returns — a tensor, or the tensors of a tuple, list,
dict or Hugging Face ``ModelOutput`` (nested containers such as an LSTM's ``(h, c)`` or a KV
cache are left out) — and the losses are summed in order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:   # torch is imported where a step runs: predicting a spec needs only LOSSES
    import torch

#: cross_entropy: integer targets over the last axis, every position; mse: a target like the output.
LOSSES = ("cross_entropy", "mse")


def outputs(out: object) -> "list[torch.Tensor]":
    """The tensors a loss is computed on."""
    import torch
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    found = [o for o in items if isinstance(o, torch.Tensor)]
    if not found:
        raise TypeError("the module returned no tensor to compute a loss on "
                        f"(got {type(out).__name__})")
    return found


def loss_fn(loss: str) -> "Callable[[torch.Tensor, torch.Tensor], torch.Tensor]":
    """``cross_entropy`` reshapes an output (N, ..., C) to (-1, C) against int64 targets (N, ...)."""
    import torch.nn.functional as F
    if loss == "mse":
        def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(out, y)
        return mse

    def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    return cross_entropy


def total_loss(fn: "Callable[[torch.Tensor, torch.Tensor], torch.Tensor]", outs: "Sequence[torch.Tensor]",
               targets: "Sequence[torch.Tensor]") -> "torch.Tensor":
    """Several outputs: their losses summed, in order."""
    total = fn(outs[0], targets[0])
    for o, y in zip(outs[1:], targets[1:]):
        total = total + fn(o, y)
    return total
