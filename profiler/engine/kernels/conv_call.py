"""One convolution as torch's CPU kernels see it: the terms every convolution kernel's workspace
is written in, shared by the kernels' files."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from profiler.rules.registry import Saved


@dataclass(frozen=True)
class ConvCall:
    """One convolution as torch's CPU kernels see it: shapes per sample with the spatial axes
    torch runs (a channels-last 1-D layer as 2-D of height 1) and torch's symmetric padding."""
    channels: int
    out_channels: int
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    transposed: bool = False

    @property
    def taps(self) -> int:
        return prod(self.kernel)

    @property
    def per_group_in(self) -> int:
        return self.channels // self.groups

    @property
    def weight(self) -> int:
        return self.out_channels * self.per_group_in * self.taps

    @property
    def strided(self) -> bool:
        return max(self.strides) > 1

    @property
    def dilated(self) -> bool:
        return max(self.dilation) > 1


def kept(tensors) -> tuple[Saved, ...]:
    """Drop empty entries."""
    tensors = (tensors,) if isinstance(tensors, Saved) else tensors
    return tuple(t for t in tensors if t.elements)


def weight_clone(call: ConvCall, per_group_in: int, weight_copied: bool | None) -> int:
    """Elements of the weight's channels-last copy a channels-last convolution makes, oneDNN's or
    torch's own im2col kernel's (``weight.contiguous(memory_format)``, alive for the whole call):
    none when the weight is laid out so already (``weight_copied`` False: a model moved with ``.to(memory_format=
    torch.channels_last)``, torchvision resnet18's 9 MiB 512 × 512 × 3 × 3 weights); unknown
    (``None``), as an NCHW weight, which is channels-last too when 1 × 1 or of one input channel
    per group. A transposed convolution's weight is judged by its shape."""
    if weight_copied is None or call.transposed:
        weight_copied = call.taps > 1 and per_group_in > 1
    return call.weight if weight_copied else 0
