"""SimpleRNN, LSTM, GRU, and the wrappers Bidirectional and TimeDistributed.

Keras semantics (``keras/src/layers/rnn/``): the input is (steps, features); the output is the
last state (units,), or every state (steps, units) with ``return_sequences``. Keras keeps one
bias per gate (two for a GRU with ``reset_after``, its default: input and recurrent biases).

torch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` always carry two biases per gate and have no GRU with
reset_after=False, so the torch module (``modules.KerasRecurrent``) holds Keras's three tensors in
Keras's layout and runs the cell step by step: one matrix product for the input projection of
every step, then per step a recurrent matrix product and the gates. It runs in a few buffers
allocated up front, with in-place kernels, and its backward is written out
(``modules._RecurrentFunction``), so that its memory is a short list of whole tensors
(``Cell``). The activations are limited to tanh, sigmoid and relu: their derivatives follow from
their results, so backward needs no pre-activation values.

Initial states (Keras's ``initial_state``): the call's inputs after the sequence, h (units,)
and, for an LSTM, c (units,). ``return_state``: the layer's outputs are [output, h] or, for an
LSTM, [output, h, c], as Keras's. Shapes and parameters are unchanged by either. Memory: the
states are kept for backward, whose state buffers (dh, dc) end as their gradients
(``Memory.state_grads``); h is the output itself (a view of its last step beside a sequence)
and c is the inference buffer of the current cell state, or a view of the cell states training
keeps (``Memory.cell_state``). A few uses the spec replay does not follow go to the engine
(``engine/predict.states_need_engine``).

``activation`` in these layers acts inside the cell, not on the layer's output: the rules set
``internal_activation`` so that it is not taken for a fused output activation.

In bfloat16 on the CPU each matrix product brings oneDNN's scratchpad (``Cell.workspace``, from
the order the module runs them). Under autocast the layer casts its weights and input once per
call and runs in bfloat16 throughout (``modules.lowered``; the casts are kept for backward).

MACs per sample: the matrix products, steps × gates × units × (features + units), plus the
element-wise gate products per step and unit (LSTM: f·c, i·g, o·tanh(c), 3; GRU: r times the
recurrent part and the final interpolation, 2; SimpleRNN: none).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from math import prod

from profiler.rules.args import Arg, boolean, choice, positive_int
from profiler.dtypes import itemsize
from profiler.errors import ModelsizeError, ShapeError, SpecError
from profiler.rules.registry import Context, Memory, Params, Rule, Saved, nested_layer, register, registered as rule_for
from profiler.rules.shapes import shape_text
from profiler.rules.core import ACTIVATION_SAVES, workspace
from profiler.engine.kernels.onednn_matmul import gemm_workspace

RECURRENT_ACTIVATIONS = ("tanh", "sigmoid", "relu")
#: Under autocast a layer casts each weight once per call and keeps every cast for backward
#: (``modules._RecurrentFunction`` saves them all).
OWN_CASTS = ("kept",)
GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}
GATE_PRODUCTS = {"SimpleRNN": 0, "LSTM": 3, "GRU": 2}
#: The states a layer starts from (``initial_state``) and returns (``return_state``), in Keras's order.
STATES = {"SimpleRNN": ("h",), "LSTM": ("h", "c"), "GRU": ("h",)}


@contextmanager
def _wrapped(type_name: str, on: str):
    """Errors of a wrapped layer name the wrapper's field: ``layer.kernel_size``."""
    try:
        yield
    except ModelsizeError as error:
        error.field = f"layer.{error.field}" if error.field else "layer"
        error.what = f"the wrapped {type_name} on {on}: {error.what}"
        error.args = (error.message(),)
        raise


def _sequence(type_name: str, x) -> tuple[int, int]:
    if len(x) != 2:
        raise ShapeError(f"input has the wrong number of axes for {type_name}",
                         expected="2 axes besides the batch: (steps, features)",
                         received=f"shape {shape_text(x)}")
    return x


