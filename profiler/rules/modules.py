"""Small torch modules that make PyTorch compute exactly what a Keras layer computes.

Imported only when a model is built, never when predicting.
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelsLast(nn.Module):
    """Run a channels-first torch module on a channels-last tensor without copying.

    ``permute`` gives a view; a 4-d view of an NHWC tensor is a channels_last-strided NCHW
    tensor, which convolutions and pooling accept as it is, and the result permuted back is
    again a contiguous channels-last tensor.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim()
        to_first = (0, rank - 1, *range(1, rank - 1))
        to_last = (0, *range(2, rank), 1)
        return self.inner(x.permute(to_first)).permute(to_last)


ACTIVATIONS = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=-1),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def with_activation(layer: nn.Module, name: str) -> nn.Module:
    """A layer followed by Keras's ``activation`` argument (nothing added for "linear")."""
    if name == "linear":
        return layer
    return nn.Sequential(layer, activation(name))
