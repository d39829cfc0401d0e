"""MultiHeadAttention (Keras) and TransformerEncoder (keras_hub).

Both take one input of shape (steps, features) and attend over it: query = value = key. The
attention rule works on a (query, value, key) triple of shapes throughout (``_inputs``), so that
separate value and key inputs need only a new way to receive them.

MACs per sample, with T query steps, S key/value steps, H heads: the four projections, the
scores Q·Kᵀ (H × T × S × key_dim) and the weighted sum of values (H × T × S × value_dim).
Scaling, softmax and dropout count nothing, as for the Activation rule.

Memory: both layers replay their tensors and kernels in bytes, in the order the torch modules
make and free them (``attention_forward``/``attention_backward``, ``encoder_forward``/
``encoder_backward``): oneDNN's matmul scratchpads and head-slice copies in bfloat16, the
gradients as each backward node makes them (``Memory.gradients_last``), and under autocast
the weight casts the layer makes once per call.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from profiler.rules.args import Arg, boolean, choice, number, optional, positive_int, rate
from profiler.dtypes import itemsize
from profiler.errors import ShapeError, SpecError
from profiler.rules.registry import Context, Memory, Params, Rule, Saved, register
from profiler.rules.shapes import shape_text
from profiler.rules.core import ACTIVATION_NAMES, ACTIVATION_SAVES, workspace
from profiler.engine.kernels.onednn_matmul import gemm_workspace, matmul_workspace


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


@dataclass(frozen=True)
class Attention:
    """One attention call's sizes (batch included) and the run's kernels.

    t query steps, s key/value steps, h heads, q/k/v features of the three inputs, ``out`` the
    output's elements per step; ``act`` bytes per element of the dtype it computes in.
    """
    ctx: Context
    b: int
    t: int
    s: int
    h: int
    kd: int
    vd: int
    out: int
    fq: int
    fk: int
    fv: int
    bias: bool
    dropout: bool
    inputs: int = 1     # distinct inputs: query = value = key (1), value = key (2), or 3

    @property
    def act(self) -> int:
        return itemsize(self.ctx.compute_dtype(True))

    def mm(self, kind: str, m: int, k: int, n: int) -> int:
        """A projection's matmul: its workspace (oneDNN's, in bfloat16 on the CPU)."""
        return gemm_workspace(self.ctx, kind, m, k, n)

    def bmm(self, m: int, k: int, n: int, *, copies: tuple[int, ...] = (), alpha: bool = False,
            a_transposed: bool = False) -> int:
        """A per-head batched product's transient bytes (``matmul_workspace``): in bfloat16 on the CPU
        the operands oneDNN does not take (``copies``, elements), ``baddbmm``'s alpha and the scratchpad."""
        return sum(matmul_workspace(self.ctx, "grad_weight" if a_transposed else "forward", m, k, n, batch=self.b,
                                    copies=tuple(c * self.act for c in copies), alpha=alpha))

    def kept_casts(self, input_grad: bool) -> dict[str, int]:
        """Under autocast, the weight casts the projections keep for backward (``attention_casts``):
        the output kernel's, and the others' when the input needs a gradient."""
        if not self.ctx.amp:
            return {}
        kept = {"cast.wo": self.h * self.vd * self.out * self.act}
        if input_grad:
            kept.update({"cast.wq": self.fq * self.h * self.kd * self.act, "cast.wk": self.fk * self.h * self.kd * self.act,
                         "cast.wv": self.fv * self.h * self.vd * self.act})
        return kept

    def head(self, steps: int, dim: int) -> tuple[int, ...]:
        """A head's slice of a (batch, steps, heads, dim) tensor: copied unless it is the only head."""
        return (self.b * steps * dim,) if self.h > 1 else ()

    def probs_head(self, transposed: bool) -> tuple[int, ...]:
        """A head's (batch, T, S) slice of the probabilities: strided across the batch (copied with
        several heads and samples), or transposed with a stride oneDNN does not take (copied with
        several heads)."""
        copied = self.h > 1 and (transposed or self.b > 1)
        return (self.b * self.t * self.s,) if copied else ()


