"""One forward pass on the meta device: every module's shapes and the MACs of the operators it ran.

Shapes come from the *global* module hooks (``register_module_forward_pre_hook`` and
``register_module_forward_hook``), registered for the pass and removed after it, also when the
forward raises: no module gets a hook of its own, so none can be left behind.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` itself (MACs = FLOPs / 2): the
counter sees the ATen operators a module dispatches, so ``F.scaled_dot_product_attention``, a
``torch.matmul`` in a custom ``forward`` and the projections ``nn.MultiheadAttention`` computes
from weights it owns directly are all counted. Each operator's FLOPs go to the innermost module
running when it was dispatched; summing over a subtree gives the module's total, and the total
over all modules is exactly what a plain ``FlopCounterMode`` reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from profiler.engine.module_memory import storage_of, tensors_in

OUTSIDE = ""   # operators run by the root module itself, outside any child


@dataclass
class ModuleCalls:
    """What one module did during the pass (all calls of it together)."""
    calls: int = 0
    input_shape: tuple[int, ...] | None = None     # first tensor argument of the first call
    output_shape: tuple[int, ...] | None = None    # first tensor of the first call's output
    output_bytes: int = 0      # new storages it returned (views of its inputs are free), all calls
    flops: int = 0             # operators it dispatched itself, not through a child module


@dataclass(frozen=True)
class Trace:
    modules: dict[str, ModuleCalls]    # qualified name ("" for the root) -> what it did
    flops: int                         # all operators: what FlopCounterMode reports
    output: Any                        # the model's output (meta tensors)

    @classmethod
    def from_json(cls, sent: dict[str, Any]) -> "Trace":
        """A trace sent as plain data (``modules``: each module's fields in order, ``flops``), without its output."""
        def shape(value: list[int] | None) -> tuple[int, ...] | None:
            return None if value is None else tuple(value)
        return cls({name: ModuleCalls(calls, shape(given), shape(made), nbytes, flops)
                    for name, (calls, given, made, nbytes, flops) in sent["modules"].items()},
                   sent["flops"], None)


class _AttributedFlops(FlopCounterMode):
    """FlopCounterMode that also credits each operator's FLOPs to the innermost module running."""

    def __init__(self, stack: list[str], flops: dict[str, int]):
        super().__init__(display=False)
        self._stack = stack
        self._flops = flops

    def _count_flops(self, func_packet, out, args, kwargs):  # type: ignore[no-untyped-def]
        formula = self.flop_registry.get(func_packet)
        if formula is not None:
            count = formula(*args, **kwargs, out_val=out)
            self.flop_counts["Global"][func_packet] += count
            where = self._stack[-1] if self._stack else OUTSIDE
            self._flops[where] = self._flops.get(where, 0) + count
        return out


if not hasattr(FlopCounterMode, "_count_flops"):   # pragma: no cover - depends on torch version
    raise ImportError(f"torch {torch.__version__}: FlopCounterMode has no _count_flops, which "
                      "profiler.engine.module_trace extends to attribute FLOPs to modules")


def trace(model: torch.nn.Module, inputs: Sequence[torch.Tensor],
          names: dict[int, str]) -> Trace:
    """Run ``model(*inputs)`` in eval mode without gradients, recording each module: on meta
    tensors, or on fake CPU ones when the caller runs it under autocast (which acts on CPU tensors).

    ``names`` maps ``id(module)`` to its qualified name; a module missing from it (one made inside
    a ``forward``) is counted as part of the module that called it.
    """
    stack: list[str] = []
    flops: dict[str, int] = {}
    modules: dict[str, ModuleCalls] = {}
    pending: list[tuple[str, set[int]]] = []   # storages of each running call's inputs

    def enter(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        name = names.get(id(module), stack[-1] if stack else OUTSIDE)
        stack.append(name)
        given = tensors_in(args)   # global pre-hooks are not given keyword arguments
        record = modules.setdefault(name, ModuleCalls())
        if record.calls == 0 and given and id(module) in names:
            record.input_shape = tuple(given[0].shape)
        pending.append((name, {id(storage_of(t)) for t in given}))

    def leave(module: torch.nn.Module, args: tuple[Any, ...], *rest: Any) -> None:
        # (kwargs, output); when the forward raised, torch calls it with (output) only
        kwargs, output = rest if len(rest) == 2 else ({}, rest[-1])
        name = stack.pop()
        _, inputs_storages = pending.pop()
        inputs_storages |= {id(storage_of(t)) for t in tensors_in(kwargs)}
        if id(module) not in names:
            return
        record = modules[name]
        outs = tensors_in(output)
        if record.calls == 0 and outs:
            record.output_shape = tuple(outs[0].shape)
        seen: set[int] = set()
        for t in outs:
            storage = storage_of(t)
            if storage is not None and id(storage) not in inputs_storages | seen:
                seen.add(id(storage))
                record.output_bytes += storage.nbytes()
        record.calls += 1

    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave, with_kwargs=True,
                                                             always_call=True),
    ]
    try:
        with torch.no_grad(), _AttributedFlops(stack, flops) as counter:
            output = model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    for name, count in flops.items():
        modules.setdefault(name, ModuleCalls()).flops += count
    return Trace(modules=modules, flops=counter.get_total_flops(), output=output)
