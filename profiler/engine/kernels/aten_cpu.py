"""The CPU kernels' workspace keyed by aten operator, for the torch path's storage log.

What CPU kernels allocate and free inside one operator call: no operator returns it, so a
tensor-level log cannot see it. Each entry turns one operator call's ATen arguments into the terms
of the kernel's own function in this folder (``cpu_conv.conv_workspace``,
``onednn_matmul.matmul_workspace``, ``cpu_norm``, ``cpu_reduce``), the functions the spec path's
rules call too, and returns the bytes it books, alive together while the call runs: both paths
book the same bytes, and this table is the one place where ATen calls meet those functions.
Operators dispatched on fake CPU tensors: ``aten.convolution`` and ``aten.convolution_backward``
(torch picks oneDNN or im2col below them, as ``cpu_conv`` does from the batch and sizes);
``nn.Linear`` runs ``addmm`` (``mm`` without bias) forward and two ``mm`` backward, whatever the
input's rank.
"""
from __future__ import annotations

from dataclasses import replace
from math import prod
from typing import Any, Callable, Iterable, Sequence

import torch
from torch._prims_common import suggest_memory_format

from profiler.dtypes import dtype_name
from profiler.engine.kernels.cpu_conv import conv_workspace
from profiler.engine.kernels.cpu_norm import (batch_norm_backward_kernel, batch_norm_backward_workspace,
                                              batch_norm_statistics)
from profiler.engine.kernels.cpu_reduce import SCALAR_OPERAND, mean_upcast
from profiler.engine.kernels.onednn_matmul import matmul_workspace
from profiler.rules.registry import Context, Saved

aten = torch.ops.aten


def registrar(table: dict[Any, Callable], what: str) -> Callable:
    """A decorator factory filling ``table`` with one function per operator, each once."""
    def for_ops(*ops: Any) -> Callable:
        def register(function: Callable) -> Callable:
            for op in ops:
                if op in table:
                    raise ValueError(f"a {what} for {op} is registered already")
                table[op] = function
            return function
        return register
    return for_ops


_WORKSPACE: dict[Any, Callable[[tuple, Any, Context, bool, dict], list[int]]] = {}


_workspace = registrar(_WORKSPACE, "workspace")


def kernel_workspace(func: Any, args: tuple, out: Any, run: Context, backward: bool,
                     kwargs: dict | None = None) -> list[int]:
    """Bytes the kernel behind one operator call allocates and frees inside, alive together.

    ``run`` carries the run's settings (autocast dtype, threads); ``backward``: the call is part
    of autograd's backward pass; ``kwargs``: the call's keyword arguments (``baddbmm``'s alpha).
    """
    booked = _WORKSPACE.get(func)
    return [n for n in booked(args, out, run, backward, kwargs or {}) if n] if booked is not None else []


def _op_context(run: Context, dtype: torch.dtype, *, batch: int = 1,
                data_format: str = "channels_first") -> Context:
    """The spec path's view of one call: autocast lowered it when it runs in ``run.amp``."""
    name = dtype_name(dtype)
    lowered = run.amp is not None and name == run.amp
    return replace(run, batch=batch, data_format=data_format,
                   dtype="float32" if lowered else name, amp=run.amp if lowered else None)


def _saved_bytes(tensors: Iterable[Saved], batch: int, act: torch.dtype) -> list[int]:
    """Bytes of a rule's tensors: "act" elements are the call's dtype, per sample unless not."""
    return [t.nbytes(batch, dtype_name(act)) for t in tensors]


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _channels_last(*tensors: torch.Tensor) -> bool:
    """torch's oneDNN convolution runs channels-last when its input or weight suggests it
    (``mkldnn_conv_use_channels_last``: ``suggest_memory_format``, from the strides): a
    (2, 64, 1, 1) input made channels-last is, the same shape made contiguous is not."""
    return any(t.dim() in _CHANNELS_LAST and suggest_memory_format(t) == _CHANNELS_LAST[t.dim()] for t in tensors)


