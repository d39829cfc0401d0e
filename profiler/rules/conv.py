"""Conv1D/2D/3D, DepthwiseConv2D, SeparableConv2D, Conv1DTranspose/2D/3D: one rule per family,
instantiated per rank.

Keras semantics (``keras/src/layers/convolutional/base_conv.py``): ``filters`` and the input's
channels must both divide by ``groups``; ``strides > 1`` together with ``dilation_rate > 1`` is
refused; "same" gives ceil(length / stride) and, as TensorFlow, pads the odd element *after*.
Conv1D also takes Keras's "causal": pad ``dilation × (kernel − 1)`` before, nothing after.
Keras's depthwise and separable convolutions do not refuse strides with dilation.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from math import prod

from profiler.rules.args import Arg, boolean, choice, int_tuple, optional, positive_int
from profiler.dtypes import itemsize
from profiler.errors import ShapeError, SpecError
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import join_channels, same_padding, shape_text, spatial_output, split_channels
from profiler.rules.core import activation_arg


class ConvRule(Rule):
    """y = Σ x·W + b over a sliding window of ``kernel_size`` on each spatial axis.

    Parameters: filters × (in_channels / groups × prod(kernel_size) + 1 bias).
    MACs per sample: prod(output spatial) × filters × (in_channels / groups) × prod(kernel_size);
    the bias adds are not counted (the usual convention).
    """

    def __init__(self, type_name: str, rank: int):
        self.type_name = type_name  # type: ignore[misc]  (per instance: one rule per rank)
        self.rank = rank
        paddings = ("valid", "same", "causal") if rank == 1 else ("valid", "same")
        self.args = (
            Arg("filters", positive_int),
            Arg("kernel_size", int_tuple(rank)),
            Arg("strides", int_tuple(rank), (1,) * rank),
            Arg("padding", choice(*paddings), "valid"),
            Arg("dilation_rate", int_tuple(rank), (1,) * rank),
            Arg("groups", positive_int, 1),
            activation_arg,
            Arg("use_bias", boolean, True),
        )

    # --- checks --------------------------------------------------------------------------
    def _check_args(self, a) -> None:
        if a.filters % a.groups:
            raise SpecError("filters must divide evenly by groups", field="groups",
                            expected=f"a divisor of filters={a.filters}",
                            received=f"groups={a.groups}")
        if max(a.strides) > 1 and max(a.dilation_rate) > 1:
            raise SpecError("strides > 1 is not supported together with dilation_rate > 1 (as in Keras)",
                            field="strides", expected="strides=1 or dilation_rate=1",
                            received=f"strides={a.strides} and dilation_rate={a.dilation_rate}")

    def _out_channels(self, a, channels: int) -> int:
        return a.filters

    def _groups(self, a, channels: int) -> int:
        return a.groups

    def _split(self, a, x, ctx) -> tuple[tuple[int, ...], int]:
        self._check_args(a)
        if len(x) != self.rank + 1:
            layout = "(steps, channels)" if self.rank == 1 else f"{self.rank} spatial axes and channels"
            raise ShapeError(f"input has the wrong number of axes for {self.type_name}",
                             expected=f"{self.rank + 1} axes besides the batch: {layout} ({ctx.data_format})",
                             received=f"shape {shape_text(x)}")
        spatial, channels = split_channels(x, ctx.data_format)
        if channels % self._groups(a, channels):
            raise ShapeError("the input's channels must divide evenly by groups", field="groups",
                             expected=f"a divisor of the {channels} input channels",
                             received=f"groups={a.groups}")
        return spatial, channels

    def _pads(self, a, spatial) -> tuple[tuple[int, int], ...]:
        """(before, after) padding on each spatial axis, as Keras/TensorFlow pad."""
        if a.padding == "valid":
            return tuple((0, 0) for _ in spatial)
        if a.padding == "causal":
            return tuple((d * (k - 1), 0) for k, d in zip(a.kernel_size, a.dilation_rate))
        return tuple(same_padding(n, kernel=k, stride=s, dilation=d)
                     for n, k, s, d in zip(spatial, a.kernel_size, a.strides, a.dilation_rate))

    # --- predictions ---------------------------------------------------------------------
    def output_shape(self, a, x, ctx):
        spatial, channels = self._split(a, x, ctx)
        # "causal" has the same output length as "same": ceil(length / stride)
        padding = "same" if a.padding == "causal" else a.padding
        out = spatial_output(spatial, kernel=a.kernel_size, strides=a.strides, padding=padding,
                             dilation=a.dilation_rate)
        return join_channels(out, self._out_channels(a, channels), ctx.data_format)

    def params(self, a, x, ctx):
        _, channels = self._split(a, x, ctx)
        # filters × (in_channels/groups × kernel + 1): one kernel per filter, one bias per filter
        per_filter = channels // a.groups * prod(a.kernel_size)
        total = a.filters * (per_filter + a.use_bias)
        kernel = "×".join(map(str, a.kernel_size))
        bias = " + 1" if a.use_bias else ""
        tensors = (a.filters * per_filter, a.filters) if a.use_bias else (a.filters * per_filter,)
        return Params(total, formula=f"{a.filters:,} × ({channels // a.groups:,} × {kernel}{bias}) = {total:,}",
                      tensors=tensors)

    def macs(self, a, x, y, ctx):
        _, channels = split_channels(x, ctx.data_format)
        out_spatial, _ = split_channels(y, ctx.data_format)
        return prod(out_spatial) * a.filters * (channels // a.groups) * prod(a.kernel_size)

    def memory(self, a, x, y, ctx):
        # convolution keeps its input for the weight gradient; an explicit pad (uneven "same",
        # "causal") makes a new padded tensor, and that is what the convolution keeps. In
        # inference the padded tensor lives beside the output until the layer returns.
        spatial, channels = split_channels(x, ctx.data_format)
        out_spatial, out_channels = split_channels(y, ctx.data_format)
        pads = self._pads(a, spatial)
        scratch: list[Saved] = []
        grad_padded: tuple[Saved, ...] = ()
        if any(b != e for b, e in pads):
            padded = channels * prod(n + b + e for n, (b, e) in zip(spatial, pads))
            kept = Saved("new", elements=padded, what="padded input")
            scratch.append(kept)
            # backward makes the padded input's gradient, then the input's from it (when the
            # input needs one: otherwise the pad is not recorded and its gradient not made)
            grad_padded = (Saved("new", elements=padded - prod(x), what="padded input's gradient, beyond the input's"),)
        else:
            kept = Saved("input", what="convolution input")
        # (a fused ``activation`` is the predictor's own op, with the Activation rule's memory)
        forward, backward = self._workspace(a, channels, out_channels, spatial, out_spatial, pads, ctx)
        _, weights_only = self._workspace(a, channels, out_channels, spatial, out_spatial, pads, ctx,
                                          input_grad=False)
        act = ctx.compute_dtype(True)
        data_phase = (sum(s.nbytes(ctx.batch, act) for s in backward)
                      - sum(s.nbytes(ctx.batch, act) for s in weights_only))
        extra = (Saved("new", elements=data_phase, dtype="uint8", per_sample=False,
                       what="the data phase's workspace beyond the weight phase's"),) if data_phase > 0 else ()
        return Memory(saved=(kept,), scratch=(*scratch, *forward), backward_scratch=weights_only,
                      input_grad_scratch=(*grad_padded, *extra))

    def _workspace(self, a, channels: int, out_channels: int, spatial, out_spatial, pads, ctx,
                   input_grad: bool = True):
        """``conv_workspace`` of the torch convolution this layer runs: on the padded input with no
        padding of its own when Keras pads unevenly, a 1-D layer as 2-D (``lift``)."""
        even = all(b == e for b, e in pads)
        torch_in = spatial if even else tuple(n + b + e for n, (b, e) in zip(spatial, pads))
        padding = tuple(b if even else 0 for b, _ in pads)
        return conv_workspace(ctx, channels=channels, out_channels=out_channels,
                              kernel=lift(a.kernel_size, self.rank, ctx, 1), strides=lift(a.strides, self.rank, ctx, 1),
                              groups=self._groups(a, channels), bias=a.use_bias,
                              out_spatial=lift(out_spatial, self.rank, ctx, 1), in_spatial=lift(torch_in, self.rank, ctx, 1),
                              padding=lift(padding, self.rank, ctx, 0),
                              dilation=lift(a.dilation_rate, self.rank, ctx, 1), input_grad=input_grad)

    def _windowed(self, a, channels: int, out_channels: int, groups: int, pads, bias: bool, ctx):
        """torch's convolution with Keras's padding: its own when even, else a pad before it."""
        from torch import nn
        rank = torch_rank(self.rank, ctx)
        kernel, strides, dilation = (lift(t, self.rank, ctx, 1) for t in (a.kernel_size, a.strides, a.dilation_rate))
        pads = lift(pads, self.rank, ctx, (0, 0))
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        even = all(b == e for b, e in pads)
        conv = conv_cls(channels, out_channels, kernel, stride=strides,
                        padding=tuple(b for b, _ in pads) if even else 0,
                        dilation=dilation, groups=groups, bias=bias)
        if even:
            return [conv]
        # torch pads both sides alike; TensorFlow puts the odd element after
        pad_cls = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[rank]
        return [pad_cls(_torch_pad_order(pads), 0.0), conv]

    def _finish(self, a, parts, ctx):
        from torch import nn

        from profiler.rules.modules import ChannelsLast, with_activation
        layer: nn.Module = parts[0] if len(parts) == 1 else nn.Sequential(*parts)
        if ctx.data_format == "channels_last":
            layer = ChannelsLast(layer)
        return with_activation(layer, a.activation)

    def build(self, a, x, ctx):
        spatial, channels = self._split(a, x, ctx)
        parts = self._windowed(a, channels, self._out_channels(a, channels), self._groups(a, channels),
                               self._pads(a, spatial), a.use_bias, ctx)
        return self._finish(a, parts, ctx)


def _torch_pad_order(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """(before, after) per axis, first axis first → torch.nn.functional.pad's last-axis-first."""
    return tuple(p for before_after in reversed(pads) for p in before_after)


