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


class Reshape(nn.Module):
    """Keras's Reshape: a new shape for every sample, the batch axis kept (a view when it can be)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Mean(nn.Module):
    """Average over fixed axes, as Keras's global average pooling."""

    def __init__(self, dims: tuple[int, ...], keepdim: bool = False):
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dims, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}"


_AVG_POOL = {1: nn.functional.avg_pool1d, 2: nn.functional.avg_pool2d, 3: nn.functional.avg_pool3d}


class PaddedAvgPool(nn.Module):
    """Average pooling over an unevenly zero-padded input that averages only the real elements.

    TensorFlow/Keras's "same" puts the odd padding element after; torch's ``AvgPool`` pads both
    sides equally. Zero-pad as TensorFlow does, pool, and divide by the share of each window that
    lies inside the input (pooling a padded tensor of ones gives exactly that share).
    ``pads`` is in ``torch.nn.functional.pad`` order: last axis first, (before, after) each.
    """

    def __init__(self, rank: int, pool_size: tuple[int, ...], strides: tuple[int, ...],
                 pads: tuple[int, ...]):
        super().__init__()
        self.rank, self.pool_size, self.strides, self.pads = rank, pool_size, strides, pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = _AVG_POOL[self.rank]
        summed = pool(nn.functional.pad(x, self.pads), self.pool_size, self.strides)
        ones = x.new_ones((1, 1, *x.shape[2:]))
        share = pool(nn.functional.pad(ones, self.pads), self.pool_size, self.strides)
        return summed / share

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}, strides={self.strides}, pads={self.pads}"


class ChannelAffine(nn.Module):
    """A learnable per-channel scale or shift on a channels-first tensor (axis 1).

    Used beside a normalisation built without torch's ``affine`` when Keras learns only one of
    gamma (``scale``) and beta (``center``): torch's ``affine`` would learn both.
    """

    def __init__(self, channels: int, kind: str):
        super().__init__()
        if kind not in ("scale", "shift"):
            raise ValueError(kind)
        self.kind = kind
        init = torch.ones if kind == "scale" else torch.zeros
        self.weight = nn.Parameter(init(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(-1, *([1] * (x.dim() - 2)))
        return x * w if self.kind == "scale" else x + w

    def extra_repr(self) -> str:
        return f"{self.kind}, channels={self.weight.numel()}"


class TrailingShift(nn.Module):
    """A learnable shift over the trailing axes (LayerNormalization with center but no scale)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class _KerasBatchNorm:
    """BatchNorm whose running statistics follow Keras exactly.

    The differences from torch's own BatchNorm, each removed here:
    - Keras keeps no ``num_batches_tracked`` counter: the buffer is dropped, so the module's
      state (and its buffer count) is Keras's moving_mean and moving_variance only.
    - Keras's moving_variance averages the *biased* batch variance; torch's running_var the
      unbiased one. In training this module normalises as torch does (biased, like Keras) and
      updates the running statistics itself with the biased variance.
    ``momentum`` is torch's (1 − Keras's momentum).
    """

    def _drop_counter(self) -> None:
        self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.num_batches_tracked is None:  # type: ignore[has-type]
            self.running_mean.zero_()  # type: ignore[attr-defined]
            self.running_var.fill_(1)  # type: ignore[attr-defined]
        else:  # still in torch's __init__, before the counter is dropped
            super().reset_running_stats()  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        y = nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)  # type: ignore[attr-defined]
        with torch.no_grad():
            dims = (0, *range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)  # type: ignore[attr-defined]
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)  # type: ignore[attr-defined]
        return y


class KerasBatchNorm1d(_KerasBatchNorm, nn.BatchNorm1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._drop_counter()


class KerasBatchNorm2d(_KerasBatchNorm, nn.BatchNorm2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._drop_counter()


class KerasBatchNorm3d(_KerasBatchNorm, nn.BatchNorm3d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._drop_counter()


KERAS_BATCH_NORM = {1: KerasBatchNorm1d, 2: KerasBatchNorm2d, 3: KerasBatchNorm3d}
