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

from profiler.rules.args import Arg, boolean, choice, int_tuple, optional, positive_int
from profiler.dtypes import itemsize
from profiler.errors import ShapeError, SpecError
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import join_channels, same_padding, shape_text, spatial_output, split_channels
from profiler.rules.core import activation_arg
from profiler.engine.kernels.cpu_conv import conv_workspace


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
                                           strides=lift(a.strides, self.rank, ctx, 1), groups=1,
                                           bias=a.use_bias and native,   # else added after the cut
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
