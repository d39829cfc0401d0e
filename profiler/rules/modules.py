"""Small torch modules that make PyTorch compute exactly what a Keras layer computes.

Imported only when a model is built, never when predicting.
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelsLast(nn.Module):
    """Run a channels-first torch module on a channels-last tensor without copying.

    ``permute`` gives a view; a 4-d (5-d) view of an NHWC (NDHWC) tensor is a channels_last-
    strided NCHW (NCDHW) tensor, which convolutions, pooling and batch norm accept as it is, and
    their result permuted back is again a contiguous channels-last tensor. A 3-d (batch, steps,
    channels) tensor has no channels-last layout in torch, and torch's 1-D kernels would copy it
    and return a channels-first result: it runs instead as a 4-d tensor of height 1, (batch,
    channels, 1, steps), through the 2-D module its rule builds (kernels of height 1), and comes
    back contiguous the same way. Where the inner module returns a channels-first result anyway,
    it is copied to a contiguous tensor, so that the next layer gets a dense input and keeps that
    input itself for backward rather than a copy it would make.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return self.inner(x.unsqueeze(1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).squeeze(1).contiguous()
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
    "hard_sigmoid": nn.Hardsigmoid,   # relu6(x + 3) / 6, as Keras 3
    "hard_silu": nn.Hardswish,        # x · relu6(x + 3) / 6
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def with_activation(layer: nn.Module, name: str) -> nn.Module:
    """A layer followed by Keras's ``activation`` argument (nothing added for "linear")."""
    if name == "linear":
        return layer
    return nn.Sequential(layer, activation(name))


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast lowers matmuls to on ``x``'s device, or None outside autocast."""
    device = x.device.type
    if device == "meta":   # shape tracing: autocast has no meta dispatch key (and asking raises)
        return None
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def lowered(tensors, dtype: torch.dtype) -> list:
    """Casts for a layer that runs in autocast's dtype throughout (a recurrent cell, attention):
    one per floating tensor and call, made last to first as autocast evaluates an op's arguments,
    recorded by autograd (``ToCopyBackward`` gives each gradient back in its tensor's dtype).
    Tensors already in ``dtype``, and None, come back as they are."""
    out = list(tensors)
    for i in reversed(range(len(out))):
        t = out[i]
        if t is not None and t.is_floating_point() and t.dtype != dtype:
            out[i] = t.to(dtype)
    return out


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
        with torch.no_grad():   # each window's share of real elements: a matter of shapes only
            share = pool(nn.functional.pad(x.new_ones((1, 1, *x.shape[2:])), self.pads), self.pool_size, self.strides)
        # divided in place: the pooling's backward does not need its result
        return pool(nn.functional.pad(x, self.pads), self.pool_size, self.strides).div_(share)

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

    frozen = False  # set by ``freeze_batch_norms``: inference mode for good

    def _drop_counter(self) -> None:
        self.num_batches_tracked = None

    def train(self, mode: bool = True):
        """A frozen batch norm stays in inference mode: Keras 3 runs a ``trainable=False``
        BatchNormalization on its moving statistics in training too, and updates none."""
        return super().train(mode and not self.frozen)  # type: ignore[misc]

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
        # the running statistics first, so that their temporaries are gone before the output exists
        with torch.no_grad():
            dims = (0, *range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)  # type: ignore[attr-defined]
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)  # type: ignore[attr-defined]
            del var, mean
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)  # type: ignore[attr-defined]


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


def freeze_batch_norms(module: nn.Module) -> None:
    """Every Keras batch norm in ``module`` runs in inference mode from now on, ``train()`` or not."""
    for m in module.modules():
        if isinstance(m, _KerasBatchNorm):
            m.frozen = True
            m.train(False)


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


class Rescale(nn.Module):
    """Keras's Rescaling: ``x * scale``, then ``+ offset`` in place (when not 0)."""

    def __init__(self, scale: float, offset: float):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale
        return y.add_(self.offset) if self.offset else y

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class KerasNormalization(nn.Module):
    """Keras's Normalization: (x − mean) / max(√variance, epsilon).

    Without given statistics, ``mean`` and ``variance`` are buffers (Keras's non-trainable
    weights that ``adapt()`` fills), with Keras's ``count`` beside them (one number, unused here,
    kept in the model's float dtype so that the buffers are all of one dtype). Given statistics
    are constants, not state: plain tensors that ``.to()`` moves with the module.
    """

    def __init__(self, shape: tuple[int, ...], view: tuple[int, ...], mean, variance, epsilon: float):
        super().__init__()
        self.view, self.epsilon = (1, *view), epsilon
        if mean is None:
            self.register_buffer("mean", torch.zeros(shape))
            self.register_buffer("variance", torch.ones(shape))
            self.register_buffer("count", torch.zeros(()))
            self.constants = None
        else:
            self.constants = tuple(torch.tensor(v, dtype=torch.float32).expand(shape).clone()
                                   for v in (mean, variance))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.constants is not None:
            self.constants = tuple(fn(t) for t in self.constants)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, variance = self.constants if self.constants is not None else (self.mean, self.variance)
        std = variance.sqrt().clamp_min_(self.epsilon).view(self.view)
        return (x - mean.view(self.view)).div_(std)


