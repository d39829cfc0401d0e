"""Rescaling, Normalization: Keras's preprocessing layers that applications models start with.

Both are element-wise arithmetic with Python numbers or per-channel statistics: one multiply-add
per element (the MACs convention of BatchNormalization).
"""
from __future__ import annotations

from math import prod
from typing import Any

from profiler.engine.kernels.cpu_reduce import SCALAR_OPERAND
from profiler.errors import ShapeError, SpecError
from profiler.rules.args import Arg, number
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import shape_text

#: Keras's ``backend.epsilon()``: Normalization divides by max(sqrt(variance), this)
KERAS_EPSILON = 1e-7

#: what a product with a Python number keeps for backward: the number, wrapped as a float64 tensor
WRAPPED_NUMBER = SCALAR_OPERAND[0]
#: ... and casts to the tensor's dtype for the operation (forward and backward alike)
NUMBER_CAST = SCALAR_OPERAND[1]


@register
class Rescaling(Rule):
    """y = x · scale + offset (Keras casts the input to the layer's dtype first).

    torch: ``x * scale``, then ``add_(offset)`` in place when the offset is not 0. Each Python
    number becomes a float64 tensor and its cast for the one operation (``SCALAR_OPERAND``);
    the product keeps its wrapped number for backward, whose cast is made again there.
    """
    type_name = "Rescaling"
    args = (Arg("scale", number), Arg("offset", number, 0.0))

    def macs(self, a, x, y, ctx):
        return prod(x)   # one multiply-add per element

    def memory(self, a, x, y, ctx):
        # training (recorded): the kept number, then beside it the cast, and with an offset the
        # in-place addition's own number and cast (alive with the kept one)
        beside = (WRAPPED_NUMBER, NUMBER_CAST) if a.offset else (NUMBER_CAST,)
        return Memory(scratch=SCALAR_OPERAND, saved=(WRAPPED_NUMBER,), training_scratch=beside,
                      backward_scratch=(NUMBER_CAST,))

    def build(self, a, x, ctx):
        from profiler.rules.modules import Rescale
        return Rescale(a.scale, a.offset)


def _axes(field: str, value: Any) -> tuple[int, ...] | None:
    """Keras's Normalization axis: an axis, a list of them, or None (one mean for everything)."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise SpecError("must be an integer axis, a list of them, or null", field=field,
                        received=f"{value!r} ({type(value).__name__})")
    return tuple(items)


def _statistic(field: str, value: Any) -> float | tuple[float, ...] | None:
    """A given mean or variance: a number or a flat list of numbers (null: learned by adapt())."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(number(field, v) for v in value)
    return number(field, value)


@register
class Normalization(Rule):
    """y = (x − mean) / max(√variance, 1e-7), with a mean and variance per position of the kept
    ``axis`` (default -1, the channels; the batch is axis 0; null: one of each for everything).

    Without ``mean`` and ``variance`` in its config, Keras makes them weights that ``adapt()``
    fills: non-trainable, with a ``count`` (one number, kept for compatibility), 2 × C + 1. Given
    in the config, they are constants: no weights. ``invert`` is not supported.

    torch: std = √variance (per kept position), clamped in place; then (x − mean) divided in place
    by it: one input-sized result. The division keeps std for backward.
    """
    type_name = "Normalization"
    args = (Arg("axis", _axes, (-1,)), Arg("mean", _statistic, None), Arg("variance", _statistic, None))

    def kept(self, a, x) -> tuple[int, ...]:
        """Indices (into ``x``) of the kept axes, sorted."""
        if a.axis is None:
            return ()
        rank = len(x) + 1
        kept = set()
        for axis in a.axis:
            if not -rank <= axis < rank or axis % rank == 0:
                raise ShapeError("axis is out of range or is the batch axis", field="axis",
                                 expected=f"axes in 1..{rank - 1} or -{rank - 1}..-1 for input {shape_text(x)}",
                                 received=f"axis={list(a.axis)}")
            kept.add(axis % rank - 1)
        return tuple(sorted(kept))

    def stat_shape(self, a, x) -> tuple[int, ...]:
        """The shape of the mean and variance: the kept axes' sizes."""
        shape = tuple(x[i] for i in self.kept(a, x))
        if (a.mean is None) != (a.variance is None):
            raise SpecError("give both mean and variance, or neither", field="mean" if a.mean is None else "variance")
        for name in ("mean", "variance"):
            value = a[name]
            if isinstance(value, tuple) and (len(shape) > 1 or len(value) != prod(shape)):
                raise ShapeError(f"{name} must be a number or one value per position of the kept axis", field=name,
                                 expected=f"{prod(shape)} values (kept axes {shape_text(shape)})",
                                 received=f"{len(value)} values")
        return shape

    def output_shape(self, a, x, ctx):
        self.stat_shape(a, x)
        return x

    def params(self, a, x, ctx):
        c = prod(self.stat_shape(a, x))
        if a.mean is not None:
            return Params(formula="0 (mean and variance given: constants)")
        return Params(0, 2 * c + 1, formula=f"2 × {c:,} + 1 = {2 * c + 1:,} (non-trainable: mean, variance, count)")

    def macs(self, a, x, y, ctx):
        return prod(x)   # (x − mean) / std: one per element

    def memory(self, a, x, y, ctx):
        std = Saved("new", elements=prod(self.stat_shape(a, x)), per_sample=False, what="std per kept position")
        return Memory(scratch=(std,), saved=(std,), training_scratch=())

    def build(self, a, x, ctx):
        from profiler.rules.modules import KerasNormalization
        shape = self.stat_shape(a, x)
        kept = self.kept(a, x)
        view = tuple(n if i in kept else 1 for i, n in enumerate(x))
        return KerasNormalization(shape, view, a.mean, a.variance, KERAS_EPSILON)
