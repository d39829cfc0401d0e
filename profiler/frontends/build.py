"""Build the torch model a spec describes, layer names kept as module names."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from profiler.dtypes import torch_dtype
from profiler.engine.predict import TracedNode, checkpoint_layers, trace
from profiler.frontends.spec import ModelSpec


def build(spec: ModelSpec, *, dtype: str = "float32", device: str = "cpu",
          checkpoint: bool | Iterable[str] = ()):
    """The torch model of ``spec``: an ``nn.Sequential`` for a sequential spec, else a graph module.

    Either takes and returns tensors in the spec's own layout (channels last by default), so output
    shapes compare with the prediction as they are; children are named like the spec's layers.
    ``checkpoint``: the model's layers (or nested models) to run under activation checkpointing,
    each wrapped in a :class:`Checkpointed` (True: every layer), as ``predict`` assumes.
    """
    chosen = checkpoint_layers(spec, checkpoint)
    with torch.device(device):
        module = _build(spec, trace(spec), chosen)
    return module.to(dtype=torch_dtype(dtype))


class Checkpointed(nn.Module):
    """Run ``inner`` under non-reentrant activation checkpointing.

    ``torch.utils.checkpoint.checkpoint(inner, *xs, use_reentrant=False)``: the forward pass keeps
    only the inputs (and the CPU generator's state, so that dropout draws the same mask again);
    backward runs ``inner`` again to rebuild what its ops save. The wrapped layer keeps its name
    (its parameters are ``<layer>.inner.*``).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *xs: torch.Tensor):
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.inner, *xs, use_reentrant=False)


def _build(spec: ModelSpec, traced: list[TracedNode], checkpoint: frozenset[str] = frozenset()):
    from collections import OrderedDict

    from profiler.rules.modules import GraphModel, freeze_batch_norms, module_keys

    modules: dict[str, nn.Module] = OrderedDict()
    for t in traced:
        if not t.first_call:
            continue
        if t.inner_spec is not None:
            modules[t.layer.name] = _build(t.inner_spec, list(t.inner))
        else:
            modules[t.layer.name] = t.rule.build(t.layer.args, t.rule_input, spec.context)
        if t.layer.name in spec.frozen:   # Keras: no training, batch norms on their moving statistics
            modules[t.layer.name].requires_grad_(False)
            freeze_batch_norms(modules[t.layer.name])
        if t.layer.name in checkpoint:
            modules[t.layer.name] = Checkpointed(modules[t.layer.name])
    if spec.is_sequential:
        keys = module_keys(modules)
        return nn.Sequential(OrderedDict((keys[name], module) for name, module in modules.items()))
    calls = [(t.node.name, t.layer.name, t.node.inputs) for t in traced]
    return GraphModel(modules, inputs=[i.name for i in spec.inputs], calls=calls, outputs=list(spec.outputs))