# --- what the CPU kernels allocate inside a convolution -----------------------------------------
#
# torch picks the kernel (``ConvParams::use_mkldnn``, aten/src/ATen/native/Convolution.cpp,
# torch 2.13): bfloat16 convolutions always go to oneDNN on a CPU with AVX-512 BF16; float32 ones
# go to oneDNN unless the batch is 1, the input is small (``IM2COL_MAX_ELEMENTS``), there is one
# group and the kernel is at most 3 wide or high — or unless the kernel is 1×1, unstrided,
# undilated, on one thread and a batch under 16. Otherwise torch runs its own im2col kernels
# (``slow_conv2d``, ``slow_conv_dilated2d``, ``slow_conv3d``, ``slow_conv_transpose2d`` and 3d).
# Everything below was measured with the profiler's allocator events on this machine (torch
# 2.13, oneDNN 3.12, AVX-512 BF16, 2 threads), layer by layer, and checked on other shapes.

@dataclass(frozen=True)
class ConvCall:
    """One convolution as torch's CPU kernels see it: shapes per sample with the spatial axes
    torch runs (a channels-last 1-D layer as 2-D of height 1) and torch's symmetric padding."""
    channels: int
    out_channels: int
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    transposed: bool = False

    @property
    def taps(self) -> int:
        return prod(self.kernel)

    @property
    def per_group_in(self) -> int:
        return self.channels // self.groups

    @property
    def weight(self) -> int:
        return self.out_channels * self.per_group_in * self.taps

    @property
    def strided(self) -> bool:
        return max(self.strides) > 1

    @property
    def dilated(self) -> bool:
        return max(self.dilation) > 1