def attention_casts(bias: bool, *, query_kept: str) -> tuple[str, ...]:
    """Under autocast, what becomes of each weight's cast (``Memory.weight_casts``): the
    query, key and value kernels are kept by their matmuls when their input needs a gradient
    (``query_kept``), the output kernel always (the heads' result needs one), the biases not."""
    kernels = (query_kept,) * 3 + ("kept",)
    return tuple(c for kernel in kernels for c in ((kernel, "call") if bias else (kernel,)))


#: A Python number used as a tensor: a float64 scalar (8 bytes), then its cast to the op's dtype.
WRAPPED_SCALAR = 8


class _Replay:
    """Bytes alive while a composite layer runs, in the order its tensors come and go, and the
    worst moment above the start; a kernel's workspace (``spike``) counts while it runs."""

    def __init__(self, **alive: int):
        self.alive = dict(alive)
        self.start = self.now = self.peak = sum(alive.values())

    def new(self, name: str, nbytes: int) -> None:
        self.alive[name] = nbytes
        self.now += nbytes
        self.peak = max(self.peak, self.now)

    def spike(self, nbytes: int) -> None:
        self.peak = max(self.peak, self.now + nbytes)

    def drop(self, *names: str) -> None:
        for name in names:
            self.now -= self.alive.pop(name)

    def let_go(self, *names: str) -> None:
        """Drop those of ``names`` that exist (weight casts exist only under autocast)."""
        self.drop(*(name for name in names if name in self.alive))

    @property
    def above(self) -> int:
        return self.peak - self.start

    @property
    def held(self) -> int:
        return self.now - self.start


def attention_forward(r: _Replay, a: Attention, *, training: bool) -> None:
    """``modules.MultiHeadAttention.flat``'s tensors: the projections Q, K, V (each with its
    matmul's workspace), the probabilities P, head by head (with dropout in training its noise,
    made with a wrapped 1/(1 − rate), and the dropped probabilities), the result C, head by head;
    in inference Q, K, V and P go; then the output O."""
    b, t, s, h, act = a.b, a.t, a.s, a.h, a.act
    r.new("q", b * t * h * a.kd * act)
    r.spike(a.mm("forward", b * t, a.fq, h * a.kd))
    r.new("k", b * s * h * a.kd * act)
    r.spike(a.mm("forward", b * s, a.fk, h * a.kd))
    r.new("v", b * s * h * a.vd * act)
    r.spike(a.mm("forward", b * s, a.fv, h * a.vd))
    scores = b * h * t * s
    r.new("p", scores * act)
    r.spike(a.bmm(t, a.kd, s, copies=a.head(t, a.kd) + a.head(s, a.kd), alpha=True))   # Q·Kᵀ
    if training and a.dropout:
        cpu = a.ctx.device_kind == "cpu"
        r.new("noise", scores * (act if cpu else 1))
        r.spike(WRAPPED_SCALAR + act if cpu else 0)
        r.new("dropped", scores * act)
    r.new("c", b * t * h * a.vd * act)
    r.spike(a.bmm(t, s, a.vd, copies=a.probs_head(False) + a.head(s, a.vd)))   # P·V
    if not training:
        r.drop("q", "k", "v", "p")
    r.new("o", b * t * a.out * act)
    r.spike(a.mm("forward", b * t, h * a.vd, a.out))
    if not training:
        r.drop("c")


