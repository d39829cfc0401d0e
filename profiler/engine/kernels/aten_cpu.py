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
from profiler.engine.kernels import cpu_isa
from profiler.engine.kernels.conv_call import ConvCall
from profiler.engine.kernels.cpu_conv import conv_workspace, kernel_name, results_absent
from profiler.engine.kernels.cpu_norm import (batch_norm_backward_kernel, batch_norm_backward_workspace,
                                              batch_norm_statistics)
from profiler.engine.kernels.cpu_reduce import SCALAR_OPERAND, mean_upcast
from profiler.engine.kernels.onednn_conv import bf16_strided_dw_data_modelled
from profiler.engine.kernels.onednn_matmul import matmul_workspace, onednn_bf16_gemm_scratch
from profiler.engine.kernels.onednn_rnn import (bf16_lstm_backward_workspace, bf16_lstm_forward_workspace,
                                                lstm_backward_workspace, lstm_forward_workspace,
                                                onednn_lstm_workspace_bytes)
from profiler.engine.kernels.cpu_attention import (autocast_encoder_layer_peak, encoder_layer_peak,
                                                   encoder_layer_result_last, flash_backward_workspace,
                                                   flash_forward_workspace, mha_peak)
from profiler.engine.step_time import CHANNELS_LAST
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


def results_made_last(func: Any, args: tuple, out: Any, run: Context, backward: bool,
                      kwargs: dict | None = None) -> tuple[int, ...]:
    """Positions of the call's results that do not exist yet when its workspace is at its worst:
    the kernel's buffers stand where they will be (a convolution made blocked, copied out at the
    end). The workspace :func:`kernel_workspace` books is counted beyond them, as it is beyond
    the others."""
    if func not in _RESULTS_MADE_LAST:
        return ()
    return tuple(_WORKSPACE[func](args, out, run, backward, kwargs or {}, absent=True))


_RESULTS_MADE_LAST = frozenset({aten.convolution.default, aten.convolution_backward.default,
                                aten._transformer_encoder_layer_fwd.default, aten.mkldnn_rnn_layer_backward.default})


#: calls whose kernel allocates inside what no function here models: op -> (call -> (what, bytes
#: uncertain per call) or None). The prediction says so instead of silently counting nothing.
_UNMODELLED: dict[Any, Callable[[tuple, Context], tuple[str, int] | None]] = {}


def unmodelled(func: Any, args: tuple, run: Context) -> tuple[str, int] | None:
    """(what is not modelled, about how many bytes per call) for a call whose kernel's workspace
    is unknown here; None for the others."""
    check = _UNMODELLED.get(func)
    return check(args, run) if check is not None else None


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
          grad_out: torch.Tensor | None = None, absent: bool = False) -> tuple[Sequence[int], Sequence[int]]:
    """(forward, backward) workspace bytes of one convolution, from ``conv_workspace``; an input,
    output gradient or weight (4-D and 5-D) not laid out in the kernel's memory format is copied to it.
    ``absent``: instead, the results not made yet at the workspace's worst moment
    (``cpu_conv.results_absent``)."""
    batch = x.shape[0]
    channels_last = _channels_last(x, weight)
    fmt = _CHANNELS_LAST.get(x.dim()) if channels_last else torch.contiguous_format

    def copied(t: torch.Tensor | None) -> bool:
        return t is not None and t.dim() in (4, 5) and not t.is_contiguous(memory_format=fmt)

    ctx = _op_context(run, x.dtype, batch=batch, data_format="channels_last" if channels_last else "channels_first")
    terms = dict(channels=x.shape[1], out_channels=out_shape[1], kernel=tuple(weight.shape[2:]),
                 strides=tuple(stride), groups=groups, bias=bias, out_spatial=tuple(out_shape[2:]),
                 transposed=transposed, in_spatial=tuple(x.shape[2:]), padding=tuple(padding),
                 dilation=tuple(dilation), input_grad=input_grad)
    if absent:
        return results_absent(ctx, **terms)
    forward, backward = conv_workspace(ctx, **terms, input_copied=copied(x), grad_copied=copied(grad_out),
                                       weight_copied=copied(weight) if channels_last else None)
    return _saved_bytes(forward, batch, x.dtype), _saved_bytes(backward, batch, x.dtype)


#: pooling, whose CPU kernels vectorise over channels when they are innermost: a 2 × 2 max pool of
#: 8 × 16 × 32 × 32 took 244 µs on a contiguous (NCHW) tensor, 28 µs on a channels-last one (what a
#: Keras-style spec's layers pass), 2 threads
_POOLS = {aten.max_pool2d_with_indices.default, aten.max_pool2d_with_indices_backward.default,
          aten.avg_pool2d.default, aten.avg_pool2d_backward.default}


