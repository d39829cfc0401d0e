"""PReLU, LeakyReLU, ELU, ReLU, Softmax: activation layers with arguments of their own.

As for Activation, an element-wise function counts no MACs. Backward keeps the input in PReLU,
LeakyReLU and ELU (torch's leaky_relu, elu and prelu derivatives read the input, not the result);
ReLU keeps what its torch function keeps, Softmax its result.
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


@register
class ReLU(Rule):
    """Keras's ReLU layer: ``max_value`` if x >= max_value, x if x > threshold, else
    negative_slope · (x − threshold).

    Each of its forms is one torch function: max(x, 0) (relu, keeps its result), clamp to
    [0, max_value] (hardtanh: relu6 at 6), leaky_relu, and x where x > threshold else 0
    (threshold); all three keep their input. Two settings at once (a capped leaky ReLU ...) are
    refused: no single torch function computes them.
    """
    type_name = "ReLU"
    args = (Arg("max_value", optional(_non_negative), None), Arg("negative_slope", _non_negative, 0.0),
            Arg("threshold", number, 0.0))

    def _form(self, a) -> str:
        given = [name for name, on in (("max_value", a.max_value is not None), ("negative_slope", a.negative_slope != 0),
                                       ("threshold", a.threshold != 0)) if on]
        if len(given) > 1:
            raise SpecError("modelsize supports ReLU with at most one of max_value, negative_slope and threshold set",
                            field=given[1], expected="its default", received=", ".join(given))
        return given[0] if given else "relu"

    def output_shape(self, a, x, ctx):
        self._form(a)
        return x

    def memory(self, a, x, y, ctx):
        if self._form(a) == "relu":
            return Memory(saved=(Saved("output", what="relu output"),))
        return _SAVES_INPUT

    def build(self, a, x, ctx):
        from torch import nn
        form = self._form(a)
        if form == "max_value":
            return nn.Hardtanh(0.0, a.max_value)
        if form == "negative_slope":
            return nn.LeakyReLU(a.negative_slope)
        if form == "threshold":
            return nn.Threshold(a.threshold, 0.0)
        return nn.ReLU()


def _softmax_axis(field: str, value: Any) -> int:
    """Keras's Softmax axis: one axis (a list of one is accepted, as Keras writes it)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        raise SpecError("must be one axis other than the batch (modelsize does not softmax over several)",
                        field=field, received=f"{value!r} ({type(value).__name__})")
    return value


@register
class Softmax(Rule):
    """exp(x) / Σ exp(x) along ``axis`` (default -1; the batch is axis 0). Keeps its result."""
    type_name = "Softmax"
    args = (Arg("axis", _softmax_axis, -1),)

    def _dim(self, a, x) -> int:
        """The axis among the non-batch ones (0-based)."""
        rank = len(x) + 1
        if not -rank < a.axis < rank:
            raise ShapeError("axis is out of range", field="axis",
                             expected=f"1 to {rank - 1} or -1 to {-(rank - 1)} for input {shape_text(x)}",
                             received=f"axis={a.axis}")
        return a.axis % rank - 1

    def output_shape(self, a, x, ctx):
        self._dim(a, x)
        return x

    def memory(self, a, x, y, ctx):
        return Memory(saved=(Saved("output", what="softmax output"),))

    def build(self, a, x, ctx):
        from torch import nn
        return nn.Softmax(dim=self._dim(a, x) + 1)
