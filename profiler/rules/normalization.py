"""BatchNormalization, LayerNormalization.

MACs convention: normalisation is counted as multiply-adds per element. BatchNormalization
counts one per element, (x − mean) · γ/σ + β folded into one multiply-add, which is its cost at
inference where the statistics are stored. LayerNormalization counts three per element: it
computes its statistics on every call (a sum and a sum of squares, one add each) and then
normalises (one multiply-add).
"""
from __future__ import annotations

from dataclasses import replace
from math import prod
from typing import Any

from profiler.rules.args import Arg, boolean, number
from profiler.errors import ShapeError, SpecError
from profiler.rules.registry import Memory, Params, Rule, Saved, register
from profiler.rules.shapes import shape_text
from profiler.engine.kernels.cpu_norm import (batch_norm_backward_scratch, batch_norm_statistics,
                                              layer_norm_backward_scratch)


def _axis(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("must be an integer axis", field=field, received=f"{value!r} ({type(value).__name__})")
    return value


def _axes(field: str, value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise SpecError("must be an integer axis or a list of them", field=field,
                        received=f"{value!r} ({type(value).__name__})")
    return tuple(items)


def _momentum(field: str, value: Any) -> float:
    value = number(field, value)
    if not 0.0 <= value <= 1.0:
        raise SpecError("must be in [0, 1]", field=field, received=repr(value))
    return value


def _epsilon(field: str, value: Any) -> float:
    value = number(field, value)
    if value <= 0:
        raise SpecError("must be a positive number", field=field, received=repr(value))
    return value


def _resolve(axis: int, x: tuple[int, ...], field: str = "axis") -> int:
    """A Keras axis (the batch is axis 0; negative counts from the end) → index into ``x``."""
    rank = len(x) + 1
    if not -rank <= axis < rank or axis in (0, -rank):
        raise ShapeError("axis is out of range or is the batch axis", field=field,
                         expected=f"an axis in 1..{rank - 1} or -{rank - 1}..-1 for input {shape_text(x)}",
                         received=f"axis={axis}")
    return (axis % rank) - 1


@register
class BatchNormalization(Rule):
    """Normalise each channel by the batch's statistics (training) or moving ones (inference).

    ``axis`` is the channel axis. Its default (None here) is the channel axis of the model's
    data_format: -1 for channels_last, as Keras's default axis=-1; 1 for channels_first, where
    Keras would still default to -1 — that case is spelled out in the formula. An explicit axis
    follows Keras and may be the first or the last axis besides the batch.

    Parameters: gamma and beta trainable (C each, if ``scale`` / ``center``), moving mean and
    variance non-trainable (C each). In training torch keeps the input and the batch's mean
    and 1/std per channel (float32) for backward.
    """
    type_name = "BatchNormalization"
    args = (Arg("axis", _axis, None), Arg("momentum", _momentum, 0.99), Arg("epsilon", _epsilon, 0.001),
            Arg("center", boolean, True), Arg("scale", boolean, True))

    def _channel_axis(self, a, x, ctx) -> int:
        if not 1 <= len(x) <= 4:
            raise ShapeError("BatchNormalization supports inputs of 1 to 4 axes besides the batch",
                             expected="a shape like (features,), (steps, C), (H, W, C) or (D, H, W, C)",
                             received=f"shape {shape_text(x)}")
        if a.axis is None:
            return 0 if ctx.data_format == "channels_first" else len(x) - 1
        index = _resolve(a.axis, x)
        if index not in (0, len(x) - 1):
            raise ShapeError("only the first or the last axis can be the channel axis", field="axis",
                             expected=f"axis=1 or axis=-1 for input {shape_text(x)}", received=f"axis={a.axis}")
        return index

    def params(self, a, x, ctx):
        c = x[self._channel_axis(a, x, ctx)]
        learned = [name for name, on in (("gamma", a.scale), ("beta", a.center)) if on]
        trainable = len(learned) * c
        n = len(learned) + 2
        train_text = f"{trainable:,} trainable: {', '.join(learned)}" if learned else "0 trainable"
        formula = (f"{n} × {c:,} = {n * c:,} ({train_text}; "
                   f"{2 * c:,} non-trainable: moving mean, variance)")
        if a.axis is None and ctx.data_format == "channels_first" and len(x) > 1:
            formula += "; axis=1, the channels_first channel axis (Keras's own default is axis=-1)"
        return Params(trainable, 2 * c, formula=formula, tensors=(c,) * len(learned))

    def macs(self, a, x, y, ctx):
        return prod(x)  # (x − mean)·γ/σ + β as one multiply-add per element

    def memory(self, a, x, y, ctx):
        """``native_batch_norm`` returns the batch's mean and 1/std per channel in inference too
        (float32), where they are dropped at once; training keeps them with the input, in the
        parameters' dtype (bfloat16 in a bfloat16 model, float32 under autocast). Learning only
        one of gamma and beta, a separate scale or shift follows the normalisation: its result
        is a temporary (a scale keeps it for backward). Backward: ``batch_norm_backward_scratch``.
        A frozen one (``ctx.frozen``) runs in inference mode in training too and keeps no statistics.
        """
        c = x[self._channel_axis(a, x, ctx)]
        stats = batch_norm_statistics(c)
        # frozen (Keras runs it in inference mode, on the moving statistics): backward needs the
        # input only, the batch's statistics are dropped at once as in inference
        kept = () if ctx.frozen else tuple(replace(s, dtype=ctx.dtype) for s in stats)
        saved = [Saved("input", what="batch norm input"), *kept]
        scratch = list(stats)
        if a.scale != a.center:
            normalised = Saved("new", elements=prod(x), what="normalised input")
            scratch.append(normalised)
            if a.scale:   # the separate scale multiplies the normalised tensor and keeps it
                saved.append(normalised)
        return Memory(saved=tuple(saved), scratch=tuple(scratch),
                      backward_scratch=batch_norm_backward_scratch(prod(x), c, ctx))

    def build(self, a, x, ctx):
        from torch import nn

        from profiler.rules.modules import KERAS_BATCH_NORM, ChannelAffine, ChannelsLast
        axis = self._channel_axis(a, x, ctx)
        c = x[axis]
        channels_last = axis != 0 and len(x) > 1
        # (steps, C) channels-last runs as a 2-D batch norm of height 1 (see modules.ChannelsLast)
        spatial_rank = 2 if channels_last and len(x) == 2 else max(len(x) - 1, 1)
        both = a.scale and a.center
        bn = KERAS_BATCH_NORM[spatial_rank](c, eps=a.epsilon, momentum=1.0 - a.momentum, affine=both)
        layer: nn.Module = bn
        if a.scale != a.center:  # Keras learns only one of gamma and beta
            layer = nn.Sequential(bn, ChannelAffine(c, "scale" if a.scale else "shift"))
        if channels_last:  # channel axis last: run channels-first through views
            layer = ChannelsLast(layer)
        return layer


@register
class LayerNormalization(Rule):
    """Normalise each sample over its trailing axes (by default the last one).

    ``axis`` may be an axis or a list of them, as in Keras, provided they are the trailing axes
    (torch's LayerNorm normalises over trailing axes only). Parameters: gamma and beta, each
    shaped like those axes. Backward keeps the input and a mean and 1/std per normalised row.
    """
    type_name = "LayerNormalization"
    args = (Arg("axis", _axes, (-1,)), Arg("epsilon", _epsilon, 0.001),
            Arg("center", boolean, True), Arg("scale", boolean, True))

    def _normalized_shape(self, a, x) -> tuple[int, ...]:
        if len(x) < 1:
            raise ShapeError("LayerNormalization needs at least one axis besides the batch",
                             received=f"shape {shape_text(x)}")
        indices = sorted({_resolve(axis, x) for axis in a.axis})
        if indices != list(range(len(x) - len(indices), len(x))):
            raise ShapeError("only trailing axes can be normalised", field="axis",
                             expected=f"the last axes of {shape_text(x)}, e.g. axis=-1",
                             received=f"axis={list(a.axis)}")
        return x[len(x) - len(indices):]

    def params(self, a, x, ctx):
        d = prod(self._normalized_shape(a, x))
        learned = [name for name, on in (("gamma", a.scale), ("beta", a.center)) if on]
        if not learned:
            return Params(0, formula="0 (no gamma, no beta)")
        n = len(learned)
        return Params(n * d, formula=f"{n} × {d:,} = {n * d:,} ({', '.join(learned)})", tensors=(d,) * n)

    def macs(self, a, x, y, ctx):
        return 3 * prod(x)  # sum and sum of squares for the statistics, then a multiply-add

    def memory(self, a, x, y, ctx):
        """``native_layer_norm`` makes a mean and 1/std per row (float32) in inference too; training
        keeps them with the input. With gamma, backward sums gamma's and beta's gradients per thread
        (``layer_norm_backward_scratch``). Without gamma a separate shift follows
        the normalisation, whose result is a temporary.
        """
        d = prod(self._normalized_shape(a, x))
        rows = prod(x) // d
        stats = (Saved("new", elements=rows, dtype="float32", what="row mean"),
                 Saved("new", elements=rows, dtype="float32", what="row 1/std"))
        scratch = stats if a.scale or not a.center else (*stats, Saved("new", elements=prod(x), what="normalised input"))
        backward = layer_norm_backward_scratch(d, ctx) if a.scale else ()
        return Memory(saved=(Saved("input", what="layer norm input"), *stats), scratch=scratch,
                      backward_scratch=backward)

    def build(self, a, x, ctx):
        from torch import nn

        from profiler.rules.modules import TrailingShift
        shape = self._normalized_shape(a, x)
        if a.scale:  # torch learns gamma, and beta only with bias=True
            return nn.LayerNorm(shape, eps=a.epsilon, elementwise_affine=True, bias=a.center)
        norm = nn.LayerNorm(shape, eps=a.epsilon, elementwise_affine=False)
        return nn.Sequential(norm, TrailingShift(shape)) if a.center else norm