#: softmax along the last axis, whose CPU kernel vectorises along each row: a row shorter than
#: one vector runs scalar code, 9.3 ms for a 4 MiB float32 softmax of rows of 10 against 0.69 ms
#: for rows of 16 (Intel Xeon, AVX-512, 2 threads); conv-224's classifier is such a softmax
_SOFTMAX = {aten._softmax.default: 1, aten._log_softmax.default: 1,
            aten._softmax_backward_data.default: 2, aten._log_softmax_backward_data.default: 2}


def _vector_floats() -> int:
    """float32 lanes of one vector of the ATen kernels this CPU runs (its CPU capability)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if capability.startswith("AVX512") else 8 if capability.startswith("AVX2") else 4


def kernel_of(func: Any, args: tuple, run: Context) -> str:
    """Which CPU kernel family runs a call, where that sets its speed (convolutions: oneDNN,
    depthwise or im2col, and im2col on a 1 × 1 kernel without stride or padding, which multiplies
    the input as it lies, unfolding nothing: torchvision mobilenet_v3_small's pointwise ones at
    batch 1 ran in 11-15 µs where 3 × 3 ones of their FLOPs took 34; a batch norm in training,
    which computes the batch's statistics, 2.7 × the time of one reading its running statistics on
    regnetx_002's calls; a pooling on a channels-last tensor, see :data:`_POOLS`; a softmax over
    rows shorter than a vector, see :data:`_SOFTMAX`; a strided convolution, a family of its own
    beside each: fewer outputs per input read, and backward scatters its gradient, so per FLOP it is
    1.5-4 × slower than one of stride 1 of the same shapes: 8 × 128 × 8 × 8 by 256 3 × 3 filters on
    oneDNN, forward 261 GFLOP/s at stride 1 and 178 at stride 2, backward 169 and 72; a oneDNN
    convolution over few positions for its filters' size, forward and the backward that computes
    the weight gradient, see :func:`_short_reduction`; a oneDNN
    recurrent layer that trains, which also writes its gates for backward, whenever grad mode is on
    (see :func:`_onednn_lstm`): torch's LSTM(32, 64) over 16 steps took 164 µs a call in
    inference and 180 training at batch 1, 241 and 290 at batch 8); a float32 matrix multiply
    with a thin side and a large rest, see :func:`matmul_family`; "" for the others."""
    if func in _MATMULS:
        return matmul_family(*args[_MATMULS[func]:_MATMULS[func] + 2])
    if func is aten.native_batch_norm.default:
        return "training" if args[5] else ""
    if func is aten.mkldnn_rnn_layer.default:
        return "training" if torch.is_grad_enabled() else ""
    if func in _SOFTMAX:
        x, dim = args[0], args[_SOFTMAX[func]]
        last = x.dim() > 0 and dim % x.dim() == x.dim() - 1
        return "short_rows" if last and x.shape[-1] < _vector_floats() else ""
    if func in _POOLS:
        x = args[1] if "backward" in func.name() else args[0]
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return "channels_last" if channels_last else ""
    if func is aten.convolution.default:
        x, weight = args[0], args[1]
        stride, padding, dilation, transposed, groups = args[3], args[4], args[5], args[6], args[8]
    elif func is aten.convolution_backward.default:
        x, weight = args[1], args[2]
        stride, padding, dilation, transposed, groups = args[4], args[5], args[6], args[7], args[9]
    else:
        return ""
    spatial = tuple(x.shape[2:])
    call = ConvCall(x.shape[1], weight.shape[0], spatial, spatial,
                    tuple(weight.shape[2:]), tuple(stride), tuple(padding), tuple(dilation), groups,
                    False, bool(transposed))
    name = kernel_name(_op_context(run, x.dtype, batch=x.shape[0]), call)
    pointwise = all(k == 1 for k in call.kernel) and not (call.strided or call.dilated or any(padding))
    if name == "im2col" and pointwise:
        name = "im2col_1x1"
    elif call.strided and not call.transposed:
        name = f"{name}_strided"
    elif name == "onednn" and _short_reduction(x, weight) and (func is aten.convolution.default or args[10][1]):
        name = "onednn_wide"
    # channels-last tensors run another loop nest of the family, at another speed: a 7 x 7 depthwise
    # convolution of timm convnext's (1 x 24 x 16 x 16, channels-last after its blocks' permutes)
    # took 47 us, 76 on a contiguous tensor; 1 x 64 x 2 x 2, 41 and 72 (2 threads, tight loops)
    return f"{name}{CHANNELS_LAST}" if _channels_last(x, weight) else name


#: the matrix multiplies whose shapes set their kernel family: (operator, index of the first factor)
_MATMULS = {aten.mm.default: 0, aten.addmm.default: 1}
#: a thin side of a matrix multiply (rows of a few tokens; backward's weight gradient summed over
#: them), and the fewest elements of the large operand or result that make it a family of its own:
#: see :func:`matmul_family`
THIN_SIDE = (8, 32)
LARGE = 2 ** 18


def matmul_family(a: torch.Tensor, b: torch.Tensor) -> str:
    """The kernel family of a float32 ``a @ b`` (rows × inner by inner × columns) with a thin side
    and a large rest, which MKL runs far below the FLOP rate of a squarer multiply of the same
    FLOPs: "thin", 8 to 32 rows against a large other operand (a layer's weight applied to a few
    tokens, and its input gradient), about as slow as that operand streams through MKL's
    small-row path: timm mixer_s16's 16 × 512 by 512 × 2048 channel MLP at batch 1
    took 477 µs in the network (299 µs repeated alone) where squarer calls of its FLOPs priced
    216, swin_tiny's last stage at batch 4 (16 rows, 768 × 3072) 656-1,096 µs against 352-500;
    "outer", an inner side of at most 32 into a large result (the weight gradient summed over
    those rows, a token-mixing layer on many channels), bound by writing it: 270-340 µs for
    mixer's 4 MiB weight gradients against 152 priced (Intel Xeon, 2 threads); "" for the others
    (fewer than 8 rows stream the operand as a matrix-vector product does, at the family's
    bandwidth; few columns of a large first operand, mixer's token MLP on 2,048 channels at batch
    4, run another path: 137 µs in the network, 180 priced as thin rows, 90 as neither). Their
    curves come from a calibration network of such layers (:mod:`profiler.measuring.calibrate`)."""
    if a.dim() != 2 or b.dim() != 2 or a.dtype != torch.float32:
        return ""
    rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
    if THIN_SIDE[0] <= rows <= THIN_SIDE[1] and inner * cols >= LARGE:
        return "thin"
    return "outer" if inner <= THIN_SIDE[1] and rows * cols >= LARGE else ""


def _short_reduction(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a weight gradient sums over fewer positions (batch × map) than a quarter of the
    weights a filter has: a wide layer on a small map, whose gradient oneDNN computes far below its
    FLOP rate (densenet121's last transition, 1024 -> 512 1 × 1 on 4 × 4 at batch 4: 1.53 ms for
    its weight gradient where 512 -> 512 takes 0.34 ms; its whole backward 2.1 ms timed alone
    where the FLOP curve said 0.9). A family of its own, ``onednn_wide``; the quarter keeps
    densenet's 3 × 3 growth layers (1,024 positions, 1,152 weights a filter), which run at the FLOP
    rate, out of it. Its forward pass is as far below the rate, a matrix-vector product streaming
    the weight (reordered at each call): timm mobilenetv3_small_050's head, 288 -> 1024 on 1 × 1
    maps at batch 4, took 389 µs alone where oneDNN's curve said 188; so it is that family too."""
    return 4 * x.shape[0] * prod(x.shape[2:]) < prod(weight.shape[1:])


