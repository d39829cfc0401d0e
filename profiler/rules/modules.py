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
    again a contiguous channels-last tensor. 3-d tensors have no channels_last memory format:
    there (and wherever the inner module returns a channels-first result) the result is copied
    to a contiguous tensor, so that the next layer gets a dense input and keeps that input
    itself for backward rather than a copy it would make.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim()
        to_first = (0, rank - 1, *range(1, rank - 1))
        to_last = (0, *range(2, rank), 1)
        return self.inner(x.permute(to_first)).permute(to_last).contiguous()


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


# --- element-wise -----------------------------------------------------------------------------

class PReLU(nn.Module):
    """Keras's PReLU: one learned slope per element of ``slope_shape`` (1 on shared axes).

    torch's ``nn.PReLU`` learns one slope per channel at most; its kernel broadcasts any slope
    shape, and keeps only the input for backward.
    """

    def __init__(self, slope_shape: tuple[int, ...]):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(slope_shape))  # Keras initialises the slopes to 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._prelu_kernel(x, self.alpha)

    def extra_repr(self) -> str:
        return f"slope_shape={tuple(self.alpha.shape)}"


# --- reshaping --------------------------------------------------------------------------------

class Pad(nn.Module):
    """Zero padding; ``pads`` in ``torch.nn.functional.pad`` order (last axis first)."""

    def __init__(self, pads: tuple[int, ...]):
        super().__init__()
        self.pads = tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pads)

    def extra_repr(self) -> str:
        return f"pads={self.pads}"


class Crop(nn.Module):
    """Keep ``[start, stop)`` on each axis after the batch, as a new contiguous tensor.

    A slice would be a view, but a strided one: the next layer's matmul or convolution would
    copy it and keep the copy for backward, where a rule expects it to keep its input.
    """

    def __init__(self, bounds: tuple[tuple[int, int], ...]):
        super().__init__()
        self.bounds = tuple(bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), *(slice(start, stop) for start, stop in self.bounds))
        return x[index].contiguous()

    def extra_repr(self) -> str:
        return f"bounds={self.bounds}"


class Permute(nn.Module):
    """Keras's Permute (``dims`` count from 1, the batch stays first), copied to a contiguous tensor."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, *self.dims).contiguous()

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class RepeatVector(nn.Module):
    """(batch, features) → (batch, n, features), materialised as Keras does."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).repeat(1, self.n, 1)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class RepeatSteps(nn.Module):
    """UpSampling1D: repeat every step ``size`` times along axis 1."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.size, dim=1)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Upsample2d(nn.Module):
    """UpSampling2D on a channels-first tensor: nearest repeats, bilinear with half-pixel centres."""

    def __init__(self, size: tuple[int, int], interpolation: str):
        super().__init__()
        self.size, self.interpolation = tuple(size), interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.shape[-2] * self.size[0], x.shape[-1] * self.size[1])
        if self.interpolation == "nearest":
            return nn.functional.interpolate(x, size=out, mode="nearest")
        return nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation}"


class Max(nn.Module):
    """Maximum over fixed axes, as Keras's global max pooling."""

    def __init__(self, dims: tuple[int, ...], keepdim: bool = False):
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=self.dims, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}"


# --- convolution ------------------------------------------------------------------------------

