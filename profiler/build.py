"""Build the torch model a spec describes, layer names kept as module names."""
from __future__ import annotations

from .dtypes import torch_dtype
from .predict import TracedNode, trace
from .spec import ModelSpec


def build(spec: ModelSpec, *, dtype: str = "float32", device: str = "cpu"):
    """The torch model of ``spec``: an ``nn.Sequential`` for a sequential spec, else a graph module.

    Either takes and returns tensors in the spec's own layout (channels last by default), so output
    shapes compare with the prediction as they are; children are named like the spec's layers.
    """
    import torch

    with torch.device(device):
        module = _build(spec, trace(spec))
    return module.to(dtype=torch_dtype(dtype))


def _build(spec: ModelSpec, traced: list[TracedNode]):
    from collections import OrderedDict

    from torch import nn

    from .rules.modules import GraphModel

    modules: dict[str, nn.Module] = OrderedDict()
    for t in traced:
        if not t.first_call:
            continue
        if t.inner_spec is not None:
            modules[t.layer.name] = _build(t.inner_spec, list(t.inner))
        else:
            modules[t.layer.name] = t.rule.build(t.layer.args, t.rule_input, spec.context)
        if t.layer.name in spec.frozen:
            modules[t.layer.name].requires_grad_(False)
    if spec.is_sequential:
        return nn.Sequential(modules)
    calls = [(t.node.name, t.layer.name, t.node.inputs) for t in traced]
    return GraphModel(modules, inputs=[i.name for i in spec.inputs], calls=calls, outputs=list(spec.outputs))