@_workspace(aten.convolution.default)
def _convolution(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict,
                 absent: bool = False) -> Sequence[int]:
    """convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
    groups)"""
    x, weight, bias, stride, padding, dilation, transposed, _, groups = args[:9]
    return _conv(run, x, weight, bias is not None, stride, padding, dilation, transposed, groups,
                 out.shape, absent=absent)[0]


@_workspace(aten.convolution_backward.default)
def _convolution_backward(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict,
                          absent: bool = False) -> Sequence[int]:
    """convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
    transposed, output_padding, groups, output_mask): ``bias_sizes`` is [0] without a bias, the
    mask says which gradients are made (input, weight, bias)."""
    grad_out, x, weight, _, stride, padding, dilation, transposed, _, groups, mask = args[:11]
    return _conv(run, x, weight, bool(mask[2]), stride, padding, dilation, transposed, groups,
                 grad_out.shape, input_grad=bool(mask[0]), grad_out=grad_out, absent=absent)[1]


def _uncovered_grouped_conv(args: tuple, run: Context) -> tuple[str, int] | None:
    """A 2-D grouped convolution outside what was measured exact (``results/grouped_conv_sweep.md``:
    float32 with a multiple of 8 channels per group, in and out; depthwise in float32 and
    bfloat16, in either layout, float16 up to 3×3): oneDNN's grouped kernels reorder and pad
    other widths and every bfloat16 one, in ways not modelled; a strided bfloat16 depthwise
    convolution's input gradient runs ``brgconv_strided`` on VNNI-paired weights (measured 82,736
    to 109,744 B under on 24–128 channels, 8×8 and 16×16, batch 2), modelled on NCHW tensors
    whose sides are multiples of the stride on AVX512_CORE_BF16 only
    (``onednn_conv.bf16_strided_dw_data_scratchpad``). At stake: what the laws book
    for the call in 4-byte elements, plus two copies of its tensors per thread (a bound measured
    to hold over the sweep's worst calls, not a law)."""
    backward = len(args) > 9   # convolution_backward(grad_output, input, weight, ...): 11 arguments
    x, weight, groups = (args[1], args[2], args[9]) if backward else (args[0], args[1], args[8])
    if x.dim() != 4 or groups == 1 or (args[7] if backward else args[6]):
        return None
    per_in, per_out = x.shape[1] // groups, weight.shape[0] // groups
    depthwise = groups == x.shape[1]
    if x.dtype == torch.float32 and (depthwise or (per_in % 8 == 0 and per_out % 8 == 0)):
        return None
    strided_data = backward and max(args[4]) > 1 and args[10][0]   # brgconv_strided's data phase
    if strided_data and x.dtype == torch.bfloat16 and not _channels_last(x, weight):
        spatial = tuple(x.shape[2:])
        strided_data = not bf16_strided_dw_data_modelled(ConvCall(
            x.shape[1], weight.shape[0], spatial, spatial, tuple(weight.shape[2:]), tuple(args[4]),
            tuple(args[5]), tuple(args[6]), groups, False, False))
    if depthwise and per_out == 1 and x.dtype == torch.bfloat16 and not strided_data:
        return None   # modelled: jit_dw, jit_bf16 (5×5, 7×7) and NCHW's gemm weight gradients
    if depthwise and max(weight.shape[2:]) <= 3 and x.dtype != torch.bfloat16:
        return None
    tensors = sum(t.numel() * t.element_size() for t in (args[0], weight) + ((x,) if backward else ()))
    out_shape = args[0].shape if backward else _conv_out_shape(x, weight, args[3], args[4], args[5])
    booked = _conv(run, x, weight, False, args[4 if backward else 3], args[5 if backward else 4],
                   args[6 if backward else 5], False, groups, out_shape)[1 if backward else 0]
    kind = f"{'×'.join(map(str, weight.shape[2:]))} depthwise" if depthwise else "grouped"
    what = (f"oneDNN's {dtype_name(x.dtype)} {kind} convolution, {per_in}→{per_out} channels per group "
            f"(aten.{'convolution_backward' if backward else 'convolution'}): its reorders and scratchpad")
    return what, sum(booked) * 4 // x.element_size() + 2 * tensors * run.threads


