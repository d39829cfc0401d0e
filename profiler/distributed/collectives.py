"""What a process group's collective allocates through the CPU allocator inside itself.

A fake process group returns at once, so the replay sees the tensors a strategy hands to a
collective but not the buffers the backend makes while it runs. gloo's, measured on 2 CPU ranks
(torch 2.14, the allocator's events of each call, the calling thread's and gloo's worker's):

- ``all_gather_into_tensor`` (``c10d._allgather_base_``): one buffer of the output's size on the
  calling thread, freed when the call returns, then one on the worker (the flat output it gathers
  into before copying out), freed when the work ends: never both at once.
- ``reduce_scatter_tensor`` (``c10d._reduce_scatter_base_``): a copy of the input on the calling
  thread, alive until the work ends; meanwhile the worker divides by the world size for an
  average in place, a Python number wrapped as a 0-d double (8 B) and its cast to the tensor's
  dtype.
- ``all_reduce``, ``broadcast`` of one dense tensor (DDP's buckets, ZeRO-1's parameters): in place,
  nothing allocated.

Each entry gives, per call, the groups of buffers alive together, one group after the other. They
are the category "communication", on both sides (``measuring.peak_breakdown`` names what a
collective allocates so), as are the padding copies of FSDP2's ``fsdp.chunk_cat`` and the buffers
FSDP2 makes for its all-gather and reduce-scatter (:data:`FSDP_COLLECTIVE_CALLS`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

c10d = torch.ops.c10d

GLOO: dict[Any, Callable[[tuple], list[list[int]]]] = {}


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _all_gather_into_tensor(args: tuple) -> list[list[int]]:
    output = args[0]
    return [[_nbytes(output)], [_nbytes(output)]]


def _reduce_scatter_tensor(args: tuple) -> list[list[int]]:
    source = args[1]
    return [[_nbytes(source), 8, source.element_size()]]


GLOO[c10d._allgather_base_.default] = _all_gather_into_tensor
GLOO[c10d._reduce_scatter_base_.default] = _reduce_scatter_tensor


def buffers(func: Any, args: tuple, backend: str = "gloo") -> list[list[int]]:
    """The groups of buffers ``func`` allocates inside (see the module docstring); none for a
    call that is not a collective or allocates nothing."""
    booked = GLOO.get(func) if backend == "gloo" else None
    return booked(args) if booked is not None else []


def wrapped_kernels() -> dict[Any, Any]:
    """Custom operators a strategy dispatches whose kernel is one aten operator, which the replay
    does not see (it runs inside the custom operator): FSDP2's ``fsdp.chunk_cat`` (the
    reduce-scatter input) runs ``aten._chunk_cat.out``, whose padding copies are communication."""
    import torch.distributed.fsdp._fully_shard._fsdp_collectives  # noqa: F401  (defines fsdp.chunk_cat)
    return {torch.ops.fsdp.chunk_cat.default: torch.ops.aten._chunk_cat.out}


#: FSDP2's functions that run its all-gather and reduce-scatter, inside its profiler ranges
#: ``measuring.peak_breakdown.FSDP_COLLECTIVE_RANGES`` ("FSDP::all_gather",
#: "FSDP::post_backward_reduce"): the flat all-gather output (the unsharded parameters are copied
#: out of it, then it is dropped), the mixed-precision input copy, the packed reduce-scatter input
#: and its output (which becomes the sharded gradient, named so once it is one).
FSDP_COLLECTIVE_CALLS = ("foreach_all_gather", "foreach_reduce")


def fsdp_collectives_seen(inside: Callable[[], Any]) -> Callable[[], None]:
    """Run FSDP2's all-gather and reduce-scatter calls inside ``inside()`` (a context manager);
    returns what undoes it. They are looked up in ``_fsdp_param_group``, where FSDP2 calls them."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group
    originals = {name: getattr(group, name) for name in FSDP_COLLECTIVE_CALLS}

    def seen(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with inside():
                return original(*args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(group, name, seen(original))

    def undo() -> None:
        for name, original in originals.items():
            setattr(group, name, original)
    return undo
