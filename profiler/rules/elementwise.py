"""LayerScale (ConvNeXt's learned per-channel scale), ConstantOp (a tensor with a Python number:
Keras 3's ``x + 3``, ``x * (1 / 6)`` in applications models, written as ops layers) and
CustomScaleLayer (Inception-ResNet-v2's x₁ + x₂ · scale).

One operation per element each: the MACs count one per element.
"""
from __future__ import annotations

from math import prod

from profiler.engine.kernels.cpu_reduce import SCALAR_OPERAND
from profiler.errors import ShapeError, SpecError
from profiler.rules.args import Arg, boolean, choice, number, positive_int
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import shape_text


@register
class LayerScale(Rule):
    """y = x · gamma, one learned gamma per channel of the last axis (``keras.applications.convnext``'s
    LayerScale: ``projection_dim`` gammas, initialised to ``init_values``).

    Backward keeps the input (gamma's gradient is Σ grad · x): that product is input-sized before
    its sum over every axis but the last.
    """
    type_name = "LayerScale"
    args = (Arg("init_values", number), Arg("projection_dim", positive_int))

    def output_shape(self, a, x, ctx):
        if not x or x[-1] != a.projection_dim:
            raise ShapeError("the last axis must have projection_dim channels", field="projection_dim",
                             expected=f"{x[-1] if x else '?'} (input {shape_text(x)})",
                             received=f"projection_dim={a.projection_dim}")
        return x

    def params(self, a, x, ctx):
        return Params(a.projection_dim, formula=f"{a.projection_dim:,} (one gamma per channel)")

    def macs(self, a, x, y, ctx):
        return prod(x)

    def memory(self, a, x, y, ctx):
        return Memory(saved=(Saved("input", what="layer scale input"),),
                      backward_scratch=(Saved("new", elements=prod(x), what="gradient · input, before its sum"),))

    def build(self, a, x, ctx):
        from profiler.rules.modules import LayerScale as LayerScaleModule
        self.output_shape(a, x, ctx)
        return LayerScaleModule(a.projection_dim, a.init_values)


@register
class ConstantOp(Rule):
    """x + c, x − c (c − x with ``constant_first``), x · c or x / c, c a Python number.

    torch wraps the number in a float64 tensor and casts it for the one operation
    (``SCALAR_OPERAND``). A sum or difference keeps nothing for backward (x + c and x − c hand
    the output's gradient on unchanged); a product or quotient keeps the wrapped number, and its
    backward casts it again.
    """
    type_name = "ConstantOp"
    args = (Arg("op", choice("add", "subtract", "multiply", "divide")), Arg("constant", number),
            Arg("constant_first", boolean, False))

    def output_shape(self, a, x, ctx):
        if a.constant_first and a.op == "divide":
            raise SpecError("a number divided by a tensor is not supported", field="constant_first",
                            expected="false for op divide", received="true")
        return x

    def macs(self, a, x, y, ctx):
        return prod(x)

    def memory(self, a, x, y, ctx):
        if a.op in ("add", "subtract"):
            return Memory(scratch=SCALAR_OPERAND, grad_passthrough=not a.constant_first)
        return Memory(scratch=SCALAR_OPERAND, saved=(SCALAR_OPERAND[0],), training_scratch=(SCALAR_OPERAND[1],),
                      backward_scratch=(SCALAR_OPERAND[1],))

    def build(self, a, x, ctx):
        from profiler.rules.modules import ConstantOp as ConstantOpModule
        self.output_shape(a, x, ctx)
        return ConstantOpModule(a.op, a.constant, a.constant_first)


@register
class CustomScaleLayer(Rule):
    """x₁ + x₂ · scale: Inception-ResNet-v2's residual sum (``keras.applications.inception_resnet_v2``).

    torch: one ``add(x₁, x₂, alpha=scale)``, no temporary. Backward hands the output's gradient to
    x₁ as it is and makes x₂'s as gradient · scale (the number wrapped and cast for it).
    """
    type_name = "CustomScaleLayer"
    args = (Arg("scale", number),)
    min_inputs = 2
    max_inputs = 2

    def output_shape(self, a, x, ctx):
        if tuple(x[0]) != tuple(x[1]):
            raise ShapeError("both inputs need the same shape", field="inputs",
                             received=", ".join(shape_text(s) for s in x))
        return tuple(x[0])

    def macs(self, a, x, y, ctx):
        return prod(y)

    def memory(self, a, x, y, ctx):
        return Memory(backward_scratch=SCALAR_OPERAND)

    def build(self, a, x, ctx):
        from profiler.rules.modules import ScaledSum
        self.output_shape(a, x, ctx)
        return ScaledSum(a.scale)
