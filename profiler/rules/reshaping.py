"""UpSampling1D/2D, ZeroPadding1D/2D, Cropping2D, Permute, RepeatVector.

Keras semantics (``keras/src/layers/reshaping/``). The spatial axes follow the model's
data_format, except UpSampling1D, which like Keras's has no data_format and always repeats
axis 1, the steps of (batch, steps, features). None of them learns anything, and none keeps a
tensor for backward (padding, cropping, permuting, repeating and resizing need only sizes).
MACs: none, except bilinear resizing, counted as 4 per output element (a weighted sum of the 4
nearest input elements).

Cropping and Permute copy their result to a contiguous tensor: a strided view would be copied by
the next layer's matmul or convolution anyway, and kept by it for backward where its rule expects
the layer's input itself. With nothing to crop or an identity permutation the input is returned.
"""
from __future__ import annotations

from math import prod
from typing import Any

from profiler.rules.args import Arg, choice, int_tuple, positive_int
from profiler.errors import ShapeError, SpecError
from profiler.rules.registry import Memory, Rule, register
from profiler.rules.shapes import expect_rank, shape_text

_VIEW = Memory(output_is_view=True)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _pair(field: str, value: Any) -> tuple[int, int]:
    """An int (the same on both sides) or [before, after], each >= 0."""
    if _is_count(value):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_count, value)):
        return value[0], value[1]
    raise SpecError("must be an integer >= 0 or a list [before, after] of them", field=field,
                    received=f"{value!r} ({type(value).__name__})")