class LayerScale(nn.Module):
    """ConvNeXt's LayerScale: x · gamma over the last axis."""

    def __init__(self, channels: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ConstantOp(nn.Module):
    """A tensor and a Python number: x + c, x − c, c − x, x · c or x / c."""

    def __init__(self, op: str, constant: float, constant_first: bool = False):
        super().__init__()
        self.op, self.constant, self.constant_first = op, constant, constant_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.constant
        if self.op == "add":
            return x + c
        if self.op == "subtract":
            return c - x if self.constant_first else x - c
        return x * c if self.op == "multiply" else x / c

    def extra_repr(self) -> str:
        return f"{self.op}, {self.constant}" + (", constant first" if self.constant_first else "")


class ScaledSum(nn.Module):
    """x₁ + x₂ · scale in one operation (Inception-ResNet-v2's CustomScaleLayer)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return torch.add(x1, x2, alpha=self.scale)


class SpatialDropout(nn.Module):
    """Keras's SpatialDropout1D/2D: one draw per sample and channel, shared along ``shared``
    axes (of the full tensor), the kept channels scaled by 1/(1 − p), as ``feature_dropout``."""

    def __init__(self, p: float, shared: tuple[int, ...]):
        super().__init__()
        self.p, self.shared = p, shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = [1 if i in self.shared else n for i, n in enumerate(x.shape)]
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise


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
    copy it and keep the copy for backward, where a rule expects it to keep its input. One
    negative pad crops every axis at once, and its backward is one pad of the gradient (slices
    would make a zero-filled gradient per axis).
    """

    def __init__(self, bounds: tuple[tuple[int, int], ...]):
        super().__init__()
        self.bounds = tuple(bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = tuple(p for (start, stop), n in zip(reversed(self.bounds), reversed(x.shape[1:]))
                     for p in (-start, stop - n))
        return nn.functional.pad(x, pads)

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
        # expand is a view; one copy makes it dense (``repeat`` would also build index tensors)
        return x.unsqueeze(1).expand(x.shape[0], self.n, x.shape[1]).contiguous()

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
        # one pad (negative: a crop) makes the result; the bias is added in place
        y = nn.functional.pad(conv(x, self.weight, None, self.strides, dilation=self.dilation), self.pads)
        return y if self.bias is None else y.add_(self.bias.view(-1, *([1] * (y.dim() - 2))))

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, strides={self.strides}, dilation={self.dilation}, pads={self.pads}"


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format a result should keep: channels-last when ``x`` is (as ChannelsLast gives it)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


# --- recurrent --------------------------------------------------------------------------------

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _activate_(t: torch.Tensor, name: str) -> None:
    """``t = act(t)`` in place."""
    {"tanh": t.tanh_, "sigmoid": t.sigmoid_, "relu": t.relu_}[name]()


def _activate_into(t: torch.Tensor, name: str, out: torch.Tensor) -> None:
    """``out = act(t)``, written into ``out``."""
    if name == "relu":
        out.copy_(t).relu_()
    else:
        {"tanh": torch.tanh, "sigmoid": torch.sigmoid}[name](t, out=out)


def _through(grad: torch.Tensor, y: torch.Tensor, name: str) -> None:
    """``grad ·= act'(v)`` in place, from the result ``y = act(v)``: torch's own backward kernels
    (1 − y², y·(1 − y), or y > 0). Python numbers are avoided throughout the cell: each would
    become a small tensor allocated for the one operation."""
    if name == "tanh":
        torch.ops.aten.tanh_backward.grad_input(grad, y, grad_input=grad)
    elif name == "sigmoid":
        torch.ops.aten.sigmoid_backward.grad_input(grad, y, grad_input=grad)
    else:
        torch.ops.aten.threshold_backward.grad_input(grad, y, 0, grad_input=grad)


class KerasRecurrent(nn.Module):
    """Keras's SimpleRNN, LSTM or GRU, with Keras's weights in Keras's layout, step by step.

    Weights: ``kernel`` (features, gates·units), ``recurrent_kernel`` (units, gates·units) and
    one ``bias`` (gates·units), or (2, 3·units) for a GRU with ``reset_after``: input and
    recurrent biases. Gate order along the last axis as in Keras: LSTM i, f, c, o; GRU z, r, h.
    torch's own ``nn.LSTM``/``nn.GRU``/``nn.RNN`` carry two biases per gate (one count too many
    for all but the reset_after GRU) and have no reset_after=False GRU, so the cell is written
    here; the input projection of every step is one matrix product, as in Keras and torch.

    ``backward`` reads the sequence from its end (Keras's go_backwards) but returns the sequence
    in input order, as Bidirectional wants it. Every state starts at zero, or at the initial
    states the call passes after the sequence (Keras's ``initial_state``: h, and c for an LSTM).
    ``return_state``: the call returns (output, h) or, for an LSTM, (output, h, c), as Keras's;
    h is the output itself without return_sequences, else its last step (a view); c is the last
    cell state (the inference buffer, or the last step of the cell states kept for backward).

    The cell runs in preallocated buffers with in-place kernels, and its gradient is written out
    (``_RecurrentFunction``), so that what it allocates is a short list of whole tensors, the
    same at every step count; ``rules.recurrent`` gives their sizes:

    - the projection P = x·W + b, (batch, steps, gates·units); each step adds h·U to its slice
      of P and applies the gate activations there in place, so in training P ends holding
      every step's gate activations, which backward needs (and in inference it is a temporary);
    - the hidden states, written into the output (return_sequences) or, in training, into a
      (steps − 1, batch, units) buffer besides the output (the last state);
    - LSTM: the cell states (every step's in training, the current one in inference); GRU with
      reset_after: the recurrent candidate part h·U_h + b_h (every step's in training); GRU
      without it: r·h, in a free state slot in training or one (batch, units) buffer in
      inference without return_sequences; SimpleRNN: P holds the states themselves (it is the
      output with return_sequences).
    """

    def __init__(self, kind: str, features: int, units: int, *, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", use_bias: bool = True, reset_after: bool = True,
                 return_sequences: bool = False, backward: bool = False, return_state: bool = False):
        super().__init__()
        gates = GATES[kind]
        self.kind, self.units, self.return_sequences, self.backward = kind, units, return_sequences, backward
        self.return_state = return_state
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

    def weights(self) -> tuple[torch.Tensor, ...]:
        return (self.kernel, self.recurrent_kernel) + ((self.bias,) if self.bias is not None else ())

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        weights, x = _in_autocast_dtype(self.weights(), x)
        dtype = autocast_dtype(x)
        if states and dtype is not None:   # like the input: cast once per call
            states = tuple(lowered(states, dtype))
        c = None
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *states, *weights)):
            result = _RecurrentFunction.apply((self,), "", len(states), x, *states, *weights)
            y, c = result if self.cell_state_out else (result, None)
        else:
            with torch.no_grad():
                out = self.new_output(x)
                p, c, _ = self.run(x, *_split(weights), out, keep=False, states=states)
                y = p if out is None else out
                del p
        if not self.return_state:
            return y
        h = y[:, self._order(y.shape[1])[-1]] if self.return_sequences else y
        return (y, h, c) if self.kind == "LSTM" else (y, h)

    @property
    def cell_state_out(self) -> bool:
        """The cell state is an output of the computation (an LSTM's, with return_state)."""
        return self.return_state and self.kind == "LSTM"

    def extra_repr(self) -> str:
        extra = f", reset_after={self.reset_after}" if self.kind == "GRU" else ""
        return (f"{self.kind}, units={self.units}, activation={self.activation}, "
                f"return_sequences={self.return_sequences}, backward={self.backward}{extra}"
                + (", return_state=True" if self.return_state else ""))

    # --- the computation, shared by inference and training ---------------------------------------

    def new_output(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output buffer; None where the projection becomes the output (SimpleRNN's sequence)."""
        batch, steps = x.shape[:2]
        if not self.return_sequences:
            return x.new_empty(batch, self.units)
        return None if self.kind == "SimpleRNN" else x.new_empty(batch, steps, self.units)

    def _order(self, steps: int) -> list[int]:
        return list(range(steps - 1, -1, -1)) if self.backward else list(range(steps))

    def _project(self, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x·W + b for every step at once, (batch, steps, gates·units): one allocation."""
        batch, steps, features = x.shape
        x2 = x.reshape(batch * steps, features)
        input_bias = None if bias is None else bias[0] if self.reset_after else bias
        p = torch.mm(x2, kernel) if input_bias is None else torch.addmm(input_bias, x2, kernel)
        p = p.view(batch, steps, -1)
        if self.reset_after and bias is not None:   # z and r add the recurrent bias too: once, here
            p[..., :2 * self.units].add_(bias[1, :2 * self.units])
        return p

    def run(self, x: torch.Tensor, kernel: torch.Tensor, recurrent: torch.Tensor, bias: torch.Tensor | None,
            out: torch.Tensor | None, *, keep: bool, states: tuple[torch.Tensor, ...] = ()
            ) -> tuple[torch.Tensor | None, ...]:
        """Run the cell over the sequence, the hidden states written into ``out`` (every step's,
        (batch, steps, units), with return_sequences; else the last, (batch, units)), from the
        initial ``states`` (h0, and c0 for an LSTM; none: zeros).

        Returns what backward needs: (P, per-step buffer, states) — P holding the gate
        activations, the per-step buffer the LSTM's cell states or the reset_after GRU's
        recurrent candidate parts, ``states`` the hidden states other than those in ``out``.
        Without ``keep`` only the current step's state is kept (inference): the per-step buffer
        returned is then the last step's (an LSTM's last cell state).
        """
        h0 = states[0] if states else None
        c0 = states[1] if len(states) > 1 else None
        batch, steps, _ = x.shape
        u, order, rs = self.units, self._order(steps), self.return_sequences
        gate, act = self.recurrent_activation, self.activation
        p_all = self._project(x, kernel, bias)
        states = x.new_empty(steps - 1, batch, u) if keep and not rs and self.kind != "SimpleRNN" else None

        def slot(k: int) -> torch.Tensor:
            """Where h_k goes: the output, or in training a state buffer until the last step."""
            if rs:
                return out[:, order[k]]
            return states[k] if states is not None and k < steps - 1 else out

        per_step = None
        h_prev = None
        if self.kind == "SimpleRNN":
            for k, t in enumerate(order):           # P[:, t] becomes h_t in place
                p = p_all[:, t]
                prev = h_prev if k else h0
                if prev is not None:
                    p.addmm_(prev, recurrent)
                _activate_(p, act)
                h_prev = p
            if out is not None:                     # the last state, or a slice of a wider output
                out.copy_(p_all if rs else p_all[:, order[-1]])
            return (p_all, None, None)
        if self.kind == "LSTM":
            per_step = x.new_empty(steps, batch, u) if keep else x.new_empty(batch, u)   # cell states
            for k, t in enumerate(order):
                z = p_all[:, t]
                prev = h_prev if k else h0
                if prev is not None:
                    z.addmm_(prev, recurrent)
                i, f, g, o = z[:, :u], z[:, u:2 * u], z[:, 2 * u:3 * u], z[:, 3 * u:]
                _activate_(z[:, :2 * u], gate)
                _activate_(g, act)
                _activate_(o, gate)
                c = per_step[k] if keep else per_step
                if k == 0 and c0 is None:
                    torch.mul(i, g, out=c)
                elif k == 0:
                    torch.mul(f, c0, out=c)
                    c.addcmul_(i, g)
                else:
                    if keep:
                        torch.mul(f, per_step[k - 1], out=c)
                    else:
                        c.mul_(f)
                    c.addcmul_(i, g)
                h = slot(k)
                _activate_into(c, act, h)
                h.mul_(o)
                h_prev = h
            return (p_all, per_step if keep or self.cell_state_out else None, states)
        if self.reset_after:
            per_step = x.new_empty(steps, batch, u) if keep else x.new_empty(batch, u)   # h·U_h + b_h
            rec_bias = None if bias is None else bias[1, 2 * u:]
        else:
            own = x.new_empty(batch, u) if not keep and not rs else None   # r·h when no slot is free
        for k, t in enumerate(order):
            p = p_all[:, t]
            zr, n = p[:, :2 * u], p[:, 2 * u:]
            prev = h_prev if k else h0
            if prev is not None:
                zr.addmm_(prev, recurrent[:, :2 * u])
            if self.reset_after:
                rn = per_step[k] if keep else per_step
                if prev is not None and rec_bias is not None:
                    torch.addmm(rec_bias, prev, recurrent[:, 2 * u:], out=rn)
                elif prev is not None:
                    torch.mm(prev, recurrent[:, 2 * u:], out=rn)
                elif rec_bias is not None:
                    rn.copy_(rec_bias.expand_as(rn))
                else:
                    rn.zero_()
            _activate_(zr, gate)
            z, r = zr[:, :u], zr[:, u:]
            h = slot(k)
            if self.reset_after:
                n.addcmul_(r, rn)                   # x_h + r·(h·U_h + b_h)
            elif prev is not None:
                rh = own if own is not None else h  # h's slot is free until h is written
                torch.mul(r, prev, out=rh)
                n.addmm_(rh, recurrent[:, 2 * u:])  # x_h + (r·h)·U_h
            _activate_(n, act)
            # h = z·h_prev + (1 − z)·n = n + z·(h_prev − n)
            if prev is None:
                torch.addcmul(n, z, n, value=-1, out=h)
            elif h is prev:
                h.sub_(n).mul_(z).add_(n)
            else:
                torch.sub(prev, n, out=h)
                h.mul_(z).add_(n)
            h_prev = h
        return (p_all, per_step if keep else None, states)

    def grad(self, x: torch.Tensor, kernel: torch.Tensor, recurrent: torch.Tensor, bias: torch.Tensor | None,
             out: torch.Tensor | None, saved: tuple[torch.Tensor | None, ...], grad_out: torch.Tensor,
             grads: list[torch.Tensor | None], dx: torch.Tensor | None, accumulate: bool,
             initial: tuple[torch.Tensor, ...] = (), grad_c: torch.Tensor | None = None
             ) -> tuple[torch.Tensor | None, ...]:
        """Backward through time: fills ``grads`` (kernel, recurrent kernel, bias; None where not
        wanted, the recurrent kernel's zeroed) and writes (or, with ``accumulate``, adds) the input's
        gradient into ``dx``. ``grad_out`` is the gradient of ``out`` (of P for SimpleRNN's sequence),
        ``grad_c`` that of the last cell state (an LSTM's, with return_state).

        Temporaries: dZ, the gradient of every step's pre-activations, like P; and a few
        (batch, units) buffers (``rules.recurrent`` counts them). With ``initial`` states (h0, c0)
        the last of those buffers end holding their gradients, which are returned: (dh0, dc0).
        """
        p_all, per_step, states = saved
        h0 = initial[0] if initial else None
        c0 = initial[1] if len(initial) > 1 else None
        batch, steps, features = x.shape
        u, order, rs = self.units, self._order(steps), self.return_sequences
        gate, act = self.recurrent_activation, self.activation
        d_kernel, d_recurrent, d_bias = grads

        def state(k: int) -> torch.Tensor | None:
            if k < 0:
                return h0
            if self.kind == "SimpleRNN":
                return p_all[:, order[k]]
            if rs:
                return out[:, order[k]]
            return states[k]

        dz_all = torch.empty_like(p_all)
        dh = x.new_empty(batch, u)

        def add_output_grad(k: int, into: torch.Tensor) -> None:
            t = order[k]
            if rs:
                if k == steps - 1:
                    into.copy_(grad_out[:, t])
                else:
                    into.add_(grad_out[:, t])
            elif k == steps - 1:
                into.copy_(grad_out)

        if self.kind == "SimpleRNN":
            for k in range(steps - 1, -1, -1):
                dz = dz_all[:, order[k]]
                if k < steps - 1:
                    dz.copy_(dh)
                add_output_grad(k, dz)
                _through(dz, state(k), act)
                if state(k - 1) is not None:
                    if d_recurrent is not None:
                        d_recurrent.addmm_(state(k - 1).t(), dz)
                    torch.mm(dz, recurrent.t(), out=dh)
        elif self.kind == "LSTM":
            dc, a = x.new_empty(batch, u), x.new_empty(batch, u)
            for k in range(steps - 1, -1, -1):
                t = order[k]
                add_output_grad(k, dh)
                z, dz = p_all[:, t], dz_all[:, t]
                i, f, g, o = z[:, :u], z[:, u:2 * u], z[:, 2 * u:3 * u], z[:, 3 * u:]
                di, df, dg, do = dz[:, :u], dz[:, u:2 * u], dz[:, 2 * u:3 * u], dz[:, 3 * u:]
                c = per_step[k]
                _activate_into(c, act, a)          # h = o·act(c)
                torch.mul(dh, a, out=do)
                dh.mul_(o)
                _through(dh, a, act)               # dh·o·act'(c)
                if k == steps - 1:
                    dc.copy_(dh)
                    if grad_c is not None:
                        dc.add_(grad_c)
                else:
                    dc.add_(dh)
                c_prev = per_step[k - 1] if k else c0
                if c_prev is not None:             # c = f·c_prev + i·g
                    torch.mul(dc, c_prev, out=df)
                else:
                    df.zero_()
                torch.mul(dc, g, out=di)
                torch.mul(dc, i, out=dg)
                dc.mul_(f)
                for part, y, name in ((di, i, gate), (df, f, gate), (dg, g, act), (do, o, gate)):
                    _through(part, y, name)
                if state(k - 1) is not None:
                    if d_recurrent is not None:
                        d_recurrent.addmm_(state(k - 1).t(), dz)
                    torch.mm(dz, recurrent.t(), out=dh)
            if c0 is None:
                del dc
            del a
        else:
            extra = [x.new_empty(batch, u), x.new_empty(batch, u)]   # reset_after: d(h·U_h + b_h); else d(r·h), r·h
            rec_sum = x.new_empty(u) if self.reset_after and d_bias is not None else None
            if rec_sum is not None:
                d_bias[1, 2 * u:].zero_()
            for k in range(steps - 1, -1, -1):
                t = order[k]
                add_output_grad(k, dh)
                p, dz = p_all[:, t], dz_all[:, t]
                z, r, n = p[:, :u], p[:, u:2 * u], p[:, 2 * u:]
                dzz, dzr, dzn = dz[:, :u], dz[:, u:2 * u], dz[:, 2 * u:]
                h_prev = state(k - 1)
                # h = z·h_prev + (1 − z)·n
                torch.addcmul(dh, dh, z, value=-1, out=dzn)
                _through(dzn, n, act)
                if h_prev is not None:
                    torch.sub(h_prev, n, out=dzz)
                else:
                    torch.neg(n, out=dzz)
                dzz.mul_(dh)
                _through(dzz, z, gate)
                if self.reset_after:               # n = act(x_h + r·rn), rn = h_prev·U_h + b_h
                    drn = extra[0]
                    torch.mul(dzn, per_step[k], out=dzr)
                    torch.mul(dzn, r, out=drn)
                    if rec_sum is not None:
                        torch.sum(drn, 0, out=rec_sum)
                        d_bias[1, 2 * u:].add_(rec_sum)
                    if h_prev is not None:
                        dh.mul_(z)
                        if d_recurrent is not None:
                            d_recurrent[:, 2 * u:].addmm_(h_prev.t(), drn)
                        dh.addmm_(drn, recurrent[:, 2 * u:].t())
                elif h_prev is not None:           # n = act(x_h + (r·h_prev)·U_h)
                    drh, rh = extra
                    if d_recurrent is not None:
                        torch.mul(r, h_prev, out=rh)
                        d_recurrent[:, 2 * u:].addmm_(rh.t(), dzn)
                    torch.mm(dzn, recurrent[:, 2 * u:].t(), out=drh)
                    torch.mul(drh, h_prev, out=dzr)
                    dh.mul_(z)
                    dh.addcmul_(drh, r)
                else:
                    dzr.zero_()
                if self.reset_after or h_prev is not None:
                    _through(dzr, r, gate)
                if h_prev is not None:             # z, r = gate(x_zr + h_prev·U_zr)
                    if d_recurrent is not None:
                        d_recurrent[:, :2 * u].addmm_(h_prev.t(), dz[:, :2 * u])
                    dh.addmm_(dz[:, :2 * u], recurrent[:, :2 * u].t())
            drn = drh = rh = None   # aliases of the step buffers: all go before the kernel's gradient
            del extra, rec_sum
        d_initial = (dh if h0 is not None else None, dc if c0 is not None else None)
        del dh
        dz2 = dz_all.view(batch * steps, -1)
        x2 = x.reshape(batch * steps, features)
        if d_kernel is not None:
            torch.mm(x2.t(), dz2, out=d_kernel)
        if d_bias is not None:
            if self.reset_after:
                torch.sum(dz2, 0, out=d_bias[0])
                d_bias[1, :2 * u].copy_(d_bias[0, :2 * u])   # z and r: the same sum of gradients
            else:
                torch.sum(dz2, 0, out=d_bias)
        if dx is not None:
            dx2 = dx.view(batch * steps, features)
            if accumulate:
                dx2.addmm_(dz2, kernel.t())
            else:
                torch.mm(dz2, kernel.t(), out=dx2)
        return d_initial


def _in_autocast_dtype(weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Under autocast a recurrent layer runs in autocast's dtype throughout, as the same cell
    written with autocast's matmuls would (its state feeds the next step's matmul): its weights,
    then its input, cast once per call. Outside autocast, as they are."""
    dtype = autocast_dtype(x)
    if dtype is None:
        return weights, x
    return tuple(lowered(weights, dtype)), lowered([x], dtype)[0]


def _split(weights: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return weights[0], weights[1], weights[2] if len(weights) > 2 else None


class _RecurrentFunction(torch.autograd.Function):
    """One recurrent layer, or the two directions of a Bidirectional, with a written-out backward.

    ``cells``: the KerasRecurrent modules (one, or forward and backward); ``merge``: "" for one
    cell, else Bidirectional's merge_mode; ``n_states``: how many initial states follow the input
    (one cell only); then the input, the states and every cell's weights. Returns the output, and
    the last cell state too for an LSTM with return_state.
    """

    @staticmethod
    def forward(ctx, cells, merge, n_states, x, *tensors):
        states, weights = tensors[:n_states], tensors[n_states:]
        per_cell = len(weights) // len(cells)
        groups = [_split(weights[i * per_cell:(i + 1) * per_cell]) for i in range(len(cells))]
        out, outs = _new_outputs(cells, merge, x)
        saved = []
        for cell, w, o in zip(cells, groups, outs):
            saved.append(cell.run(x, *w, o, keep=True, states=states))
        if not merge:
            result = out if out is not None else saved[0][0]
        else:
            result = _merge(merge, out, outs, cells, saved)
        ctx.cells, ctx.merge, ctx.per_cell, ctx.n_states = cells, merge, per_cell, n_states
        flat = [t for cell_saved in saved for t in cell_saved]
        # each cell's output (with concat: the layer's output, halved again in backward)
        seqs = [result] if merge == "concat" else [o if o is not None else s[0] for o, s in zip(outs, saved)]
        # kept: the states in the output, and both directions' results of a merge other than
        # concat (mul's backward reads them; the others keep them too, see rules.recurrent)
        keep_outs = merge not in ("", "concat") or any(c.return_sequences and c.kind != "SimpleRNN"
                                                       for c in cells)
        ctx.save_for_backward(x, *states, *weights, *flat, *(seqs if keep_outs else ()))
        ctx.keep_outs = keep_outs
        if cells[0].cell_state_out:
            return result, saved[0][1][-1]   # the last cell state
        return result

    @staticmethod
    def backward(ctx, grad, grad_c=None):
        cells, merge, per_cell, n_states = ctx.cells, ctx.merge, ctx.per_cell, ctx.n_states
        x, *rest = ctx.saved_tensors
        states, rest = tuple(rest[:n_states]), rest[n_states:]
        weights = rest[:per_cell * len(cells)]
        rest = rest[per_cell * len(cells):]
        saved = [tuple(rest[3 * i:3 * i + 3]) for i in range(len(cells))]
        seqs = list(rest[3 * len(cells):]) if ctx.keep_outs else [None] * len(cells)
        if merge == "concat" and ctx.keep_outs:
            u = cells[0].units
            seqs = [seqs[0][..., :u], seqs[0][..., u:]]
        wanted = ctx.needs_input_grad[4 + n_states:]
        # every gradient the layer returns exists before its temporaries (the memory rule's order)
        grads = [torch.zeros_like(w) if n and i % per_cell == 1 else torch.empty_like(w) if n else None
                 for i, (w, n) in enumerate(zip(weights, wanted))]
        dx = torch.empty_like(x) if ctx.needs_input_grad[3] else None
        cell_grads = _split_grad(merge, grad, cells, seqs)
        d_states: tuple[torch.Tensor | None, ...] = ()
        for i, cell in enumerate(cells):
            w = _split(weights[i * per_cell:(i + 1) * per_cell])
            g = grads[i * per_cell:(i + 1) * per_cell] + [None] * (3 - per_cell)
            out = seqs[i] if cell.kind != "SimpleRNN" or cell.return_sequences else None
            d_states = cell.grad(x, *w, out, saved[i], cell_grads[i], g, dx, accumulate=i > 0,
                                 initial=states, grad_c=grad_c)
        del cell_grads
        return (None, None, None, dx, *d_states[:n_states], *grads)


def _new_outputs(cells, merge: str, x: torch.Tensor):
    """(the layer's output buffer, each cell's output view or buffer; None: its projection)."""
    if not merge:
        out = cells[0].new_output(x)
        return out, [out]
    cell = cells[0]
    batch, steps = x.shape[:2]
    shape = (batch, steps, cell.units) if cell.return_sequences else (batch, cell.units)
    if merge == "concat":   # both directions write into their half of the output
        out = x.new_empty(*shape[:-1], 2 * cell.units)
        return out, [out[..., :cell.units], out[..., cell.units:]]
    out = x.new_empty(shape)   # first, so that it exists beside every temporary (as the rule counts)
    return out, [c.new_output(x) for c in cells]


def _merge(merge: str, out, outs, cells, saved):
    if merge == "concat":
        return out
    a, b = (o if o is not None else s[0] for o, s in zip(outs, saved))
    if merge == "mul":
        return torch.mul(a, b, out=out)
    torch.add(a, b, out=out)
    if merge == "ave":   # (a + b) / 2 without a Python number (it would become a tensor)
        torch.add(out, out, alpha=-0.5, out=out)
    return out


def _split_grad(merge: str, grad: torch.Tensor, cells, seqs):
    u = cells[0].units
    if not merge:
        return [grad]
    if merge == "concat":
        return [grad[..., :u], grad[..., u:]]
    if merge == "sum":
        return [grad, grad]
    if merge == "ave":
        half = torch.add(grad, grad, alpha=-0.5)
        return [half, half]
    return [grad * seqs[1], grad * seqs[0]]


class Bidirectional(nn.Module):
    """Keras's Bidirectional: one recurrent layer reads forwards, a copy backwards; outputs merged.

    Both directions run in one ``_RecurrentFunction``; with merge_mode="concat" each writes its
    states straight into its half of the output.
    """

    def __init__(self, forward_layer: KerasRecurrent, backward_layer: KerasRecurrent, merge_mode: str):
        super().__init__()
        self.forward_layer, self.backward_layer, self.merge_mode = forward_layer, backward_layer, merge_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = (self.forward_layer, self.backward_layer)
        weights, x = _in_autocast_dtype(self.forward_layer.weights() + self.backward_layer.weights(), x)
        if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
            return _RecurrentFunction.apply(cells, self.merge_mode, 0, x, *weights)
        with torch.no_grad():
            out, outs = _new_outputs(cells, self.merge_mode, x)
            per_cell = len(weights) // 2
            results = []   # a direction's projection is let go before the other runs
            for i, (c, o) in enumerate(zip(cells, outs)):
                p = c.run(x, *_split(weights[i * per_cell:(i + 1) * per_cell]), o, keep=False)[0]
                results.append((p if o is None else None,))   # SimpleRNN's sequence is in P
                del p
            return _merge(self.merge_mode, out, outs, cells, results)

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

class _AttentionCore(torch.autograd.Function):
    """softmax(Q·Kᵀ·scale) (with dropout) · V per head, from the projections' (batch, steps,
    heads, dim) views, into a (batch, steps, heads·value_dim) result; backward written out.

    Every product runs head by head on strided views, straight into slices of a preallocated
    buffer, and the softmax (and its backward) in place: the forward pass allocates the
    probabilities (batch, heads, T, S) and the result, and with dropout its noise (the
    activations' dtype on the CPU, mask / (1 − rate)) and the dropped probabilities. It keeps
    the projections, the probabilities (and the noise and the dropped probabilities) for
    backward, which allocates the probabilities' gradient and the three projections' gradients.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, rate):
        batch, t, heads, _ = q.shape
        s, value_dim = k.shape[1], v.shape[3]
        probs = q.new_empty(batch, heads, t, s)
        for h in range(heads):   # Keras scales the queries; the product is scaled here (alpha)
            torch.baddbmm(probs[:, h], q[:, :, h], k[:, :, h].transpose(1, 2), beta=0, alpha=scale, out=probs[:, h])
        torch.ops.aten._softmax.out(probs, -1, False, out=probs)
        noise = dropped = None
        if rate > 0:
            noise = torch.empty_like(probs).bernoulli_(1 - rate).div_(1 - rate)
            dropped = torch.mul(probs, noise)
        weights = probs if dropped is None else dropped
        out = q.new_empty(batch, t, heads * value_dim)
        out4 = out.view(batch, t, heads, value_dim)
        for h in range(heads):
            torch.bmm(weights[:, h], v[:, :, h], out=out4[:, :, h])
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, probs, noise, dropped)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs, noise, dropped = ctx.saved_tensors
        batch, t, heads, key_dim = q.shape
        s, value_dim = k.shape[1], v.shape[3]
        g = grad.reshape(batch, t, heads, value_dim)
        weights = probs if dropped is None else dropped
        g_probs = torch.empty_like(probs)
        for h in range(heads):
            torch.bmm(g[:, :, h], v[:, :, h].transpose(1, 2), out=g_probs[:, h])
        dv = None
        if ctx.needs_input_grad[2]:
            dv = v.new_empty(batch, s, heads, value_dim)
            for h in range(heads):
                torch.bmm(weights[:, h].transpose(1, 2), g[:, :, h], out=dv[:, :, h])
        if noise is not None:
            g_probs.mul_(noise)
        torch.ops.aten._softmax_backward_data.out(g_probs, probs, -1, probs.dtype, grad_input=g_probs)
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dq = q.new_empty(batch, t, heads, key_dim)
            for h in range(heads):
                torch.baddbmm(dq[:, :, h], g_probs[:, h], k[:, :, h], beta=0, alpha=ctx.scale, out=dq[:, :, h])
        if ctx.needs_input_grad[1]:
            dk = k.new_empty(batch, s, heads, key_dim)
            for h in range(heads):
                torch.baddbmm(dk[:, :, h], g_probs[:, h].transpose(1, 2), q[:, :, h], beta=0, alpha=ctx.scale,
                              out=dk[:, :, h])
        return dq, dk, dv, None, None


class MultiHeadAttention(nn.Module):
    """Keras's MultiHeadAttention with its weights in Keras's layout.

    ``query_kernel`` (query features, heads, key_dim), ``key_kernel`` (key features, heads,
    key_dim), ``value_kernel`` (value features, heads, value_dim), ``output_kernel`` (heads,
    value_dim, *output_shape), each with a bias shaped like its last axes. The attention computes
    what Keras's does when it keeps the scores (Q·Kᵀ/√key_dim, softmax over the keys, dropout on
    the probabilities), in ``_AttentionCore``, so that what it allocates and keeps is known.
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
        """x·W + b over the last axis: one matrix product with the bias fused (one allocation)."""
        x2 = x.reshape(-1, x.shape[-1])
        w = kernel.reshape(kernel.shape[0], -1)
        y = torch.mm(x2, w) if bias is None else torch.addmm(bias.reshape(-1), x2, w)
        return y.view(*x.shape[:-1], -1)

    def forward(self, query: torch.Tensor, value: torch.Tensor | None = None,
                key: torch.Tensor | None = None) -> torch.Tensor:
        return self.flat(query, value, key).view(query.shape[0], query.shape[1], *self.out_shape)

    def weights(self) -> list[torch.Tensor | None]:
        """Kernels and biases in parameter order (None for a missing bias)."""
        return [self.query_kernel, self.query_bias, self.key_kernel, self.key_bias, self.value_kernel,
                self.value_bias, self.output_kernel, self.output_bias]

    def flat(self, query: torch.Tensor, value: torch.Tensor | None = None,
             key: torch.Tensor | None = None, *, weights: list | None = None) -> torch.Tensor:
        """The result as (batch · steps, output elements): a tensor of its own, not a view, so that
        a caller may add into it in place without autograd rebasing a view.

        Under autocast the weights (unless ``weights`` gives them cast already) and then each
        distinct input are cast once per call (``lowered``): Keras's kernels are used through
        reshaped views, which autocast would cast at each use without caching, and the three
        projections would each cast a float32 input."""
        value = query if value is None else value
        key = value if key is None else key
        dtype = autocast_dtype(query)
        if weights is None:
            weights = self.weights() if dtype is None else lowered(self.weights(), dtype)
        if dtype is not None:
            distinct = list({id(t): t for t in (query, value, key)}.values())
            cast = {id(t): c for t, c in zip(distinct, lowered(distinct, dtype))}
            query, value, key = cast[id(query)], cast[id(value)], cast[id(key)]
        wq, bq, wk, bk, wv, bv, wo, bo = weights
        batch, steps, heads = query.shape[0], query.shape[1], self.num_heads
        q = self._project(query, wq, bq).view(batch, steps, heads, self.key_dim)
        k = self._project(key, wk, bk).view(batch, key.shape[1], heads, self.key_dim)
        v = self._project(value, wv, bv).view(batch, value.shape[1], heads, self.value_dim)
        context = _AttentionCore.apply(q, k, v, self.scale, self.dropout if self.training else 0.0)
        del q, k, v   # kept by the attention for backward only when it records
        w = wo.reshape(heads * self.value_dim, -1)
        c = context.view(batch * steps, -1)
        return torch.mm(c, w) if bo is None else torch.addmm(bo.reshape(-1), c, w)

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
        self.attention_dropout = nn.Dropout(dropout, inplace=True)   # into a result nobody keeps
        self.feedforward_norm = nn.LayerNorm(width, eps=layer_norm_epsilon)
        self.intermediate = nn.Linear(width, intermediate_dim)
        self.activation = activation
        self.intermediate_activation = ACTIVATIONS[activation]()
        self.output = nn.Linear(intermediate_dim, width)
        self.feedforward_dropout = nn.Dropout(dropout, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residuals are added in place into the new branch's result (neither the attention's nor
        # the feed-forward's result is kept for backward), and relu, sigmoid and tanh run in place
        # (they keep their result, which the next matmul keeps anyway): each block allocates as
        # ``rules.attention.TransformerEncoder`` counts. Everything runs on (batch · steps, width)
        # tensors of their own: an in-place operation on a view would make autograd rebase it.
        # Under autocast the matmuls' weights and the input are cast once per call, on entry
        # (``lowered``); the layer norms take the low-precision tensors with their float32 weights.
        batch, steps, width = x.shape
        attention_weights = None
        dense = [self.intermediate.weight, self.intermediate.bias, self.output.weight, self.output.bias]
        dtype = autocast_dtype(x)
        if dtype is not None:
            cast = lowered([*self.attention.weights(), *dense, x], dtype)
            attention_weights, dense, x = cast[:8], cast[8:12], cast[12]
        residual = x.reshape(batch * steps, width)
        h = self.attention_norm(residual) if self.normalize_first else residual
        h = self.attention.flat(h.view(batch, steps, width), weights=attention_weights)
        h = self.attention_dropout(h).add_(residual)
        if not self.normalize_first:
            h = self.attention_norm(h)
        residual = h
        if self.normalize_first:
            h = self.feedforward_norm(h)
        h = nn.functional.linear(h, dense[0], dense[1])
        h = _IN_PLACE[self.activation](h) if self.activation in _IN_PLACE else self.intermediate_activation(h)
        h = self.feedforward_dropout(nn.functional.linear(h, dense[2], dense[3])).add_(residual)
        del residual
        if not self.normalize_first:
            h = self.feedforward_norm(h)
        return h.view(batch, steps, width)


_IN_PLACE = {"relu": torch.relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_}


def module_keys(names) -> dict[str, str]:
    """Each layer's name as a child module's name: itself where torch accepts it; else with "."
    as "_" (Keras 2's TFOpLambda layers are "tf.math.multiply"...) and "_" added while the name is
    an attribute of a module ("half", "train"...) or taken."""
    keys: dict[str, str] = {}
    taken: set[str] = set()
    probes = (nn.ModuleDict(), nn.Sequential())
    for name in names:
        key = name.replace(".", "_") or "_"
        while key in taken or any(hasattr(probe, key) for probe in probes):
            key += "_"
        keys[name] = key
        taken.add(key)
    return keys


class GraphModel(nn.Module):
    """Run a spec's layer calls in order, each value freed after the layer that reads it last.

    Freeing after the last reader is what the memory model predicts (and what nn.Sequential does
    for a chain). Several inputs come as positional arguments; several outputs return a tuple.
    """

    def __init__(self, layers: dict[str, nn.Module], *, inputs: list[str],
                 calls: list[tuple[str, str, tuple[tuple[str, int], ...]]], outputs: list[tuple[str, int]]):
        super().__init__()
        self.child_names = module_keys(layers)   # layer name → child module name
        self.layers = nn.ModuleDict({self.child_names[name]: module for name, module in layers.items()})
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
            values[node] = self.layers[self.child_names[layer]](*args)
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
        if self.how == "multiply":   # each product keeps its operands: no in-place work
            out = xs[0] * xs[1]
            for x in xs[2:]:
                out = out * x
            return out
        # sums accumulate in place (an addition keeps nothing for backward)
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out = out.add_(x) if torch.broadcast_shapes(out.shape, x.shape) == out.shape else out + x
        return out.div_(len(xs)) if self.how == "average" else out


class Concat(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)
