"""Conv1D/2D/3D, DepthwiseConv2D, SeparableConv2D, Conv1DTranspose/2D/3D: one rule per family,
instantiated per rank.

Keras semantics (``keras/src/layers/convolutional/base_conv.py``): ``filters`` and the input's
channels must both divide by ``groups``; ``strides > 1`` together with ``dilation_rate > 1`` is
refused; "same" gives ceil(length / stride) and, as TensorFlow, pads the odd element *after*.
Conv1D also takes Keras's "causal": pad ``dilation × (kernel − 1)`` before, nothing after.
Keras's depthwise and separable convolutions do not refuse strides with dilation.
"""
from __future__ import annotations

from math import prod

from ..args import Arg, boolean, choice, int_tuple, optional, positive_int
from ..errors import ShapeError, SpecError
from ..registry import Memory, Params, Rule, Saved, register
from ..shapes import join_channels, same_padding, shape_text, spatial_output, split_channels
from .core import activation_arg


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
            # backward makes the padded input's gradient, then the input's from it
            grad_padded = (Saved("new", elements=padded - prod(x), what="padded input's gradient, beyond the input's"),)
        else:
            kept = Saved("input", what="convolution input")
        # (a fused ``activation`` is the predictor's own op, with the Activation rule's memory)
        forward, backward = conv_workspace(ctx, channels=channels, out_channels=out_channels,
                                           kernel=a.kernel_size, strides=a.strides, groups=self._groups(a, channels),
                                           bias=a.use_bias, out_spatial=out_spatial, in_spatial=spatial)
        return Memory(saved=(kept,), scratch=(*scratch, *forward), backward_scratch=(*grad_padded, *backward))

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

        from .modules import ChannelsLast, with_activation
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


# --- what oneDNN allocates inside a convolution -------------------------------------------------
#
# On the CPU, torch runs float32 convolutions through oneDNN (``mkldnn_convolution``) whenever the
# batch is larger than 1, the input has more than 20,480 elements, groups > 1 or the kernel is
# larger than 3×3 (``ConvParams::use_mkldnn``); a channels-last input (every layer here in
# Keras's default layout) keeps the channels-last path. Around the kernel it allocates, measured
# with the profiler's allocator events (torch 2.13, oneDNN 3.12, AVX-512):
#
# forward: the weight copied to channels-last (``weight.contiguous(channels_last)``; not needed
#   when it already is: a 1×1 kernel or one input channel per group), the weight reordered to
#   oneDNN's blocked layout (output channels padded to 16; depthwise: channels padded to 16),
#   and the kernel's scratchpad — a constant 12,336 bytes for the direct convolution, none for
#   the depthwise one. A depthwise convolution with depth_multiplier > 1 runs as a GEMM over one
#   image's columns: output positions × kernel × input channels elements.
# backward (``convolution_backward``), in three phases that follow each other:
#   data: the weight copied to channels-last again and reordered for the input gradient (input
#     channels padded to 16), with a scratchpad of 12,464 bytes (61,488 with strides > 1);
#   weights: the weight gradient in the blocked layout (as the forward reorder; a 1×1 kernel
#     pads the input channels to 16 too), the bias gradient, and — when fewer than 32 output
#     channels make the kernel split the batch between threads — a reduction buffer of one more
#     blocked weight gradient plus ~8 KiB, and 12,544 bytes for the bias;
#   return: the gradients in the weight's channels-last layout, copied once more to the
#     parameter's own layout.
# A transposed convolution runs these the other way round: its forward pass is a convolution's
# data phase.
#
# Limits: the scratchpads are oneDNN's own bookkeeping for this CPU and thread count (2 threads
# here); strided data phases grow with large layers (a 7×7/2 stem on 224×224 books ~7 MB); a
# batch of one with a small input (≤ 20,480 elements, kernel ≤ 3×3, one group) runs torch's
# im2col kernel instead, whose columns (input channels × kernel × output positions per sample)
# are not counted: the rule does not see the batch. Channels-first inputs are also reordered to
# the blocked layout (counted as one copy of the larger of input and output, per sample).
ONEDNN_FORWARD_SCRATCHPAD = 12_336
ONEDNN_DATA_SCRATCHPAD = 12_464
ONEDNN_STRIDED_DATA_SCRATCHPAD = 61_488
ONEDNN_WEIGHT_REDUCTION_EXTRA = 8_384
ONEDNN_BIAS_REDUCTION = 12_544
# a strided transposed convolution (a strided data phase) books, per thread, one image of its
# input in float32 besides buffers that depend on the kernel: 28,848 B when every window is its
# own (kernel = stride, as 2×2/2 upsampling; at least 61,616 B in all), ~98,480 B when they
# overlap (3×3/2; small images book less per image)
ONEDNN_THREADS = 2
ONEDNN_TRANSPOSED_TILED = 28_848
ONEDNN_TRANSPOSED_TILED_SMALL = 61_616
ONEDNN_TRANSPOSED_OVERLAP = 98_480


