"""MultiHeadAttention (Keras) and TransformerEncoder (keras_hub).

Both take one input of shape (steps, features) and attend over it: query = value = key. The
attention rule works on a (query, value, key) triple of shapes throughout (``_inputs``), so that
separate value and key inputs need only a new way to receive them.

MACs per sample, with T query steps, S key/value steps, H heads: the four projections, the
scores Q·Kᵀ (H × T × S × key_dim) and the weighted sum of values (H × T × S × value_dim).
Scaling, softmax and dropout count nothing, as for the Activation rule.
"""
from __future__ import annotations

from math import prod
from typing import Any

from ..args import Arg, boolean, choice, number, optional, positive_int, rate
from ..errors import ShapeError, SpecError
from ..registry import Memory, Params, Rule, Saved, register
from ..shapes import shape_text
from .core import ACTIVATION_NAMES, ACTIVATION_SAVES


def _output_shape(field: str, value: Any) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(items, (list, tuple)) or not items
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)):
        raise SpecError("must be a positive integer or a list of them", field=field,
                        received=f"{value!r} ({type(value).__name__})")
    return tuple(items)


def _epsilon(field: str, value: Any) -> float:
    value = number(field, value)
    if value <= 0:
        raise SpecError("must be a positive number", field=field, received=repr(value))
    return value


def _sequence(x, what: str) -> tuple[int, int]:
    if len(x) != 2:
        raise ShapeError(f"input has the wrong number of axes for {what}",
                         expected="2 axes besides the batch: (steps, features)",
                         received=f"shape {shape_text(x)}")
    return x


def attention_saves(*, t: int, s: int, heads: int, key_dim: int, value_dim: int, dropout: float,
                    device_kind: str) -> tuple[Saved, ...]:
    """What ``modules.MultiHeadAttention`` keeps for backward beyond its inputs, per sample: the
    query, key and value projections and the softmax result (kept by ``_AttentionCore``), the
    heads' concatenated results (read by the output projection); with dropout also its noise
    (CPU: the activations' dtype; CUDA: a bool mask) and the dropped probabilities."""
    scores = heads * t * s
    saved = [Saved("new", elements=heads * key_dim * (t + s), what="query and key projections"),
             Saved("new", elements=scores, what="attention probabilities (softmax result)"),
             Saved("new", elements=heads * value_dim * (s + t), what="values and attention results")]
    if dropout > 0:
        saved += [Saved("new", elements=scores, dtype="bool" if device_kind == "cuda" else "act",
                        what="attention dropout mask"),
                  Saved("new", elements=scores, what="probabilities after dropout")]
    return tuple(saved)


def attention_temporaries(*, t: int, s: int, heads: int, key_dim: int, value_dim: int, out: int,
                          inputs: int) -> tuple[int, int]:
    """(forward, backward) elements per sample a ``modules.MultiHeadAttention`` call allocates
    beside what the memory model counts (its output; in backward the gradients of its weights
    and input), from the order its tensors come and go:

    forward: the projections Q, K, V; the attention's probabilities P (and with dropout, in
    training, the noise and the dropped probabilities: kept anyway) and its result C; the
    projections and P are let go (in inference), then the output projection O is made from C.
    The worst moment is in the attention (Q + K + V + P + C) or at the end (C + O).
    backward: the output projection's gradient of C (C itself is let go after it); then the
    attention's, with P's gradient and the gradients of V, Q and K at once, while the incoming
    gradient (O) is gone. The inputs' gradients (``inputs`` elements; the memory model counts
    them from the start) come only after, and so do the projections' weight gradients, which the
    memory model also counts from the start: the prediction overstates by those.
    """
    q, k, v = t * heads * key_dim, s * heads * key_dim, s * heads * value_dim
    p, c = heads * t * s, t * heads * value_dim
    forward = max(q + k + v + p + c - out, c)
    backward = max(c, p + v + q + k - out) - inputs
    return forward, max(backward, 0)


class _Live:
    """Elements alive per sample while a composite layer runs: its worst moment above the start."""

    def __init__(self, **alive: int):
        self.alive = dict(alive)
        self.start = self.now = self.peak = sum(alive.values())

    def new(self, name: str, elements: int) -> None:
        self.alive[name] = elements
        self.now += elements
        self.peak = max(self.peak, self.now)

    def drop(self, *names: str) -> None:
        for name in names:
            self.now -= self.alive.pop(name)

    @property
    def above(self) -> int:
        return self.peak - self.start