def attention_backward(r: _Replay, a: Attention, *, input_grad: bool, incoming: str | None = "g") -> None:
    """The backward of ``modules.MultiHeadAttention``, from the saved Q, K, V, P, C (and the
    noise and dropped probabilities) and the incoming gradient G: the output projection's
    (C's gradient, the kernel's and the bias's; G and C go), ``_AttentionCore``'s (P's gradient,
    then V's, Q's and K's, head by head; P's gradient, C's, and the saved tensors go), then the
    projections' in autograd's order, V, K, Q (the input's gradient when ``input_grad``, the
    kernel's, the bias's; each projection's gradient goes after it). The input's gradients are
    summed as autograd does: out of place the first time, in place after. ``incoming``: G's name,
    or None when something else holds G too (a residual path)."""
    b, t, s, h, act = a.b, a.t, a.s, a.h, a.act
    rows_c, width_v, width_k = b * t, h * a.vd, h * a.kd
    r.new("gc", rows_c * width_v * act)
    r.spike(a.mm("forward", rows_c, a.out, width_v))
    r.new("dwo", width_v * a.out * act)
    r.spike(a.mm("grad_weight", width_v, rows_c, a.out))
    if a.bias:
        r.new("dbo", a.out * act)
    r.drop(*(name for name in (incoming, "c") if name))
    r.let_go("cast.wo")
    r.new("gp", b * h * t * s * act)
    r.spike(a.bmm(t, a.vd, s, copies=a.head(t, a.vd) + a.head(s, a.vd)))                # G·Vᵀ
    r.new("dv", b * s * width_v * act)
    r.spike(a.bmm(s, t, a.vd, copies=a.probs_head(True) + a.head(t, a.vd), a_transposed=a.h == 1))   # Pᵀ·G
    r.new("dq", b * t * width_k * act)
    r.spike(a.bmm(t, s, a.kd, copies=a.probs_head(False) + a.head(s, a.kd), alpha=True))   # dP·K
    r.new("dk", b * s * width_k * act)
    r.spike(a.bmm(s, t, a.kd, copies=a.probs_head(True) + a.head(t, a.kd), alpha=True, a_transposed=a.h == 1))
    r.drop("gp", "gc", "q", "k", "v", "p", *(name for name in ("noise", "dropped") if name in r.alive))
    # the projections, v, k, q: which of them read the same input decides what is summed
    source = {"v": "kv" if a.inputs == 2 else "x" if a.inputs == 1 else "v",
              "k": "kv" if a.inputs == 2 else "x" if a.inputs == 1 else "k",
              "q": "x" if a.inputs == 1 else "q"}
    made: dict[str, list[str]] = {}
    for name, rows, features, width in (("v", b * s, a.fv, width_v), ("k", b * s, a.fk, width_k),
                                        ("q", b * t, a.fq, width_k)):
        if input_grad:
            r.new(f"dx{name}", rows * features * act)
            r.spike(a.mm("forward", rows, width, features))
        r.new(f"dw{name}", features * width * act)
        r.spike(a.mm("grad_weight", features, rows, width))
        if a.bias:
            r.new(f"db{name}", width * act)
        r.drop(f"d{name}")
        r.let_go(f"cast.w{name}")
        if input_grad:
            _accumulate(r, made.setdefault(source[name], []), f"dx{name}", rows * features * act)


def _accumulate(r: _Replay, grads: list[str], new: str, nbytes: int) -> None:
    """Autograd sums an input's gradients: the second arrives into a new tensor (both go), later
    ones are added into it in place."""
    grads.append(new)
    if len(grads) == 2:
        r.new(f"{new}+", nbytes)
        r.drop(*grads)
    elif len(grads) > 2:
        r.drop(new)


def attention_memory(a: Attention) -> dict:
    """Memory's temporaries of one attention call, from the replays: the forward's worst
    moment above its output (inference) and above its output and saved tensors (training); the
    backward's above what it starts with, its gradients included (``gradients_last``), without
    and with the input's gradients."""
    inference, training = _Replay(), _Replay()
    attention_forward(inference, a, training=False)
    attention_forward(training, a, training=True)
    out = a.b * a.t * a.out * a.act
    backward = {}
    for input_grad in (False, True):
        r = _Replay(g=out, **{name: n for name, n in training.alive.items() if name != "o"},
                    **a.kept_casts(input_grad))
        attention_backward(r, a, input_grad=input_grad)
        backward[input_grad] = r.above
    dtype, what = a.ctx.compute_dtype(True), "attention's tensors and kernels"
    return {"scratch": workspace(inference.above - out, what, dtype),
            "training_scratch": workspace(training.above - training.held, what, dtype),
            "backward_scratch": workspace(backward[False], what, dtype),
            "input_grad_scratch": workspace(backward[True] - backward[False], what, dtype),
            "gradients_last": True}