class RecurrentRule(Rule):
    """One recurrent layer type (SimpleRNN, LSTM or GRU); see the module's docstring."""

    internal_activation = True

    def __init__(self, type_name: str):
        self.type_name = type_name  # type: ignore[misc]
        self.gates = GATES[type_name]
        self.max_inputs = 1 + len(STATES[type_name])  # type: ignore[misc]  (the sequence, initial states)
        args = [Arg("units", positive_int),
                Arg("activation", choice(*RECURRENT_ACTIVATIONS), "tanh")]
        if type_name != "SimpleRNN":
            args.append(Arg("recurrent_activation", choice(*RECURRENT_ACTIVATIONS), "sigmoid"))
        args += [Arg("use_bias", boolean, True), Arg("return_sequences", boolean, False)]
        if type_name == "GRU":
            args.append(Arg("reset_after", boolean, True))
        args.append(Arg("return_state", boolean, False))
        self.args = tuple(args)

    def sequence(self, x) -> tuple[int, int]:
        """The sequence's shape (steps, features) among the inputs: one shape, or the shapes of
        the sequence and the initial states."""
        return _sequence(self.type_name, x[0] if x and isinstance(x[0], tuple) else x)

    def initial_states(self, a, x) -> tuple[tuple[int, ...], ...]:
        """The initial states' shapes, checked: none, or each state (h; h and c) as (units,)."""
        states = tuple(x[1:]) if x and isinstance(x[0], tuple) else ()
        names = STATES[self.type_name]
        if states and len(states) != len(names):
            raise ShapeError(f"{self.type_name} takes its initial states together", field="initial_state",
                             expected=f"{len(names)} ({', '.join(names)})", received=str(len(states)))
        for name, shape in zip(names, states):
            if tuple(shape) != (a.units,):
                raise ShapeError(f"initial state {name} does not match the layer's units", field="initial_state",
                                 expected=f"shape {shape_text((a.units,))}", received=f"shape {shape_text(shape)}")
        return states

    def output_shapes(self, a, x, ctx):
        y = self.output_shape(a, x, ctx)
        return (y,) + ((a.units,),) * len(STATES[self.type_name]) if a.get("return_state", False) else (y,)

    def _two_biases(self, a) -> bool:
        return self.type_name == "GRU" and a.use_bias and a.reset_after

    def output_shape(self, a, x, ctx):
        steps, _ = self.sequence(x)
        self.initial_states(a, x)
        return (steps, a.units) if a.return_sequences else (a.units,)

    def count(self, a, x) -> tuple[str, int, tuple[int, ...]]:
        """(arithmetic, total, elements of each tensor): kernel, recurrent kernel, bias."""
        _, features = self.sequence(x)
        g, u = self.gates, a.units
        kernel, recurrent = features * g * u, u * g * u
        biases = (2 if self._two_biases(a) else 1) * g * u if a.use_bias else 0
        # gates × (units × (features + units) + biases per gate)
        head = f"{g} × " if g > 1 else ""
        core = f"{u:,} × ({features:,} + {u:,})"
        if not a.use_bias:
            expr = f"{head}{core}"
        else:
            bias = f"2 × {u:,}" if self._two_biases(a) else f"{u:,}"
            expr = f"{head}({core} + {bias})" if g > 1 else f"{core} + {bias}"
        tensors = (kernel, recurrent, biases) if a.use_bias else (kernel, recurrent)
        return expr, kernel + recurrent + biases, tensors

    def params(self, a, x, ctx):
        expr, total, tensors = self.count(a, x)
        note = " (input and recurrent bias per gate, reset_after)" if self._two_biases(a) else ""
        return Params(total, formula=f"{expr} = {total:,}{note}", tensors=tensors)

    def macs(self, a, x, y, ctx):
        steps, features = self.sequence(x)
        u = a.units
        return steps * (self.gates * u * (features + u) + GATE_PRODUCTS[self.type_name] * u)

    def cell(self, a, steps: int, where: str = "output") -> "Cell":
        """What one direction allocates, per sample (see ``Cell``). ``where`` its states go: into
        the layer's "output", into one "half" of it (Bidirectional's concat), or into an "own"
        buffer (Bidirectional's other merges)."""
        g, u, t, rs = self.gates, a.units, steps, a.return_sequences
        projection = t * g * u                  # P = x·W + b, (steps, gates·units)
        own = (t if rs else 1) * u if where == "own" else 0
        # the hidden states besides the output, kept in training: all but the last
        states = 0 if rs else (t - 1) * u
        if self.type_name == "SimpleRNN":
            # P becomes the states in place; with return_sequences and no other place to go
            # it is the output itself (the layer's, or the direction's own), else it is copied
            if rs and where != "half":
                return Cell(projection=projection, output=own, scratch=0, kept=0, keeps_output=where == "output",
                            backward=projection + u)      # dZ; dh
            return Cell(projection=projection, output=own, scratch=projection, kept=projection, keeps_output=False,
                        backward=projection + u)
        if self.type_name == "LSTM":
            # inference: the current cell state c; training: every step's c and the states
            return Cell(projection=projection, output=own, scratch=projection + u, kept=projection + t * u + states,
                        keeps_output=rs and where != "own",
                        backward=projection + 3 * u)      # dZ; dh, dc, act(c)
        if a.reset_after:
            # h·U_h + b_h: the current step's in inference, every step's in training (r scales it)
            fixed = u if a.use_bias else 0       # one step's bias-gradient sum
            return Cell(projection=projection, output=own, scratch=projection + u, kept=projection + t * u + states,
                        keeps_output=rs and where != "own",
                        backward=projection + 3 * u, backward_fixed=fixed)   # dZ; dh and 2 more
        # r·h for the candidate's product: in inference without return_sequences a buffer of its
        # own, otherwise written where the step's state goes next
        return Cell(projection=projection, output=own, scratch=projection + (0 if rs else u), kept=projection + states,
                    keeps_output=rs and where != "own",
                    backward=projection + 3 * u)          # dZ; dh, d(r·h), r·h

    def matmuls(self, a, steps: int, features: int, batch: int) -> "Matmuls":
        """The matrix products of one direction, as ``modules.KerasRecurrent`` runs them: the
        recurrent kernel's column groups (LSTM all four gates, GRU z·r and then h) one by one,
        from the second step on."""
        g, u, b = self.gates, a.units, batch
        widths = {"SimpleRNN": (u,), "LSTM": (4 * u,), "GRU": (2 * u, u)}[self.type_name]
        later = steps > 1
        return Matmuls(projection=("forward", b * steps, features, g * u),
                       step=tuple(("forward", b, u, n) for n in widths) if later else (),
                       backward_step=tuple(p for n in widths for p in (("grad_weight", u, b, n), ("forward", b, n, u)))
                       if later else (),
                       kernel_grad=("grad_weight", features, b * steps, g * u),
                       input_grad=("forward", b * steps, g * u, features))

    def memory(self, a, x, y, ctx):
        steps, features = self.sequence(x)
        states = self.initial_states(a, x)
        cell = self.cell(a, steps)
        # the initial states are kept too (the first step's recurrent product and, LSTM, f·c0)
        saved = [Saved("inputs", what="input (input projection) and initial states") if states
                 else Saved("input", what="input (input projection)")]
        if cell.keeps_output:
            saved.append(Saved("output", what="every step's state"))
        if cell.kept:
            saved.append(Saved("new", elements=cell.kept, what="gate activations and states of every step"))
        # backward's state buffers (dh, dc) end as the initial states' gradients: kept, not freed
        temporaries = cell.temporaries(self.matmuls(a, steps, features, ctx.batch), ctx,
                                       kept_buffers=len(states) * a.units)
        cell_state = a.units if self.type_name == "LSTM" and a.get("return_state", False) else 0
        if cell_state:   # the last cell state, returned: not among the temporaries
            first, *rest = temporaries["scratch"]
            temporaries["scratch"] = (replace(first, elements=first.elements - cell_state), *rest)
        return Memory(saved=tuple(saved), weight_casts=OWN_CASTS * len(self.count(a, x)[2]),
                      state_grads=len(states), cell_state=cell_state, **temporaries)

    def module(self, a, x, *, backward: bool = False):
        from profiler.rules.modules import KerasRecurrent
        _, features = self.sequence(x)
        return KerasRecurrent(self.type_name, features, a.units, activation=a.activation,
                              recurrent_activation=a.get("recurrent_activation", "sigmoid"),
                              use_bias=a.use_bias, reset_after=a.get("reset_after", False),
                              return_sequences=a.return_sequences, backward=backward,
                              return_state=a.get("return_state", False))

    def build(self, a, x, ctx):
        return self.module(a, x)


