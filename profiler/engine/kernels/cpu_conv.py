"""Which kernel torch runs a CPU convolution on (oneDNN, or its own im2col kernels), and that
kernel's workspace: the one entry point the convolution rules and the aten table call."""
from __future__ import annotations

from math import prod

from profiler.engine.kernels.conv_call import ConvCall, kept
from profiler.engine.kernels.im2col import im2col_workspace
from profiler.engine.kernels.onednn_conv import (channels_first_depthwise_fits, channels_first_depthwise_phases,
                                                 channels_first_phases, channels_first_workspace, onednn_workspace,
                                                worst)
from profiler.rules.registry import Saved

# torch picks the kernel (``ConvParams::use_mkldnn``, aten/src/ATen/native/Convolution.cpp,
# torch 2.13): bfloat16 convolutions always go to oneDNN on a CPU with AVX-512 BF16; float32 ones
# go to oneDNN unless the batch is 1, the input is small (``IM2COL_MAX_ELEMENTS``), there is one
# group and the kernel is at most 3 wide or high — or unless the kernel is 1×1, unstrided,
# undilated, on one thread and a batch under 16. Otherwise torch runs its own im2col kernels
# (``slow_conv2d``, ``slow_conv_dilated2d``, ``slow_conv3d``, ``slow_conv_transpose2d`` and 3d).
# Every convolution kernel here (``im2col``, ``onednn_conv``, ``onednn_conv_weights``) was measured
# with the profiler's allocator events on this machine (torch 2.13, oneDNN 3.12, AVX-512 BF16,
# 2 threads), layer by layer, and checked on other shapes.


