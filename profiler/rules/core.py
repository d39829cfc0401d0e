"""Dense, Flatten, Activation, Dropout, Reshape, Embedding, SpatialDropout1D/2D."""
from __future__ import annotations

from math import prod

from profiler.rules.args import Arg, boolean, choice, positive_int, rate, shape
from profiler.dtypes import itemsize
from profiler.errors import ShapeError
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import shape_text

ACTIVATION_NAMES = ("linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "silu", "hard_sigmoid", "hard_silu")

# What autograd keeps for each activation's backward (PyTorch's derivatives.yaml):
# relu, sigmoid, tanh and softmax use their result; gelu, silu and the hard ones (Keras 3's
# hard_sigmoid = relu6(x + 3) / 6, torch's hardsigmoid; hard_silu = x · hard_sigmoid(x), torch's
# hardswish) recompute from their input.
ACTIVATION_SAVES = {"linear": (), "relu": ("output",), "sigmoid": ("output",), "tanh": ("output",),
                    "softmax": ("output",), "gelu": ("input",), "silu": ("input",),
                    "hard_sigmoid": ("input",), "hard_silu": ("input",)}

activation_arg = Arg("activation", choice(*ACTIVATION_NAMES), "linear")


def activation_memory(name: str) -> tuple[Saved, ...]:
    return tuple(Saved(of, what=f"{name} {of}") for of in ACTIVATION_SAVES[name])


def workspace(nbytes: int, what: str, dtype: str = "bfloat16") -> tuple[Saved, ...]:
    """Scratch of ``nbytes`` for the whole batch (none when not positive), in ``dtype``'s items
    where they divide it."""
    if nbytes <= 0:
        return ()
    size = itemsize(dtype)
    if nbytes % size:
        dtype, size = "uint8", 1
    return (Saved("new", elements=nbytes // size, dtype=dtype, what=what, per_sample=False),)


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
            return Params(a.units * (n_in + 1), formula=f"{a.units:,} × ({n_in:,} + 1) = {a.units * (n_in + 1):,}",
                          tensors=(a.units * n_in, a.units))
        return Params(a.units * n_in, formula=f"{a.units:,} × {n_in:,} = {a.units * n_in:,}")

    def macs(self, a, x, y, ctx):
        return prod(x[:-1]) * x[-1] * a.units

    def memory(self, a, x, y, ctx):
        # addmm keeps its input for the weight gradient (the weight itself is a parameter)
        return Memory(saved=(Saved("input", what="matmul input"),))

    def build(self, a, x, ctx):
        from torch import nn
        from profiler.rules.modules import with_activation
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
        from profiler.rules.modules import activation
        return activation(a.activation)


@register
class Dropout(Rule):
    """Zero each element with probability ``rate`` in training, scale the rest by 1/(1 − rate).

    Inference is the identity. In training autograd keeps the mask: PyTorch's fused kernel
    (CUDA) keeps a bool mask the size of the output; on the CPU PyTorch multiplies by a noise
    tensor of the activations' dtype instead, and keeps that.
    """
    type_name = "Dropout"
    args = (Arg("rate", rate),)

    def memory(self, a, x, y, ctx):
        if a.rate == 0:  # torch returns its input unchanged
            return Memory(output_is_view=True)
        mask = "bool" if ctx.device_kind == "cuda" else "act"
        return Memory(identity_in_eval=True,
                      saved=(Saved("new", elements=prod(y), dtype=mask, what="dropout mask"),))

    def build(self, a, x, ctx):
        from torch import nn
        return nn.Dropout(p=a.rate)


@register
class Reshape(Rule):
    """Give the same elements a new shape (batch axis untouched); -1 once stands for the rest."""
    type_name = "Reshape"
    args = (Arg("target_shape", shape),)

    def output_shape(self, a, x, ctx):
        total = prod(x)
        target = a.target_shape
        if -1 in target:
            known = prod(n for n in target if n != -1)
            if total % known:
                raise ShapeError("the input's elements do not divide evenly for the -1 axis",
                                 field="target_shape",
                                 expected=f"a shape whose known sizes divide {total:,} (input {shape_text(x)})",
                                 received=f"target_shape={a.target_shape} (known sizes multiply to {known:,})")
            target = tuple(total // known if n == -1 else n for n in target)
        if prod(target) != total:
            raise ShapeError("the number of elements would change", field="target_shape",
                             expected=f"a shape of {total:,} elements (input {shape_text(x)})",
                             received=f"target_shape={a.target_shape} ({prod(target):,} elements)")
        return target

    def memory(self, a, x, y, ctx):
        return Memory(output_is_view=True)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Reshape as ReshapeModule
        return ReshapeModule(self.output_shape(a, x, ctx))


@register
class Embedding(Rule):
    """Look up one row of an (input_dim × output_dim) table per integer token id.

    The input holds token ids (any shape); the output appends ``output_dim``. A lookup is a
    copy, not arithmetic: no MACs. Backward keeps the ids (the input) to scatter the gradient.
    """
    type_name = "Embedding"
    args = (Arg("input_dim", positive_int), Arg("output_dim", positive_int))

    def output_shape(self, a, x, ctx):
        if len(x) < 1:
            raise ShapeError("Embedding needs at least one axis of token ids",
                             expected="a shape like (sequence_length,)", received=f"shape {shape_text(x)}")
        return (*x, a.output_dim)

    def params(self, a, x, ctx):
        # one output_dim-long row per token id
        total = a.input_dim * a.output_dim
        return Params(total, formula=f"{a.input_dim:,} × {a.output_dim:,} = {total:,}")

    def memory(self, a, x, y, ctx):
        # Backward (``embedding_dense_backward``) makes the zeroed table gradient (the weight's,
        # counted by the memory model) and adds the rows in. It needs a contiguous incoming
        # gradient: one arriving as a strided slice of a wider gradient (the layer feeds a
        # Concatenate) is copied first (``dense_grad``: the memory model knows which arrive so).
        return Memory(saved=(Saved("input", what="token ids"),), dense_grad=True)

    def build(self, a, x, ctx):
        from torch import nn
        return nn.Embedding(a.input_dim, a.output_dim)


class SpatialDropoutRule(Rule):
    """Dropout of whole channels: one draw per (sample, channel), shared along the steps (1-D) or
    the image (2-D), as Keras's SpatialDropout1D/2D (its noise shape).

    In training the mask is a tensor of the activations' dtype with one element per sample and
    channel (scaled by 1/(1 − rate)); the product keeps it for backward. Inference is the identity.
    """

    def __init__(self, type_name: str, rank: int):
        self.type_name = type_name  # type: ignore[misc]  (per instance: one rule per rank)
        self.rank = rank
        self.args = (Arg("rate", rate),)

    def _channel_axis(self, x, ctx) -> int:
        if len(x) != self.rank + 1:
            raise ShapeError(f"input has the wrong number of axes for {self.type_name}",
                             expected=f"{self.rank + 1} axes besides the batch", received=f"shape {shape_text(x)}")
        return 0 if self.rank == 2 and ctx.data_format == "channels_first" else len(x) - 1

    def output_shape(self, a, x, ctx):
        self._channel_axis(x, ctx)
        return x

    def memory(self, a, x, y, ctx):
        if a.rate == 0:  # Keras and the module return the input
            return Memory(output_is_view=True)
        channels = x[self._channel_axis(x, ctx)]
        return Memory(identity_in_eval=True, saved=(Saved("new", elements=channels, what="channel mask"),))

    def build(self, a, x, ctx):
        from profiler.rules.modules import SpatialDropout
        axis = self._channel_axis(x, ctx)
        return SpatialDropout(a.rate, tuple(i + 1 for i in range(len(x)) if i != axis))


register(SpatialDropoutRule("SpatialDropout1D", rank=1))
register(SpatialDropoutRule("SpatialDropout2D", rank=2))
