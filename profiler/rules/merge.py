"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate.

Each takes a tuple of input shapes. Element-wise merges broadcast as Keras does (axes of size 1
stretch); their MACs count one operation per output element per extra input.
"""
from __future__ import annotations

from math import prod

from profiler.rules.args import Arg, integer
from profiler.errors import ShapeError
from profiler.rules.registry import Memory, Rule, Saved, register
from profiler.rules.shapes import shape_text
from profiler.engine.kernels.cpu_reduce import SCALAR_OPERAND


def broadcast(shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """The common shape of element-wise inputs: equal ranks, each axis equal or 1.

    >>> broadcast(((4, 1, 8), (4, 3, 8)))
    (4, 3, 8)
    """
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise ShapeError("inputs of an element-wise merge need the same number of axes", field="inputs",
                         received=", ".join(shape_text(s) for s in shapes))
    out = []
    for axis in range(rank):
        sizes = {s[axis] for s in shapes} - {1}
        if len(sizes) > 1:
            raise ShapeError(f"inputs differ on axis {axis + 1} and neither is 1", field="inputs",
                             received=", ".join(shape_text(s) for s in shapes))
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class ElementwiseRule(Rule):
    """Shared arithmetic of the element-wise merges; ``combine`` names the torch function."""
    min_inputs = 2
    max_inputs = None
    saves_inputs = False     # Multiply, Maximum, Minimum need their inputs for the gradient
    passthrough = False      # Add hands the output's gradient to every input unchanged

    def output_shape(self, a, x, ctx):
        return broadcast(x)

    def macs(self, a, x, y, ctx):
        return (len(x) - 1) * prod(y)

    def memory(self, a, x, y, ctx):
        same = all(tuple(s) == tuple(y) for s in x)
        saved: tuple[Saved, ...] = ()
        if self.saves_inputs:   # pairwise: x₁·x₂ is kept as the left input of (x₁·x₂)·x₃, ...
            partials = tuple(Saved("new", elements=prod(y), what="partial result") for _ in x[2:])
            saved = (Saved("inputs", what=f"{self.type_name} inputs"),) + partials
        return Memory(saved=saved, grad_passthrough=self.passthrough and same, scratch=self.scratch(x, y),
                      backward_scratch=self.backward_scratch(x, y))

    def scratch(self, x, y) -> tuple[Saved, ...]:
        """Temporaries beside the output: sums accumulate in place in it; products and extrema
        keep each partial result for backward (counted in ``saved``)."""
        return ()

    def backward_scratch(self, x, y) -> tuple[Saved, ...]:
        return ()

    def build(self, a, x, ctx):
        from profiler.rules.modules import Merge
        return Merge(self.type_name.lower())


@register
class Add(ElementwiseRule):
    """x₁ + x₂ + …"""
    type_name = "Add"
    passthrough = True


@register
class Subtract(ElementwiseRule):
    """x₁ − x₂ (exactly two inputs)."""
    type_name = "Subtract"
    max_inputs = 2


@register
class Multiply(ElementwiseRule):
    """x₁ · x₂ · … (element-wise)."""
    type_name = "Multiply"
    saves_inputs = True

    def backward_scratch(self, x, y):
        """A broadcast input's gradient is (gradient · the other input), output-sized, summed
        down to its shape: that product is alive beside the full-size input's gradient, in either
        order of the inputs (measured: x · s and s · x, s a squeeze-and-excite scale)."""
        if len(x) == 2 and any(tuple(s) != tuple(y) for s in x):
            return (Saved("new", elements=prod(y), what="gradient · other input, before its sum"),)
        return ()


@register
class Average(ElementwiseRule):
    """(x₁ + x₂ + …) / n: the sum divided in place by n, a Python number torch wraps in a tensor
    for the one operation (a float64 scalar and its cast). Backward divides the gradient the same
    way (one new tensor, shared by every input: the memory model counts one per input)."""
    type_name = "Average"

    def macs(self, a, x, y, ctx):
        return len(x) * prod(y)

    def scratch(self, x, y):
        return SCALAR_OPERAND


class ExtremumRule(ElementwiseRule):
    """Backward (``max``/``min`` in derivatives.yaml), per input: where(x₁ == x₂, g / 2, g), then
    masked_fill where the other input wins. While the second input's gradient is made, the first
    one's exists, with g / 2 and two bool masks."""
    saves_inputs = True

    def backward_scratch(self, x, y):
        return (Saved("new", elements=prod(y), what="gradient / 2"),
                Saved("new", elements=2 * prod(y), dtype="bool", what="tie and loser masks"))


@register
class Maximum(ExtremumRule):
    """Element-wise maximum."""
    type_name = "Maximum"


@register
class Minimum(ExtremumRule):
    """Element-wise minimum."""
    type_name = "Minimum"


@register
class Concatenate(Rule):
    """Join along ``axis`` (Keras counts the batch as axis 0; the default -1 is the last)."""
    type_name = "Concatenate"
    args = (Arg("axis", integer, -1),)
    min_inputs = 2
    max_inputs = None

    def output_shape(self, a, x, ctx):
        axis = self._axis(a, x[0])
        rest = {tuple(s[:axis] + s[axis + 1:]) for s in x}
        if any(len(s) != len(x[0]) for s in x) or len(rest) != 1:
            raise ShapeError(f"inputs must match on every axis but the one joined (axis {a.axis})",
                             field="inputs", received=", ".join(shape_text(s) for s in x))
        joined = sum(s[axis] for s in x)
        return (*x[0][:axis], joined, *x[0][axis + 1:])

    def memory(self, a, x, y, ctx):
        # the gradient of each input is a slice (a view) of the output's gradient: strided unless
        # every axis before the joined one (the batch's included) has one element; a layer that
        # needs a dense gradient copies its slice (Embedding's backward does, matmuls and
        # elementwise kernels do not)
        strided = ctx.batch * prod(x[0][:self._axis(a, x[0])]) > 1
        return Memory(grad_passthrough=True, grads_strided=strided)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Concat
        return Concat(self._axis(a, x[0]) + 1)

    @staticmethod
    def _axis(a, shape) -> int:
        """The axis among the non-batch axes (0-based)."""
        rank = len(shape) + 1
        if not -rank <= a.axis < rank or a.axis % rank == 0:
            raise ShapeError("axis is out of range or is the batch axis", field="axis",
                             expected=f"1 to {rank - 1} or -1 to {-(rank - 1)}", received=str(a.axis))
        return a.axis % rank - 1