class CroppedConvTranspose(nn.Module):
    """A transposed convolution cut (or zero-extended) per side as TensorFlow/Keras do.

    torch's padding crops both sides alike and its ``output_padding`` extends only the end, which
    cannot express every Keras case. This runs torch's transposed convolution without padding,
    then crops each side by ``crops`` (before, after; a negative amount adds zeros), then adds
    the bias, so that added positions hold the bias as in TensorFlow. Channels first; the weight
    is torch's (in_channels, filters, *kernel_size).
    """

    def __init__(self, in_channels: int, filters: int, kernel_size: tuple[int, ...], *,
                 strides: tuple[int, ...], dilation: tuple[int, ...],
                 crops: tuple[tuple[int, int], ...], use_bias: bool):
        super().__init__()
        self.strides, self.dilation = tuple(strides), tuple(dilation)
        self.pads = tuple(-c for before_after in reversed(crops) for c in before_after)
        self.weight = nn.Parameter(torch.empty(in_channels, filters, *kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # torch's ConvTranspose default
        self.bias = nn.Parameter(torch.zeros(filters)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = {3: nn.functional.conv_transpose1d, 4: nn.functional.conv_transpose2d,
                5: nn.functional.conv_transpose3d}[x.dim()]
        y = nn.functional.pad(conv(x, self.weight, None, self.strides, dilation=self.dilation), self.pads)
        if self.bias is not None:
            y = y + self.bias.view(-1, *([1] * (y.dim() - 2)))
        return y

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, strides={self.strides}, dilation={self.dilation}, pads={self.pads}"


# --- recurrent --------------------------------------------------------------------------------

_RECURRENT_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}
GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


class KerasRecurrent(nn.Module):
    """Keras's SimpleRNN, LSTM or GRU, with Keras's weights in Keras's layout, step by step.

    Weights: ``kernel`` (features, gates·units), ``recurrent_kernel`` (units, gates·units) and
    one ``bias`` (gates·units), or (2, 3·units) for a GRU with ``reset_after``: input and
    recurrent biases. Gate order along the last axis as in Keras: LSTM i, f, c, o; GRU z, r, h.
    torch's own ``nn.LSTM``/``nn.GRU``/``nn.RNN`` carry two biases per gate (one count too many
    for all but the reset_after GRU) and have no reset_after=False GRU, so the cell is written
    here; the input projection of every step is one matrix product, as in Keras and torch.

    ``backward`` reads the sequence from its end (Keras's go_backwards) but returns the sequence
    in input order, as Bidirectional wants it. Every state starts at zero.
    """

    def __init__(self, kind: str, features: int, units: int, *, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", use_bias: bool = True, reset_after: bool = True,
                 return_sequences: bool = False, backward: bool = False):
        super().__init__()
        gates = GATES[kind]
        self.kind, self.units, self.return_sequences, self.backward = kind, units, return_sequences, backward
        self.reset_after = reset_after and kind == "GRU"
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self.kernel = nn.Parameter(torch.empty(features, gates * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, gates * units))
        bias_shape = (2, gates * units) if self.reset_after else (gates * units,)
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if use_bias else None
        nn.init.xavier_uniform_(self.kernel)          # Keras: glorot_uniform
        nn.init.orthogonal_(self.recurrent_kernel)    # Keras: orthogonal
        if use_bias and kind == "LSTM":               # Keras: unit_forget_bias
            with torch.no_grad():
                self.bias[units:2 * units] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = _RECURRENT_ACTIVATIONS[self.activation]
        gate = _RECURRENT_ACTIVATIONS[self.recurrent_activation]
        u = self.units
        if self.bias is None:
            input_bias = recurrent_bias = None
        elif self.reset_after:
            input_bias, recurrent_bias = self.bias[0], self.bias[1]
        else:
            input_bias, recurrent_bias = self.bias, None
        # x·W + b for every step at once: (batch, steps, gates·units)
        projected = torch.matmul(x, self.kernel)
        if input_bias is not None:
            projected = projected + input_bias
        h = x.new_zeros(x.shape[0], u)
        c = x.new_zeros(x.shape[0], u) if self.kind == "LSTM" else None
        steps = range(x.shape[1] - 1, -1, -1) if self.backward else range(x.shape[1])
        outputs = []
        U = self.recurrent_kernel
        for t in steps:
            xt = projected[:, t]
            if self.kind == "SimpleRNN":
                h = act(xt + torch.matmul(h, U))
            elif self.kind == "LSTM":
                z = xt + torch.matmul(h, U)
                i, f = gate(z[:, :u]), gate(z[:, u:2 * u])
                g, o = act(z[:, 2 * u:3 * u]), gate(z[:, 3 * u:])
                c = f * c + i * g
                h = o * act(c)
            elif self.reset_after:
                rec = torch.matmul(h, U) if recurrent_bias is None else torch.addmm(recurrent_bias, h, U)
                zr = gate(xt[:, :2 * u] + rec[:, :2 * u])
                candidate = act(xt[:, 2 * u:] + zr[:, u:] * rec[:, 2 * u:])
                h = torch.lerp(candidate, h, zr[:, :u])      # z·h + (1 − z)·candidate
            else:
                zr = gate(xt[:, :2 * u] + torch.matmul(h, U[:, :2 * u]))
                candidate = act(xt[:, 2 * u:] + torch.matmul(zr[:, u:] * h, U[:, 2 * u:]))
                h = torch.lerp(candidate, h, zr[:, :u])
            if self.return_sequences:
                outputs.append(h)
        if not self.return_sequences:
            return h
        if self.backward:
            outputs.reverse()
        return torch.stack(outputs, dim=1)

    def extra_repr(self) -> str:
        extra = f", reset_after={self.reset_after}" if self.kind == "GRU" else ""
        return (f"{self.kind}, units={self.units}, activation={self.activation}, "
                f"return_sequences={self.return_sequences}, backward={self.backward}{extra}")


class Bidirectional(nn.Module):
    """Keras's Bidirectional: one recurrent layer reads forwards, a copy backwards; outputs merged."""

    def __init__(self, forward_layer: nn.Module, backward_layer: nn.Module, merge_mode: str):
        super().__init__()
        self.forward_layer, self.backward_layer, self.merge_mode = forward_layer, backward_layer, merge_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.forward_layer(x), self.backward_layer(x)
        if self.merge_mode == "concat":
            return torch.cat((a, b), dim=-1)
        if self.merge_mode == "sum":
            return a + b
        if self.merge_mode == "mul":
            return a * b
        return (a + b) / 2

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode}"


class TimeDistributed(nn.Module):
    """Apply ``inner`` to every step: fold the steps into the batch, then unfold them."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps = x.shape[:2]
        y = self.inner(x.reshape(batch * steps, *x.shape[2:]))
        return y.reshape(batch, steps, *y.shape[1:])


# --- attention --------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Keras's MultiHeadAttention with its weights in Keras's layout.

    ``query_kernel`` (query features, heads, key_dim), ``key_kernel`` (key features, heads,
    key_dim), ``value_kernel`` (value features, heads, value_dim), ``output_kernel`` (heads,
    value_dim, *output_shape), each with a bias shaped like its last axes. The attention is
    written out as Keras writes it when it keeps the scores (the query scaled by 1/√key_dim,
    softmax over the keys, dropout on the probabilities), so that what backward keeps is known.
    ``forward(query, value=None, key=None)``: value defaults to query, key to value.
    """

    def __init__(self, query_features: int, value_features: int, key_features: int, *, num_heads: int,
                 key_dim: int, value_dim: int, output_shape: tuple[int, ...], use_bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.out_shape = tuple(output_shape)
        self.scale = 1.0 / float(key_dim) ** 0.5
        self.dropout = dropout

        def weight(*shape: int) -> nn.Parameter:
            w = torch.empty(shape)
            nn.init.xavier_uniform_(w.view(shape[0], -1) if len(shape) > 2 else w)
            return nn.Parameter(w)

        def bias(*shape: int) -> nn.Parameter | None:
            return nn.Parameter(torch.zeros(shape)) if use_bias else None

        self.query_kernel = weight(query_features, num_heads, key_dim)
        self.query_bias = bias(num_heads, key_dim)
        self.key_kernel = weight(key_features, num_heads, key_dim)
        self.key_bias = bias(num_heads, key_dim)
        self.value_kernel = weight(value_features, num_heads, value_dim)
        self.value_bias = bias(num_heads, value_dim)
        self.output_kernel = nn.Parameter(torch.empty(num_heads, value_dim, *self.out_shape))
        nn.init.xavier_uniform_(self.output_kernel.view(num_heads * value_dim, -1))
        self.output_bias = bias(*self.out_shape)

    @staticmethod
    def _project(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = torch.matmul(x, kernel.reshape(kernel.shape[0], -1))
        return y if bias is None else y + bias.reshape(-1)

    def forward(self, query: torch.Tensor, value: torch.Tensor | None = None,
                key: torch.Tensor | None = None) -> torch.Tensor:
        value = query if value is None else value
        key = value if key is None else key
        batch, steps, heads = query.shape[0], query.shape[1], self.num_heads
        q = self._project(query, self.query_kernel, self.query_bias) * self.scale
        k = self._project(key, self.key_kernel, self.key_bias)
        v = self._project(value, self.value_kernel, self.value_bias)
        q = q.view(batch, steps, heads, self.key_dim).transpose(1, 2)          # (B, H, T, key_dim)
        k = k.view(batch, key.shape[1], heads, self.key_dim).permute(0, 2, 3, 1)  # (B, H, key_dim, S)
        v = v.view(batch, value.shape[1], heads, self.value_dim).transpose(1, 2)  # (B, H, S, value_dim)
        probs = torch.softmax(torch.matmul(q, k), dim=-1)                       # (B, H, T, S)
        probs = nn.functional.dropout(probs, self.dropout, self.training)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, steps, heads * self.value_dim)
        out = torch.matmul(context, self.output_kernel.reshape(heads * self.value_dim, -1))
        if self.output_bias is not None:
            out = out + self.output_bias.reshape(-1)
        return out.view(batch, steps, *self.out_shape)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
                f"output_shape={self.out_shape}, dropout={self.dropout}")


class TransformerEncoder(nn.Module):
    """keras_hub's TransformerEncoder: self-attention and a two-layer feed-forward network, each
    with dropout, a residual connection and a LayerNormalization (after it, or before with
    ``normalize_first``)."""

    def __init__(self, width: int, *, intermediate_dim: int, num_heads: int, dropout: float,
                 activation: str, layer_norm_epsilon: float, normalize_first: bool):
        super().__init__()
        key_dim = width // num_heads
        self.normalize_first = normalize_first
        self.attention = MultiHeadAttention(width, width, width, num_heads=num_heads, key_dim=key_dim,
                                            value_dim=key_dim, output_shape=(width,), dropout=dropout)
        self.attention_norm = nn.LayerNorm(width, eps=layer_norm_epsilon)
        self.attention_dropout = nn.Dropout(dropout)
        self.feedforward_norm = nn.LayerNorm(width, eps=layer_norm_epsilon)
        self.intermediate = nn.Linear(width, intermediate_dim)
        self.intermediate_activation = ACTIVATIONS[activation]()
        self.output = nn.Linear(intermediate_dim, width)
        self.feedforward_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.normalize_first:
            x = self.attention_norm(x)
        x = self.attention_dropout(self.attention(x)) + residual
        if not self.normalize_first:
            x = self.attention_norm(x)
        residual = x
        if self.normalize_first:
            x = self.feedforward_norm(x)
        x = self.output(self.intermediate_activation(self.intermediate(x)))
        x = self.feedforward_dropout(x) + residual
        if not self.normalize_first:
            x = self.feedforward_norm(x)
        return x


class GraphModel(nn.Module):
    """Run a spec's layer calls in order, each value freed after the layer that reads it last.

    Freeing after the last reader is what the memory model predicts (and what nn.Sequential does
    for a chain). Several inputs come as positional arguments; several outputs return a tuple.
    """

    def __init__(self, layers: dict[str, nn.Module], *, inputs: list[str],
                 calls: list[tuple[str, str, tuple[tuple[str, int], ...]]], outputs: list[tuple[str, int]]):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.input_names = list(inputs)
        self.calls = list(calls)
        self.output_refs = list(outputs)
        keep = {ref[0] for ref in outputs}
        last: dict[str, int] = {}
        for k, (_, _, refs) in enumerate(calls):
            for name, _ in refs:
                last[name] = k
        self.drop_after = [[name for name, k2 in last.items() if k2 == k and name not in keep]
                           for k in range(len(calls))]

    def forward(self, *xs: torch.Tensor):
        values: dict[str, object] = dict(zip(self.input_names, xs))
        del xs
        for k, (node, layer, refs) in enumerate(self.calls):
            args = [_pick(values[name], index) for name, index in refs]
            values[node] = self.layers[layer](*args)
            del args
            for name in self.drop_after[k]:
                if name not in self.input_names:
                    del values[name]
        outs = tuple(_pick(values[name], index) for name, index in self.output_refs)
        return outs[0] if len(outs) == 1 else outs


def _pick(value, index: int):
    if isinstance(value, (tuple, list)):
        return value[index]
    return value


class Merge(nn.Module):
    """Keras's element-wise merge layers over any number of inputs."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.how == "subtract":
            return xs[0] - xs[1]
        if self.how in ("maximum", "minimum"):
            pick = torch.maximum if self.how == "maximum" else torch.minimum
            out = pick(xs[0], xs[1])
            for x in xs[2:]:
                out = pick(out, x)
            return out
        out = xs[0] * xs[1] if self.how == "multiply" else xs[0] + xs[1]
        for x in xs[2:]:
            out = out * x if self.how == "multiply" else out + x
        return out / len(xs) if self.how == "average" else out


class Concat(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)
