"""How a module is spread over ranks: one function per strategy, used by the prediction (fake
tensors, a fake process group) and by the measurement (real tensors, gloo) alike, so both run the
same library code paths.

``ddp``
    ``DistributedDataParallel`` with its gradient buckets (``bucket_cap_mb``,
    ``gradient_as_bucket_view``), kept as built (see :class:`_KeptBuckets`). Each bucket is all-reduced in place by a Python communication
    hook (divide by the world size, ``all_reduce``, done): the reducer's own C++ hook needs the
    work's future to carry the tensors, which a fake process group's does not, and the same hook
    runs in the measured run. Its memory is the built-in one's (both reduce the bucket in place);
    it waits for each bucket before backward goes on, so the measured order is fixed.
``fsdp``
    FSDP2's ``fully_shard`` on every module whose class name is in ``fsdp_wrap`` (per-module or
    per-block wrapping: ``("Linear",)``, ``("LlamaDecoderLayer",)``), then on the root; without
    ``fsdp_wrap``, on the root only (one group: right for any model, where wrapping every module
    that holds parameters breaks tied weights in two groups and modules whose parent reads their
    weights directly, as ``nn.MultiheadAttention`` reads ``out_proj.weight``); ``reshard_after_forward``; with mixed
    precision (``amp``), a ``MixedPrecisionPolicy(param_dtype=amp)`` instead of autocast.
``zero1``
    ``ddp`` for the gradients, and ``ZeroRedundancyOptimizer`` over the chosen optimizer: each rank
    keeps the optimizer state of its partition of the parameters, steps it, and broadcasts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from profiler.distributed import STRATEGIES
from profiler.engine.optimizers import CATALOG as OPTIMIZERS
from profiler.errors import ModelsizeError


@dataclass(frozen=True)
class Strategy:
    """A strategy and its options (see the module docstring)."""
    name: str
    fsdp_wrap: tuple[str, ...] = ()        # class names wrapped by fully_shard; () = the root only
    reshard_after_forward: bool = True
    bucket_cap_mb: float = 25.0
    gradient_as_bucket_view: bool = False

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ModelsizeError("unknown strategy", field="strategy",
                                 expected=" or ".join(STRATEGIES), received=repr(self.name))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.name == "fsdp":
            out.update(fsdp_wrap=list(self.fsdp_wrap), reshard_after_forward=self.reshard_after_forward)
        else:
            out.update(bucket_cap_mb=self.bucket_cap_mb, gradient_as_bucket_view=self.gradient_as_bucket_view)
        return out


def parallelize(module: torch.nn.Module, strategy: Strategy, optimizer: str, mesh: Any, *,
                amp: str | None = None, fake: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """``module`` spread over ``mesh`` by ``strategy``, and its optimizer (``optimizer``: a name of
    the catalogue). ``fake``: the tensors are fake (skip DDP's start-up broadcast, which reads data)."""
    if strategy.name == "fsdp":
        model = fsdp(module, mesh, strategy, amp)
        return model, OPTIMIZERS[optimizer].make(list(model.parameters()))
    model = ddp(module, mesh, strategy, fake)
    if strategy.name == "zero1":
        return model, zero1(model, optimizer)
    return model, OPTIMIZERS[optimizer].make(list(model.parameters()))


def ddp(module: torch.nn.Module, mesh: Any, strategy: Strategy, fake: bool) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel
    group = mesh.get_group()
    model = DistributedDataParallel(module, process_group=group, bucket_cap_mb=strategy.bucket_cap_mb,
                                    gradient_as_bucket_view=strategy.gradient_as_bucket_view,
                                    init_sync=not fake)
    model.register_comm_hook(group, _allreduce_in_place)
    model.reducer = _KeptBuckets(model.reducer)
    return model


class _KeptBuckets:
    """DDP's reducer, keeping the buckets it was built with.

    After the first backward DDP rebuilds its buckets once, in the order the gradients became
    ready, and agrees on that order between ranks by reading an index tensor (data a fake tensor
    has not). Both the prediction and the measurement keep the buckets made at construction
    (parameters in reverse order of registration, the order a sequential model's gradients become
    ready in, so the rebuilt layout is the same there).
    """

    def __init__(self, reducer: Any):
        self._reducer = reducer

    def _rebuild_buckets(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)


def _allreduce_in_place(group, bucket):  # type: ignore[no-untyped-def]
    """The average of a gradient bucket over the ranks, in place (``allreduce_hook``'s memory).
    Unannotated: DDP checks a hook's annotations, and this module's are strings."""
    import torch.distributed as dist
    tensor = bucket.buffer()
    tensor.div_(group.size())
    dist.all_reduce(tensor, group=group)
    done = torch.futures.Future()
    done.set_result(tensor)
    return done


def fsdp(module: torch.nn.Module, mesh: Any, strategy: Strategy, amp: str | None) -> torch.nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, amp)) if amp else MixedPrecisionPolicy()
    wrapped = [m for m in module.modules() if m is not module and _wrapped(m, strategy.fsdp_wrap)]
    known = {type(m).__name__ for m in module.modules()}
    missing = [name for name in strategy.fsdp_wrap if name not in known]
    if missing:
        raise ModelsizeError("no module of this class to wrap", field="fsdp-wrap",
                             expected="class names of the model's modules", received=", ".join(missing))
    for sub in reversed(wrapped):   # modules() lists parents first: wrap the innermost first
        fully_shard(sub, mesh=mesh, reshard_after_forward=strategy.reshard_after_forward, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=strategy.reshard_after_forward, mp_policy=policy)
    return module


def _wrapped(module: torch.nn.Module, classes: tuple[str, ...]) -> bool:
    return type(module).__name__ in classes


def zero1(model: torch.nn.Module, optimizer: str) -> torch.optim.Optimizer:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    def make(params: Any, **_: Any) -> torch.optim.Optimizer:
        return OPTIMIZERS[optimizer].make(params)

    return ZeroRedundancyOptimizer(list(model.parameters()), optimizer_class=make,
                                   process_group=model.process_group)
