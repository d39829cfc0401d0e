"""Predict, from a spec alone, every layer's shape, parameters, MACs and bytes, and the peaks.

Nothing here imports torch or allocates a weight: a 70-billion-parameter spec is planned with
integer arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

from .args import LayerArgs
from .dtypes import check_model_dtype, itemsize
from .errors import ModelsizeError, SpecError
from .memory_model import (LOSSES, OPTIMIZERS, Op, Peak, Setting, inference_peak, kept_for_backward,
                           training_peak)
from .registry import Memory, Params, Rule, Shape, rule_for
from .spec import LayerSpec, ModelSpec


@dataclass(frozen=True)
class TracedLayer:
    """A layer with its rule and the shapes flowing in and out (batch excluded)."""
    index: int
    spec: LayerSpec
    rule: Rule
    input_shape: Shape
    output_shape: Shape


def trace(spec: ModelSpec) -> list[TracedLayer]:
    """Run shape inference through the model; errors name the file, layer and field."""
    traced = []
    x = spec.input_shape
    ctx = spec.context
    for index, layer in enumerate(spec.layers):
        rule = rule_for(layer.type)
        try:
            y = tuple(rule.output_shape(layer.args, x, ctx))
        except ModelsizeError as error:
            raise error.located(source=spec.source, layer=layer.label(index))
        traced.append(TracedLayer(index, layer, rule, x, y))
        x = y
    return traced


@dataclass(frozen=True)
class LayerRow:
    """One row of the Keras-style table; raw integers only (renderers format them)."""
    index: int
    name: str
    type: str
    input_shape: Shape
    output_shape: Shape
    params: Params
    macs: int              # for the whole batch
    param_bytes: int
    output_bytes: int      # the layer's output for the batch (0 when it is a view of its input)
    kept_bytes: int = 0    # what the layer leaves alive for backward in training (saved + output)

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "type": self.type,
                "input_shape": [None, *self.input_shape], "output_shape": [None, *self.output_shape],
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

    @property
    def params(self) -> int:
        return sum(r.params.total for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.params.trainable for r in self.rows)

    @property
    def non_trainable_params(self) -> int:
        return sum(r.params.non_trainable for r in self.rows)

    @property
    def param_bytes(self) -> int:
        return sum(r.param_bytes for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

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
            "layers": [row.as_dict() for row in self.rows],
            "totals": {"params": self.params, "trainable_params": self.trainable_params,
                       "non_trainable_params": self.non_trainable_params,
                       "param_bytes": self.param_bytes,
                       "param_bytes_by_dtype": {d: self.params * itemsize(d) for d in ("float32", "float16", "bfloat16")},
                       "macs": self.macs, "flops": 2 * self.macs,
                       "input_bytes": self.input_bytes, "target_bytes": self.target_bytes},
            "predicted": self.memory(),
            "peaks": {"inference": self.inference.as_dict(),
                      **{f"train_{o}": p.as_dict() for o, p in self.training.items()},
                      **{f"train_first_step_{o}": p.as_dict() for o, p in self.first_step.items()}},
        }


def predict(spec: ModelSpec, *, batch: int = 1, dtype: str = "float32", loss: str = "cross_entropy",
            device_kind: str = "cpu") -> Prediction:
    """Everything modelsize can say about ``spec`` without building it."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise SpecError("must be a positive integer", field="batch", received=repr(batch))
    check_model_dtype(dtype)
    if loss not in LOSSES:
        raise SpecError("unknown loss", field="loss", expected=" or ".join(LOSSES), received=repr(loss))
    traced = trace(spec)
    ctx = replace(spec.context, device_kind=device_kind)
    act = itemsize(dtype)
    rows, ops, buffers = [], [], 0
    for t in traced:
        a = t.spec.args
        params = t.rule.params(a, t.input_shape, ctx)
        memory = t.rule.memory(a, t.input_shape, t.output_shape, ctx)
        macs = batch * t.rule.macs(a, t.input_shape, t.output_shape, ctx)
        out_bytes = 0 if memory.output_is_view else batch * prod(t.output_shape) * act
        rows.append(LayerRow(t.index, t.spec.name, t.spec.type, t.input_shape, t.output_shape,
                             params, macs, params.total * act, out_bytes))
        buffers += params.non_trainable * act
        ops.extend(_ops_of(t, params, memory, batch, act, ctx))
    out_shape = traced[-1].output_shape
    input_bytes = batch * prod(spec.input_shape) * (itemsize("int64") if spec.input_dtype == "int64" else act)
    if loss == "cross_entropy":   # integer class per position: every axis but the last
        target_bytes = batch * prod(out_shape[:-1]) * itemsize("int64")
    else:
        target_bytes = batch * prod(out_shape) * act
    setting = Setting(batch=batch, dtype=dtype, input_bytes=input_bytes, target_bytes=target_bytes,
                      buffer_bytes=buffers, loss=loss, foreach=device_kind == "cuda")
    kept = kept_for_backward(ops, setting)
    rows = [replace(row, kept_bytes=kept.get(row.name, 0)) for row in rows]
    return Prediction(
        spec=spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind, rows=tuple(rows),
        inference=inference_peak(ops, setting),
        training={o: training_peak(ops, setting, o) for o in OPTIMIZERS},
        first_step={o: training_peak(ops, setting, o, first_step=True) for o in OPTIMIZERS},
        input_bytes=input_bytes, target_bytes=target_bytes)


def _ops_of(t: TracedLayer, params: Params, memory: Memory, batch: int, act: int, ctx) -> list[Op]:
    """The layer as tensor operations; a fused ``activation`` argument is an op of its own."""
    x, y = prod(t.input_shape) * batch, prod(t.output_shape) * batch
    tensors = params.tensors or ((params.trainable,) if params.trainable else ())
    main = Op(name=t.spec.name, layer=t.spec.name, in_elements=x, out_elements=y, out_is_view=memory.output_is_view,
              identity_in_eval=memory.identity_in_eval, saved=memory.saved,
              param_bytes=params.trainable * act, param_tensors=tuple(n * act for n in tensors))
    activation = t.spec.args.get("activation", "linear") if t.spec.type != "Activation" else "linear"
    if activation == "linear":
        return [main]
    act_args = LayerArgs({"activation": activation})
    act_memory = rule_for("Activation").memory(act_args, t.output_shape, t.output_shape, ctx)
    return [main, Op(name=f"{t.spec.name}/{activation}", layer=t.spec.name, in_elements=y, out_elements=y,
                     saved=act_memory.saved, fused=True)]