def encoder_temporaries(*, s: int, w: int, i: int, heads: int, key_dim: int, dropout: bool, activation: str,
                        normalize_first: bool) -> tuple[int, int]:
    """(forward, backward) elements per sample a ``modules.TransformerEncoder`` call allocates
    beside what the memory model counts (the output; in backward the weights' and the input's
    gradients), replaying its tensors in the order they come and go (layer norm statistics,
    float32, counted as elements). The input is assumed to want a gradient (the layer follows an
    embedding or another layer): its gradient is the residual path's, accumulated in place.

    Forward, in inference: each block's temporaries (the attention's as in
    ``attention_temporaries``; the first sum; the norms' results and statistics; the
    feed-forward's hidden layer, one copy when its activation runs in place, two otherwise).
    Backward: each node's gradient, the tensors it keeps let go when it has run, residual
    gradients accumulated in place (autograd adds into a gradient nobody else holds).
    """
    q = p_q = s * heads * key_dim          # Q, K, V, the attention's result C
    p = heads * s * s
    sw, si, stats = s * w, s * i, 2 * s
    in_place = activation in ("relu", "sigmoid", "tanh")
    keeps_input = activation in ("gelu", "silu")
    # --- forward, inference (the caller holds the input) ---
    t = _Live()
    if normalize_first:
        t.new("ln1", sw)
        t.new("stats", stats)
        t.drop("stats")
    for name in ("q", "k", "v", "p", "c"):
        t.new(name, p if name == "p" else q)
    t.drop("q", "k", "v", "p")
    t.new("sum1", sw)                      # the attention's output, the residual added in place
    t.drop("c")
    if normalize_first:
        t.drop("ln1")
    t.new("ln2" if normalize_first else "ln1", sw)
    t.new("stats", stats)
    t.drop("stats")
    if not normalize_first:
        t.drop("sum1")
    t.new("h1", si)
    if normalize_first:
        t.drop("ln2")
    if not in_place and activation != "linear":
        t.new("a1", si)
        t.drop("h1")
    t.new("h2", sw)
    t.drop("a1" if "a1" in t.alive else "h1")
    t.drop("sum1" if normalize_first else "ln1")   # the residual, once added
    if not normalize_first:
        t.new("out", sw)
        t.new("stats", stats)
        t.drop("stats", "h2")
    forward = t.peak - sw                  # the output is the memory model's own
    # --- backward: from everything training keeps and the incoming gradient g ---
    kept = dict(q=q, k=p_q, v=p_q, p=p, c=p_q, sum1=sw, stats1=stats, stats2=stats, a1=si, g=sw)
    if keeps_input:
        kept["h1"] = si
    if dropout:
        kept.update(noise_p=p, dropped=p, noise1=sw, noise2=sw)
    kept.update(dict(ln1=sw, ln2=sw) if normalize_first else dict(ln1=sw, sum2=sw))
    t = _Live(**kept)
    branch = "g"
    if not normalize_first:                # the second norm first
        t.new("g2", sw)
        t.drop("sum2", "stats2", "g")
        branch = "g2"
    if dropout:
        t.new("gh2", sw)
        t.drop("noise2")
    t.new("ga1", si)                       # the second dense layer
    if dropout:
        t.drop("gh2")
    if activation == "linear" or keeps_input:
        t.drop("a1")                       # kept by the dense layer alone
    if activation != "linear":
        t.new("gh1", si)
        t.drop("ga1", "h1" if keeps_input else "a1")
    grad_h1 = "gh1" if activation != "linear" else "ga1"
    t.new("gl", sw)                        # the first dense layer
    t.drop(grad_h1, "ln2" if normalize_first else "ln1")
    if normalize_first:                    # the second norm, then the residual
        t.new("gs", sw)
        t.drop("gl", "sum1", "stats2")
        t.drop("gs")                       # added into g in place
    else:
        t.drop("gl")                       # added into g2 in place
        t.new("g1", sw)                    # the first norm
        t.drop("g2", "sum1", "stats1")
    if dropout:
        t.new("ga", sw)
        t.drop("noise1")
    t.new("gc", p_q)                       # the attention's output projection
    t.drop("c", *(("ga",) if dropout else ()))
    for name, size in (("gp", p), ("dv", p_q), ("dq", q), ("dk", p_q)):
        t.new(name, size)
    t.drop("q", "k", "v", "p", "gp", "gc", *(("noise_p", "dropped") if dropout else ()))
    for grad in ("dv", "dk", "dq"):        # projections: their input's gradient, accumulated
        t.new("gx" + grad, sw)
        t.drop(grad)
        if grad != "dv" or not normalize_first:
            t.drop("gx" + grad)
    if normalize_first:                    # the first norm: its input's gradient joins g
        t.new("gx", sw)
        t.drop("gxdv", "ln1", "stats1", "gx")
    backward = max(t.above - sw, 0)        # the input's gradient is the memory model's own
    return forward, backward