@dataclass(frozen=True)
class Encoder:
    """One TransformerEncoder call: its attention's sizes, the feed-forward width ``i``."""
    attention: Attention
    i: int
    activation: str
    normalize_first: bool

    @property
    def rows(self) -> int:
        return self.attention.b * self.attention.s

    @property
    def width(self) -> int:
        """Bytes of a (batch · steps, width) tensor."""
        return self.rows * self.attention.fq * self.attention.act

    @property
    def hidden(self) -> int:
        """Bytes of the feed-forward's hidden layer."""
        return self.rows * self.i * self.attention.act

    @property
    def stats(self) -> int:
        """Bytes of a layer norm's mean (or 1/std): one per row, in the dtype it computes in on
        the CPU (float32 when the weights are float32 and the input is not, as under autocast),
        float32 on CUDA."""
        ctx = self.attention.ctx
        dtype = "float32" if ctx.device_kind == "cuda" else ctx.dtype
        return self.rows * itemsize(dtype)

    @property
    def weight(self) -> int:
        """Bytes per element of the weights (and their gradients)."""
        return itemsize(self.attention.ctx.dtype)

    def kept_casts(self, input_grad: bool) -> dict[str, int]:
        """Under autocast, the weight casts kept for backward: the attention's (its input is the
        first norm's result with ``normalize_first``: it needs a gradient) and both Linear kernels'."""
        a = self.attention
        if not a.ctx.amp:
            return {}
        return {**a.kept_casts(input_grad or self.normalize_first),
                "cast.ff1": a.fq * self.i * a.act, "cast.ff2": self.i * a.fq * a.act}

    def mask(self) -> int:
        """A dropout's noise (the activations' dtype on the CPU) or mask (bool on CUDA)."""
        return self.rows * self.attention.fq * (self.attention.act if self.attention.ctx.device_kind == "cpu" else 1)

    def dropout(self, r: _Replay, name: str) -> None:
        """In-place dropout in training: its noise, made with a wrapped 1/(1 − rate) on the CPU."""
        r.new(name, self.mask())
        if self.attention.ctx.device_kind == "cpu":
            r.spike(WRAPPED_SCALAR + self.attention.act)

    def norm(self, r: _Replay, out: str, stats: str, *, training: bool) -> None:
        """A layer norm: its result, then a mean and a 1/std per row (kept in training)."""
        r.new(out, self.width)
        r.new(f"{stats}.mean", self.stats)
        r.new(f"{stats}.rstd", self.stats)
        if not training:
            r.drop(f"{stats}.mean", f"{stats}.rstd")

    def norm_backward(self, r: _Replay, out: str | None, stats: str) -> None:
        """A layer norm's backward: its input's gradient (when wanted), gamma's and beta's, and on
        the CPU their per-thread sums, (threads, 2, width) float32; its statistics go."""
        a = self.attention
        if out:
            r.new(out, self.width)
        r.new(f"{stats}.dgamma", a.fq * self.weight)
        r.new(f"{stats}.dbeta", a.fq * self.weight)
        if a.ctx.device_kind == "cpu":
            r.spike(a.ctx.threads * 2 * a.fq * 4)
        r.drop(f"{stats}.mean", f"{stats}.rstd")

    def dense(self, r: _Replay, out: str, n_in: int, n_out: int) -> None:
        """One of the feed-forward's ``nn.Linear`` layers: its result and its matmul's workspace."""
        r.new(out, self.rows * n_out * self.attention.act)
        r.spike(self.attention.mm("forward", self.rows, n_in, n_out))

    def dense_backward(self, r: _Replay, name: str, n_in: int, n_out: int, *, input_grad: str | None) -> None:
        """A Linear's backward: its input's gradient (g·W), its weight's (gᵀ·x), its bias's."""
        a = self.attention
        if input_grad:
            r.new(input_grad, self.rows * n_in * a.act)
            r.spike(a.mm("forward", self.rows, n_out, n_in))
        r.new(f"{name}.dw", n_in * n_out * a.act)
        r.spike(a.mm("grad_weight", n_out, self.rows, n_in))
        r.new(f"{name}.db", n_out * a.act)
        r.let_go(f"cast.{name}")


