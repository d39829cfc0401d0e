"""An operator call as plain data, to run it again on real tensors of the same layout.

The engine replays a model on fake tensors; a call's recipe keeps what a kernel's choice and speed
depend on — each tensor's shape, strides and dtype, and the call's other arguments (a
convolution's stride, groups, output mask) — and none of its values. :func:`recipe` writes one
(JSON-safe: a forked replay sends it as JSON), :func:`arguments` makes fresh tensors from it
(floating ones random, integer and boolean ones zero: an index of zero is valid for every
gather, embedding and loss target), :func:`key` names the signature, so that two copies of a
layer share one. :mod:`profiler.measuring.calls_alone` times each signature alone.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from profiler.engine.op_cost import OpCost

#: what a tensor, dtype, device, memory format and layout argument is written as (a dict of one key)
_TENSOR, _DTYPE, _DEVICE, _FORMAT, _LAYOUT = "tensor", "dtype", "device", "memory_format", "layout"
_FORMATS = {str(f): f for f in (torch.contiguous_format, torch.channels_last, torch.channels_last_3d,
                                torch.preserve_format)}
_LAYOUTS = {str(layout): layout for layout in (torch.strided,)}


class NotReplayable(ValueError):
    """An argument a recipe cannot write (a sparse tensor, a Python object)."""


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_complex() or value.is_quantized:
            raise NotReplayable(f"a {value.layout} {value.dtype} tensor")
        return {_TENSOR: [list(value.shape), list(value.stride()), str(value.dtype).removeprefix("torch.")]}
    if isinstance(value, torch.dtype):
        return {_DTYPE: str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {_DEVICE: value.type}
    if isinstance(value, torch.memory_format):
        if str(value) not in _FORMATS:
            raise NotReplayable(str(value))
        return {_FORMAT: str(value)}
    if isinstance(value, torch.layout):
        if str(value) not in _LAYOUTS:
            raise NotReplayable(str(value))
        return {_LAYOUT: str(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool):
        raise NotReplayable("a symbolic size")
    raise NotReplayable(type(value).__name__)


def recipe(args: tuple, kwargs: dict | None) -> dict[str, Any] | None:
    """``args`` and ``kwargs`` as plain data, or None where one cannot be written.

    >>> recipe((torch.empty(2, 3).t(), 1), {"dtype": torch.float16})
    {'args': [{'tensor': [[3, 2], [1, 3], 'float32']}, 1], 'kwargs': {'dtype': {'dtype': 'float16'}}}
    """
    try:
        return {"args": _encode(args), "kwargs": {k: _encode(v) for k, v in (kwargs or {}).items()}}
    except NotReplayable:
        return None


def key(cost: OpCost) -> str | None:
    """The call's signature: its operator and recipe (None without one)."""
    if cost.call is None:
        return None
    return cost.op + json.dumps(cost.call, separators=(",", ":"), sort_keys=True)


def operator(name: str) -> Any:
    """``"aten.addmm.default"`` -> ``torch.ops.aten.addmm.default``."""
    namespace, packet, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload)


def _decode(value: Any, device: str) -> Any:
    if isinstance(value, dict):
        (kind, found), = value.items()
        if kind == _TENSOR:   # values on a compact storage, then its view (an expanded one too)
            shape, stride, dtype = found
            storage = torch.zeros(_extent(shape, stride), dtype=getattr(torch, dtype), device=device)
            if storage.is_floating_point():
                storage.normal_()
            return storage.as_strided(shape, stride)
        if kind == _DTYPE:
            return getattr(torch, found)
        if kind == _DEVICE:
            return torch.device(device)
        if kind == _FORMAT:
            return _FORMATS[found]
        return _LAYOUTS[found]
    if isinstance(value, list):
        return [_decode(v, device) for v in value]
    return value


def arguments(call: dict[str, Any], device: str = "cpu") -> tuple[list[Any], dict[str, Any]]:
    """Fresh (args, kwargs) for a recipe, on ``device``.

    >>> args, kwargs = arguments(recipe((torch.empty(2, 3).t(), 1), {"dtype": torch.float16}))
    >>> args[0].shape, args[0].stride(), args[1], kwargs
    (torch.Size([3, 2]), (1, 3), 1, {'dtype': torch.float16})
    """
    return _decode(call["args"], device), {k: _decode(v, device) for k, v in call["kwargs"].items()}


def _extent(shape: list[int], stride: list[int]) -> int:
    """Elements of the storage a view of ``shape`` and ``stride`` spans."""
    return 1 + sum((size - 1) * step for size, step in zip(shape, stride)) if all(shape) else 0


def nbytes(call: dict[str, Any]) -> int:
    """Bytes of the tensors a recipe makes."""
    total = 0
    stack = [call["args"], list(call["kwargs"].values())]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict) and _TENSOR in value:
            shape, stride, dtype = value[_TENSOR]
            total += _extent(shape, stride) * getattr(torch, dtype).itemsize
    return total
