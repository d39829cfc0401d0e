"""MaxPooling1D/2D/3D, AveragePooling1D/2D/3D, GlobalAveragePooling1D/2D/3D, GlobalMaxPooling1D/2D/3D.

Keras semantics (``keras/src/layers/pooling/base_pooling.py``): ``pool_size`` defaults to 2 on
every axis for max pooling and must be given for average pooling; ``strides`` defaults to
``pool_size``; "valid" keeps full windows only, "same" gives ceil(length / stride) and pads as
TensorFlow does, the odd element after. Padding never takes part: max pooling ignores it
(torch: pad with −inf) and average pooling divides by the number of real elements in each
window (torch: ``count_include_pad=False``, or ``PaddedAvgPool`` when the padding is uneven).

MACs convention: pooling has no multiplications; one comparison (max) or one add (average) per
window element is counted as one MAC, i.e. output elements × prod(pool_size). Global average
pooling counts one add per input element, global max pooling one comparison per input element.
"""
from __future__ import annotations

from math import prod

from profiler.rules.args import REQUIRED, Arg, boolean, choice, int_tuple, optional
from profiler.errors import ShapeError
from profiler.rules.registry import Memory, Rule, Saved, register
from profiler.rules.shapes import join_channels, same_padding, shape_text, spatial_output, split_channels
from profiler.engine.kernels.cpu_reduce import SCALAR_OPERAND, mean_upcast


def _expect_spatial_rank(type_name: str, rank: int, x, ctx) -> None:
    if len(x) != rank + 1:
        layout = "(steps, channels)" if rank == 1 else f"{rank} spatial axes and channels"
        raise ShapeError(f"input has the wrong number of axes for {type_name}",
                         expected=f"{rank + 1} axes besides the batch: {layout} ({ctx.data_format})",
                         received=f"shape {shape_text(x)}")


class PoolRule(Rule):
    """A max or average over a sliding ``pool_size`` window on each spatial axis, per channel."""

    def __init__(self, type_name: str, rank: int, kind: str):
        self.type_name = type_name  # type: ignore[misc]  (per instance: one rule per rank)
        self.rank = rank
        self.kind = kind  # "max" or "average"
        # Keras: max pooling defaults to windows of 2; average pooling has no default
        self.args = (
            Arg("pool_size", int_tuple(rank), (2,) * rank if kind == "max" else REQUIRED),
            Arg("strides", optional(int_tuple(rank)), None),
            Arg("padding", choice("valid", "same"), "valid"),
        )

    def _strides(self, a) -> tuple[int, ...]:
        return a.pool_size if a.strides is None else a.strides

    def _pads(self, a, spatial) -> tuple[tuple[int, int], ...]:
        if a.padding == "valid":
            return tuple((0, 0) for _ in spatial)
        return tuple(same_padding(n, kernel=k, stride=s)
                     for n, k, s in zip(spatial, a.pool_size, self._strides(a)))

    def _native(self, a, spatial, pads) -> bool:
        """Can torch's own pooling pad as Keras does? Only evenly; and torch's avg_pool3d also
        refuses an input smaller than the window even when the padding would make it fit."""
        if any(b != e for b, e in pads):
            return False
        return not (self.kind == "average" and self.rank == 3
                    and any(n < k for n, k in zip(spatial, a.pool_size)))

    def output_shape(self, a, x, ctx):
        _expect_spatial_rank(self.type_name, self.rank, x, ctx)
        spatial, channels = split_channels(x, ctx.data_format)
        try:
            out = spatial_output(spatial, kernel=a.pool_size, strides=self._strides(a), padding=a.padding)
        except ShapeError as e:  # same check, but the field here is pool_size
            raise ShapeError(e.what, field="pool_size", expected=e.expected,
                             received=(e.received or "").replace("kernel_size", "pool_size")) from None
        return join_channels(out, channels, ctx.data_format)

    def macs(self, a, x, y, ctx):
        # one comparison (max) or add (average) per window element
        return prod(y) * prod(a.pool_size)

    def memory(self, a, x, y, ctx):
        """Max pooling: ``max_pool{2,3}d_with_indices`` makes the argmax indices (int64, one per
        output) in inference too, and keeps them with its input for backward; only torch's 1-D
        kernel on a channels-first tensor skips them in inference. An uneven padding pads first
        (−inf or zeros): the padded tensor is what the pooling keeps, a temporary in inference,
        and backward makes its gradient before the input's. Average pooling keeps its input;
        the padded average divides the sums by each window's share of real elements in place
        (that share, one per output position, is kept by the division). avg_pool3d has no
        channels-last kernel: it copies the input to channels-first and its result back, and
        backward copies the gradient likewise.
        """
        spatial, channels = split_channels(x, ctx.data_format)
        out_spatial, _ = split_channels(y, ctx.data_format)
        pads = self._pads(a, spatial)
        native = self._native(a, spatial, pads)
        padded = channels * prod(n + b + e for n, (b, e) in zip(spatial, pads))
        padded_tensor = Saved("new", elements=padded, what="padded input")
        # the padded input's gradient, then the input's: the pooling's saved tensors go first
        grad_padded = () if native else (Saved("new", elements=padded - prod(x), what="padded input's gradient"),)
        if self.kind == "max":
            indices = Saved("new", elements=prod(y), dtype="int64", what="argmax indices")
            kept = Saved("input", what="pooling input") if native else padded_tensor
            indices_in_inference = not (self.rank == 1 and ctx.data_format == "channels_first" and native)
            scratch = ((indices,) if indices_in_inference else ()) if native else (padded_tensor, indices)
            return Memory(saved=(kept, indices), scratch=scratch, backward_scratch=grad_padded)
        if native:
            if self.rank == 3 and ctx.data_format == "channels_last":
                copies = (Saved("new", elements=max(prod(x), prod(y)), what="channels-first copies"),)
                return Memory(saved=(Saved("input", what="pooling input"),), scratch=copies,
                              backward_scratch=(Saved("new", elements=prod(y), what="gradient copy"),))
            return Memory(saved=(Saved("input", what="pooling input"),))
        share = Saved("new", elements=prod(out_spatial), per_sample=False, what="per-window share of real elements")
        # backward: the division's gradient (the share let go after it), then the pooling's
        divided = (Saved("new", elements=prod(y), what="gradient / share"),)
        return Memory(saved=(padded_tensor, share), scratch=(padded_tensor, share),
                      backward_scratch=grad_padded + divided)

    def build(self, a, x, ctx):
        from torch import nn

        from profiler.rules.conv import _torch_pad_order, lift, torch_rank
        from profiler.rules.modules import ChannelsLast, PaddedAvgPool
        spatial, _ = split_channels(x, ctx.data_format)
        pads = self._pads(a, spatial)
        native = self._native(a, spatial, pads)
        rank = torch_rank(self.rank, ctx)   # a 1-D layer on a channels-last tensor runs as a 2-D one
        pool_size, strides = lift(a.pool_size, self.rank, ctx, 1), lift(self._strides(a), self.rank, ctx, 1)
        pads = lift(pads, self.rank, ctx, (0, 0))
        before = tuple(b for b, _ in pads)
        layer: nn.Module
        if self.kind == "max":
            pool_cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[rank]
            if native:  # torch's own padding is −inf for max pooling
                layer = pool_cls(pool_size, strides, padding=before)
            else:
                pad_cls = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[rank]
                layer = nn.Sequential(pad_cls(_torch_pad_order(pads), float("-inf")),
                                      pool_cls(pool_size, strides))
        else:
            pool_cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[rank]
            if native:
                layer = pool_cls(pool_size, strides, padding=before, count_include_pad=False)
            else:
                layer = PaddedAvgPool(rank, pool_size, strides, _torch_pad_order(pads))
        if ctx.data_format == "channels_last":
            layer = ChannelsLast(layer)
        return layer


