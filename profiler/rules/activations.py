"""PReLU, LeakyReLU, ELU: activation layers with arguments of their own.

As for Activation, an element-wise function counts no MACs. Backward keeps the input in all
three (torch's leaky_relu, elu and prelu derivatives read the input, not the result).
"""
from __future__ import annotations

from math import prod
from typing import Any

from profiler.rules.args import Arg, number, optional
from profiler.errors import ShapeError, SpecError
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import shape_text


def _non_negative(field: str, value: Any) -> float:
    value = number(field, value)
    if value < 0:
        raise SpecError("must not be negative", field=field, expected="a number >= 0", received=repr(value))
    return value


def _axes(field: str, value: Any) -> tuple[int, ...]:
    """Keras's shared_axes: one axis or a list, counted from 1 (the batch is axis 0)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
        raise SpecError("must be an axis >= 1 or a list of them (the batch is axis 0)", field=field,
                        received=f"{value!r} ({type(value).__name__})")
    return tuple(items)


_SAVES_INPUT = Memory(saved=(Saved("input", what="activation input"),))


@register
class PReLU(Rule):
    """max(x, 0) + alpha · min(x, 0) with a learned alpha per element of the input.

    Keras learns one slope per element of the input (batch excluded), shaped like it; each axis in
    ``shared_axes`` gets size 1 and shares its slope (shared_axes=[1, 2] on images: one slope per
    channel, as torch's ``nn.PReLU(channels)``).
    """
    type_name = "PReLU"
    args = (Arg("shared_axes", optional(_axes), None),)

    def _slope_shape(self, a, x) -> tuple[int, ...]:
        shared = a.shared_axes or ()
        for axis in shared:
            if axis > len(x):
                raise ShapeError("shared axis is out of range", field="shared_axes",
                                 expected=f"axes in 1..{len(x)} for input {shape_text(x)}",
                                 received=f"shared_axes={list(shared)}")
        return tuple(1 if i + 1 in shared else n for i, n in enumerate(x))

    def output_shape(self, a, x, ctx):
        self._slope_shape(a, x)
        return x

    def params(self, a, x, ctx):
        # one slope per element of the slope shape: the input's shape, 1 on shared axes
        shape = self._slope_shape(a, x)
        total = prod(shape)
        shared = f"; shared axes {', '.join(map(str, a.shared_axes))} have size 1" if a.shared_axes else ""
        return Params(total, formula=f"{' × '.join(f'{n:,}' for n in shape)} = {total:,} "
                                     f"(one slope per element{shared})")

    def memory(self, a, x, y, ctx):
        # ``_prelu_kernel_backward`` makes the slope's gradient element by element (input-sized),
        # then sums it down to the slope's shape
        return Memory(saved=_SAVES_INPUT.saved,
                      backward_scratch=(Saved("new", elements=prod(x), what="slope gradient per element"),))

    def build(self, a, x, ctx):
        from profiler.rules.modules import PReLU as PReLUModule
        return PReLUModule(self._slope_shape(a, x))


@register
class LeakyReLU(Rule):
    """x for x >= 0, negative_slope · x below (Keras's default slope: 0.3)."""
    type_name = "LeakyReLU"
    args = (Arg("negative_slope", _non_negative, 0.3),)

    def memory(self, a, x, y, ctx):
        return _SAVES_INPUT

    def build(self, a, x, ctx):
        from torch import nn
        return nn.LeakyReLU(a.negative_slope)


@register
class ELU(Rule):
    """x for x > 0, alpha · (exp(x) − 1) below."""
    type_name = "ELU"
    args = (Arg("alpha", number, 1.0),)

    def memory(self, a, x, y, ctx):
        return _SAVES_INPUT

    def build(self, a, x, ctx):
        from torch import nn
        return nn.ELU(a.alpha)
