"""Build the torch model a spec describes, layer names kept as module names."""
from __future__ import annotations

from collections import OrderedDict

from .dtypes import torch_dtype
from .predict import trace
from .spec import ModelSpec


def build(spec: ModelSpec, *, dtype: str = "float32", device: str = "cpu"):
    """An ``nn.Sequential`` whose children are named like the spec's layers.

    It takes and returns tensors in the spec's own layout (channels last by default), so its output
    shapes can be compared with the prediction as they are.
    """
    import torch
    from torch import nn

    ctx = spec.context
    with torch.device(device):
        children = OrderedDict((t.spec.name, t.rule.build(t.spec.args, t.input_shape, ctx))
                               for t in trace(spec))
    return nn.Sequential(children).to(dtype=torch_dtype(dtype))
