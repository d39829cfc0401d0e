"""Predict, from a spec alone, every layer's shape, parameters, MACs and bytes, and the peaks.

Nothing here imports torch or allocates a weight: a 70-billion-parameter spec is planned with
integer arithmetic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import partial
from math import prod
from typing import Callable, Iterable

from profiler.rules.args import LayerArgs
from profiler.cpu_threads import default_threads
from profiler.dtypes import check_model_dtype, itemsize
from profiler.engine.optimizers import DEFAULT as DEFAULT_OPTIMIZERS, get as optimizer_model
from profiler.errors import ModelsizeError, ShapeError, SpecError
from profiler.engine.kernels.onednn_matmul import onednn_bf16_gemm_scratch
from profiler.engine.memory_model import (LOSSES, Op, Peak, Setting, Timeline, inference_timeline,
                                          kept_for_backward, training_timeline, value_dtypes)
from profiler.rules.catalog import rule_for
from profiler.rules.recurrent import STATES
from profiler.rules.registry import Memory, Params, Rule, Shape
from profiler.frontends.spec import LayerSpec, ModelSpec, Node


@dataclass(frozen=True)
class TracedNode:
    """One call of a layer with the shapes flowing in and out (batch excluded).

    A nested model's call carries the trace of its own nodes in ``inner``.
    """
    node: Node
    rule: Rule | None              # None for a nested model
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    first_call: bool               # False when the layer was called before (shared weights)
    name: str                      # qualified: "encoder/dense" inside a nested model
    inner: tuple["TracedNode", ...] = ()
    inner_spec: ModelSpec | None = None

    @property
    def layer(self) -> LayerSpec:
        return self.node.layer

    @property
    def output_shape(self) -> Shape:
        return self.output_shapes[0]

    @property
    def rule_input(self):
        """What the rule sees: one shape, or a tuple of shapes for a layer with several inputs."""
        return self.input_shapes[0] if self.rule is None or self.rule.max_inputs == 1 else self.input_shapes


def trace(spec: ModelSpec, *, prefix: str = "", input_shapes: dict[str, Shape] | None = None) -> list[TracedNode]:
    """Run shape inference through the model; errors name the file, layer and field."""
    shapes: dict[tuple[str, int], Shape] = {}
    for spec_input in spec.inputs:
        shape = spec_input.shape
        if input_shapes is not None and input_shapes[spec_input.name] != shape:
            raise ShapeError("a nested model's input does not match what it is given",
                             field="inputs", expected=f"shape {shape}",
                             received=f"shape {input_shapes[spec_input.name]}", source=spec.source)
        shapes[(spec_input.name, 0)] = shape
    ctx = spec.context
    traced, called = [], set()
    for node in spec.nodes:
        try:
            xs = []
            for ref in node.inputs:
                if ref not in shapes:
                    raise SpecError("refers to an output the layer does not have", field="inputs",
                                    received=f"{ref[0]}:{ref[1]}")
                xs.append(shapes[ref])
            first = node.layer.name not in called
            called.add(node.layer.name)
            if node.layer.model is not None:
                nested = node.layer.model
                if len(xs) != len(nested.inputs):
                    raise SpecError("wrong number of inputs for the nested model", field="inputs",
                                    expected=str(len(nested.inputs)), received=str(len(xs)))
                inner = trace(nested, prefix=f"{prefix}{node.name}/",
                              input_shapes={i.name: x for i, x in zip(nested.inputs, xs)})
                by_name = {(t.node.name, k): y for t in inner for k, y in enumerate(t.output_shapes)}
                outs = tuple(by_name[ref] for ref in nested.outputs)
                item = TracedNode(node, None, tuple(xs), outs, first, prefix + node.name, tuple(inner), nested)
            else:
                rule = rule_for(node.layer.type)
                if not rule.min_inputs <= len(xs) <= (rule.max_inputs or len(xs)):
                    most = "or more" if rule.max_inputs is None else f"to {rule.max_inputs}"
                    raise SpecError("wrong number of inputs", field="inputs",
                                    expected=f"{rule.min_inputs} {most}" if rule.min_inputs != rule.max_inputs
                                    else str(rule.min_inputs), received=str(len(xs)))
                x = xs[0] if rule.max_inputs == 1 else tuple(xs)
                ys = tuple(tuple(y) for y in rule.output_shapes(node.layer.args, x, ctx))
                item = TracedNode(node, rule, tuple(xs), ys, first, prefix + node.name)
        except ModelsizeError as error:
            raise error.located(source=spec.source, layer=node.label())
        for k, y in enumerate(item.output_shapes):
            shapes[(node.name, k)] = y
        traced.append(item)
    for ref in spec.outputs:
        if ref not in shapes:
            raise SpecError("refers to an output the layer does not have", field="outputs",
                            received=f"{ref[0]}:{ref[1]}", source=spec.source)
    return traced


@dataclass(frozen=True)
class LayerRow:
    """One row of the Keras-style table (one call of a layer); raw integers only."""
    index: int
    name: str
    type: str
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    params: Params                # zero on a second call of a shared layer
    macs: int              # for the whole batch
    param_bytes: int
    output_bytes: int      # the layer's output for the batch (0 when it is a view of its input)
    kept_bytes: int = 0    # what the layer leaves alive for backward in training (saved + output)
    depth: int = 1         # 1 for the model's own layers, 2 inside a nested model, ...
    connected_to: tuple[str, ...] = ()
    layer: str = ""        # the layer called (differs from ``name`` on a shared layer's later calls)

    @property
    def output_shape(self) -> Shape:
        return self.output_shapes[0]

    def as_dict(self) -> dict:
        def batched(shapes):
            return [[None, *shape] for shape in shapes] if len(shapes) > 1 else [None, *shapes[0]]
        return {"index": self.index, "name": self.name, "layer": self.layer or self.name, "type": self.type,
                "depth": self.depth, "connected_to": list(self.connected_to),
                "input_shape": batched(self.input_shapes), "output_shape": batched(self.output_shapes),
                "params": self.params.total, "trainable_params": self.params.trainable,
                "non_trainable_params": self.params.non_trainable, "formula": self.params.formula,
                "macs": self.macs, "flops": 2 * self.macs, "param_bytes": self.param_bytes,
                "output_bytes": self.output_bytes, "kept_for_backward_bytes": self.kept_bytes}


@dataclass(frozen=True)
class Prediction:
    spec: ModelSpec
    batch: int
    dtype: str
    loss: str
    device_kind: str
    rows: tuple[LayerRow, ...]
    inference: Peak
    training: dict[str, Peak]         # optimizer -> steady-state step
    first_step: dict[str, Peak]       # optimizer -> first step (creates the optimizer state)
    input_bytes: int
    target_bytes: int
    amp: str | None = None            # autocast's low-precision dtype (float32 master weights)
    checkpoint: tuple[str, ...] = ()  # layers whose calls are checkpointed
    input_grad: bool = False          # training computes the floating inputs' gradients too
    timelines: dict[str, dict] = field(default_factory=dict)  # peak -> compact timeline (profiler.timeline)
    also_peaks: dict[str, int] = field(default_factory=dict)  # peak -> its bytes under predict's ``also``

    @property
    def top(self) -> tuple[LayerRow, ...]:
        """The model's own rows; a nested model's row already sums its inner rows."""
        return tuple(r for r in self.rows if r.depth == 1)

    @property
    def params(self) -> int:
        return sum(r.params.total for r in self.top)

    @property
    def trainable_params(self) -> int:
        return sum(r.params.trainable for r in self.top)

    @property
    def non_trainable_params(self) -> int:
        return sum(r.params.non_trainable for r in self.top)

    @property
    def param_bytes(self) -> int:
        return sum(r.param_bytes for r in self.top)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.top)

    def memory(self) -> dict[str, int]:
        """The headline figures, under the names results and the CLI use."""
        figures = {"param_bytes": self.param_bytes, "inference_peak_bytes": self.inference.bytes}
        for optimizer, peak in self.training.items():
            figures[f"train_peak_bytes_{optimizer}"] = peak.bytes
        for optimizer, peak in self.first_step.items():
            figures[f"train_first_step_peak_bytes_{optimizer}"] = peak.bytes
        return figures

    def as_dict(self) -> dict:
        return {
            "model": self.spec.name,
            "batch": self.batch,
            "dtype": self.dtype,
            "loss": self.loss,
            "device_kind": self.device_kind,
            "amp": self.amp,
            "checkpoint": list(self.checkpoint),
            "input_grad": self.input_grad,
            "layers": [row.as_dict() for row in self.rows],
            "totals": {"params": self.params, "trainable_params": self.trainable_params,
                       "non_trainable_params": self.non_trainable_params,
                       "convention": "keras",   # moving statistics are non-trainable parameters
                       "buffers": 0, "buffer_bytes": 0,
                       "param_bytes": self.param_bytes,
                       "param_bytes_by_dtype": {d: self.params * itemsize(d) for d in ("float32", "float16", "bfloat16")},
                       "macs": self.macs, "flops": 2 * self.macs,
                       "input_bytes": self.input_bytes, "target_bytes": self.target_bytes},
            "predicted": self.memory(),
            "peaks": {"inference": self.inference.as_dict(),
                      **{f"train_{o}": p.as_dict() for o, p in self.training.items()},
                      **{f"train_first_step_{o}": p.as_dict() for o, p in self.first_step.items()}},
            **({"timelines": self.timelines} if self.timelines else {}),
        }


def predict(spec: ModelSpec, *, batch: int = 1, dtype: str = "float32", loss: str = "cross_entropy",
            device_kind: str = "cpu", optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS,
            footprint: Callable[[int], int] | None = None, amp: str | None = None,
            checkpoint: bool | Iterable[str] = (), threads: int | None = None,
            input_grad: bool = False, peaks_only: bool = False, timelines: bool = False,
            also: Callable[[int], int] | None = None) -> Prediction:
    """Everything modelsize can say about ``spec`` without building it.

    ``peaks_only``: what a search over batch sizes reads, no more: the training steps' peaks (and
    the inference peak only when no optimizer is asked for, else a zero placeholder), without the
    rows' kept-for-backward bytes (the fit of a 10,000-layer spec spent half its time on them).

    ``footprint`` maps each request's bytes to what the allocator sets aside (CUDA's caching
    allocator rounds to 512-byte blocks and larger segments); by default bytes are exact.
    ``amp``: mixed precision, autocast to "bfloat16" or "float16" with float32 master weights
    (``dtype`` must be float32). ``checkpoint``: layers (or nested models) whose calls run under
    activation checkpointing; True for every layer of the model. ``threads``: CPU threads of the
    run, which size the scratchpad of bfloat16 matmul kernels (default: the threads torch will
    run with, :func:`profiler.cpu_threads.default_threads`). ``input_grad``: the training step also computes the gradient of each
    floating input (``x.requires_grad_()``: saliency, adversarial examples, a model inside a larger
    graph); each ``x.grad`` is set to None with the parameters' gradients before a step.
    ``timelines``: also keep each peak's timeline, compact (``Prediction.timelines``).
    ``also``: a second footprint, each peak's bytes under it from the same replay
    (``Prediction.also_peaks``, keyed as ``timelines``).
    """
    plan, setting, chosen = _prepare(spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                                     optimizers=optimizers, footprint=footprint, amp=amp, checkpoint=checkpoint,
                                     threads=threads, input_grad=input_grad, also=also)
    threads, inputs, target_bytes = plan.threads, setting.inputs, setting.target_bytes
    if os.environ.get("MODELSIZE_ENGINE") == "module" or states_need_engine(spec, chosen):
        from profiler.engine import spec_memory as sm
        mem = sm.replay(spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind, optimizers=optimizers,
                        amp=amp, checkpoint=chosen, threads=threads, input_grad=input_grad)
        kept_modules: dict[str, int] = {}
        for module, nbytes in mem.saved_bytes.items():
            kept_modules[sm.layer_of(module)] = kept_modules.get(sm.layer_of(module), 0) + nbytes
        kept = _by_prefix(kept_modules)
        rows = [replace(row, kept_bytes=kept.get(row.name, 0)) for row in plan.rows]
        if amp is not None:   # each output in the dtype autocast left it in, as the replay ran it
            dtypes = sm.layer_dtypes(mem.output_dtypes)
            rows = [replace(row, output_bytes=row.output_bytes // itemsize(dtype) * itemsize(dtypes.get(row.name, dtype)))
                    for row in rows]
        return Prediction(
            spec=spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind, rows=tuple(rows),
            inference=sm.rounded(mem.inference, mem.timelines["inference"], footprint),
            training={o: sm.rounded(p, mem.timelines[f"train_{o}"], footprint) for o, p in mem.training.items()},
            first_step={o: sm.rounded(p, mem.timelines[f"train_first_step_{o}"], footprint)
                        for o, p in mem.first_step.items()},
            input_bytes=sum(inputs.values()), target_bytes=target_bytes, amp=amp,
            checkpoint=tuple(sorted(chosen)), input_grad=input_grad,
            timelines={key: run.compact() for key, run in mem.timelines.items()} if timelines else {},
            also_peaks={key: run.peak(also) for key, run in mem.timelines.items()} if also else {})
    if peaks_only:
        runs = {**({} if optimizers else {"inference": inference_timeline(plan.ops, setting)}),
                **{f"train_{o}": training_timeline(plan.ops, setting, o) for o in optimizers},
                **{f"train_first_step_{o}": training_timeline(plan.ops, setting, o, first_step=True)
                   for o in optimizers}}
        return Prediction(
            spec=spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind, rows=tuple(plan.rows),
            inference=Peak(0, "not predicted", {}) if optimizers else runs["inference"].peak,
            training={o: runs[f"train_{o}"].peak for o in optimizers},
            first_step={o: runs[f"train_first_step_{o}"].peak for o in optimizers},
            input_bytes=sum(inputs.values()), target_bytes=target_bytes, amp=amp,
            checkpoint=tuple(sorted(chosen)), input_grad=input_grad,
            also_peaks={key: run.also_peak for key, run in runs.items()} if also else {})
    kept = _by_prefix(kept_for_backward(plan.ops, setting))
    rows = [replace(row, kept_bytes=kept.get(row.name, 0)) for row in plan.rows]
    if amp is not None:   # each output in the dtype autocast leaves it in
        dtypes = value_dtypes(plan.ops, setting)
        rows = [replace(row, output_bytes=row.output_bytes // itemsize(dtype) * itemsize(dtypes.get(row.name, dtype)))
                for row in rows]
    runs = {"inference": inference_timeline(plan.ops, setting, trace=timelines),
            **{f"train_{o}": training_timeline(plan.ops, setting, o, trace=timelines) for o in optimizers},
            **{f"train_first_step_{o}": training_timeline(plan.ops, setting, o, first_step=True, trace=timelines)
               for o in optimizers}}
    return Prediction(
        spec=spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind, rows=tuple(rows),
        inference=runs["inference"].peak,
        training={o: runs[f"train_{o}"].peak for o in optimizers},
        first_step={o: runs[f"train_first_step_{o}"].peak for o in optimizers},
        input_bytes=sum(inputs.values()), target_bytes=target_bytes, amp=amp,
        checkpoint=tuple(sorted(chosen)), input_grad=input_grad,
        timelines={key: run.compact() for key, run in runs.items()} if timelines else {},
        also_peaks={key: run.also_peak for key, run in runs.items()} if also else {})


def traced_steps(spec: ModelSpec, mode: str, *, batch: int, dtype: str = "float32", loss: str = "cross_entropy",
                 device_kind: str = "cpu", amp: str | None = None,
                 threads: int | None = None) -> tuple[list[LayerRow], list[Timeline]]:
    """The rows, and the replays a mode's peak is the largest of (inference, or a training step's
    steady and first step), traced and unrounded: ``planning.fit`` reads each event as a line in
    the batch."""
    optimizers = () if mode == "inference" else (mode,)
    plan, setting, _ = _prepare(spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                                optimizers=optimizers, footprint=None, amp=amp, checkpoint=(), threads=threads,
                                input_grad=False)
    if mode == "inference":
        return plan.rows, [inference_timeline(plan.ops, setting, trace=True)]
    return plan.rows, [training_timeline(plan.ops, setting, mode, first_step=first, trace=True)
                       for first in (False, True)]


def _prepare(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device_kind: str, optimizers: tuple[str, ...],
             footprint: Callable[[int], int] | None, amp: str | None, checkpoint: bool | Iterable[str],
             threads: int | None, input_grad: bool,
             also: Callable[[int], int] | None = None) -> tuple["_Plan", Setting, frozenset[str]]:
    """The options checked, and the ops and setting the memory model replays."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise SpecError("must be a positive integer", field="batch", received=repr(batch))
    check_model_dtype(dtype)
    if loss not in LOSSES:
        raise SpecError("unknown loss", field="loss", expected=" or ".join(LOSSES), received=repr(loss))
    for name in optimizers:
        optimizer_model(name)
    _check_amp(spec, amp, dtype)
    chosen = checkpoint_layers(spec, checkpoint)
    traced = trace(spec)
    act = itemsize(dtype)
    threads = threads or default_threads()
    plan = _Plan(batch=batch, dtype=dtype, device_kind=device_kind, amp=amp, threads=threads)
    values = {i.name: i.name for i in spec.inputs}
    plan.add(spec, traced, values, depth=1, checkpoint=chosen)
    outputs = tuple(values[_ref_key(ref)] for ref in spec.outputs)
    out_shapes = [plan.shapes[v] for v in outputs]
    inputs = {i.name: batch * prod(i.shape) * (itemsize("int64") if i.dtype == "int64" else act)
              for i in spec.inputs}
    if loss == "cross_entropy":   # integer class per position: every axis but the last
        target_bytes = sum(batch * prod(shape[:-1]) * itemsize("int64") for shape in out_shapes)
    else:
        target_bytes = sum(batch * prod(shape) * act for shape in out_shapes)
    gemm_scratch = None
    if device_kind == "cpu":
        gemm_scratch = partial(onednn_bf16_gemm_scratch, threads=threads)
    setting = Setting(batch=batch, dtype=dtype, inputs=inputs, outputs=outputs, target_bytes=target_bytes,
                      buffer_bytes=plan.buffer_bytes, loss=loss, foreach=device_kind == "cuda",
                      footprint=footprint, also=also, amp=amp, device_kind=device_kind, gemm_scratch=gemm_scratch,
                      input_dtypes={i.name: "int64" if i.dtype == "int64" else dtype for i in spec.inputs},
                      input_grad=input_grad)
    return plan, setting, chosen