def conv_workspace(ctx, *, channels: int, out_channels: int, kernel: tuple[int, ...], strides: tuple[int, ...],
                   groups: int, bias: bool, out_spatial: tuple[int, ...], transposed: bool = False,
                   in_spatial: tuple[int, ...] = (), padding: tuple[int, ...] | None = None,
                   dilation: tuple[int, ...] | None = None, input_grad: bool = True,
                   input_copied: bool = False, grad_copied: bool = False,
                   weight_copied: bool | None = None) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward scratch, backward scratch) of one convolution on the CPU, as torch runs it.

    Shapes are torch's (per sample); ``padding`` is torch's symmetric padding, inferred from the
    shapes when not given. The backward scratch is the worst moment of the backward call beyond
    the gradients the memory model counts itself (input, weight, bias). ``input_grad``: whether
    backward makes the input's gradient (its data phase runs); oneDNN convolutions tell the
    two apart (torch's own im2col kernels are counted with it). ``input_copied``,
    ``grad_copied``: the input (forward and backward) or the output's gradient (backward) is not
    laid out in the kernel's memory format, and torch copies it (``operand_copies``).
    ``weight_copied``: whether a channels-last kernel copies the weight to channels-last
    first (``weight.contiguous(memory_format)``); unknown (``None``), as an NCHW weight is: copied
    unless 1 × 1 or of one input channel, where NCHW is channels-last too.
    """
    if ctx.device_kind != "cpu":
        return (), ()
    call = _call(channels, out_channels, kernel, strides, groups, bias, out_spatial, transposed, in_spatial,
                 padding, dilation)
    copy_in, copy_grad = operand_copies(call, input_copied, grad_copied)
    if not runs_onednn(ctx, call):
        forward, backward = im2col_workspace(ctx, call, weight_copied)
    elif _channels_first(ctx, call):
        forward, backward = channels_first_workspace(ctx, call, input_grad)
    else:
        forward, backward = onednn_workspace(ctx, call, input_grad, weight_copied)
    return copy_in + forward, copy_in + copy_grad + backward


def results_absent(ctx, *, channels: int, out_channels: int, kernel: tuple[int, ...], strides: tuple[int, ...],
                   groups: int, bias: bool, out_spatial: tuple[int, ...], transposed: bool = False,
                   in_spatial: tuple[int, ...] = (), padding: tuple[int, ...] | None = None,
                   dilation: tuple[int, ...] | None = None,
                   input_grad: bool = True) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(forward, backward): the results (by position) that do not exist yet at the worst moment
    of the workspace :func:`conv_workspace` books, its bytes standing where they will be: oneDNN's
    one-group and depthwise NCHW kernels make them blocked and copy them out at the end
    (``onednn_conv.channels_first_phases``, ``channels_first_depthwise_phases``); the other
    kernels' are counted as made first."""
    call = _call(channels, out_channels, kernel, strides, groups, bias, out_spatial, transposed, in_spatial,
                 padding, dilation)
    if ctx.device_kind != "cpu" or not runs_onednn(ctx, call):
        return (), ()
    if _channels_first(ctx, call):
        forward, backward = channels_first_phases(ctx, call, input_grad)
    elif channels_first_depthwise_fits(ctx, call):
        forward, backward = channels_first_depthwise_phases(ctx, call, input_grad)
    else:
        return (), ()
    return worst(forward)[1], worst(backward)[1]


def _call(channels, out_channels, kernel, strides, groups, bias, out_spatial, transposed, in_spatial, padding,
          dilation) -> ConvCall:
    dilation = dilation or (1,) * len(kernel)
    if padding is None:
        padding = _inferred_padding(in_spatial, out_spatial, kernel, strides, dilation, transposed)
    return ConvCall(channels, out_channels, tuple(in_spatial), tuple(out_spatial), tuple(kernel), tuple(strides),
                    tuple(padding), tuple(dilation), groups, bias, transposed)


def _channels_first(ctx, call: ConvCall) -> bool:
    return (ctx.data_format == "channels_first" and call.groups == 1
            and ctx.compute_dtype(True) in ("float32", "bfloat16"))


def operand_copies(call: ConvCall, input_copied: bool, grad_copied: bool) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(input's copy, output gradient's copy): torch runs every CPU convolution kernel on operands
    in one memory format (channels-last when the input or the weight is,
    ``mkldnn_conv_use_channels_last``; contiguous otherwise) and copies an operand laid out otherwise
    (``.contiguous(memory_format)``) before the kernel runs, for the whole call: the input in
    forward and backward, the output's gradient in backward (a ConvNeXt's patch embedding on an
    NCHW image gets a channels-last gradient back from its LayerNorm's permutation). Measured
    (allocator events, oneDNN, im2col and depthwise kernels, float32): exactly the operand's
    bytes more, beside the kernel's own workspace."""
    image = Saved("new", elements=call.channels * prod(call.in_spatial) if input_copied else 0,
                  what="input copied to the kernel's memory format")
    grad = Saved("new", elements=call.out_channels * prod(call.out_spatial) if grad_copied else 0,
                 what="output's gradient copied to the kernel's memory format")
    return kept(image), kept(grad)


def _inferred_padding(in_spatial, out_spatial, kernel, strides, dilation, transposed) -> tuple[int, ...]:
    """The least symmetric padding that gives ``out_spatial`` (exact at stride 1)."""
    if not in_spatial:
        return (0,) * len(kernel)
    if transposed:   # out = (in − 1)·s + span − 2p (+ output padding)
        return tuple(max(0, ((i - 1) * s + d * (k - 1) + 1 - o) // 2)
                     for i, o, k, s, d in zip(in_spatial, out_spatial, kernel, strides, dilation))
    return tuple(max(0, -(-((o - 1) * s + d * (k - 1) + 1 - i) // 2))
                 for i, o, k, s, d in zip(in_spatial, out_spatial, kernel, strides, dilation))


#: ``ConvParams::use_mkldnn``: a float32 input of at most this many elements (batch × channels ×
#: the first two spatial sizes) may run torch's own kernel
IM2COL_MAX_ELEMENTS = 20_480
#: ... and an unstrided 1×1 kernel on one thread runs it below this batch
ONEDNN_MIN_BATCH_1X1 = 16


def kernel_name(ctx, call: ConvCall) -> str:
    """The kernel family a CPU convolution runs on, which sets its speed: "onednn", "depthwise"
    (oneDNN, one channel per group), "grouped" (oneDNN, several) or "im2col" (torch's own)."""
    if not runs_onednn(ctx, call):
        return "im2col"
    if call.groups == 1:
        return "onednn"
    return "depthwise" if call.groups == call.channels else "grouped"


def runs_onednn(ctx, call: ConvCall) -> bool:
    """torch's ``ConvParams::use_mkldnn`` for a CPU convolution: oneDNN, or torch's im2col kernels."""
    dtype = ctx.compute_dtype(True)
    if dtype == "bfloat16":
        return True
    if dtype != "float32":
        return False
    kernel = (1,) * (2 - len(call.kernel)) + call.kernel   # a 1-D convolution runs as 2-D
    sizes = (ctx.batch, call.channels, *((1,) * (2 - len(call.in_spatial)) + call.in_spatial))
    one_by_one = kernel[-1] == 1 and kernel[-2] == 1
    worth_it = (call.strided or call.dilated or ctx.batch >= ONEDNN_MIN_BATCH_1X1 or not one_by_one
                or ctx.threads > 1)
    large = (call.groups > 1 or (kernel[-1] > 3 and kernel[-2] > 3) or ctx.batch > 1
             or prod(sizes[:4]) > IM2COL_MAX_ELEMENTS)
    return worth_it and large