def _conv(run: Context, x: torch.Tensor, weight: torch.Tensor, bias: bool, stride: Sequence[int],
          padding: Sequence[int], dilation: Sequence[int], transposed: bool, groups: int,
          out_shape: Sequence[int], input_grad: bool = True,
          grad_out: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """(forward, backward) workspace bytes of one convolution, from ``conv_workspace``; an input
    or output gradient (4-D and 5-D) not laid out in the kernel's memory format is copied to it."""
    batch = x.shape[0]
    channels_last = _channels_last(x, weight)
    fmt = _CHANNELS_LAST.get(x.dim()) if channels_last else torch.contiguous_format

    def copied(t: torch.Tensor | None) -> bool:
        return t is not None and t.dim() in (4, 5) and not t.is_contiguous(memory_format=fmt)

    ctx = _op_context(run, x.dtype, batch=batch, data_format="channels_last" if channels_last else "channels_first")
    forward, backward = conv_workspace(
        ctx, channels=x.shape[1], out_channels=out_shape[1], kernel=tuple(weight.shape[2:]),
        strides=tuple(stride), groups=groups, bias=bias, out_spatial=tuple(out_shape[2:]),
        transposed=transposed, in_spatial=tuple(x.shape[2:]), padding=tuple(padding),
        dilation=tuple(dilation), input_grad=input_grad, input_copied=copied(x), grad_copied=copied(grad_out))
    return _saved_bytes(forward, batch, x.dtype), _saved_bytes(backward, batch, x.dtype)


@_workspace(aten.convolution.default)
def _convolution(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
    groups)"""
    x, weight, bias, stride, padding, dilation, transposed, _, groups = args[:9]
    return _conv(run, x, weight, bias is not None, stride, padding, dilation, transposed, groups,
                 out.shape)[0]


@_workspace(aten.convolution_backward.default)
def _convolution_backward(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
    transposed, output_padding, groups, output_mask): ``bias_sizes`` is [0] without a bias, the
    mask says which gradients are made (input, weight, bias)."""
    grad_out, x, weight, _, stride, padding, dilation, transposed, _, groups, mask = args[:11]
    return _conv(run, x, weight, bool(mask[2]), stride, padding, dilation, transposed, groups,
                 grad_out.shape, input_grad=bool(mask[0]), grad_out=grad_out)[1]


@_workspace(aten.native_batch_norm.default)
def _batch_norm(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)"""
    x = args[0]
    return _saved_bytes(batch_norm_statistics(x.shape[1]), x.shape[0], x.dtype)


@_workspace(aten.native_batch_norm_backward.default)
def _batch_norm_backward(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """native_batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
    save_invstd, train, eps, output_mask): ``batch_norm_backward_workspace``, the kernel chosen
    from the two tensors' layouts as ATen does (``batch_norm_backward_kernel``)."""
    grad_out, x, mask = args[0], args[1], args[9]
    dense = all(t.is_contiguous() or t.is_contiguous(memory_format=_CHANNELS_LAST.get(t.dim(), torch.contiguous_format))
                for t in (x, grad_out))
    same = dense and suggest_memory_format(x) == suggest_memory_format(grad_out)
    fmt = _CHANNELS_LAST.get(x.dim())
    kernel = batch_norm_backward_kernel(tuple(x.shape), fmt is not None and x.is_contiguous(memory_format=fmt)
                                        and not x.is_contiguous(), x.is_contiguous(), same)
    return [batch_norm_backward_workspace(
        elements=x.numel(), channels=x.shape[1], itemsize=x.element_size(), input_grad=bool(mask[0]),
        kernel=kernel, threads=run.threads, reduced=x.dtype in (torch.bfloat16, torch.float16),
        grad_itemsize=grad_out.element_size())]