#: How layers run under ``torch.autocast`` (torch 2.13's op lists, the same on CPU and CUDA for
#: these): matmuls and convolutions are on the lower-precision list; the value says when autograd
#: keeps the cast weight (``addmm`` only when its input needs a gradient, ``convolution`` always).
#: Recurrent and attention layers run in autocast's dtype throughout and cast their weights and
#: input themselves, once per call ("own": the rule's ``Memory.weight_casts`` says which are kept).
AUTOCAST_LOWER = {"Dense": "for_input_grad", **{t: "always" for t in (
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv2D")},
    **{t: "own" for t in ("SimpleRNN", "LSTM", "GRU", "Bidirectional", "MultiHeadAttention", "TransformerEncoder")}}
#: On CUDA these (and softmax) are on autocast's float32 list; on the CPU they run in their
#: input's dtype.
AUTOCAST_FLOAT32_CUDA = {"LayerNormalization"}
#: On autocast's promote list (``cat``): inputs of different floating dtypes are cast to the widest.
AUTOCAST_PROMOTE = {"Concatenate"}
#: Layers whose ops inside are not modelled under autocast (several matmuls, or a kernel that
#: bypasses autocast's wrapper): refused with ``amp`` rather than predicted wrong.
AUTOCAST_UNMODELLED = ("SeparableConv2D", "PReLU")
AMP_DTYPES = ("bfloat16", "float16")


def _check_amp(spec: ModelSpec, amp: str | None, dtype: str) -> None:
    if amp is None:
        return
    if amp not in AMP_DTYPES:
        raise SpecError("unknown mixed-precision dtype", field="amp", expected=" or ".join(AMP_DTYPES),
                        received=repr(amp))
    if dtype != "float32":
        raise SpecError("mixed precision keeps float32 master weights", field="dtype",
                        expected="float32 with amp", received=repr(dtype))
    calls: set[tuple[int, str]] = set()
    for scope, node in _all_nodes(spec):
        kind = kernel_type(node.layer)
        if kind in AUTOCAST_UNMODELLED:
            raise SpecError(f"mixed precision is not modelled for {kind} layers", field="amp",
                            expected="layers among Dense, convolutions, recurrent layers, attention, pooling, "
                                     "normalisation, activations, dropout, reshaping, embeddings and merges",
                            source=spec.source, layer=node.label())
        shared = (scope, node.layer.name) in calls
        calls.add((scope, node.layer.name))
        if shared and (kind in AUTOCAST_LOWER or node.layer.model is not None):
            raise SpecError("mixed precision is not modelled for shared weights (one cached cast, several "
                            "gradients)", field="amp", source=spec.source, layer=node.label())


def uses_states(spec: ModelSpec) -> bool:
    """Whether a recurrent layer takes initial states or returns its states (``return_state``)."""
    return any(node.layer.type in STATES and (len(node.inputs) > 1 or node.layer.args.get("return_state"))
               for _, node in _all_nodes(spec))


def states_need_engine(spec: ModelSpec, checkpoint: frozenset[str]) -> bool:
    """Whether recurrent states are used where the spec replay does not model them, so that the
    engine predicts the spec on the module it builds: in a nested model, with checkpointing, an
    LSTM's c returned by the model or its output read by nothing (autograd's zeros for the
    output's gradient)."""
    if not uses_states(spec):
        return False
    if checkpoint or any(node.layer.model is not None and uses_states(node.layer.model) for node in spec.nodes):
        return True
    read = {ref for node in spec.nodes for ref in node.inputs} | set(spec.outputs)
    for node in spec.nodes:
        args = node.layer.args
        if node.layer.type not in STATES or not args.get("return_state"):
            continue
        output_read = (node.name, 0) in read or (not args.return_sequences and (node.name, 1) in read)
        if node.layer.type == "LSTM" and ((node.name, 2) in spec.outputs or not output_read):
            return True
    return False


def kernel_type(layer: LayerSpec) -> str:
    """The layer type whose kernels run: a TimeDistributed's wrapped layer (on steps × batch samples)."""
    return layer.args.layer.type if layer.type == "TimeDistributed" else layer.type


def _all_nodes(spec: ModelSpec):
    """(scope, node) for every call, nested models' calls included (scope: the spec's identity)."""
    for node in spec.nodes:
        yield id(spec), node
        if node.layer.model is not None:
            yield from _all_nodes(node.layer.model)


def checkpoint_layers(spec: ModelSpec, checkpoint: bool | Iterable[str]) -> frozenset[str]:
    """The model's layers (names of its own layers or nested models) to checkpoint; True: all."""
    names = [layer.name for layer in spec.layers]
    if checkpoint is True:
        return frozenset(names)
    if checkpoint is False or checkpoint is None:
        return frozenset()
    chosen = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise SpecError("no such layer to checkpoint", field="checkpoint", source=spec.source,
                        expected="names among the model's own layers: " + ", ".join(names),
                        received=", ".join(map(repr, unknown)))
    return frozenset(chosen)



def _ref_key(ref: tuple[str, int]) -> str:
    return ref[0] if ref[1] == 0 else f"{ref[0]}:{ref[1]}"


def _by_prefix(per_layer: dict[str, int]) -> dict[str, int]:
    """Bytes per row name: a nested model's row ("block") sums its inner layers ("block/dense")."""
    totals: dict[str, int] = {}
    for layer, nbytes in per_layer.items():
        parts = layer.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            totals[prefix] = totals.get(prefix, 0) + nbytes
    return totals


class _Plan:
    """Rows for the table and ops for the memory model, gathered in one pass over the trace."""

    def __init__(self, *, batch: int, dtype: str, device_kind: str, amp: str | None = None, threads: int = 1):
        self.batch, self.dtype, self.device_kind, self.amp, self.threads = batch, dtype, device_kind, amp, threads
        self.act = itemsize(dtype)
        self.rows: list[LayerRow] = []
        self.ops: list[Op] = []
        self.shapes: dict[str, Shape] = {}
        self.buffer_bytes = 0

    def add(self, spec: ModelSpec, traced: list[TracedNode], values: dict[str, str], depth: int,
            frozen: bool = False, checkpoint: frozenset[str] = frozenset()) -> None:
        """``values`` maps names visible in ``spec`` (inputs, node outputs) to global value keys;
        calls of the layers in ``checkpoint`` are checkpointed (their ops carry the call's name)."""
        ctx = replace(spec.context, device_kind=self.device_kind, batch=self.batch, dtype=self.dtype, amp=self.amp,
                      threads=self.threads)
        for name, key in values.items():
            self.shapes.setdefault(key, next(i.shape for i in spec.inputs if i.name == name))
        for t in traced:
            inputs = tuple(values[_ref_key(ref)] for ref in t.node.inputs)
            connected = tuple(_ref_key(ref) for ref in t.node.inputs)
            first_op = len(self.ops)
            if t.inner_spec is not None:
                self._nested(t, inputs, connected, values, depth, frozen or t.layer.name in spec.frozen)
                if t.layer.name in checkpoint:
                    self.ops[first_op:] = [replace(op, checkpoint=t.name) for op in self.ops[first_op:]]
                continue
            a = t.layer.args
            is_frozen = frozen or t.layer.name in spec.frozen
            ctx = replace(ctx, frozen=is_frozen)
            weights = t.rule.params(a, t.rule_input, ctx)
            frozen_tensors: tuple[int, ...] = ()
            if is_frozen:   # Keras counts frozen weights as non-trainable
                frozen_tensors = weights.tensors or ((weights.trainable,) if weights.trainable else ())
                weights = Params(0, weights.total, f"{weights.formula} (frozen: not trained)")
            params = weights if t.first_call else Params(formula=f"shared with {t.layer.name}")
            memory = t.rule.memory(a, t.rule_input, t.output_shape, ctx)
            macs = self.batch * t.rule.macs(a, t.rule_input, t.output_shape, ctx)
            # a recurrent layer's returned c is storage of its own (h is the output, or a view of it)
            out_bytes = 0 if memory.output_is_view else \
                self.batch * (prod(t.output_shape) + memory.cell_state) * self.act
            self.rows.append(LayerRow(t.node.index, t.name, t.layer.type, t.input_shapes, t.output_shapes,
                                      params, macs, params.total * self.act, out_bytes, depth=depth,
                                      connected_to=connected, layer=t.layer.name))
            self.buffer_bytes += params.non_trainable * self.act
            output = t.name
            values[t.node.name] = output
            self.shapes[output] = t.output_shape
            for k, shape in enumerate(t.output_shapes[1:], 1):   # a recurrent layer's states
                same = k == 1 and not t.layer.args.return_sequences   # h: the output itself
                values[f"{t.node.name}:{k}"] = output if same else f"{output}:{k}"
                self.shapes[values[f"{t.node.name}:{k}"]] = shape
            owner = t.name[:len(t.name) - len(t.node.name)] + t.layer.name
            ops = self._ops(t, weights, memory, inputs, output, ctx, owner)
            if t.layer.args.get("return_state") and t.layer.args.return_sequences:
                # h, the sequence's last step: a view, whose gradient is the sequence's, zeros elsewhere
                ops.append(Op(name=f"{t.name}/h", layer=t.name, inputs=(output,), output=f"{output}:1",
                              in_elements=(self.batch * prod(t.output_shape),),
                              out_elements=self.batch * prod(t.output_shapes[1]), out_is_view=True,
                              view_grad_new=True, fused=True))
            if self.amp is not None and kernel_type(t.layer) in AUTOCAST_LOWER and t.first_call:
                ops[0] = replace(ops[0], frozen_tensors=tuple(n * self.act for n in frozen_tensors))
            if t.layer.name in checkpoint:
                ops = [replace(op, checkpoint=t.name) for op in ops]
            self.ops.extend(ops)

    def _nested(self, t: TracedNode, inputs: tuple[str, ...], connected: tuple[str, ...],
                values: dict[str, str], depth: int, frozen: bool) -> None:
        nested = t.inner_spec
        first_row = len(self.rows)
        inner_values = {i.name: key for i, key in zip(nested.inputs, inputs)}
        if t.first_call:
            self.add(nested, list(t.inner), inner_values, depth + 1, frozen)
        else:  # a nested model called again: its ops run again, its parameters are not new
            shadow = _Plan(batch=self.batch, dtype=self.dtype, device_kind=self.device_kind, amp=self.amp,
                           threads=self.threads)
            shadow.shapes = self.shapes
            shadow.add(nested, list(t.inner), inner_values, depth + 1, frozen)
            first = t.name[:len(t.name) - len(t.node.name)] + t.layer.name
            self.ops.extend(replace(op, shared_call=True, weights=op.weights.replace(f"{t.name}/", f"{first}/", 1))
                            for op in shadow.ops)
        # the caller holds the nested model's inputs until it returns
        self.ops.append(Op(name=f"{t.name}/return", layer=t.name, inputs=inputs, output="", in_elements=(),
                           out_elements=0, holds_only=True))
        inner_rows = self.rows[first_row:]
        inner_top = [r for r in inner_rows if r.depth == depth + 1]
        params = Params(sum(r.params.trainable for r in inner_top), sum(r.params.non_trainable for r in inner_top),
                        formula="sum of its layers" if t.first_call else f"shared with {t.layer.name}")
        out_bytes = sum(self.batch * prod(shape) * self.act for shape in t.output_shapes)
        row = LayerRow(t.node.index, t.name, "Model", t.input_shapes, t.output_shapes, params,
                       sum(r.macs for r in inner_top), params.total * self.act, out_bytes, depth=depth,
                       connected_to=connected, layer=t.layer.name)
        self.rows.insert(first_row, row)
        for k, ref in enumerate(nested.outputs):
            key = inner_values[_ref_key(ref)]
            values[t.node.name if k == 0 else f"{t.node.name}:{k}"] = key

    def _ops(self, t: TracedNode, params: Params, memory: Memory, inputs: tuple[str, ...], output: str,
             ctx, owner: str) -> list[Op]:
        """The layer as tensor operations; a fused ``activation`` argument is an op of its own."""
        batch, act = self.batch, self.act
        in_elements = tuple(prod(x) * batch for x in t.input_shapes)
        y = prod(t.output_shape) * batch
        tensors = params.tensors or ((params.trainable,) if params.trainable else ())
        fused = t.layer.type != "Activation" and not t.rule.internal_activation
        activation = t.layer.args.get("activation", "linear") if fused else "linear"
        main_output = output if activation == "linear" else f"{output}/pre"
        autocast = ""
        kind = kernel_type(t.layer)
        if kind in AUTOCAST_LOWER:
            autocast = "lower"
        elif kind in AUTOCAST_PROMOTE:
            autocast = "promote"
        elif self.device_kind == "cuda" and (t.layer.type in AUTOCAST_FLOAT32_CUDA or (
                t.layer.type == "Activation" and t.layer.args.activation == "softmax")):
            autocast = "float32"
        # a Dense is one matmul of (rows × inputs)·(inputs × units): kernels' scratch depends on it
        matmul = (in_elements[0] // t.input_shapes[0][-1], t.input_shapes[0][-1], t.output_shape[-1]) \
            if kind == "Dense" else ()
        main = Op(name=t.name, layer=t.name, inputs=inputs, output=main_output, in_elements=in_elements,
                  out_elements=y, out_is_view=memory.output_is_view, identity_in_eval=memory.identity_in_eval,
                  saved=memory.saved, param_bytes=params.trainable * act,
                  param_tensors=tuple(n * act for n in tensors), grad_passthrough=memory.grad_passthrough,
                  weights=owner, shared_call=not t.first_call, scratch=memory.scratch,
                  backward_scratch=memory.backward_scratch, autocast=autocast,
                  training_scratch=memory.training_scratch, input_grad_scratch=memory.input_grad_scratch,
                  gradients_last=memory.gradients_last, weight_casts=memory.weight_casts,
                  grads_strided=memory.grads_strided, dense_grad=memory.dense_grad,
                  reduced_scratch=memory.reduced_scratch,
                  saves_weight=AUTOCAST_LOWER.get(kind, ""), matmul=matmul,
                  state_grads=tuple(range(1, 1 + memory.state_grads)),
                  cell_value=f"{output}:2" if memory.cell_state else "", cell_elements=memory.cell_state * batch,
                  cell_saved=next((i for i, s in enumerate(memory.saved) if s.of == "new"), 0))
        if activation == "linear":
            return [main]
        act_memory = rule_for("Activation").memory(LayerArgs({"activation": activation}), t.output_shape,
                                                   t.output_shape, ctx)
        softmax_fp32 = activation == "softmax" and self.device_kind == "cuda"   # CUDA's float32 list
        return [main, Op(name=f"{t.name}/{activation}", layer=t.name, inputs=(main_output,), output=output,
                         in_elements=(y,), out_elements=y, saved=act_memory.saved, fused=True,
                         autocast="float32" if softmax_fp32 else "")]