def _up16(n: int) -> int:
    return -(-n // 16) * 16


def conv_workspace(ctx, *, channels: int, out_channels: int, kernel: tuple[int, ...], strides: tuple[int, ...],
                   groups: int, bias: bool, out_spatial: tuple[int, ...], transposed: bool = False,
                   in_spatial: tuple[int, ...] = ()) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward scratch, backward scratch) of one convolution on the CPU (see the notes above).

    The backward scratch is the largest of the three phases beyond the gradients the memory
    model counts itself (weight, bias, input).
    """
    if ctx.device_kind != "cpu":
        return (), ()
    taps = prod(kernel)
    per_group_in, per_group_out = channels // groups, out_channels // groups
    weight = out_channels * per_group_in * taps
    if transposed:   # torch's weight is (in, out, *kernel); oneDNN sees the convolution it inverts
        channels, out_channels = out_channels, channels
        per_group_in, per_group_out = per_group_out, per_group_in
    strided = max(strides) > 1
    depthwise = groups > 1 and per_group_in == 1
    clone = 0 if taps == 1 or per_group_in == 1 else weight          # weight.contiguous(channels_last)
    layout = ()
    if ctx.data_format == "channels_first":   # blocked copies of the input or output, per sample
        larger = max(channels * prod(in_spatial), out_channels * prod(out_spatial)) if in_spatial else 0
        layout = (Saved("new", elements=larger, what="oneDNN blocked copy of the input or output"),)
    if depthwise and per_group_out == 1:
        reorder = _up16(channels) * taps
        forward_bytes, data_scratch, weight_scratch = 0, 0, 0
    elif depthwise:
        reorder = prod(out_spatial) * taps * channels                 # one image's columns
        forward_bytes, data_scratch, weight_scratch = 0, 0, 0
    elif groups > 1:   # grouped: a kernel without the direct convolution's scratchpads
        reorder = _up16(out_channels) * per_group_in * taps
        forward_bytes, data_scratch, weight_scratch = 0, 0, 0
    else:
        reorder = _up16(out_channels) * per_group_in * taps
        forward_bytes = ONEDNN_FORWARD_SCRATCHPAD
        data_scratch = ONEDNN_STRIDED_DATA_SCRATCHPAD if strided else ONEDNN_DATA_SCRATCHPAD
        weight_scratch = 0
        if out_channels < 32:   # bytes: float32 reduction buffers
            blocked = _up16(out_channels) * (_up16(per_group_in) if taps == 1 else per_group_in) * taps
            weight_scratch = 4 * blocked + ONEDNN_WEIGHT_REDUCTION_EXTRA + (ONEDNN_BIAS_REDUCTION if bias else 0)
    if transposed:   # the forward pass is the data phase of the convolution it inverts
        forward_bytes = data_scratch
        if strided:     # per thread, one image of its input in float32, and kernel-dependent buffers
            overlap = any(k != s for k, s in zip(kernel, strides))
            image = out_channels * prod(in_spatial)   # the input's channels (swapped above)
            per_image = ONEDNN_THREADS * 4 * image
            forward_bytes = (ONEDNN_TRANSPOSED_OVERLAP + per_image if overlap
                             else max(ONEDNN_TRANSPOSED_TILED_SMALL, ONEDNN_TRANSPOSED_TILED + per_image))
        data_scratch = ONEDNN_DATA_SCRATCHPAD if not depthwise else 0
    data_reorder = reorder if depthwise else _up16(per_group_in) * out_channels * taps
    if transposed:   # the forward pass reorders the weight as a data phase does, backward as a forward
        reorder, data_reorder = data_reorder, reorder
    weight_blocked = (_up16(out_channels) * (_up16(per_group_in) if taps == 1 else per_group_in) * taps
                      if not depthwise else reorder)
    biases = out_channels if bias else 0
    forward = (Saved("new", elements=clone + reorder, what="weight in channels-last and oneDNN's layout"),
               Saved("new", elements=forward_bytes, dtype="uint8", per_sample=False, what="oneDNN scratchpad"))
    forward = tuple(s if s.dtype == "uint8" else Saved("new", s.elements, per_sample=False, what=s.what)
                    for s in forward if s.elements) + layout
    # the three backward phases, as (act elements, bytes); the gradients (weight + bias) come off
    phases = [(clone + data_reorder, data_scratch),
              (clone + weight_blocked + biases, weight_scratch),
              (clone + weight_blocked + 2 * biases + 2 * weight, 0)]
    elements, nbytes = max(phases, key=lambda p: 4 * p[0] + p[1])
    elements -= weight + biases
    backward = tuple(s for s in (Saved("new", elements=max(elements, 0), per_sample=False, what="weight copies and gradients in oneDNN's layouts"),
                                 Saved("new", elements=nbytes, dtype="uint8", per_sample=False, what="oneDNN scratchpad"))
                     if s.elements) + layout
    return forward, backward


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
        grad_padded = tuple(s for s in base.backward_scratch if s.what.startswith("padded"))
        depth_backward = tuple(s for s in base.backward_scratch if not s.what.startswith("padded"))
        point_forward, point_backward = conv_workspace(
            ctx, channels=middle, out_channels=a.filters, kernel=(1,) * self.rank, strides=(1,) * self.rank,
            groups=1, bias=a.use_bias, out_spatial=out_spatial, in_spatial=out_spatial)
        # the depthwise result's gradient exists in backward whether or not the input wants one
        extra = prod(out_spatial) * middle
        bigger = max((depth_backward, point_backward), key=lambda ss: sum(
            s.elements * (1 if s.dtype == "uint8" else 4) for s in ss if not s.per_sample))
        return Memory(saved=(*base.saved, depthwise), scratch=(*pad, depthwise, *point_forward),
                      backward_scratch=(*grad_padded, Saved("new", elements=extra, what="depthwise result's gradient"),
                                        *bigger))

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
        """Backward keeps the input. Where Keras crops what torch cannot (``_native``), the
        convolution's uncropped result is a temporary beside the output, and so is its gradient
        in backward; oneDNN's own buffers as for a convolution (``conv_workspace``)."""
        spatial, channels = split_channels(x, ctx.data_format)
        out_spatial, _ = split_channels(y, ctx.data_format)
        forward, backward = conv_workspace(ctx, channels=channels, out_channels=a.filters, kernel=a.kernel_size,
                                           strides=a.strides, groups=1, bias=a.use_bias, out_spatial=out_spatial,
                                           transposed=True, in_spatial=spatial)
        crops = [transpose_crops(**axis) for axis in self._per_axis(a)]
        uncropped: tuple[Saved, ...] = ()
        if not self._native(a, crops):
            # torch's result, then one pad (a crop where negative) to Keras's size, the bias added
            # in place: the full result is a temporary beside the output
            full = a.filters * prod(n - b - e for n, (b, e) in zip(out_spatial, crops))
            uncropped = (Saved("new", elements=full, what="uncropped result"),)
            backward = (Saved("new", elements=full, what="uncropped result's gradient"), *backward)
        return Memory(saved=(Saved("input", what="transposed convolution input"),),
                      scratch=(*uncropped, *forward), backward_scratch=backward)

    @staticmethod
    def _native(a, crops) -> bool:
        """torch's own padding: crop c before and c − p after, 0 <= p < max(stride, dilation)."""
        return all(b >= 0 and 0 <= b - e < max(s, d) for (b, e), s, d in zip(crops, a.strides, a.dilation_rate))

    def build(self, a, x, ctx):
        from torch import nn

        from .modules import ChannelsLast, CroppedConvTranspose, with_activation
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