def encoder_forward(r: _Replay, e: Encoder, *, training: bool) -> str:
    """``modules.TransformerEncoder.forward``'s tensors in order (returns the output's name): the
    attention (``attention_forward``), in training dropout, the residual added in place, a layer
    norm (before each block with ``normalize_first``, after it otherwise), the feed-forward's two
    Linear layers (relu, sigmoid and tanh in place, others into a new tensor), dropout, the
    residual. In inference each tensor goes when nothing reads it any more."""
    a, pre = e.attention, e.normalize_first
    w, i = a.fq, e.i
    if pre:
        e.norm(r, "ln1", "n1", training=training)
    attention_forward(r, a, training=training)
    if training and a.dropout:
        e.dropout(r, "mask1")
    if pre and not training:
        r.drop("ln1")
    if not pre:
        e.norm(r, "ln1", "n1", training=training)
        if not training:
            r.drop("o")
    block_in = "ln2" if pre else "ln1"
    if pre:
        e.norm(r, "ln2", "n2", training=training)
    e.dense(r, "h1", w, i)
    if pre and not training:
        r.drop("ln2")
    hidden = "h1"
    if e.activation not in IN_PLACE and e.activation != "linear":
        r.new("a1", e.hidden)
        hidden = "a1"
        if not training or ACTIVATION_SAVES[e.activation] != ("input",):
            r.drop("h1")
    e.dense(r, "h2", i, w)
    if not training:
        r.drop(hidden)
    if training and a.dropout:
        e.dropout(r, "mask2")
    if not training:
        r.drop("o" if pre else block_in)     # the residual, once added
    if pre:
        return "h2"
    e.norm(r, "out", "n2", training=training)
    if not training:
        r.drop("h2")
    return "out"


def encoder_backward(r: _Replay, e: Encoder, *, input_grad: bool) -> None:
    """The backward of ``modules.TransformerEncoder`` from what training keeps and the incoming
    gradient G: node by node, in autograd's order, each gradient made when its node runs, the
    tensors a node keeps let go when it has run, gradients summed as autograd sums them (in place
    into a gradient it alone holds, out of place into G). ``input_grad``: the layer's input wants
    a gradient (its residual path's gradient and the attention's are summed into it)."""
    a, pre = e.attention, e.normalize_first
    w, i = a.fq, e.i
    dropout = "mask1" in r.alive
    if not pre:                                  # (pre-norm: G flows to the block and the residual)
        e.norm_backward(r, "g2", "n2")
        r.drop("g", "h2")
    if dropout:
        r.new("gh2", e.width)
        r.drop("mask2")
    e.dense_backward(r, "ff2", i, w, input_grad="ga1")
    if dropout:
        r.drop("gh2")
    if e.activation == "linear":
        r.drop("h1")                             # the second Linear's input
        grad = "ga1"
    else:
        keeps_input = ACTIVATION_SAVES[e.activation] == ("input",)
        if keeps_input:                          # gelu, silu: a1 was the second Linear's alone
            r.drop("a1")
        r.new("gh1", e.hidden)
        r.drop("ga1", "h1" if keeps_input or e.activation in IN_PLACE else "a1")
        grad = "gh1"
    block_in = "ln2" if pre else "ln1"
    e.dense_backward(r, "ff1", w, i, input_grad="gl")
    r.drop(grad, block_in)
    if pre:                                      # the second norm, then its gradient and G summed
        e.norm_backward(r, "gs", "n2")
        r.drop("gl", "o")
        r.new("g1", e.width)                     # (out of place: G is not autograd's alone)
        r.drop("gs", "g")
    else:
        r.drop("gl")                             # into g2, in place
        e.norm_backward(r, "g1", "n1")
        r.drop("g2", "o")
    residual = incoming = "g1"                   # the first block's output gradient
    if dropout:
        r.new("ga", e.width)
        r.drop("mask1")
        if not input_grad:                       # the residual path ends here
            r.drop(residual)
        incoming = "ga"
    # the attention reads the layer's input (post-norm) or the first norm's result (pre-norm)
    shared = incoming == residual and input_grad
    attention_backward(r, a, input_grad=input_grad or pre, incoming=None if shared else incoming)
    summed = [name for name in r.alive if name.startswith("dx")]
    if pre:                                      # the first norm's backward, then into g1
        e.norm_backward(r, "gx" if input_grad else None, "n1")
        r.drop(*summed, "ln1")
        if input_grad:
            r.drop("gx")
    elif summed:
        r.drop(*summed)                          # into g1, in place