for _name in GATES:
    register(RecurrentRule(_name))


@dataclass(frozen=True)
class Matmuls:
    """One direction's matrix products, each (kind, m, k, n) as ``onednn_bf16_gemm_scratch``
    takes them: bfloat16 ones on the CPU bring oneDNN's scratchpad."""
    projection: tuple[str, int, int, int]                  # P = x·W + b, every step at once
    step: tuple[tuple[str, int, int, int], ...]            # each step's h·U (from the second step)
    backward_step: tuple[tuple[str, int, int, int], ...]   # each step's hᵀ·dz and dz·Uᵀ in backward
    kernel_grad: tuple[str, int, int, int]                 # xᵀ·dZ
    input_grad: tuple[str, int, int, int]                  # dZ·Wᵀ, when the input wants a gradient


@dataclass(frozen=True)
class Cell:
    """Elements one recurrent direction allocates per sample (``backward_fixed``: per batch).

    ``projection``: P, (steps, gates·units);
    ``output``: its own output buffer, when its states do not go into the layer's output;
    ``scratch``: inference temporaries, freed when it returns (the projection P, a state buffer);
    ``kept``: tensors training keeps for backward besides the input and the layer's output (P
    holding every step's gate activations, states, cell states ...); ``keeps_output``: whether
    the layer's output is kept (it holds the states); ``backward``: temporaries of its backward
    (dZ, every step's pre-activation gradient, and a few (batch, units) buffers).

    In training the forward pass allocates P and ``kept`` and nothing else beside the output:
    the memory model allocates ``scratch`` and frees it before allocating ``kept``, which is
    never smaller, so its peak is the real one.
    """
    projection: int
    output: int
    scratch: int
    kept: int
    keeps_output: bool
    backward: int
    backward_fixed: int = 0

    def temporaries(self, matmuls: Matmuls, ctx: Context, extra_scratch: int = 0, extra_backward: int = 0,
                    kept_buffers: int = 0) -> dict:
        """Memory's temporaries: the tensors above, and the matmuls' workspace beside them.
        ``kept_buffers``: elements of backward's buffers that outlive it (the initial states'
        gradients), not freed before the kernel's gradient."""
        scratch = self.scratch + extra_scratch
        backward = [Saved("new", elements=self.backward + extra_backward, what="dZ and step gradients")]
        if self.backward_fixed:
            backward.append(Saved("new", elements=self.backward_fixed, per_sample=False,
                                  what="one step's bias-gradient sum"))
        inference, training, after, input_grad = self.workspace(matmuls, ctx, kept_buffers)
        dtype, what = ctx.compute_dtype(True), "matmul workspace"
        return {"scratch": ((Saved("new", elements=scratch, what="projection and step buffers"),) if scratch else ())
                + workspace(inference, what, dtype),
                "training_scratch": workspace(training, what, dtype),
                "backward_scratch": tuple(backward) + workspace(after, what, dtype),
                "input_grad_scratch": workspace(input_grad, what, dtype)}

    def workspace(self, matmuls: Matmuls, ctx: Context, kept_buffers: int = 0) -> tuple[int, int, int, int]:
        """Bytes the matmuls' workspace adds at their worst moment (inference, training forward,
        backward, and the input gradient's beyond that), from the order of
        ``modules.KerasRecurrent``: the projection's comes with P alone (the step buffers come
        after it), the steps' once the step buffers exist; in backward the steps' with dZ and the
        step buffers, the kernel's and the input's gradients with dZ alone."""
        act = itemsize(ctx.compute_dtype(True))

        def gemm(product: tuple[str, int, int, int]) -> int:
            return gemm_workspace(ctx, *product)

        def after_projection(elements: int) -> int:
            return max(elements - self.projection, 0) * ctx.batch * act

        projection = gemm(matmuls.projection)
        step = max(map(gemm, matmuls.step), default=0)
        inference = max(projection - after_projection(self.scratch), step, 0)
        training = max(projection - after_projection(self.kept), step, 0)
        buffers = after_projection(self.backward - kept_buffers) + self.backward_fixed * act
        backward = max(max(map(gemm, matmuls.backward_step), default=0), gemm(matmuls.kernel_grad) - buffers, 0)
        input_grad = max(gemm(matmuls.input_grad) - buffers - backward, 0)
        return inference, training, backward, input_grad