class GlobalAveragePoolRule(Rule):
    """The mean over every spatial axis, per channel; ``keepdims`` keeps them with size 1.

    MACs: one add per input element. Backward of a mean keeps nothing but the input's shape.
    """

    def __init__(self, type_name: str, rank: int):
        self.type_name = type_name  # type: ignore[misc]
        self.rank = rank
        self.args = (Arg("keepdims", boolean, False),)

    def output_shape(self, a, x, ctx):
        _expect_spatial_rank(self.type_name, self.rank, x, ctx)
        _, channels = split_channels(x, ctx.data_format)
        if a.keepdims:
            return join_channels((1,) * self.rank, channels, ctx.data_format)
        return (channels,)

    def macs(self, a, x, y, ctx):
        return prod(x)

    def memory(self, a, x, y, ctx):
        """``mean`` divides by a wrapped count (``SCALAR_OPERAND``), forward and backward. In bfloat16
        or float16 it sums in float32 (``mean_upcast``; the count's division comes after the copy
        is freed). Whether it does depends on the dtype the input arrives in (under autocast:
        bfloat16 after a matmul, float32 after an embedding), which the memory model knows:
        ``reduced_scratch``."""
        return Memory(scratch=SCALAR_OPERAND, reduced_scratch=mean_upcast(prod(x), prod(y)),
                      backward_scratch=SCALAR_OPERAND)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Mean
        # axes of the batched tensor in the spec's own layout
        first = 2 if ctx.data_format == "channels_first" else 1
        return Mean(tuple(range(first, first + self.rank)), keepdim=a.keepdims)


class GlobalMaxPoolRule(GlobalAveragePoolRule):
    """The maximum over every spatial axis, per channel; ``keepdims`` keeps them with size 1.

    MACs: one comparison per input element. Backward of ``amax`` keeps its input and its result
    (to find where the maxima were); it compares them (a bool per input element), counts the
    maxima of each channel (int64), divides the gradient by the count and spreads it (a float
    copy of the mask on the way).
    """

    def memory(self, a, x, y, ctx):
        backward = (Saved("new", elements=prod(x), dtype="bool", what="where the maxima are"),
                    Saved("new", elements=prod(x), what="that mask as a float"),
                    Saved("new", elements=prod(y), dtype="int64", what="maxima per channel"),
                    Saved("new", elements=prod(y), what="gradient / count"))
        return Memory(saved=(Saved("input", what="pooling input"), Saved("output", what="maxima")),
                      backward_scratch=backward)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Max
        first = 2 if ctx.data_format == "channels_first" else 1
        return Max(tuple(range(first, first + self.rank)), keepdim=a.keepdims)


for _rank in (1, 2, 3):
    register(PoolRule(f"MaxPooling{_rank}D", _rank, "max"))
    register(PoolRule(f"AveragePooling{_rank}D", _rank, "average"))
    register(GlobalAveragePoolRule(f"GlobalAveragePooling{_rank}D", _rank))
    register(GlobalMaxPoolRule(f"GlobalMaxPooling{_rank}D", _rank))