#: Activations ``modules.TransformerEncoder`` runs in place.
IN_PLACE = ("relu", "sigmoid", "tanh")


def encoder_memory(e: Encoder) -> dict:
    """Memory's temporaries of one encoder call, from the replays (see ``attention_memory``)."""
    inference, training = _Replay(), _Replay()
    out = e.width
    encoder_forward(inference, e, training=False)
    encoder_forward(training, e, training=True)
    start = {name: n for name, n in training.alive.items() if name not in ("out", "h2" if e.normalize_first else "")}
    backward = {}
    for input_grad in (False, True):
        r = _Replay(g=out, **start, **e.kept_casts(input_grad))
        encoder_backward(r, e, input_grad=input_grad)
        backward[input_grad] = r.above
    dtype, what = e.attention.ctx.compute_dtype(True), "encoder's tensors and kernels"
    return {"scratch": workspace(inference.above - out, what, dtype),
            "training_scratch": workspace(training.above - training.held, what, dtype),
            "backward_scratch": workspace(backward[False], what, dtype),
            "input_grad_scratch": workspace(backward[True] - backward[False], what, dtype),
            "gradients_last": True}


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
        query, value, key, vd, out = self._dims(a, x)
        dims = dict(t=query[0], s=value[0], heads=a.num_heads, key_dim=a.key_dim, value_dim=vd)
        saved = attention_saves(**dims, dropout=a.dropout, device_kind=ctx.device_kind)
        several = bool(x) and isinstance(x[0], tuple)
        inputs = len(x) if several else 1
        call = Attention(ctx, ctx.batch, query[0], value[0], a.num_heads, a.key_dim, vd, prod(out), query[1],
                         key[1], value[1], a.use_bias, a.dropout > 0, inputs)
        return Memory(saved=(Saved("inputs" if inputs > 1 else "input",
                                         what="inputs of the query, key and value projections"), *saved),
                            weight_casts=attention_casts(a.use_bias, query_kept="kept_for_input_grad"),
                            **attention_memory(call))

    def build(self, a, x, ctx):
        from profiler.rules.modules import MultiHeadAttention as MultiHeadAttentionModule
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
                 Saved("new", elements=4 * s, dtype="float32" if ctx.device_kind == "cuda" else ctx.dtype,
                       what="layer norms' mean and 1/std per step"),
                 Saved("new", elements=s * i * (1 + (ACTIVATION_SAVES[a.activation] == ("input",))),
                       what=f"feed-forward {a.activation} result (and input)")]
        if a.dropout > 0:
            mask = "bool" if ctx.device_kind == "cuda" else "act"
            saved.append(Saved("new", elements=2 * s * w, dtype=mask, what="dropout masks after both blocks"))
        attention = Attention(ctx, ctx.batch, s, s, a.num_heads, kd, kd, w, w, w, w, True, a.dropout > 0)
        call = Encoder(attention, i, a.activation, a.normalize_first)
        # the attention reads the layer's input (post-norm) or the first norm's result (pre-norm)
        query_kept = "kept" if a.normalize_first else "kept_for_input_grad"
        casts = attention_casts(True, query_kept=query_kept) + ("",) * 4 + ("kept", "call") * 2
        return Memory(saved=tuple(saved), weight_casts=casts, **encoder_memory(call))

    def build(self, a, x, ctx):
        from profiler.rules.modules import TransformerEncoder as TransformerEncoderModule
        _, w, _ = self._dims(a, x)
        return TransformerEncoderModule(w, intermediate_dim=a.intermediate_dim, num_heads=a.num_heads,
                                        dropout=a.dropout, activation=a.activation,
                                        layer_norm_epsilon=a.layer_norm_epsilon,
                                        normalize_first=a.normalize_first)