def _no_states(a) -> None:
    """A wrapped recurrent layer returns its output only."""
    if a.layer.args.get("return_state", False):
        raise SpecError("return_state inside a wrapper is not supported", field="layer.return_state",
                        expected="false")


@register
class Bidirectional(Rule):
    """A recurrent layer run forwards and a copy of it run backwards, the outputs merged.

    ``layer`` is the recurrent layer, written as in a spec (``{LSTM: {units: 8}}``); the backward
    copy has the same arguments and its own weights. With ``return_sequences`` the backward
    outputs are put back in input order before merging (Keras's Bidirectional does the same).
    merge_mode: concat (the last axis doubles), sum, mul or ave.

    Parameters and MACs: twice the wrapped layer's. Backward keeps what both cells keep (they
    read the same input), and for ``mul`` both outputs.
    """
    type_name = "Bidirectional"
    internal_activation = True
    args = (Arg("layer", nested_layer(*GATES)),
            Arg("merge_mode", choice("concat", "sum", "mul", "ave"), "concat"))

    def _inner(self, a) -> RecurrentRule:
        _no_states(a)
        return rule_for(a.layer.type)  # type: ignore[return-value]

    def output_shape(self, a, x, ctx):
        _no_states(a)
        with _wrapped(a.layer.type, "the sequence"):
            y = self._inner(a).output_shape(a.layer.args, x, ctx)
        return (*y[:-1], 2 * y[-1]) if a.merge_mode == "concat" else y

    def params(self, a, x, ctx):
        expr, total, tensors = self._inner(a).count(a.layer.args, x)
        return Params(2 * total, formula=f"2 × ({expr}) = {2 * total:,} (forward and backward {a.layer.type})",
                      tensors=tensors * 2)

    def macs(self, a, x, y, ctx):
        inner = self._inner(a)
        return 2 * inner.macs(a.layer.args, x, inner.output_shape(a.layer.args, x, ctx), ctx)

    def memory(self, a, x, y, ctx):
        inner, args = self._inner(a), a.layer.args
        steps, _ = _sequence(a.layer.type, x)
        concat = a.merge_mode == "concat"
        # concat: each direction writes into its half of the output. Otherwise the merged output
        # is allocated first, each direction gets a buffer of its own, and both are kept for
        # backward (mul reads them; sum and ave keep them too, so that training never holds
        # them beside the saved tensors uncounted)
        cell = inner.cell(args, steps, "half" if concat else "own")
        saved = [Saved("input", what="input (both input projections)")]
        if cell.keeps_output:
            saved.append(Saved("output", what="every step's state, both directions"))
        kept = 2 * (cell.kept + cell.output)
        if kept:
            saved.append(Saved("new", elements=kept, what="gate activations and states, both directions"))
        # the directions run one after the other: one direction's temporaries at a time
        merged = prod(y)
        grad_merge = {"ave": merged, "mul": 2 * merged}.get(a.merge_mode, 0)   # (g/2; g·b and g·a)
        matmuls = inner.matmuls(args, steps, x[1], ctx.batch)
        one = cell.temporaries(matmuls, ctx, extra_scratch=2 * cell.output, extra_backward=grad_merge)
        return Memory(saved=tuple(saved), weight_casts=OWN_CASTS * 2 * len(inner.count(args, x)[2]), **one)

    def build(self, a, x, ctx):
        from profiler.rules.modules import Bidirectional as BidirectionalModule
        inner = self._inner(a)
        return BidirectionalModule(inner.module(a.layer.args, x), inner.module(a.layer.args, x, backward=True),
                                   a.merge_mode)


