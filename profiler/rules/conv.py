"""Conv1D, Conv2D, Conv3D: one rule, instantiated per rank.

Keras semantics (``keras/src/layers/convolutional/base_conv.py``): ``filters`` and the input's
channels must both divide by ``groups``; ``strides > 1`` together with ``dilation_rate > 1`` is
refused; "same" gives ceil(length / stride) and, as TensorFlow, pads the odd element *after*.
Conv1D also takes Keras's "causal": pad ``dilation × (kernel − 1)`` before, nothing after.
"""
from __future__ import annotations

from math import prod

from ..args import Arg, boolean, choice, int_tuple, positive_int
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

    def _split(self, a, x, ctx) -> tuple[tuple[int, ...], int]:
        self._check_args(a)
        if len(x) != self.rank + 1:
            layout = "(steps, channels)" if self.rank == 1 else f"{self.rank} spatial axes and channels"
            raise ShapeError(f"input has the wrong number of axes for {self.type_name}",
                             expected=f"{self.rank + 1} axes besides the batch: {layout} ({ctx.data_format})",
                             received=f"shape {shape_text(x)}")
        spatial, channels = split_channels(x, ctx.data_format)
        if channels % a.groups:
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
        spatial, _ = self._split(a, x, ctx)
        # "causal" has the same output length as "same": ceil(length / stride)
        padding = "same" if a.padding == "causal" else a.padding
        out = spatial_output(spatial, kernel=a.kernel_size, strides=a.strides, padding=padding,
                             dilation=a.dilation_rate)
        return join_channels(out, a.filters, ctx.data_format)

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
        # "causal") makes a new padded tensor, and that is what the convolution keeps
        spatial, channels = split_channels(x, ctx.data_format)
        pads = self._pads(a, spatial)
        if any(b != e for b, e in pads):
            padded = channels * prod(n + b + e for n, (b, e) in zip(spatial, pads))
            kept = Saved("new", elements=padded, what="padded input")
        else:
            kept = Saved("input", what="convolution input")
        # (a fused ``activation`` is the predictor's own op, with the Activation rule's memory)
        return Memory(saved=(kept,))

    def build(self, a, x, ctx):
        from torch import nn

        from .modules import ChannelsLast, with_activation
        spatial, channels = self._split(a, x, ctx)
        pads = self._pads(a, spatial)
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[self.rank]
        even = all(b == e for b, e in pads)
        conv = conv_cls(channels, a.filters, a.kernel_size, stride=a.strides,
                        padding=tuple(b for b, _ in pads) if even else 0,
                        dilation=a.dilation_rate, groups=a.groups, bias=a.use_bias)
        layer: nn.Module = conv
        if not even:
            # torch pads both sides alike; TensorFlow puts the odd element after
            pad_cls = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[self.rank]
            layer = nn.Sequential(pad_cls(_torch_pad_order(pads), 0.0), conv)
        if ctx.data_format == "channels_last":
            layer = ChannelsLast(layer)
        return with_activation(layer, a.activation)


def _torch_pad_order(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """(before, after) per axis, first axis first → torch.nn.functional.pad's last-axis-first."""
    return tuple(p for before_after in reversed(pads) for p in before_after)


register(ConvRule("Conv1D", rank=1))
register(ConvRule("Conv2D", rank=2))
register(ConvRule("Conv3D", rank=3))