def _pairs_2d(field: str, value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras's 2-D padding/cropping: an int, [height, width] (symmetric each), or
    [[top, bottom], [left, right]]."""
    if _is_count(value):
        return (value, value), (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            return _pair(field, value[0]), _pair(field, value[1])
        except SpecError:
            pass
    raise SpecError("must be an integer >= 0, [height, width] or [[top, bottom], [left, right]]",
                    field=field, received=f"{value!r} ({type(value).__name__})")


def _spatial_axes(rank: int, ctx) -> tuple[int, ...]:
    """Indices (batch excluded) of the spatial axes of a (spatial..., channels) input."""
    first = 1 if ctx.data_format == "channels_first" else 0
    return tuple(range(first, first + rank))


def _torch_pads(x, per_axis: dict[int, tuple[int, int]]) -> tuple[int, ...]:
    """(before, after) per axis index → ``torch.nn.functional.pad`` order over every axis."""
    return tuple(p for axis in reversed(range(len(x))) for p in per_axis.get(axis, (0, 0)))


@register
class UpSampling1D(Rule):
    """Repeat every step ``size`` times: (steps, features) → (steps · size, features)."""
    type_name = "UpSampling1D"
    args = (Arg("size", positive_int, 2),)

    def output_shape(self, a, x, ctx):
        expect_rank(x, 2, "UpSampling1D (steps, features)")
        return (x[0] * a.size, x[1])

    def build(self, a, x, ctx):
        from profiler.rules.modules import RepeatSteps
        return RepeatSteps(a.size)


@register
class UpSampling2D(Rule):
    """Scale height and width by ``size``: nearest repeats pixels, bilinear interpolates
    (half-pixel centres, as TensorFlow and torch's ``align_corners=False``)."""
    type_name = "UpSampling2D"
    args = (Arg("size", int_tuple(2), (2, 2)), Arg("interpolation", choice("nearest", "bilinear"), "nearest"))

    def output_shape(self, a, x, ctx):
        expect_rank(x, 3, "UpSampling2D (two spatial axes and channels)")
        out = list(x)
        for axis, s in zip(_spatial_axes(2, ctx), a.size):
            out[axis] *= s
        return tuple(out)

    def macs(self, a, x, y, ctx):
        return 4 * prod(y) if a.interpolation == "bilinear" else 0

    def build(self, a, x, ctx):
        from profiler.rules.modules import ChannelsLast, Upsample2d
        layer = Upsample2d(a.size, a.interpolation)
        return ChannelsLast(layer) if ctx.data_format == "channels_last" else layer


@register
class ZeroPadding1D(Rule):
    """Add zeros before and after the steps: an int pads both ends alike, or [before, after]."""
    type_name = "ZeroPadding1D"
    args = (Arg("padding", _pair, (1, 1)),)

    def output_shape(self, a, x, ctx):
        expect_rank(x, 2, "ZeroPadding1D (steps, features)")
        out = list(x)
        out[_spatial_axes(1, ctx)[0]] += sum(a.padding)
        return tuple(out)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Pad
        return Pad(_torch_pads(x, {_spatial_axes(1, ctx)[0]: a.padding}))


@register
class ZeroPadding2D(Rule):
    """Add zeros around height and width."""
    type_name = "ZeroPadding2D"
    args = (Arg("padding", _pairs_2d, ((1, 1), (1, 1))),)

    def output_shape(self, a, x, ctx):
        expect_rank(x, 3, "ZeroPadding2D (two spatial axes and channels)")
        out = list(x)
        for axis, pad in zip(_spatial_axes(2, ctx), a.padding):
            out[axis] += sum(pad)
        return tuple(out)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Pad
        return Pad(_torch_pads(x, dict(zip(_spatial_axes(2, ctx), a.padding))))


@register
class Cropping2D(Rule):
    """Cut rows and columns off the edges of height and width."""
    type_name = "Cropping2D"
    args = (Arg("cropping", _pairs_2d, ((0, 0), (0, 0))),)

    def output_shape(self, a, x, ctx):
        expect_rank(x, 3, "Cropping2D (two spatial axes and channels)")
        out = list(x)
        for axis, crop in zip(_spatial_axes(2, ctx), a.cropping):
            if sum(crop) >= x[axis]:
                raise ShapeError("cropping would leave nothing of a spatial axis", field="cropping",
                                 expected=f"less than {x[axis]} in total on each axis of input {shape_text(x)}",
                                 received=f"cropping={[list(c) for c in a.cropping]}")
            out[axis] -= sum(crop)
        return tuple(out)

    def memory(self, a, x, y, ctx):
        return _VIEW if y == x else Memory()

    def build(self, a, x, ctx):
        from profiler.rules.modules import Crop
        crops = dict(zip(_spatial_axes(2, ctx), a.cropping))
        bounds = tuple((crops[i][0], n - crops[i][1]) if i in crops else (0, n) for i, n in enumerate(x))
        return Crop(bounds)


def _dims(field: str, value: Any) -> tuple[int, ...]:
    if (not isinstance(value, (list, tuple)) or not value
            or sorted(value) != list(range(1, len(value) + 1))
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise SpecError("must be a permutation of 1..n (the batch axis 0 stays first)", field=field,
                        expected="e.g. [2, 1]", received=f"{value!r} ({type(value).__name__})")
    return tuple(value)


@register
class Permute(Rule):
    """Reorder the axes after the batch: ``dims`` counts them from 1, as Keras does."""
    type_name = "Permute"
    args = (Arg("dims", _dims),)

    def output_shape(self, a, x, ctx):
        if len(a.dims) != len(x):
            raise ShapeError("dims must name every axis of the input but the batch", field="dims",
                             expected=f"a permutation of 1..{len(x)} for input {shape_text(x)}",
                             received=f"dims={list(a.dims)}")
        return tuple(x[d - 1] for d in a.dims)

    def memory(self, a, x, y, ctx):
        return _VIEW if a.dims == tuple(range(1, len(x) + 1)) else Memory()

    def build(self, a, x, ctx):
        from profiler.rules.modules import Permute as PermuteModule
        return PermuteModule(a.dims)


@register
class RepeatVector(Rule):
    """(features,) → (n, features): the same vector n times."""
    type_name = "RepeatVector"
    args = (Arg("n", positive_int),)

    def output_shape(self, a, x, ctx):
        expect_rank(x, 1, "RepeatVector (features,)")
        return (a.n, x[0])

    def build(self, a, x, ctx):
        from profiler.rules.modules import RepeatVector as RepeatVectorModule
        return RepeatVectorModule(a.n)