@register
class TimeDistributed(Rule):
    """Apply one layer to every step: the input's first axis (after the batch) is the steps.

    ``layer`` is any registered layer, written as in a spec (``{Dense: {units: 8}}``); it sees
    each step as a sample of shape input[1:]. The torch module folds the steps into the batch
    (a view) and unfolds the result. Parameters: the wrapped layer's, once (shared by every step).
    MACs and what backward keeps: the wrapped layer's, steps times (per-channel statistics once).
    """
    type_name = "TimeDistributed"
    args = (Arg("layer", nested_layer()),)

    def _inner(self, a, x):
        if len(x) < 2:
            raise ShapeError("TimeDistributed needs a steps axis and at least one more",
                             expected="a shape like (steps, features)", received=f"shape {shape_text(x)}")
        _no_states(a)
        return rule_for(a.layer.type), a.layer.args, x[1:]

    def output_shape(self, a, x, ctx):
        rule, args, step = self._inner(a, x)
        with _wrapped(a.layer.type, "each step"):
            return (x[0], *rule.output_shape(args, step, ctx))

    def params(self, a, x, ctx):
        rule, args, step = self._inner(a, x)
        p = rule.params(args, step, ctx)
        if not p.total:
            return p
        return Params(p.trainable, p.non_trainable, tensors=p.tensors,
                      formula=f"{p.formula} (one {a.layer.type} for all {x[0]:,} steps)")

    def macs(self, a, x, y, ctx):
        rule, args, step = self._inner(a, x)
        return x[0] * rule.macs(args, step, y[1:], ctx)

    def memory(self, a, x, y, ctx):
        rule, args, step = self._inner(a, x)
        # the wrapped layer sees steps × batch samples: its kernels run on that batch
        inner = rule.memory(args, step, y[1:], replace(ctx, batch=ctx.batch * x[0]))

        def steps(entries):
            return tuple(Saved(s.of, s.elements * (x[0] if s.per_sample else 1), s.dtype, s.what, s.per_sample)
                         for s in entries)

        saved = list(steps(inner.saved))
        # the wrapped layer's own activation argument runs inside this layer's module
        act = args.get("activation", "linear")
        if a.layer.type != "Activation" and not getattr(rule, "internal_activation", False):
            for of in ACTIVATION_SAVES.get(act, ()):
                saved.append(Saved("output", what=f"{act} output") if of == "output"
                             else Saved("new", elements=prod(y), what=f"{act} input"))
        training = None if inner.training_scratch is None else steps(inner.training_scratch)
        return Memory(output_is_view=inner.output_is_view, identity_in_eval=inner.identity_in_eval,
                      saved=tuple(saved), scratch=steps(inner.scratch),
                      backward_scratch=steps(inner.backward_scratch), training_scratch=training,
                      input_grad_scratch=steps(inner.input_grad_scratch),
                      gradients_last=inner.gradients_last, weight_casts=inner.weight_casts)

    def build(self, a, x, ctx):
        from profiler.rules.modules import TimeDistributed as TimeDistributedModule
        rule, args, step = self._inner(a, x)
        return TimeDistributedModule(rule.build(args, step, ctx))