def _conv_out_shape(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
                    dilation: Sequence[int]) -> tuple[int, ...]:
    spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)]
    return (x.shape[0], weight.shape[0], *spatial)


_UNMODELLED[aten.convolution.default] = _uncovered_grouped_conv
_UNMODELLED[aten.convolution_backward.default] = _uncovered_grouped_conv


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
                            alpha=a.dim() == 3 and kwargs.get("alpha", 1) != 1, bmm=a.dim() == 3)


@_workspace(aten._chunk_cat.default, aten._chunk_cat.out)
def _chunk_cat(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """Each input whose size along ``dim`` is not a multiple of ``num_chunks`` is first padded to
    one, a copy (ATen's ``_pad_chunk``); the copies live until the result is made. Measured: FSDP2's
    reduce-scatter input on 2 gloo ranks, a (65, 64) float32 gradient and its (65,) bias: 16,896 B
    and 264 B, the (66, 64) and (66,) copies; nothing for the evenly split (64, 32) layer."""
    tensors, dim, chunks = args[0], args[1], args[2]
    booked = []
    for t in tensors:
        axis = dim % t.dim() if t.dim() else 0
        size = t.shape[axis] if t.dim() else 1
        if size % chunks:
            padded = -(-size // chunks) * chunks
            booked.append(t.numel() // max(size, 1) * padded * t.element_size())
    return booked


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


# ----------------------------------------------------------------------------------------------
# Recurrent layers: oneDNN's LSTM (``onednn_rnn``). nn.GRU and nn.RNN run ATen's own cells
# (matmuls and pointwise operators the log sees one by one).

#: ``mkldnn_rnn_layer``'s ``mode``: oneDNN's LSTM (``ideep::rnn_kind::LSTM``)
_LSTM = 2


def _cpu_isa() -> str:
    """oneDNN's instruction set as ``brgemm_n_block`` names it ("AVX512" or "AVX2"): oneDNN's own
    (capped by ONEDNN_MAX_CPU_ISA), not ATen's ``get_cpu_capability`` which ignores the cap."""
    isa = cpu_isa.onednn_isa() or "AVX2"
    return "AVX512" if cpu_isa.NAMES.index(isa) >= cpu_isa.NAMES.index("AVX512_CORE") else "AVX2"


def bf16_lstm_modelled(x: torch.Tensor) -> bool:
    """oneDNN's bf16 LSTM is read (``onednn_rnn.bf16_lstm_*``) for AVX512_CORE_BF16's brgemm
    kernels; under another ISA (reference or AMX kernels) it stays flagged."""
    return x.dtype == torch.bfloat16 and cpu_isa.onednn_isa() == cpu_isa.MODELLED


@_workspace(aten.mkldnn_rnn_layer.default)
def _onednn_lstm(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """mkldnn_rnn_layer(input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode,
    hidden_size, num_layers, has_biases, bidirectional, batch_first, train): one layer and
    direction, time-major input (T, N, I). The kernel trains (keeps a workspace) when grad mode is
    on, whatever ``train`` says (ATen's ``at::GradMode::is_enabled()``)."""
    x, mode, hidden = args[0], args[9], args[10]
    if mode != _LSTM or x.dim() != 3:
        return []
    t, n, i = x.shape
    if bf16_lstm_modelled(x):
        return bf16_lstm_forward_workspace(t, n, i, hidden, training=torch.is_grad_enabled(), threads=run.threads)
    if x.dtype != torch.float32:
        return []
    return lstm_forward_workspace(t, n, i, hidden, training=torch.is_grad_enabled(), threads=run.threads,
                                  isa=_cpu_isa())


def _low_precision_lstm(args: tuple, run: Context) -> tuple[str, int] | None:
    """oneDNN's LSTM in float16, or in bfloat16 off AVX512_CORE_BF16: its kernels (and
    workspace) were not measured; the float32 laws' bytes, in the call's own dtype, say how much
    is at stake."""
    x, mode, hidden = args[0], args[9], args[10]
    if mode != _LSTM or x.dtype == torch.float32 or x.dim() != 3 or bf16_lstm_modelled(x):
        return None
    t, n, i = x.shape
    at_stake = sum(lstm_forward_workspace(t, n, i, hidden, training=torch.is_grad_enabled(), threads=run.threads,
                                          isa=_cpu_isa()))
    if torch.is_grad_enabled():
        at_stake += onednn_lstm_workspace_bytes(t, n, i, hidden)
    return f"oneDNN's {dtype_name(x.dtype)} LSTM (aten.mkldnn_rnn_layer): its workspace", at_stake


_UNMODELLED[aten.mkldnn_rnn_layer.default] = _low_precision_lstm


def _low_precision_lstm_backward(args: tuple, run: Context) -> tuple[str, int] | None:
    """oneDNN's LSTM backward in float16, or in bfloat16 off AVX512_CORE_BF16: not measured as a
    law. At stake: twice the float32 law's bytes (a bound: measured 178,872 to 258,488 B on the
    zoo's 2-layer bf16 LSTM, hidden 64, batch 1 and 4, where the float32 law gives 142,904 to
    243,256 B)."""
    x, mode, hidden = args[0], args[14], args[15]
    if mode != _LSTM or x.dtype == torch.float32 or x.dim() != 3 or bf16_lstm_modelled(x):
        return None
    t, n, i = x.shape
    return (f"oneDNN's {dtype_name(x.dtype)} LSTM backward (aten.mkldnn_rnn_layer_backward): its workspace",
            2 * sum(lstm_backward_workspace(t, n, i, hidden)))


_UNMODELLED[aten.mkldnn_rnn_layer_backward.default] = _low_precision_lstm_backward


@_workspace(aten.mkldnn_rnn_layer_backward.default)
def _onednn_lstm_backward(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict,
                          absent: bool = False) -> list[int]:
    """mkldnn_rnn_layer_backward(input, w_ih, w_hh, b_ih, b_hh, hx, cx, output, hy, cy,
    grad_output, grad_hy, grad_cy, reverse, mode, hidden_size, ...): an absent gradient is made as
    zeros, a non-contiguous one copied, and ``cx`` cloned when it shares ``hx``'s storage. In
    bfloat16 ATen then converts each of the three to float32 as well (measured: a (9, 3, 10)
    strided bf16 gradient, absent state gradients: 540 + 60 + 60 B, then 1,080 + 120 + 120 B).
    ``absent``: instead, the result made last, the second bias gradient (float32: ATen clones it
    once the kernel's buffers are freed, ``lstm_backward_workspace``; at a step's peak inside the
    call its 4H floats are not there yet, measured: 1,024 B of nn.LSTM(32, 64)'s)."""
    x, hx, cx, grads, mode, hidden = args[0], args[5], args[6], args[10:13], args[14], args[15]
    if mode != _LSTM or x.dim() != 3 or all(g is None for g in grads):
        return []
    if absent:
        return [4] if x.dtype == torch.float32 else []
    t, n, i = x.shape
    likes = (args[7], hx, cx)
    made = [out_like.numel() * out_like.element_size() if g is None else 0 if g.is_contiguous()
            else g.numel() * g.element_size() for g, out_like in zip(grads, likes)]
    if hx.untyped_storage() is cx.untyped_storage():
        made.append(cx.numel() * cx.element_size())
    if bf16_lstm_modelled(x):
        made += [like.numel() * 4 for like in likes]
        return bf16_lstm_backward_workspace(t, n, i, hidden, threads=run.threads, made=made)
    if x.dtype != torch.float32:
        return []
    return lstm_backward_workspace(t, n, i, hidden, made=made)


# ----------------------------------------------------------------------------------------------
# Fused attention (``cpu_attention``): the inference fast paths of nn.MultiheadAttention and
# nn.TransformerEncoderLayer, one operator each. The peak inside is booked less the results.


def _argument(args: tuple, kwargs: dict, func: Any, name: str) -> Any:
    """An operator's argument by name, wherever it was passed (positional, keyword, default)."""
    for index, argument in enumerate(func._schema.arguments):
        if argument.name == name:
            if index < len(args):
                return args[index]
            return kwargs.get(name, argument.default_value)
    raise KeyError(name)


def _results_bytes(out: Any) -> int:
    tensors = out if isinstance(out, (tuple, list)) else (out,)
    return sum(t.untyped_storage().nbytes() for t in tensors if isinstance(t, torch.Tensor))


def _mask_copy(mask: torch.Tensor | None, scores_shape: tuple[int, int, int, int]) -> int | None:
    """Bytes of the boolean mask ``masked_softmax`` makes (measured, torch 2.14: a (B, T) key
    padding mask is converted as it is, any other expanded to the scores' (B, H, T, T) first);
    0 for a boolean mask, None without a mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return 0
    b, _, t, _ = scores_shape
    padding = mask.dim() == 2 and tuple(mask.shape) == (b, t) and b != t
    return mask.numel() if padding else prod(scores_shape)


def _self_attention_sizes(q: torch.Tensor, heads: int) -> tuple[int, int, int]:
    """(X, S, B·T·T) in bytes of the query's dtype: its size, the heads' scores, their average."""
    b, t, _ = q.shape
    item = q.element_size()
    return q.numel() * item, b * heads * t * t * item, b * t * t * item


@_workspace(aten._native_multi_head_attention.default)
def _native_mha(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """_native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
    proj_weight, proj_bias, mask, need_weights, average_attn_weights, mask_type): self-attention
    (one tensor for query, key and value), ``mha_peak``."""
    f = aten._native_multi_head_attention.default
    q, k, v, heads = args[0], args[1], args[2], args[4]
    if not (q is k is v) or q.dim() != 3:
        return []
    x, scores, averaged = _self_attention_sizes(q, heads)
    mask = _mask_copy(_argument(args, kwargs, f, "mask"), (q.shape[0], heads, q.shape[1], q.shape[1]))
    peak = mha_peak(x, scores, averaged, need_weights=bool(_argument(args, kwargs, f, "need_weights")),
                    average=bool(_argument(args, kwargs, f, "average_attn_weights")), mask=mask,
                    gemms=_attention_gemms(q, heads, run))
    return [peak - _results_bytes(out)]


def _attention_gemms(x: torch.Tensor, heads: int, run: Context, ffn: int | None = None,
                     bf16: bool | None = None) -> tuple[int, ...]:
    """oneDNN's scratchpads for the fused paths' matmuls in bfloat16 (``onednn_bf16_gemm_scratch``):
    x·W_qkvᵀ, the heads' q·kᵀ and scores·v, the output projection, then (``ffn``: the
    feed-forward's width) the feed-forward's two; zeros in float32 (``bf16``: whether they run
    in bfloat16, by default the input's dtype)."""
    if not (x.dtype == torch.bfloat16 if bf16 is None else bf16):
        return (0,) * (4 if ffn is None else 6)
    b, t, d = x.shape
    rows, threads = b * t, run.threads
    gemms = (onednn_bf16_gemm_scratch("forward", rows, d, 3 * d, threads=threads),
             onednn_bf16_gemm_scratch("forward", t, d // heads, t, threads=threads, batch=b * heads, bmm=True),
             onednn_bf16_gemm_scratch("grad_input", t, t, d // heads, threads=threads, batch=b * heads, bmm=True),
             onednn_bf16_gemm_scratch("forward", rows, d, d, threads=threads))
    if ffn is None:
        return gemms
    return (*gemms, onednn_bf16_gemm_scratch("forward", rows, d, ffn, threads=threads),
            onednn_bf16_gemm_scratch("forward", rows, ffn, d, threads=threads))


@_workspace(aten._transformer_encoder_layer_fwd.default)
def _encoder_layer(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict,
                   absent: bool = False) -> list[int]:
    """_transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias,
    proj_weight, proj_bias, use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2,
    norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask, mask_type)
    (``encoder_layer_peak``); the layer norms keep their statistics in the input's dtype.
    ``absent``: instead, the result's position when it is not made yet at that peak
    (``encoder_layer_result_last``)."""
    f = aten._transformer_encoder_layer_fwd.default
    src, heads, norm_first, ffn_weight_1 = args[0], args[2], args[8], args[14]
    if src.dim() != 3 or src.dtype not in (torch.float32, torch.bfloat16):
        return []
    if autocast_encoder_modelled(args, kwargs, run):
        if absent:   # measured exact with its result counted as made
            return []
        return [autocast_encoder_layer(args, run) - _results_bytes(out) - autocast_cached_casts(args)]
    x, scores, _ = _self_attention_sizes(src, heads)
    rows, item = src.shape[0] * src.shape[1], src.element_size()
    mask = _mask_copy(_argument(args, kwargs, f, "mask"), (src.shape[0], heads, src.shape[1], src.shape[1]))
    sizes = (x, scores, rows * ffn_weight_1.shape[0] * item, 2 * rows * item)
    terms = dict(norm_first=bool(norm_first), mask=mask,
                 gemms=_attention_gemms(src, heads, run, ffn=ffn_weight_1.shape[0]))
    if absent:
        return [0] if encoder_layer_result_last(*sizes, **terms) else []
    return [encoder_layer_peak(*sizes, **terms) - _results_bytes(out)]


def autocast_encoder_modelled(args: tuple, kwargs: dict | None, run: Context) -> bool:
    """The encoder layer's fast path under bfloat16 autocast as measured exact
    (``autocast_encoder_layer_peak``): float32 weights and input, post-norm, no mask, on
    AVX512_CORE_BF16."""
    mask = _argument(args, kwargs or {}, aten._transformer_encoder_layer_fwd.default, "mask")
    return (run.amp == "bfloat16" and args[0].dim() == 3 and args[0].dtype == torch.float32 and not args[8]
            and mask is None and cpu_isa.onednn_isa() == cpu_isa.MODELLED)


def kernel_autocast_casts(func: Any, args: tuple, kwargs: dict | None, run: Context) -> int:
    """Bytes a call leaves in autocast's weight cache beyond its results, alive until the autocast
    region ends (the engine books them so): the fused encoder layer's inner casts."""
    if func is aten._transformer_encoder_layer_fwd.default and autocast_encoder_modelled(args, kwargs, run):
        return autocast_cached_casts(args)
    return 0


def autocast_cached_casts(args: tuple) -> int:
    """Bytes of the bfloat16 casts the encoder layer's fast path leaves in autocast's weight cache
    (freed when the autocast region ends): the attention's four projection tensors and the
    feed-forward's two biases (its weights are cast through their transposes, not cached)."""
    return 2 * sum(args[i].numel() for i in (3, 4, 5, 6, 15, 17))


def autocast_encoder_layer(args: tuple, run: Context) -> int:
    """Peak inside the encoder layer under bfloat16 autocast (``autocast_encoder_layer_peak``)."""
    src, heads, ffn_weight_1 = args[0], args[2], args[14]
    b, t, d = src.shape
    rows, ffn, threads = b * t, ffn_weight_1.shape[0], run.threads
    gemms = (onednn_bf16_gemm_scratch("forward", rows, d, d, threads=threads),
             *_attention_gemms(src, heads, run, ffn=ffn, bf16=True)[1:])
    return autocast_encoder_layer_peak(2 * rows * d, 2 * b * heads * t * t, 2 * rows * ffn, 2 * rows * 4,
                                       attention_casts=2 * sum(args[i].numel() for i in (3, 4, 5, 6)),
                                       ffn_weight=2 * ffn * d, ffn_biases=(2 * ffn, 2 * d), gemms=gemms)


def _low_precision_fused_attention(args: tuple, run: Context) -> tuple[str, int] | None:
    """The fused inference paths (``_transformer_encoder_layer_fwd``, ``_native_multi_head_attention``)
    under autocast (which leaves the CPU fast path on), in float16, or in bfloat16 off
    AVX512_CORE_BF16, with a mask or across two inputs (bfloat16 self-attention without a mask is
    modelled there) run their inner
    projections in the low dtype, with casts of the weights, in an order not followed here
    (measured, 64 wide, 32 tokens: the encoder layer under bfloat16 autocast 47,232 B over the
    float32 law at batch 1, in bfloat16 55 to 116 KB over nothing booked; self-attention in
    bfloat16 22 to 34 KB over ``mha_peak``, under autocast 43 to 116 KB). At stake: the float32
    law's peak in 4-byte elements plus
    its other tensor arguments (weights) in 4 bytes (a bound that held on the zoo's encoder layer,
    batch 1 and 4)."""
    encoder = len(args) > 13   # _native_multi_head_attention has 13 arguments at most
    x = args[0]
    if x.dim() != 3 or (x.dtype == torch.float32 and run.amp is None) or _bf16_attention_modelled(args, run, encoder):
        return None
    if encoder and autocast_encoder_modelled(args, None, run):
        return None
    b, t, d = x.shape
    heads = args[2] if encoder else args[4]
    x32, scores32 = b * t * d * 4, b * heads * t * t * 4
    if encoder:
        peak = encoder_layer_peak(x32, scores32, b * t * args[14].shape[0] * 4, 2 * b * t * 4,
                                  norm_first=bool(args[8]))
        what = "the fused nn.TransformerEncoderLayer (aten._transformer_encoder_layer_fwd)"
    else:
        peak = mha_peak(x32, scores32, b * t * t * 4, need_weights=True, average=True)
        what = "the fused nn.MultiheadAttention (aten._native_multi_head_attention)"
    low = run.amp or dtype_name(x.dtype)
    tensors = sum(a.numel() for a in args[1:] if isinstance(a, torch.Tensor))   # weights, biases, mask
    return f"{what} in {low}: its inner casts and buffers", peak + 4 * tensors


def _bf16_attention_modelled(args: tuple, run: Context, encoder: bool) -> bool:
    """bfloat16 weights (not autocast) on AVX512_CORE_BF16, self-attention without a mask: the
    float32 laws with oneDNN's matmul scratchpads (``_attention_gemms``), measured exact with and
    without weights, post- and pre-norm. With a mask the fused call is exact too (key padding,
    causal, both), but the same module's training in bfloat16 is not (sdpa with the mask: 14 to
    28 KB under, measured), so the flag stays where it covers that."""
    mask = args[18 if encoder else 9] if len(args) > (18 if encoder else 9) else None
    return (args[0].dtype == torch.bfloat16 and run.amp is None and mask is None
            and (encoder or args[0] is args[1] is args[2]) and cpu_isa.onednn_isa() == cpu_isa.MODELLED)


_UNMODELLED[aten._transformer_encoder_layer_fwd.default] = _low_precision_fused_attention
_UNMODELLED[aten._native_multi_head_attention.default] = _low_precision_fused_attention


@_workspace(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _flash_attention(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """_scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal, *,
    attn_mask, scale): (B, H, L, E) operands, with or without a mask (viewed, not copied)
    (``flash_forward_workspace``); float16 may pack its operands (not modelled)."""
    q, k = args[0], args[1]
    if q.dim() != 4 or q.dtype == torch.float16:
        return []
    return flash_forward_workspace(q.shape[2], k.shape[2], q.shape[3], threads=run.threads,
                                   itemsize=q.element_size())


@_workspace(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
def _flash_attention_backward(args: tuple, out: Any, run: Context, backward: bool, kwargs: dict) -> list[int]:
    """_scaled_dot_product_flash_attention_for_cpu_backward(grad_out, query, key, value, out,
    logsumexp, dropout_p, is_causal, *, attn_mask, scale): the kernel reads the output's gradient
    as (B, L, H, E) (``grad_out.transpose(1, 2)``) and copies it when that is not contiguous."""
    grad, q, k = args[0], args[1], args[2]
    if q.dim() != 4 or q.dtype == torch.float16:
        return []
    copy = 0 if grad.transpose(1, 2).is_contiguous() else grad.numel() * grad.element_size()
    return flash_backward_workspace(q.shape[2], k.shape[2], threads=run.threads, itemsize=q.element_size(),
                                    grad_out_copy=copy)