def conv_workspace(ctx, *, channels: int, out_channels: int, kernel: tuple[int, ...], strides: tuple[int, ...],
                   groups: int, bias: bool, out_spatial: tuple[int, ...], transposed: bool = False,
                   in_spatial: tuple[int, ...] = (), padding: tuple[int, ...] | None = None,
                   dilation: tuple[int, ...] | None = None,
                   input_grad: bool = True) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward scratch, backward scratch) of one convolution on the CPU, as torch runs it.

    Shapes are torch's (per sample); ``padding`` is torch's symmetric padding, inferred from the
    shapes when not given. The backward scratch is the worst moment of the backward call beyond
    the gradients the memory model counts itself (input, weight, bias). ``input_grad``: whether
    backward makes the input's gradient (its data phase runs); oneDNN convolutions tell the
    two apart (torch's own im2col kernels are counted with it).
    """
    if ctx.device_kind != "cpu":
        return (), ()
    dilation = dilation or (1,) * len(kernel)
    if padding is None:
        padding = _inferred_padding(in_spatial, out_spatial, kernel, strides, dilation, transposed)
    call = ConvCall(channels, out_channels, tuple(in_spatial), tuple(out_spatial), tuple(kernel), tuple(strides),
                    tuple(padding), tuple(dilation), groups, bias, transposed)
    if not runs_onednn(ctx, call):
        return im2col_workspace(ctx, call)
    if ctx.data_format == "channels_first" and groups == 1 and ctx.compute_dtype(True) in ("float32", "bfloat16"):
        return channels_first_workspace(ctx, call, input_grad)
    return onednn_workspace(ctx, call, input_grad)


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


def im2col_workspace(ctx, call: ConvCall) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """torch's own kernels unfold the input into columns (im2col) and run one GEMM per sample.

    ``slow_conv2d`` (and its dilated and transposed kinds) on a channels-last input: the weight
    copied to channels-last (unless 1×1), the columns — input channels × kernel × output positions
    per sample (a transposed one: output channels × kernel × input positions) — beside the output.
    Backward: the weight copy again and one columns buffer, made after the input's and the
    weight's gradients (the dilated kernel also sums the bias gradient into a temporary).
    ``slow_conv3d`` and ``slow_conv_transpose3d`` have no channels-last kernel: they copy the
    input (and in backward the output's gradient) to channels-first, and their channels-first
    result is copied back once the columns are freed.
    """
    channels_last = ctx.data_format == "channels_last"
    if call.transposed:
        columns = call.out_channels * call.taps * prod(call.in_spatial)
    elif call.taps > 1 or call.strided or any(call.pads):
        columns = call.channels * call.taps * prod(call.out_spatial)
    else:
        columns = 0
    cols = Saved("new", elements=columns, what="im2col columns")
    if len(call.kernel) == 3 and not call.dilated:    # slow_conv3d, slow_conv_transpose3d
        # the transposed kernel adds its bias by a GEMM with a vector of ones, one per output position
        ones = prod(call.out_spatial) if call.transposed and call.bias else 0
        if not channels_last:
            return _kept((cols, Saved("new", elements=ones, per_sample=False, what="ones for the bias"))), _kept(cols)
        image, result = call.channels * prod(call.in_spatial), call.out_channels * prod(call.out_spatial)
        forward = Saved("new", elements=max(ctx.batch * (image + columns) + ones, ctx.batch * result), per_sample=False,
                        what="channels-first input and columns, then the result's channels-last copy")
        backward = (Saved("new", elements=result + image, what="channels-first output gradient and input"), cols)
        return (forward,), _kept(backward)
    clone = call.weight if channels_last and call.taps > 1 and call.per_group_in > 1 else 0
    weight_copy = Saved("new", elements=clone, per_sample=False, what="weight in channels-last")
    bias_sum = call.out_channels if call.dilated and call.bias else 0
    backward = (weight_copy, cols, Saved("new", elements=bias_sum, per_sample=False, what="bias gradient's sum"))
    return _kept((weight_copy, cols)), _kept(backward)


def _kept(tensors) -> tuple[Saved, ...]:
    """Drop empty entries."""
    tensors = (tensors,) if isinstance(tensors, Saved) else tensors
    return tuple(t for t in tensors if t.elements)


# oneDNN's scratchpad: each entry is booked with 128 bytes of alignment room
# (``memory_tracking.hpp``, ``default_alignment``); a barrier's contexts (``simple_barrier::ctx_t``)
# are one page each and page-aligned, so n of them book 4096·(n + 1) bytes.
ONEDNN_ENTRY_ALIGNMENT = 128
ONEDNN_PAGE = 4096


def _booked(*entries: int, barriers: tuple[int, ...] = ()) -> int:
    """Bytes of a scratchpad with these entries (bytes each, empty ones skipped) and barriers."""
    return (sum(n + ONEDNN_ENTRY_ALIGNMENT for n in entries if n)
            + sum(ONEDNN_PAGE * (n + 1) for n in barriers if n))


# brgemm convolutions book, measured at 1, 2 and 4 threads in float32 and bfloat16: a fixed part
# and 4120 bytes per thread; the data phase runs a forward convolution nested in its own
# primitive, whose scratchpad is one entry of the outer one (128 bytes more)
BRGEMM_FORWARD_FIXED = 4096
BRGEMM_DATA_FIXED = BRGEMM_FORWARD_FIXED + ONEDNN_ENTRY_ALIGNMENT
BRGEMM_PER_THREAD = 4120


def brgemm_forward_scratchpad(threads: int) -> int:
    return BRGEMM_FORWARD_FIXED + BRGEMM_PER_THREAD * threads


def brgemm_data_scratchpad(threads: int) -> int:
    return BRGEMM_DATA_FIXED + BRGEMM_PER_THREAD * threads


def _up(n: int, to: int) -> int:
    return -(-n // to) * to


def _up16(n: int) -> int:
    return _up(n, 16)


# --- oneDNN ------------------------------------------------------------------------------------
#
# Kernels (names from ONEDNN_VERBOSE): forward ``brg_conv_fwd`` (``brgconv_1x1`` for 1×1), the
# input gradient ``brg_conv_bwd`` (a forward convolution of the output's gradient), the weight
# gradient ``jit`` / ``jit_1x1`` in float32 and ``jit_bf16`` / ``jit_bf16_1x1`` in bfloat16
# (accumulating in float32). Around them, with a channels-last input (every layer here in
# Keras's default layout):
# forward: the weight copied to channels-last (``weight.contiguous(channels_last)``; not needed
#   when it already is: a 1×1 kernel or one input channel), the weight reordered to oneDNN's
#   layout (output channels padded to 16; bfloat16 also pairs the input channels, VNNI packing
#   two in each 32-bit lane), and brgemm's scratchpad (``brgemm_forward_scratchpad``).
# backward (``convolution_backward``), in three phases that follow each other:
#   data: the weight copied again and reordered for the input gradient (input channels padded to
#     16, or with strides to blocks of 16, 32 or 64; bfloat16 pairs the output channels), with
#     brgemm's scratchpad (``data_scratchpad``);
#   weights: the weight gradient in the blocked layout (output channels padded to 16, input
#     channels too from 16 up and for a 1×1 kernel; fewer than 16 are one block of their own,
#     "first convolution"), the kernel's scratchpad (``float32_weights_scratchpad``,
#     ``bf16_weights_scratchpad`` and their 1×1 kinds), the bias gradient;
#   return: the gradients in the weight's channels-last layout, copied once more to the
#     parameter's own layout.
# A transposed convolution runs these the other way round: its forward pass is the data phase
# of the convolution it inverts, its input gradient that convolution's forward pass.
#
# Limits: the forward reorder pads the output channels to brgemm's block, which its cost model
# picks among 16, 32, 48 and 64 by the problem's size — padded to 16 here, exact for 1–16, 32 and
# 64 filters (measured: 24 → 32, 40 → 64, 48 → 48 or 64); strided data phases are estimates
# (``data_scratchpad``); grouped and depthwise kernels (``grouped_workspace``) and float32
# strided transposed forward passes are measured constants (2 threads); a strided 1×1 weight
# gradient's input copy (oneDNN's "rtus") is counted in bfloat16 only (float32's backward
# peaks measured exact without it: 8–128 → 16–256 channels, batch 3). Channels-first tensors: see
# ``channels_first_workspace`` (one group); grouped ones still book one blocked copy of the
# larger of input and output per sample (an estimate: under in training, measured −13%).

# strided data phases (``brgconv_strided``): a fixed part and per thread, growing with output
# channels beyond 32 (not for a 1×1 kernel), and more when the input's width is odd (measured
# on 3–128 input channels, 4–64 filters, inputs 8–17 wide, at 1, 2 and 4 threads; 1×1 kernels
# up to 256 filters, 2–16 wide). An estimate beyond: wider inputs book more (up to +65,536 B
# per thread measured at 33 wide with 64 filters)
STRIDED_DATA_FIXED = {"float32": 12_288, "bfloat16": 16_384}
STRIDED_DATA_PER_THREAD = {"float32": 24_600, "bfloat16": 16_920}
STRIDED_DATA_WIDE_OUTPUT = 32
STRIDED_DATA_ODD_FIXED = 4_096
STRIDED_DATA_ODD_PER_THREAD = {"float32": 16_384, "bfloat16": 8_256}
# the bfloat16 data phase of an unpadded convolution with a kernel 2 or 3 wide also copies input
# rows: a page and, per thread, two bfloat16 rows of the input's width × up to 64 channels
BF16_DATA_ROWS_FIXED = 4096
BF16_DATA_ROWS_CHANNELS = 64


def onednn_workspace(ctx, call: ConvCall, input_grad: bool = True) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a oneDNN convolution, in bytes (see above); without
    ``input_grad`` torch asks for no input gradient and the data phase does not run."""
    dtype = ctx.compute_dtype(True)
    if call.groups > 1 or dtype not in ("float32", "bfloat16"):
        return grouped_workspace(ctx, call)
    threads, act = max(ctx.threads, 1), itemsize(dtype)
    wants_input = input_grad
    conv = _inverted(call) if call.transposed else call
    channels, out_channels, taps = conv.channels, conv.out_channels, conv.taps
    pairs = 2 if dtype == "bfloat16" else 1           # VNNI: bfloat16 channels in pairs
    clone = conv.weight if taps > 1 and channels > 1 else 0
    forward_reorder = _up16(out_channels) * _up(channels, pairs) * taps
    data_reorder = _up(channels, _data_block(conv)) * _up(out_channels, pairs) * taps
    first = channels < 16 and taps > 1
    blocked = _up16(out_channels) * (channels if first else _up16(channels)) * taps
    biases = call.out_channels if call.bias else 0
    # a deconvolution runs the convolution's primitives nested (their scratchpad one more entry
    # of the deconvolution's) and sums its bias gradient apart from the weight gradient
    nested = ONEDNN_ENTRY_ALIGNMENT if call.transposed else 0
    kernel = replace(conv, bias=False) if call.transposed else conv
    convolve = act * (clone + forward_reorder) + brgemm_forward_scratchpad(threads) + nested
    data = act * (clone + data_reorder) + data_scratchpad(conv, dtype, threads)
    weights = act * (clone + blocked + biases) + weights_scratchpad(kernel, dtype, ctx.batch, threads) + nested
    done = act * (clone + blocked + 2 * biases + 2 * conv.weight)
    forward, input_grad = (data, convolve) if call.transposed else (convolve, data)
    if call.transposed and call.strided and dtype == "float32":
        forward = act * (clone + data_reorder) + _strided_transposed_forward(call, threads)
    backward = max(input_grad if wants_input else 0, weights, done) - act * (conv.weight + biases)
    return (_bytes(forward, "weight copies and oneDNN scratchpad"),
            _bytes(max(backward, 0), "weight copies, gradients in oneDNN's layouts and scratchpads"))


# --- oneDNN on channels-first tensors ------------------------------------------------------------
#
# With a contiguous NCHW input torch lets oneDNN pick the layouts (ideep's ``format_tag::any``),
# and oneDNN's blocked jit kernels take them (ONEDNN_VERBOSE, oneDNN 3.12): every operand is
# reordered into a copy with channels in blocks of 16 (padded), the result made blocked and then
# copied to torch's NCHW tensor. Measured with the allocator's events on 1-D, 2-D and 3-D
# convolutions, 1–64 channels, batch 1 and 3, float32 and bfloat16, 2 threads:
# forward (``jit`` / ``jit_bf16``, ``jit_1x1`` / ``jit_bf16_1x1`` for 1×1): the input copied to
#   16-channel blocks — not for fewer than 16 input channels and a kernel wider than 1×1 (a
#   "first convolution" reads NCHW as it is) —, the weight reordered (output channels padded to
#   16, input channels too unless a first convolution; bfloat16 in pairs), the blocked result, a
#   scratchpad (a padded bias; a 1×1 kernel's strided input gathered per thread, "rtus";
#   bfloat16 1×1 kernels sum in float32 per thread), all freed once the result is copied out;
# data phase, unstrided: the output's gradient and the input's gradient blocked, the weight
#   reordered with both channel counts padded to 16 (bfloat16 1×1: float32 sums per thread);
#   strided: ``brgconv_strided`` in channels-last (the nxc path's weight and scratchpad; the
#   output's gradient copied to channels-last unless 1×1), whose channels-last result is copied
#   twice on the way back to NCHW (3 images at once);
# weights phase: the output's gradient reordered again, the input to 16-channel blocks, the
#   weight gradient blocked (the nxc kernels' own scratchpads: same balance); float32 with 4–15
#   input channels runs ``jit:avx2`` on 8-channel blocks and sums per-thread copies with
#   ``cpu_reducer``; 1–3 input channels: a first convolution on the plain input; dilated ones
#   run oneDNN's GEMM convolution on the plain tensors; the weight and bias gradients are copied
#   to torch's tensors while the blocked ones are alive.
# Transposed convolutions run the inverted convolution's phases the other way round.

#: ``jit_avx512_common`` weight gradients treat 1–3 input channels as a first convolution; more
#: channels, fewer than 16, go to ``jit_avx2`` (8-channel blocks) in float32
FIRST_CONV_WEIGHTS_MAX_CHANNELS = 3
AVX2_BLOCK = 8


def channels_first_workspace(ctx, call: ConvCall, input_grad: bool = True) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a one-group oneDNN convolution on NCHW tensors (see above);
    without ``input_grad`` the data phase does not run and no input gradient is alive."""
    dtype = ctx.compute_dtype(True)
    threads, act, n = max(ctx.threads, 1), itemsize(dtype), ctx.batch
    conv = _inverted(call) if call.transposed else call
    ic, oc, taps = conv.channels, conv.out_channels, conv.taps
    image, result = prod(conv.in_spatial), prod(conv.out_spatial)
    x, y = n * ic * image * act, n * oc * result * act
    weight, bias = act * conv.weight, act * call.out_channels if call.bias else 0
    one_by_one = taps == 1
    first = ic < 16 and not one_by_one
    pairs = 2 if dtype == "bfloat16" else 1
    blocked = lambda channels, positions: n * _up16(channels) * positions * act   # noqa: E731
    # forward: input and output blocked, the weight reordered
    scratch = _padded_bias(call.out_channels, call.bias, act)
    if one_by_one and conv.strided:
        scratch += _booked(threads * _up16(ic) * result * act)
    if one_by_one and dtype == "bfloat16":   # float32 sums per working thread (one per sample at most)
        scratch += _booked(min(threads, n) * _up16(oc) * result * 4)
    src = 0 if first else blocked(ic, image)
    wei = act * _up16(oc) * (_up(ic, pairs) if first else _up16(ic)) * taps
    convolve = max(scratch + src + wei + blocked(oc, result) - y, blocked(oc, result))
    # data phase: the input's gradient from the output's
    if conv.strided:
        data_wei = act * _up(ic, _data_block(conv)) * _up(oc, pairs) * taps
        # the output's gradient copied to channels-last: nothing to copy when it is 1×1
        gy = y if result > 1 else 0
        data = max(gy + data_wei + x + data_scratchpad(conv, dtype, threads), 3 * x) - x
    else:
        store = _booked(min(threads, n) * _up16(ic) * image * 4) if one_by_one and dtype == "bfloat16" else 0
        data = max(blocked(oc, result) + act * _up16(oc) * _up16(ic) * taps + blocked(ic, image) + store,
                   blocked(ic, image) + x) - x
    # weights phase, beside the input's gradient
    gy, src, grad, scratch = _blocked_weights(conv, dtype, n, threads)
    weights = gy + src + grad + bias + scratch
    done = grad + 2 * bias + weight
    # (every phase counted beyond the input's gradient, which the memory model counts itself)
    forward, data_in = (data, convolve) if call.transposed else (convolve, data)
    backward = max(data_in if input_grad else 0, weights, done) - weight - bias
    return (_bytes(forward, "oneDNN blocked copies, weight reorder, scratchpad"),
            _bytes(max(backward, 0), "oneDNN blocked copies, weight reorders, gradients and scratchpads"))


def _padded_bias(channels: int, bias: bool, act: int) -> int:
    """A bias of a channel count not a multiple of 16 is copied padded into the scratchpad."""
    return _booked(act * _up16(channels)) if bias and channels % 16 else 0


def _blocked_weights(conv: ConvCall, dtype: str, n: int, threads: int) -> tuple[int, int, int, int]:
    """The weight gradient's blocked operands on NCHW tensors, in bytes: (output's gradient,
    input, weight gradient, scratchpad)."""
    ic, oc, taps = conv.channels, conv.out_channels, conv.taps
    image, result = prod(conv.in_spatial), prod(conv.out_spatial)
    act = itemsize(dtype)
    if taps > 1 and (conv.dilated or dtype == "bfloat16" and ic < 16 and oc % 16):
        # oneDNN's GEMM convolution on the plain tensors: im2col columns per working thread (one
        # per sample at most); float32 books them twice, bfloat16 once besides float32 sums of
        # the weight, 2 + 2 per thread, and of the bias (measured at 1 and 2 threads' work)
        columns, working = ic * taps * result, min(threads, n)
        if dtype == "bfloat16":
            scratch = _booked(working * 2 * columns, (2 + 2 * working) * 4 * conv.weight,
                              4 * oc if conv.bias else 0) + ONEDNN_ENTRY_ALIGNMENT
        else:
            scratch = _booked(working * 4 * columns, working * 4 * columns)
        return 0, 0, act * conv.weight, scratch
    if taps == 1:
        # a strided kernel runs unstrided on the input gathered per thread ("rtus"), output-sized
        gathered = replace(conv, strides=(1,) * len(conv.strides), in_spatial=conv.out_spatial)
        scratch = weights_scratchpad(gathered, dtype, n, threads)
        if conv.strided:   # the gathered input's buffers; float32 books only those
            rtus = _booked(threads * _up16(ic) * result * act)
            scratch = rtus + (scratch if dtype == "bfloat16" else 0)
        return (n * _up16(oc) * result * act, n * _up16(ic) * image * act, act * _up16(oc) * _up16(ic),
                scratch + _padded_bias(oc, conv.bias, act))
    if dtype == "float32" and FIRST_CONV_WEIGHTS_MAX_CHANNELS < ic < 16:
        block = AVX2_BLOCK
        nb_oc, nb_ic = _div_up(oc, block), _div_up(ic, block)
        scratch = _reducer(threads, nb_oc * nb_ic, taps * block * block, n)
        if conv.bias:
            scratch += _reducer(threads, nb_oc, block, n)
        return (n * _up(oc, block) * result * act, n * _up(ic, block) * image * act,
                act * _up(oc, block) * _up(ic, block) * taps, scratch)
    first = ic < 16
    if dtype == "bfloat16":
        scratch = bf16_weights_scratchpad(conv, n, threads, plain_src=True)
    else:
        scratch = float32_weights_scratchpad(conv, n, threads)
    return (n * _up16(oc) * result * act, 0 if first else n * _up16(ic) * image * act,
            act * _up16(oc) * (ic if first else _up16(ic)) * taps, scratch)


def _bytes(nbytes: int, what: str) -> tuple[Saved, ...]:
    return _kept(Saved("new", elements=nbytes, dtype="uint8", per_sample=False, what=what))


def _inverted(call: ConvCall) -> ConvCall:
    """The convolution a transposed one is the gradient of: input and output swapped."""
    return replace(call, channels=call.out_channels, out_channels=call.channels, in_spatial=call.out_spatial,
                   out_spatial=call.in_spatial, transposed=False)


def _data_block(call: ConvCall) -> int:
    """Input channels' block in the data phase's weight: 16, or with strides 16, 32 or 64."""
    if not call.strided or call.channels <= 16:
        return 16
    return 32 if call.channels <= 48 else 64


def data_scratchpad(call: ConvCall, dtype: str, threads: int) -> int:
    """brgemm's input-gradient scratchpad (see the notes above)."""
    if call.strided:
        per_thread = STRIDED_DATA_PER_THREAD[dtype]
        if call.taps > 1:   # a 1×1 kernel books neither
            per_thread += itemsize(dtype) * 128 * max(_up16(call.out_channels) - STRIDED_DATA_WIDE_OUTPUT, 0)
            if dtype == "bfloat16":
                per_thread += 32 * (_data_block(call) - 16)
        fixed = STRIDED_DATA_FIXED[dtype]
        if call.in_spatial[-1] % 2:
            fixed, per_thread = fixed + STRIDED_DATA_ODD_FIXED, per_thread + STRIDED_DATA_ODD_PER_THREAD[dtype]
        return fixed + threads * per_thread
    scratch = brgemm_data_scratchpad(threads)
    width, pad = call.in_spatial[-1], call.pads[-1]
    if dtype == "bfloat16" and pad == 0 and 2 <= call.kernel[-1] <= 3:   # input rows copied, two per thread
        scratch += BF16_DATA_ROWS_FIXED + threads * 2 * 2 * width * min(_up16(call.channels), BF16_DATA_ROWS_CHANNELS)
    return scratch


def weights_scratchpad(call: ConvCall, dtype: str, batch: int, threads: int) -> int:
    """The weight-gradient kernel's scratchpad: 1×1 unstrided kernels have their own, and so do
    strided 1×1 ones in bfloat16 (``jit_bf16_1x1`` on the input gathered per thread, "rtus")."""
    one_by_one = call.taps == 1 and not call.strided
    if dtype == "bfloat16" and call.taps == 1 and call.strided:
        gathered = replace(call, strides=(1,) * len(call.strides), in_spatial=call.out_spatial)
        rtus = _booked(threads * call.channels * prod(call.out_spatial) * itemsize(dtype))
        return bf16_1x1_weights_scratchpad(gathered, batch, threads) + rtus
    if dtype == "bfloat16":
        return (bf16_1x1_weights_scratchpad(call, batch, threads) if one_by_one
                else bf16_weights_scratchpad(call, batch, threads))
    return (float32_1x1_weights_scratchpad(call, batch, threads) if one_by_one
            else float32_weights_scratchpad(call, batch, threads))


# a strided transposed convolution's forward pass (a strided data phase) books, per thread, one
# image of its input in float32 besides buffers that depend on the kernel: 28,848 B when every
# window is its own (kernel = stride, as 2×2/2 upsampling; at least 61,616 B in all), ~98,480 B
# when they overlap (3×3/2; small images book less per image); measured at 2 threads
ONEDNN_TRANSPOSED_TILED = 28_848
ONEDNN_TRANSPOSED_TILED_SMALL = 61_616
ONEDNN_TRANSPOSED_OVERLAP = 98_480


def _strided_transposed_forward(call: ConvCall, threads: int) -> int:
    overlap = any(k != s for k, s in zip(call.kernel, call.strides))
    per_image = threads * 4 * call.channels * prod(call.in_spatial)
    return (ONEDNN_TRANSPOSED_OVERLAP + per_image if overlap
            else max(ONEDNN_TRANSPOSED_TILED_SMALL, ONEDNN_TRANSPOSED_TILED + per_image))


# grouped and depthwise convolutions (float32, 2 threads): the weight reordered (depthwise:
# channels padded to 16; depth_multiplier > 1 runs as a GEMM over one image's columns, output
# positions × kernel × input channels), no brgemm scratchpads
def grouped_workspace(ctx, call: ConvCall) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a grouped or depthwise oneDNN convolution."""
    channels, out_channels, groups, taps, weight = (call.channels, call.out_channels, call.groups, call.taps,
                                                    call.weight)
    per_group_in, per_group_out = channels // groups, out_channels // groups
    if call.transposed:
        channels, out_channels = out_channels, channels
        per_group_in, per_group_out = per_group_out, per_group_in
    depthwise = per_group_in == 1
    clone = 0 if taps == 1 or per_group_in == 1 else weight
    if depthwise and per_group_out == 1:
        reorder = _up16(channels) * taps
    elif depthwise:
        reorder = prod(call.out_spatial) * taps * channels
    else:
        reorder = _up16(out_channels) * per_group_in * taps
    data_reorder = reorder if depthwise else _up16(per_group_in) * out_channels * taps
    if call.transposed:
        reorder, data_reorder = data_reorder, reorder
    blocked = reorder if depthwise else _up16(out_channels) * (_up16(per_group_in) if taps == 1 else per_group_in) * taps
    biases = out_channels if call.bias else 0
    layout: tuple[Saved, ...] = ()
    if ctx.data_format == "channels_first":
        larger = max(call.channels * prod(call.in_spatial), call.out_channels * prod(call.out_spatial))
        layout = (Saved("new", elements=larger, what="oneDNN blocked copy of the input or output"),)
    phases = (clone + data_reorder, clone + blocked + biases, clone + blocked + 2 * biases + 2 * weight)
    forward = Saved("new", elements=clone + reorder, per_sample=False, what="weight in channels-last and oneDNN's layout")
    backward = Saved("new", elements=max(max(phases) - weight - biases, 0), per_sample=False,
                     what="weight copies and gradients in oneDNN's layouts")
    return _kept(forward) + layout, _kept(backward) + layout


def float32_weights_scratchpad(call: ConvCall, batch: int, threads: int) -> int:
    """Scratchpad of oneDNN's float32 ``jit`` weight-gradient kernel
    (``jit_avx512_common_conv_bwd_weights_kernel_f32``: ``init_conf``, ``balance``,
    ``init_scratchpad``; nxc layouts, one group) and of its bias gradient's ``cpu_reducer``.

    Threads split the batch (``nthr_mb``) and the 16-channel blocks by the least memory traffic,
    then by the least compute within 10% of that traffic. Every batch-thread but the first sums
    into its own float32 weight and bias gradient; the bias gradient is reduced separately
    (``_bias_reducer``); a bias of a channel count not a multiple of 16 is padded.
    """
    d = 3 - len(call.in_spatial)
    (i_d, ih, iw), (od, oh, ow) = (1,) * d + call.in_spatial, (1,) * d + call.out_spatial
    kd, kh, kw = (1,) * d + call.kernel
    sd, sh, sw = (1,) * d + call.strides
    ic, oc = call.channels, call.out_channels
    ic_block = ic if ic < 16 else 16          # a "first convolution": one block of its own
    nb_ic, nb_oc = _div_up(ic, ic_block), _div_up(oc, 16)

    def traffic(mb: int, ocb: int, icb: int) -> int:
        src = _div_up(batch, mb) * _div_up(nb_ic, icb) * ic_block * ih * iw * i_d // sd // sh // sw
        dst = _div_up(batch, mb) * _div_up(nb_oc, ocb) * 16 * oh * ow * od
        return src + dst + 8 * _div_up(nb_oc, ocb) * _div_up(nb_ic, icb) * kh * kw * kd * ic_block * 16

    def compute(mb: int, ocb: int, icb: int) -> int:
        return _div_up(batch, mb) * _div_up(nb_oc, ocb) * _div_up(nb_ic, icb)

    work = batch * od
    choice = _cheapest(traffic, threads, work, nb_oc, nb_ic)
    least_traffic, best = traffic(*choice), compute(*choice)
    for mb in range(1, min(threads, work) + 1):          # step 2: less compute, little more traffic
        for ocb in range(1, min(threads // mb, nb_oc) + 1):
            icb = min(threads // mb // ocb, nb_ic)
            cost = compute(mb, ocb, icb)
            if (cost <= best and traffic(mb, ocb, icb) < 1.1 * least_traffic) or 4 * cost <= 3 * best:
                best, choice = cost, (mb, ocb, icb)
    mb, ocb, icb = choice
    if threads // 2 < mb < threads:
        mb = min(work, threads)
    partial = 4 * (mb - 1) * (_up16(oc) * _up(ic, ic_block) * kh * kw * kd + _up16(oc))
    padded_bias = 4 * _up16(oc) if call.bias and oc % 16 else 0
    reducer = _bias_reducer(mb * ocb * icb, nb_oc, batch) if call.bias else 0
    return _booked(partial, padded_bias, barriers=(1 if mb > 1 else 0,)) + reducer


def float32_1x1_weights_scratchpad(call: ConvCall, batch: int, threads: int) -> int:
    """Scratchpad of oneDNN's float32 ``jit_1x1`` weight-gradient kernel
    (``jit_avx512_common_1x1_conv_kernel``: ``init_conf``, ``balance``, ``init_scratchpad``;
    unstrided) and of its bias gradient's ``cpu_reducer``: threads split batch × blocks of 7–16
    input positions and the 16-channel blocks by the least memory traffic; every batch-thread
    but the first sums into its own float32 weight gradient (channels padded to 16)."""
    positions = prod(call.in_spatial)
    block = _best_divider(positions, 7, 16, True)
    if positions % block:
        block = _best_divider(call.in_spatial[-1], 4, call.in_spatial[-1], False)
    block = 1 if block > 256 else block
    nb_reduce = _div_up(positions, block)
    nb_bcast, nb_load = _div_up(call.channels, 16), _div_up(call.out_channels, 16)

    def traffic(mb: int, ocb: int, icb: int) -> int:
        steps = _div_up(batch * nb_reduce, mb)
        return (steps * _div_up(nb_bcast, icb) * 16 * block + steps * _div_up(nb_load, ocb) * 16 * block
                + 12 * _div_up(nb_load, ocb) * _div_up(nb_bcast, icb) * 16 * 16)

    mb, ocb, icb = _cheapest(traffic, threads, batch * nb_reduce, nb_load, nb_bcast)
    if threads // 2 < mb < threads:
        mb = min(batch, threads)
    partial = 4 * (mb - 1) * _up16(call.out_channels) * _up16(call.channels)
    padded_bias = 4 * _up16(call.out_channels) if call.bias and call.out_channels % 16 else 0
    reducer = _bias_reducer(mb * ocb * icb, nb_load, batch) if call.bias else 0
    return _booked(padded_bias, partial, barriers=(1 if mb > 1 else 0,)) + reducer


#: ``cpu_reducer`` (oneDNN's ``reduce_balancer_t``): a bias gradient is reduced in jobs of 16
#: channels; each thread may buffer up to 3·5·5·16·16 floats
REDUCER_JOB = 16
REDUCER_BUFFER_PER_THREAD = 3 * 5 * 5 * 16 * 16


def _bias_reducer(threads: int, jobs: int, batch: int) -> int:
    """Bytes ``cpu_reducer`` books for the float32 bias gradient (jobs of 16 channels)."""
    return _reducer(threads, jobs, REDUCER_JOB, batch)


def _reducer(threads: int, jobs: int, job: int, batch: int) -> int:
    """Bytes ``cpu_reducer`` books to sum ``jobs`` float32 jobs of ``job`` elements over the
    batch: groups of threads share a job when there are fewer jobs than threads; the extra
    threads of a group each sum into float32 space (page-aligned), with one barrier per group."""
    most = max(1, REDUCER_BUFFER_PER_THREAD // job)
    least = max(1, jobs // threads)
    groups = min(jobs // least, threads)
    per_group = min(threads // groups, batch)
    per_group_jobs = _div_up(jobs, groups)
    complexity = jobs * job * batch
    for n in range(least, jobs):
        c_groups = min(jobs // n, threads)
        c_per_group = min(threads // c_groups, batch)
        c_jobs = _div_up(jobs, c_groups)
        if c_per_group > 1 and c_jobs > most:
            continue
        c_complexity = job * c_jobs * (_div_up(batch, c_per_group) + (c_per_group != 1))
        if c_complexity < complexity:
            groups, per_group, per_group_jobs, complexity = c_groups, c_per_group, c_jobs, c_complexity
    if per_group == 1:
        return 0
    space = 4 * groups * (per_group - 1) * per_group_jobs * job
    return space + ONEDNN_PAGE + ONEDNN_PAGE * (groups + 1)


def _f32(x: float) -> float:
    """x rounded to single precision, as oneDNN's float cost arithmetic rounds it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _product(factors: tuple[float, ...], divisors: tuple[int, ...] = ()) -> float:
    """Products, then quotients, left to right in single precision (a C++ float expression)."""
    value = _f32(factors[0])
    for f in factors[1:]:
        value = _f32(value * f)
    for d in divisors:
        value = _f32(value / d)
    return value


def _div_up(a: int, b: int) -> int:
    return -(-a // b)


def bf16_weights_scratchpad(call: ConvCall, batch: int, threads: int, plain_src: bool = False) -> int:
    """Scratchpad of oneDNN's ``jit_bf16`` weight-gradient kernel
    (``jit_avx512_core_bf16_conv_bwd_weights_kernel_f32``: ``init_conf``, ``balance``,
    ``init_scratchpad``), nxc layouts, one group.

    It splits the work between ``nthr_mb`` threads over batch × rows and ``nthr_oc_b`` ×
    ``nthr_ic_b`` over channel blocks of 16 (fewer than 16 input channels: one block), by
    the least memory traffic; then books the input transposed into rows of ``tr_iw`` (its width
    over the stride plus shared padding, in pairs) per batch-thread and input block, the output's
    gradient transposed likewise, float32 partial weight and bias gradients per batch-thread,
    and barriers.
    """
    d = 3 - len(call.in_spatial)
    (i_d, ih, iw), (od, oh, ow) = (1,) * d + call.in_spatial, (1,) * d + call.out_spatial
    kd, kh, kw = (1,) * d + call.kernel
    sd, sh, sw = (1,) * d + call.strides
    _, ph, pw = (0,) * d + call.pads
    _, dh, dw = (1,) * d + call.dilation
    ic, oc = call.channels, call.out_channels
    first = ic < 16
    ic_block, oc_block = (ic if first else 16), 16
    nb_ic, nb_oc = _div_up(ic, ic_block), _div_up(oc, oc_block)
    transpose_src = not (first and (ic == 1 or plain_src))   # a channels-first "first" input is read as it is
    r_pad = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (iw + pw))
    b_pad = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (ih + ph))
    tr_pad = _up(max(pw, r_pad + 1), 2)
    tr_iw = _up(_div_up(iw, sw) + tr_pad, 2) * sw if transpose_src else iw
    tr_ow = _up(ow, 2)
    full_spatial = (d > 0 and ih == oh and iw == ow and 1 not in (kh, kw) and sh == sw == 1 and dh == dw == 1
                    and pw == kw // 2 and ph == kh // 2 and not first and ic >= 128
                    and (ic_block * tr_iw + oc_block * tr_ow) * 2 * max(1, b_pad, ph) <= 48 * 1024)
    work = batch * od if d == 0 else batch if full_spatial else batch * oh

    def cost(mb: int, ocb: int, icb: int) -> float:
        src = batch * ic * i_d * ih * tr_iw * 2
        dst = batch * oc * od * oh * tr_ow * 2
        wei = oc * ic * kd * kh * kw * 4
        scale = _f32(_f32(0.5 * (dst + src)) / wei)
        ratio = _f32(nb_oc / nb_ic)
        src_coef = _f32(max(_f32(1.0 / ratio), 1.0) * (4.0 if scale < 1.0 else 1.0))
        dst_coef, wei_coef = max(ratio, 1.0), max(scale, 1.0)
        src_v = _product((src_coef, _div_up(work, mb), _div_up(nb_ic, icb), batch, ic_block, i_d, ih, tr_iw),
                         (work, sd, sh, sw))
        wei_v = _product((wei_coef, _div_up(nb_oc, ocb), _div_up(nb_ic, icb), kh, kw, kd, ic_block, oc_block))
        dst_v = _product((dst_coef, _div_up(work, mb), _div_up(nb_oc, ocb), batch, oc_block, od, oh, tr_ow), (work,))
        return _f32(_f32(src_v + dst_v) + wei_v)

    mb, ocb, icb = _cheapest(cost, threads, work, nb_oc, nb_ic)
    if threads // 2 < mb < threads:
        mb = min(work, threads)
    nthr = mb * ocb * icb
    # the transposed input keeps room for its shared padding even when it is not transposed
    tr_src = ((mb * nb_ic * tr_iw * ic_block * ih * i_d if transpose_src else 0) + tr_pad) * 2
    tr_ddst = mb * nb_oc * tr_ow * oc_block * oh * od * 2
    partial = 4 * mb * (nb_oc * oc_block * nb_ic * ic_block * kd * kh * kw + (nb_oc * oc_block if call.bias else 0))
    barriers = (nthr // ocb if ocb > 1 else 0, nthr // icb if icb > 1 else 0, 1)
    return _booked(tr_src, tr_ddst, partial, barriers=barriers)


def _cheapest(cost, threads: int, work: int, nb_oc: int, nb_ic: int) -> tuple[int, int, int]:
    """oneDNN's ``balance``: (batch, output-block, input-block) threads of least cost (ties: the
    last tried)."""
    best, choice = cost(1, 1, 1), (1, 1, 1)
    for mb in range(1, min(threads, work) + 1):
        for ocb in range(1, min(threads // mb, nb_oc) + 1):
            icb = min(threads // mb // ocb, nb_ic)
            c = cost(mb, ocb, icb)
            if c <= best:
                best, choice = c, (mb, ocb, icb)
    return choice


def _best_divider(value: int, low: int, high: int, find_max: bool, step: int = 1) -> int:
    """oneDNN's ``best_divider``: the block in [low, high] that pads ``value`` least."""
    high = max(1, min(high, value))
    low = max(1, min(low, high))
    best, least = high, float("inf")
    for divider in range(high, low - 1, -step):
        loss = (_up(value, divider) - value) / _up(value, divider)
        if loss < least or (not find_max and loss == least):
            best, least = divider, loss
    return best


def bf16_1x1_weights_scratchpad(call: ConvCall, batch: int, threads: int) -> int:
    """Scratchpad of oneDNN's ``jit_bf16_1x1`` weight-gradient kernel
    (``jit_avx512_core_bf16_1x1_conv_kernel``: ``init_conf``, ``balance``, ``init_scratchpad``),
    nxc layouts, unstrided.

    The reduction runs over the input positions in blocks of 8–16; threads split batch ×
    reduction blocks and the 16-channel blocks by the least memory traffic. Booked: float32
    partial weight and bias gradients per batch-thread, a barrier when there are several,
    per thread the output's gradient and the input transposed (their channel blocks over all
    positions, in pairs), and the bias padded to 16 when it is not.
    """
    positions = prod(call.in_spatial)
    block = _best_divider(positions, 8, 16, True, 2)
    if positions % block:
        block = _best_divider(call.in_spatial[-1], 4, call.in_spatial[-1], False, 2)
    block = _up(1 if block > 256 else block, 2)
    nb_reduce = _div_up(positions, block)
    nb_bcast, nb_load = _div_up(call.channels, 16), _div_up(call.out_channels, 16)
    output_koeff = 4 * max(1, call.out_channels // call.channels)

    def cost(mb: int, ocb: int, icb: int) -> int:
        steps = _div_up(batch * nb_reduce, mb)
        return (steps * _div_up(nb_bcast, icb) * 16 * block + steps * _div_up(nb_load, ocb) * 16 * block
                + output_koeff * _div_up(nb_load, ocb) * _div_up(nb_bcast, icb) * 16 * 16)

    mb, ocb, icb = _cheapest(cost, threads, batch * nb_reduce, nb_load, nb_bcast)
    if threads // 2 < mb < threads:
        mb = min(batch, threads)
    nthr = mb * ocb * icb
    load_blocks = _best_divider(nb_load, 16, nb_load, False)
    bcast_blocks = _best_divider(nb_bcast, 5, nb_bcast, False)
    rows = _up(positions, 2)
    biases = _up16(call.out_channels) if call.bias else 0
    partial = 4 * mb * (_up16(call.out_channels) * _up16(call.channels) + biases)
    padded_bias = 2 * call.out_channels if call.bias and call.out_channels % 16 else 0
    return _booked(partial, 2 * nthr * rows * 16 * load_blocks, 2 * nthr * rows * 16 * bcast_blocks, padded_bias,
                   barriers=(1 if mb > 1 else 0,))


def torch_rank(rank: int, ctx) -> int:
    """The rank of the torch kernels a layer runs: a 1-D layer on a channels-last tensor runs as a
    2-D one of height 1 (see ``modules.ChannelsLast``), every other layer as its own rank."""
    return 2 if rank == 1 and ctx.data_format == "channels_last" else rank


def lift(values: tuple, rank: int, ctx, unit) -> tuple:
    """Per-axis values (kernel, strides, pads ...) for the torch kernels' rank: ``unit`` for the
    height a 1-D layer gains (1 for sizes, (0, 0) for padding)."""
    return (unit, *values) if torch_rank(rank, ctx) != rank else tuple(values)


register(ConvRule("Conv1D", rank=1))
register(ConvRule("Conv2D", rank=2))
register(ConvRule("Conv3D", rank=3))


class DepthwiseConvRule(ConvRule):
    """Each input channel convolved with its own ``depth_multiplier`` kernels.

    torch: a convolution with groups = in_channels and in_channels × depth_multiplier outputs
    (output channel c·depth_multiplier + m, Keras's order). Parameters: in_channels ×
    depth_multiplier × (prod(kernel_size) + 1 bias). MACs per sample: prod(output spatial) ×
    in_channels × depth_multiplier × prod(kernel_size).
    """

    def __init__(self, type_name: str, rank: int):
        super().__init__(type_name, rank)
        self.args = (
            Arg("kernel_size", int_tuple(rank)),
            Arg("strides", int_tuple(rank), (1,) * rank),
            Arg("padding", choice("valid", "same"), "valid"),
            Arg("depth_multiplier", positive_int, 1),
            Arg("dilation_rate", int_tuple(rank), (1,) * rank),
            activation_arg,
            Arg("use_bias", boolean, True),
        )

    def _check_args(self, a) -> None:
        pass

    def _out_channels(self, a, channels: int) -> int:
        return channels * a.depth_multiplier

    def _groups(self, a, channels: int) -> int:
        return channels

    def params(self, a, x, ctx):
        _, channels = self._split(a, x, ctx)
        # in_channels × depth_multiplier kernels, one bias each
        outs = channels * a.depth_multiplier
        kernel = "×".join(map(str, a.kernel_size))
        weights = outs * prod(a.kernel_size)
        if a.use_bias:
            return Params(weights + outs, formula=f"{channels:,} × {a.depth_multiplier} × ({kernel} + 1) = {weights + outs:,}",
                          tensors=(weights, outs))
        return Params(weights, formula=f"{channels:,} × {a.depth_multiplier} × {kernel} = {weights:,}")

    def macs(self, a, x, y, ctx):
        out_spatial, outs = split_channels(y, ctx.data_format)
        return prod(out_spatial) * outs * prod(a.kernel_size)


class SeparableConvRule(DepthwiseConvRule):
    """A depthwise convolution (no bias) followed by a 1×1 convolution to ``filters`` (with bias).

    Parameters: in_channels × depth_multiplier × prod(kernel_size) (depthwise) + in_channels ×
    depth_multiplier × filters (pointwise) + filters (bias). MACs: both convolutions. Backward
    keeps the (padded) input and the depthwise result, which the pointwise convolution reads.
    """

    def __init__(self, type_name: str, rank: int):
        super().__init__(type_name, rank)
        self.args = (Arg("filters", positive_int), *self.args)

    def output_shape(self, a, x, ctx):
        spatial, _ = split_channels(super().output_shape(a, x, ctx), ctx.data_format)
        return join_channels(spatial, a.filters, ctx.data_format)

    def params(self, a, x, ctx):
        _, channels = self._split(a, x, ctx)
        middle = channels * a.depth_multiplier
        depthwise, pointwise = middle * prod(a.kernel_size), middle * a.filters
        bias = a.filters if a.use_bias else 0
        total = depthwise + pointwise + bias
        kernel = "×".join(map(str, a.kernel_size))
        text = f"{channels:,} × {a.depth_multiplier} × {kernel} + {middle:,} × {a.filters:,}"
        text += f" + {a.filters:,}" if a.use_bias else ""
        tensors = (depthwise, pointwise, bias) if a.use_bias else (depthwise, pointwise)
        return Params(total, formula=f"{text} = {total:,}", tensors=tensors)

    def macs(self, a, x, y, ctx):
        _, channels = split_channels(x, ctx.data_format)
        out_spatial, _ = split_channels(y, ctx.data_format)
        middle = channels * a.depth_multiplier
        return prod(out_spatial) * middle * (prod(a.kernel_size) + a.filters)

    def memory(self, a, x, y, ctx):
        """The depthwise convolution's memory (its padded input, when padded), then the pointwise
        one's, which keeps the depthwise result. Backward runs the pointwise convolution first;
        its input (the depthwise result) is let go when it is done, so the depthwise phase has
        that result's gradient in its place."""
        spatial, channels = split_channels(x, ctx.data_format)
        out_spatial, _ = split_channels(y, ctx.data_format)
        middle = channels * a.depth_multiplier
        depthwise = Saved("new", elements=prod(out_spatial) * middle, what="depthwise result")
        base = ConvRule.memory(self, a, x, join_channels(out_spatial, middle, ctx.data_format), ctx)
        pad = tuple(s for s in base.scratch if s.what == "padded input")
        grad_padded = base.input_grad_scratch
        depth_backward = base.backward_scratch
        ones, positions = lift((1,) * self.rank, self.rank, ctx, 1), lift(out_spatial, self.rank, ctx, 1)
        point_forward, point_backward = conv_workspace(
            ctx, channels=middle, out_channels=a.filters, kernel=ones, strides=ones, groups=1, bias=a.use_bias,
            out_spatial=positions, in_spatial=positions, padding=(0,) * len(ones))
        # the depthwise result's gradient exists in backward whether or not the input wants one
        extra = prod(out_spatial) * middle
        bigger = max((depth_backward, point_backward), key=lambda ss: sum(
            s.elements * (1 if s.dtype == "uint8" else 4) for s in ss if not s.per_sample))
        return Memory(saved=(*base.saved, depthwise), scratch=(*pad, depthwise, *point_forward),
                      backward_scratch=(Saved("new", elements=extra, what="depthwise result's gradient"), *bigger),
                      input_grad_scratch=grad_padded)

    def build(self, a, x, ctx):
        from torch import nn
        spatial, channels = self._split(a, x, ctx)
        middle = channels * a.depth_multiplier
        parts = self._windowed(a, channels, middle, channels, self._pads(a, spatial), False, ctx)
        pointwise_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[self.rank]
        parts.append(pointwise_cls(middle, a.filters, 1, bias=a.use_bias))
        return self._finish(a, parts, ctx)


register(DepthwiseConvRule("DepthwiseConv2D", rank=2))
register(SeparableConvRule("SeparableConv2D", rank=2))


def transpose_output_length(length: int, *, kernel: int, stride: int, padding: str,
                            output_padding: int | None = None, dilation: int = 1) -> int:
    """Keras's transposed-convolution length (``_get_output_shape_given_tf_padding``).

    >>> transpose_output_length(5, kernel=3, stride=2, padding="same")
    10
    >>> transpose_output_length(5, kernel=3, stride=2, padding="valid")
    11
    >>> transpose_output_length(5, kernel=1, stride=3, padding="valid")  # max(kernel, stride)
    15
    >>> transpose_output_length(5, kernel=3, stride=2, padding="same", output_padding=0)
    9
    """
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        extra = max(span, stride) - span if output_padding is None else output_padding
        return (length - 1) * stride + span + extra
    if output_padding is None:
        return length * stride
    return (length - 1) * stride + span % 2 + output_padding


def transpose_crops(*, kernel: int, stride: int, padding: str, output_padding: int | None = None,
                    dilation: int = 1) -> tuple[int, int]:
    """(before, after) to cut from torch's unpadded transposed convolution, of length
    (length − 1)·stride + span, to get Keras's; negative: zeros to add. From Keras's conversion
    to JAX's padding (``_convert_conv_transpose_padding_args_from_keras_to_jax``).

    >>> transpose_crops(kernel=3, stride=2, padding="same")
    (0, 1)
    >>> transpose_crops(kernel=1, stride=3, padding="valid")
    (0, -2)
    """
    span = dilation * (kernel - 1) + 1
    if padding == "valid":
        extra = max(span, stride) - span if output_padding is None else output_padding
        before, after = span - 1, span - 1 + extra
    else:
        total = stride + span - 2 if output_padding is None else span + span % 2 - 2 + output_padding
        before = min(total // 2 + total % 2, span - 1)
        after = total - before
    return span - 1 - before, span - 1 - after


class ConvTransposeRule(Rule):
    """The gradient of a convolution: every input element scatters ``kernel_size`` × ``filters``.

    Output length per axis, as Keras computes it: "valid" (input − 1) × stride + max(span, stride),
    "same" input × stride, and with ``output_padding`` (input − 1) × stride + span + output_padding
    ("valid") or (input − 1) × stride + span % 2 + output_padding ("same"), span being the
    dilated kernel. Parameters: filters × (in_channels × prod(kernel_size) + 1 bias).
    MACs per sample: prod(input spatial) × in_channels × filters × prod(kernel_size).

    torch's ConvTranspose cuts padding evenly and can extend only the end, so where Keras cuts
    unevenly (e.g. "same", stride 2, kernel 3) the module runs it unpadded, then crops or
    zero-extends each side and adds the bias (``modules.CroppedConvTranspose``).
    Backward keeps the input either way.
    """

    def __init__(self, type_name: str, rank: int):
        self.type_name = type_name  # type: ignore[misc]
        self.rank = rank
        self.args = (
            Arg("filters", positive_int),
            Arg("kernel_size", int_tuple(rank)),
            Arg("strides", int_tuple(rank), (1,) * rank),
            Arg("padding", choice("valid", "same"), "valid"),
            Arg("output_padding", optional(int_tuple(rank, minimum=0)), None),
            Arg("dilation_rate", int_tuple(rank), (1,) * rank),
            activation_arg,
            Arg("use_bias", boolean, True),
        )

    def _split(self, a, x, ctx):
        if max(a.strides) > 1 and max(a.dilation_rate) > 1:
            raise SpecError("strides > 1 is not supported together with dilation_rate > 1 (as in Keras)",
                            field="strides", expected="strides=1 or dilation_rate=1",
                            received=f"strides={a.strides} and dilation_rate={a.dilation_rate}")
        if a.output_padding is not None and any(p >= s for p, s in zip(a.output_padding, a.strides)):
            raise SpecError("output_padding must be smaller than strides on every axis (as in Keras)",
                            field="output_padding", expected=f"values < strides={a.strides}",
                            received=f"output_padding={a.output_padding}")
        if len(x) != self.rank + 1:
            layout = "(steps, channels)" if self.rank == 1 else f"{self.rank} spatial axes and channels"
            raise ShapeError(f"input has the wrong number of axes for {self.type_name}",
                             expected=f"{self.rank + 1} axes besides the batch: {layout} ({ctx.data_format})",
                             received=f"shape {shape_text(x)}")
        return split_channels(x, ctx.data_format)

    def _per_axis(self, a):
        ops = a.output_padding or (None,) * self.rank
        return [dict(kernel=k, stride=s, padding=a.padding, output_padding=p, dilation=d)
                for k, s, p, d in zip(a.kernel_size, a.strides, ops, a.dilation_rate)]

    def output_shape(self, a, x, ctx):
        spatial, _ = self._split(a, x, ctx)
        out = tuple(transpose_output_length(n, **axis) for n, axis in zip(spatial, self._per_axis(a)))
        if any(n <= 0 for n in out):
            raise ShapeError(f"output size would be zero: {out}", field="output_padding",
                             expected="an output_padding of at least 1 with an even kernel and padding=\"same\" on a length-1 axis",
                             received=f"output_padding={a.output_padding}, kernel_size={a.kernel_size}")
        return join_channels(out, a.filters, ctx.data_format)

    def params(self, a, x, ctx):
        _, channels = self._split(a, x, ctx)
        # filters × (in_channels × kernel + 1): as a convolution's, with in and out swapped
        weights = a.filters * channels * prod(a.kernel_size)
        kernel = "×".join(map(str, a.kernel_size))
        if a.use_bias:
            return Params(weights + a.filters, formula=f"{a.filters:,} × ({channels:,} × {kernel} + 1) = {weights + a.filters:,}",
                          tensors=(weights, a.filters))
        return Params(weights, formula=f"{a.filters:,} × ({channels:,} × {kernel}) = {weights:,}")

    def macs(self, a, x, y, ctx):
        spatial, channels = split_channels(x, ctx.data_format)
        return prod(spatial) * channels * a.filters * prod(a.kernel_size)

    def memory(self, a, x, y, ctx):
        """Backward keeps the input. Where Keras crops what torch cannot (``_native``), torch's
        uncropped result (cuts added back) is a temporary: made by the kernel, beside its
        workspace, then cut (one pad) into the output while it is still alive — the forward
        scratch is the larger of those two moments beyond the output; in backward its gradient
        takes the place of the output's, beside the kernel's workspace. oneDNN's own buffers as for a convolution (``conv_workspace``)."""
        spatial, channels = split_channels(x, ctx.data_format)
        out_spatial, _ = split_channels(y, ctx.data_format)
        crops = [transpose_crops(**axis) for axis in self._per_axis(a)]
        native = self._native(a, crops)
        # torch's own result: cropped by its padding when native, else uncropped (cut after)
        torch_out = out_spatial if native else tuple(n + b + e for n, (b, e) in zip(out_spatial, crops))
        padding = tuple(b if native else 0 for b, _ in crops)
        forward, backward = conv_workspace(ctx, channels=channels, out_channels=a.filters,
                                           kernel=lift(a.kernel_size, self.rank, ctx, 1),
                                           strides=lift(a.strides, self.rank, ctx, 1), groups=1, bias=a.use_bias,
                                           out_spatial=lift(torch_out, self.rank, ctx, 1), transposed=True,
                                           in_spatial=lift(spatial, self.rank, ctx, 1),
                                           padding=lift(padding, self.rank, ctx, 0),
                                           dilation=lift(a.dilation_rate, self.rank, ctx, 1))
        if not native:
            full, out = a.filters * prod(torch_out), a.filters * prod(out_spatial)
            act = itemsize(ctx.compute_dtype(True))
            kernel = sum(s.nbytes(ctx.batch, ctx.compute_dtype(True)) for s in forward)
            forward = (Saved("new", elements=max(kernel + ctx.batch * act * (full - out), ctx.batch * act * full),
                             dtype="uint8", per_sample=False,
                             what="uncropped result with the kernel's workspace, then beside the output"),)
            # the pad's backward makes the uncropped result's gradient and lets the output's go
            backward = (Saved("new", elements=full - out, what="uncropped result's gradient, beyond the output's"),
                        *backward)
        return Memory(saved=(Saved("input", what="transposed convolution input"),),
                      scratch=forward, backward_scratch=backward)

    @staticmethod
    def _native(a, crops) -> bool:
        """torch's own padding: crop c before and c − p after, 0 <= p < max(stride, dilation)."""
        return all(b >= 0 and 0 <= b - e < max(s, d) for (b, e), s, d in zip(crops, a.strides, a.dilation_rate))

    def build(self, a, x, ctx):
        from torch import nn

        from profiler.rules.modules import ChannelsLast, CroppedConvTranspose, with_activation
        _, channels = self._split(a, x, ctx)
        crops = lift([transpose_crops(**axis) for axis in self._per_axis(a)], self.rank, ctx, (0, 0))
        kernel, strides, dilation = (lift(t, self.rank, ctx, 1) for t in (a.kernel_size, a.strides, a.dilation_rate))
        rank = torch_rank(self.rank, ctx)
        conv_cls = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[rank]
        native = self._native(a, [transpose_crops(**axis) for axis in self._per_axis(a)])
        layer: nn.Module
        if native:
            layer = conv_cls(channels, a.filters, kernel, stride=strides,
                             padding=tuple(b for b, _ in crops),
                             output_padding=tuple(b - e for b, e in crops),
                             dilation=dilation, bias=a.use_bias)
        else:
            layer = CroppedConvTranspose(channels, a.filters, kernel, strides=strides,
                                         dilation=dilation, crops=tuple(crops), use_bias=a.use_bias)
        if ctx.data_format == "channels_last":
            layer = ChannelsLast(layer)
        return with_activation(layer, a.activation)


for _rank in (1, 2, 3):
    register(ConvTransposeRule(f"Conv{_rank}DTranspose", rank=_rank))