@_workspace(aten.mean.dim)
def _mean(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """``mean`` sums, then divides in place by the count, a number it wraps (``SCALAR_OPERAND``);
    in bfloat16 and float16 it sums in float32 (``mean_upcast``)."""
    x = args[0]
    if x.dtype in (torch.bfloat16, torch.float16):
        result, copy = mean_upcast(x.numel(), out.numel())
        return _saved_bytes((copy, result), 1, x.dtype)
    return _saved_bytes(SCALAR_OPERAND, 1, x.dtype)


def _onednn_takes(t: torch.Tensor) -> bool:
    """oneDNN's batched matmul takes an operand contiguous or with its last two axes transposed,
    dense across the batch; torch copies any other first (``is_mkldnn_optimized_format`` in ATen's
    ``mkldnn/Matmul.cpp``): a head's strided slice, as ``rules.attention``'s ``Attention.bmm``
    books. (``mm``/``addmm`` go to oneDNN through ``cpublas::gemm``, leading dimensions and all.)"""
    return t.dim() != 3 or t.is_contiguous() or (
        t.stride(0) == t.shape[1] * t.shape[2] and t.stride(1) == 1 and t.stride(2) == t.shape[1])


@_workspace(aten.mm.default, aten.mm.out, aten.addmm.default, aten.addmm.out, aten.addmm_.default,
            aten.bmm.default, aten.bmm.out, aten.baddbmm.default, aten.baddbmm.out, aten.baddbmm_.default)
def _gemm(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """A·B (batched: ``bmm``) as the spec path books a matmul (``matmul_workspace``): in bfloat16,
    oneDNN's scratchpad. Its kinds are roles in ``nn.Linear``: forward x·Wᵀ, input gradient g·W,
    and weight gradient gᵀ·x, the one whose A is a transposed view (column-major: stride 1 down
    the rows), which oneDNN copies. A batched one also books the operands oneDNN does not take
    (``_onednn_takes``) and ``baddbmm``'s alpha, unless 1."""
    a, b = [t for t in args if isinstance(t, torch.Tensor)][-2:]
    if a.dim() != b.dim() or a.dim() not in (2, 3):
        return []
    batch = a.shape[0] if a.dim() == 3 else 1
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    copies = tuple(t.numel() * t.dtype.itemsize for t in (a, b) if not _onednn_takes(t))
    transposed = _onednn_takes(a) and a.stride(-2) == 1 and (a.stride(-1) != 1 or rows == 1)
    kind = "grad_weight" if transposed else "grad_input" if backward else "forward"
    return matmul_workspace(_op_context(run, a.dtype), kind, rows, inner, cols, batch=batch, copies=copies,
                            alpha=a.dim() == 3 and kwargs.get("alpha", 1) != 1)


@_workspace(aten.mse_loss.default)
def _mse_loss(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """mse_loss(input, target, reduction): the CPU kernel squares (input − target) into an
    unreduced tensor of the input's size, then reduces it; with no reduction that tensor is the
    result (returned, not workspace)."""
    x = args[0]
    reduction = args[2] if len(args) > 2 else kwargs.get("reduction", 1)
    return [] if reduction == 0 else [x.numel() * x.element_size()]


@_workspace(aten.avg_pool3d.default, aten.avg_pool3d_backward.default)
def _avg_pool3d(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """avg_pool3d(input, ...) and avg_pool3d_backward(grad_output, input, ...): the CPU kernel
    reads its first operand contiguous and copies it first when it is not (a channels-last
    input, or its gradient). Measured (allocator events, (4, 8, 6, 6, 6) float32 input, 2×2×2
    pool): forward on a channels-last input 27,648 B (the input) besides the channels-first
    result, none on a contiguous one; backward 3,456 B (the output's gradient) with a
    channels-last gradient, none with a contiguous one, whatever the input's layout."""
    first = args[0]
    return [] if first.is_contiguous() else [first.numel() * first.element_size()]


@_workspace(aten.embedding_dense_backward.default)
def _embedding_backward(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    the CPU kernel reads both operands contiguous (``contiguous()``, not a reshape: a 2-d
    gradient with a row stride of 9 for 8 columns is copied too) and copies each that is not,
    besides the zeroed weight gradient it returns. Measured (allocator events, 50 × 8 float32
    table, 24 indices): a (4, 6, 8) gradient sliced from a concatenation's (4, 56) one, 768 B;
    strided int64 indices, 192 B; contiguous ones, nothing."""
    return [t.numel() * t.element_size() for t in args[:2] if not t.is_contiguous()]
