"""Output-shape arithmetic as pure functions, shared by the rules.

>>> conv_output_length(224, kernel=3, stride=1, padding="valid")
222
>>> conv_output_length(224, kernel=3, stride=2, padding="same")
112
>>> same_padding(224, kernel=3, stride=2)
(0, 1)
"""
from __future__ import annotations

from math import prod

from profiler.errors import ShapeError


def conv_output_length(length: int, *, kernel: int, stride: int = 1, padding: str = "valid",
                       dilation: int = 1) -> int:
    """Keras's rule: "valid" keeps only full windows, "same" gives ceil(length / stride)."""
    span = dilation * (kernel - 1) + 1
    if padding == "same":
        return -(-length // stride)
    return (length - span) // stride + 1 if length >= span else 0


def same_padding(length: int, *, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """Padding (before, after) that TensorFlow/Keras adds for "same": the extra one goes after."""
    span = dilation * (kernel - 1) + 1
    out = -(-length // stride)
    total = max((out - 1) * stride + span - length, 0)
    return total // 2, total - total // 2


def spatial_output(spatial: tuple[int, ...], *, kernel: tuple[int, ...], strides: tuple[int, ...],
                   padding: str, dilation: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Output of a sliding window over each spatial axis; a ShapeError if any would be empty."""
    dilation = dilation or (1,) * len(spatial)
    out = tuple(conv_output_length(n, kernel=k, stride=s, padding=padding, dilation=d)
                for n, k, s, d in zip(spatial, kernel, strides, dilation))
    if any(n <= 0 for n in out):
        spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        raise ShapeError(f"output size would be zero or negative: {_fmt(out)}", field="kernel_size",
                         expected=f"a window of at most {_fmt(spatial)} with padding=\"{padding}\"",
                         received=f"kernel_size={_fmt(kernel)} (dilated span {_fmt(spans)})")
    return out


def split_channels(x: tuple[int, ...], data_format: str) -> tuple[tuple[int, ...], int]:
    """(spatial axes, channels) of a shape without batch."""
    if data_format == "channels_first":
        return x[1:], x[0]
    return x[:-1], x[-1]


def join_channels(spatial: tuple[int, ...], channels: int, data_format: str) -> tuple[int, ...]:
    if data_format == "channels_first":
        return (channels, *spatial)
    return (*spatial, channels)


def expect_rank(x: tuple[int, ...], rank: int, what: str) -> None:
    if len(x) != rank:
        raise ShapeError(f"input has the wrong number of axes for {what}",
                         expected=f"{rank} axes besides the batch", received=f"shape {shape_text(x)}")


def elements(shape: tuple[int, ...]) -> int:
    return prod(shape)


def shape_text(shape: tuple[int, ...], batch: int | None = None) -> str:
    """Keras's way: (None, 222, 222, 32)."""
    head = "None" if batch is None else str(batch)
    return "(" + ", ".join([head, *map(str, shape)]) + ")"


def _fmt(values: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, values)) + ")"