@register
class MultiHeadAttention(Rule):
    """Keras's MultiHeadAttention, as self-attention over one (steps, features) input.

    Per head: queries and keys of ``key_dim``, values of ``value_dim`` (default key_dim), softmax
    of Q·Kᵀ/√key_dim over the keys, dropout on those probabilities; the heads' results are
    projected to ``output_shape`` (default: the query's features). key_dim × num_heads need not
    equal the features. Parameters: query, key, value and output kernels, each with a bias
    unless use_bias=False:
    (q + 1) × H × key_dim + (k + 1) × H × key_dim + (v + 1) × H × value_dim + (H × value_dim + 1) × out.
    """
    type_name = "MultiHeadAttention"
    args = (Arg("num_heads", positive_int), Arg("key_dim", positive_int),
            Arg("value_dim", optional(positive_int), None), Arg("dropout", rate, 0.0),
            Arg("use_bias", boolean, True), Arg("output_shape", optional(_output_shape), None))

    min_inputs = 1   # self-attention on one input; (query, value) or (query, value, key) as Keras
    max_inputs = 3

    def _inputs(self, x) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(query, value, key) shapes: value defaults to query and key to value, as in Keras."""
        shapes = tuple(x) if x and isinstance(x[0], tuple) else (x,)
        query = _sequence(shapes[0], "MultiHeadAttention's query")
        value = _sequence(shapes[1], "MultiHeadAttention's value") if len(shapes) > 1 else query
        key = _sequence(shapes[2], "MultiHeadAttention's key") if len(shapes) > 2 else value
        if key[0] != value[0]:
            raise ShapeError("key and value must have the same number of steps", field="inputs",
                             received=f"key {shape_text(key)}, value {shape_text(value)}")
        return query, value, key

    def _dims(self, a, x):
        query, value, key = self._inputs(x)
        vd = a.value_dim or a.key_dim
        out = a.output_shape or (query[-1],)
        return query, value, key, vd, out

    def output_shape(self, a, x, ctx):
        query, _, _, _, out = self._dims(a, x)
        return (query[0], *out)

    def counts(self, a, x) -> list[tuple[str, int, int, str]]:
        """(name, kernel elements, bias elements, arithmetic) of each projection."""
        query, value, key, vd, out = self._dims(a, x)
        h, kd, b = a.num_heads, a.key_dim, a.use_bias
        n_out = prod(out)
        out_text = "×".join(map(str, out))
        one = " + 1" if b else ""

        def proj(name, features, dim):
            return (name, features * h * dim, h * dim * b, f"({features:,}{one}) × {h}×{dim}")

        return [proj("query", query[-1], kd), proj("key", key[-1], kd), proj("value", value[-1], vd),
                ("output", h * vd * n_out, n_out * b, f"({h}×{vd}{one}) × {out_text}")]

    def params(self, a, x, ctx):
        parts = self.counts(a, x)
        total = sum(k + b for _, k, b, _ in parts)
        text = "; ".join(f"{name} {expr} = {k + b:,}" for name, k, b, expr in parts)
        tensors = tuple(n for _, k, b, _ in parts for n in (k, b) if n)
        return Params(total, formula=f"{text}; total {total:,}", tensors=tensors)

    def macs(self, a, x, y, ctx):
        query, value, key, vd, out = self._dims(a, x)
        t, s, h, kd = query[0], value[0], a.num_heads, a.key_dim
        projections = h * (t * query[1] * kd + s * key[1] * kd + s * value[1] * vd + t * vd * prod(out))
        return projections + h * t * s * (kd + vd)

    def memory(self, a, x, y, ctx):
        query, value, _, vd, out = self._dims(a, x)
        dims = dict(t=query[0], s=value[0], heads=a.num_heads, key_dim=a.key_dim, value_dim=vd)
        saved = attention_saves(**dims, dropout=a.dropout, device_kind=ctx.device_kind)
        several = bool(x) and isinstance(x[0], tuple)
        elements = sum(prod(shape) for shape in x) if several else prod(x)
        # (the inputs are assumed to want gradients: attention follows other layers)
        forward, backward = attention_temporaries(**dims, out=query[0] * prod(out), inputs=elements)
        inputs = "inputs" if several and len(x) > 1 else "input"
        return Memory(saved=(Saved(inputs, what="inputs of the query, key and value projections"), *saved),
                      scratch=(Saved("new", elements=forward, what="projections, probabilities, result"),),
                      backward_scratch=(Saved("new", elements=backward, what="attention gradients"),))

    def build(self, a, x, ctx):
        from .modules import MultiHeadAttention as MultiHeadAttentionModule
        query, value, key, vd, out = self._dims(a, x)
        return MultiHeadAttentionModule(query[-1], value[-1], key[-1], num_heads=a.num_heads,
                                        key_dim=a.key_dim, value_dim=vd, output_shape=out,
                                        use_bias=a.use_bias, dropout=a.dropout)


@register
class TransformerEncoder(Rule):
    """keras_hub.layers.TransformerEncoder: self-attention, then a feed-forward network.

    With W the input's features: MultiHeadAttention with ``num_heads`` heads of key_dim =
    value_dim = W // num_heads, output W; dropout; residual; LayerNormalization. Then Dense
    (``intermediate_dim``, ``activation``), Dense (W), dropout, residual, LayerNormalization.
    ``normalize_first`` normalises before each block instead of after (GPT-2 style). ``dropout``
    is used in the attention and after both blocks, as in keras_hub.

    Parameters: attention 3 × (W + 1) × H × key_dim + (H × key_dim + 1) × W, two layer norms
    2 × 2 × W, feed-forward (W + 1) × intermediate + (intermediate + 1) × W.
    MACs: the attention's, both Dense layers', and 3 per element for each layer norm.
    """
    type_name = "TransformerEncoder"
    internal_activation = True
    args = (Arg("intermediate_dim", positive_int), Arg("num_heads", positive_int),
            Arg("dropout", rate, 0.0), Arg("activation", choice(*ACTIVATION_NAMES), "relu"),
            Arg("layer_norm_epsilon", _epsilon, 1e-5), Arg("normalize_first", boolean, False))

    def _dims(self, a, x) -> tuple[int, int, int]:
        steps, width = _sequence(x, "TransformerEncoder")
        key_dim = width // a.num_heads
        if key_dim == 0:
            raise ShapeError("the attention's key_dim (features // num_heads) would be zero",
                             field="num_heads", expected=f"num_heads <= {width}, the input's features",
                             received=f"num_heads={a.num_heads}")
        return steps, width, key_dim

    def output_shape(self, a, x, ctx):
        self._dims(a, x)
        return x

    def params(self, a, x, ctx):
        _, w, kd = self._dims(a, x)
        h, i = a.num_heads, a.intermediate_dim
        attention = 3 * (w + 1) * h * kd + (h * kd + 1) * w
        norms = 2 * 2 * w
        feedforward = (w + 1) * i + (i + 1) * w
        total = attention + norms + feedforward
        formula = (f"attention 3 × ({w:,} + 1) × {h}×{kd} + ({h}×{kd} + 1) × {w:,} = {attention:,}; "
                   f"layer norms 2 × 2 × {w:,} = {norms:,}; "
                   f"feed-forward ({w:,} + 1) × {i:,} + ({i:,} + 1) × {w:,} = {feedforward:,}; total {total:,}")
        tensors = (w * h * kd, h * kd) * 3 + (h * kd * w, w) + (w,) * 4 + (w * i, i, i * w, w)
        return Params(total, formula=formula, tensors=tensors)

    def macs(self, a, x, y, ctx):
        s, w, kd = self._dims(a, x)
        h, i = a.num_heads, a.intermediate_dim
        attention = h * s * kd * (4 * w + 2 * s)
        return attention + 2 * s * w * i + 2 * 3 * s * w

    def memory(self, a, x, y, ctx):
        s, w, kd = self._dims(a, x)
        i = a.intermediate_dim
        saved = [Saved("input", what="input (first layer norm or attention projections)"),
                 *attention_saves(t=s, s=s, heads=a.num_heads, key_dim=kd, value_dim=kd,
                                  dropout=a.dropout, device_kind=ctx.device_kind),
                 # post-norm: the two sums normalised and the first norm's result;
                 # pre-norm: the first norm's result, the first sum and the second norm's result
                 Saved("new", elements=3 * s * w, what="residual sums and normalised tensors"),
                 Saved("new", elements=4 * s, dtype="float32", what="layer norms' mean and 1/std per step"),
                 Saved("new", elements=s * i * (1 + (ACTIVATION_SAVES[a.activation] == ("input",))),
                       what=f"feed-forward {a.activation} result (and input)")]
        if a.dropout > 0:
            mask = "bool" if ctx.device_kind == "cuda" else "act"
            saved.append(Saved("new", elements=2 * s * w, dtype=mask, what="dropout masks after both blocks"))
        forward, backward = encoder_temporaries(s=s, w=w, i=i, heads=a.num_heads, key_dim=kd, dropout=a.dropout > 0,
                                                activation=a.activation, normalize_first=a.normalize_first)
        return Memory(saved=tuple(saved), scratch=(Saved("new", elements=forward, what="blocks' temporaries"),),
                      backward_scratch=(Saved("new", elements=backward, what="blocks' gradients"),))

    def build(self, a, x, ctx):
        from .modules import TransformerEncoder as TransformerEncoderModule
        _, w, _ = self._dims(a, x)
        return TransformerEncoderModule(w, intermediate_dim=a.intermediate_dim, num_heads=a.num_heads,
                                        dropout=a.dropout, activation=a.activation,
                                        layer_norm_epsilon=a.layer_norm_epsilon,
                                        normalize_first=a.normalize_first)
