"""Dense, Flatten, Activation, Dropout, Reshape, Embedding."""
from __future__ import annotations

from math import prod

from ..args import Arg, boolean, choice, positive_int, rate, shape
from ..errors import ShapeError
from ..registry import Context, Memory, Params, Rule, Saved, register
from ..shapes import shape_text

ACTIVATION_NAMES = ("linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu")

# What autograd keeps for each activation's backward (PyTorch's derivatives.yaml):
# relu, sigmoid, tanh and softmax use their result; gelu and silu recompute from their input.
ACTIVATION_SAVES = {"linear": (), "relu": ("output",), "sigmoid": ("output",), "tanh": ("output",),
                    "softmax": ("output",), "gelu": ("input",), "silu": ("input",)}

activation_arg = Arg("activation", choice(*ACTIVATION_NAMES), "linear")


def activation_memory(name: str) -> tuple[Saved, ...]:
    return tuple(Saved(of, what=f"{name} {of}") for of in ACTIVATION_SAVES[name])


@register
class Dense(Rule):
    """y = x·W + b over the last axis; any leading axes are carried along (Keras semantics)."""
    type_name = "Dense"
    args = (Arg("units", positive_int), activation_arg, Arg("use_bias", boolean, True))

    def output_shape(self, a, x, ctx):
        return (*x[:-1], a.units)

    def params(self, a, x, ctx):
        # units × (inputs + 1): one weight per input and one bias per unit
        n_in = x[-1]
        if a.use_bias:
            return Params(a.units * (n_in + 1), formula=f"{a.units:,} × ({n_in:,} + 1) = {a.units * (n_in + 1):,}")
        return Params(a.units * n_in, formula=f"{a.units:,} × {n_in:,} = {a.units * n_in:,}")

    def macs(self, a, x, y, ctx):
        return prod(x[:-1]) * x[-1] * a.units

    def memory(self, a, x, y, ctx):
        # addmm keeps its input for the weight gradient (the weight itself is a parameter)
        return Memory(saved=(Saved("input", what="matmul input"),) + activation_memory(a.activation))

    def build(self, a, x, ctx):
        from torch import nn
        from .modules import with_activation
        return with_activation(nn.Linear(x[-1], a.units, bias=a.use_bias), a.activation)


@register
class Flatten(Rule):
    """Collapse every axis but the batch: a view, no copy."""
    type_name = "Flatten"

    def output_shape(self, a, x, ctx):
        return (prod(x),)

    def memory(self, a, x, y, ctx):
        return Memory(output_is_view=True)

    def build(self, a, x, ctx):
        from torch import nn
        return nn.Flatten()


@register
class Activation(Rule):
    """An element-wise function (softmax over the last axis)."""
    type_name = "Activation"
    args = (Arg("activation", choice(*ACTIVATION_NAMES)),)

    def memory(self, a, x, y, ctx):
        return Memory(output_is_view=a.activation == "linear", saved=activation_memory(a.activation))

    def build(self, a, x, ctx):
        from .modules import activation
        return activation(a.activation)
