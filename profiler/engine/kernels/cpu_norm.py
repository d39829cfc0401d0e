"""torch's CPU normalization kernels (``native_batch_norm``, ``native_layer_norm`` and their
backward): the statistics and per-thread sums they make besides their results."""
from __future__ import annotations

from math import prod

from profiler.dtypes import itemsize
from profiler.rules.registry import Context, Saved

#: threads torch's CPU kernels run on (``torch.get_num_threads()`` on the machine measured);
#: per-thread buffers (layer norm's gradient sums, oneDNN's) scale with it
CPU_THREADS = 2

#: ``batch_norm_backward`` on the CPU (torch 2.13, measured with the allocator's events at 1, 2
#: and 4 threads): an input-sized temporary first (freed), then per-channel float32 buffers: a
#: zeroed (threads, 2, channels) partial-sum buffer, and with a bfloat16 input three per-channel
#: float32 sums besides
BN_PARTIAL_SUMS = 2
BN_REDUCED_SUMS = 3


def batch_norm_statistics(channels: int) -> tuple[Saved, Saved]:
    """``native_batch_norm`` returns the batch's mean and 1/std per channel, in float32, in
    inference too."""
    return (Saved("new", elements=channels, dtype="float32", what="batch mean", per_sample=False),
            Saved("new", elements=channels, dtype="float32", what="batch 1/std", per_sample=False))


def batch_norm_backward_scratch(elements: int, channels: int, ctx: Context) -> tuple[Saved, ...]:
    """The larger of ``batch_norm_backward``'s two moments beyond the gradients: the input-sized
    temporary, or the float32 per-channel buffers that follow it (larger for a few samples of
    few elements: a batch-1 norm of a Dense layer's features). In inference mode (a frozen
    batch norm, ``ctx.frozen``) the per-channel kernel also makes 1/std from the moving variance:
    one more float32 per channel, alive with the sums (measured, torch 2.14, (2, 16), (1, 16),
    (2, 8, 1, 1) at 2 threads)."""
    temporary = Saved("new", elements=elements, what="batch_norm_backward temporary")
    reduced = ctx.dtype != "float32" or ctx.amp is not None
    sums = (BN_PARTIAL_SUMS * max(ctx.threads, 1) + (BN_REDUCED_SUMS if reduced else 0) + ctx.frozen) * channels
    if ctx.batch * elements * itemsize(ctx.dtype) >= 4 * sums:
        return (temporary,)
    return (Saved("new", elements=sums, dtype="float32", per_sample=False, what="per-channel float32 sums"),)


def layer_norm_backward_scratch(normalized: int, ctx: Context) -> tuple[Saved, ...]:
    """With gamma, ``native_layer_norm_backward`` on the CPU sums gamma's and beta's gradients in a
    (threads, 2, normalised elements) float32 buffer."""
    if ctx.device_kind != "cpu":
        return ()
    return (Saved("new", elements=CPU_THREADS * 2 * normalized, dtype="float32", per_sample=False,
                  what="per-thread gamma and beta gradient sums"),)


def batch_norm_backward_kernel(x_shape: tuple[int, ...], x_channels_last: bool, x_contiguous: bool,
                               same_layout_as_grad: bool) -> str:
    """Which of torch's CPU ``batch_norm_backward`` kernels runs: "contiguous", "channels_last" or
    "generic" (TensorIterator sums, when the input and the output's gradient are not both dense
    in one layout). A contiguous input with one element per (sample, channel) (``(N, C)``,
    ``(N, C, 1, 1)``) runs the channels-last kernel, as one laid out channels-last does."""
    if not same_layout_as_grad:
        return "generic"
    image = prod(x_shape[2:]) if len(x_shape) > 2 else 1
    if x_channels_last or (x_contiguous and image == 1):
        return "channels_last"
    return "contiguous"


def batch_norm_backward_workspace(*, elements: int, channels: int, itemsize: int, input_grad: bool,
                                  kernel: str, threads: int, reduced: bool, grad_itemsize: int) -> int:
    """Bytes ``native_batch_norm_backward`` allocates and frees inside one call on the CPU, beyond
    its results (the larger of its two moments, which are never alive together).

    Measured (torch 2.14, allocator events of one call, inputs (4,16,16,16), (1,16,8,8),
    (2,8,4,4,4), (4,16,12), (4,16), (2,16), (4,16,1,1), channels-first and channels-last,
    float32 and bfloat16, 1, 2 and 4 threads, input gradient asked or not):

    - with the input's gradient asked (``output_mask[0]``) and both tensors dense in one layout,
      the kernel makes ``grad_input`` twice (``empty_like``) and frees the first once the second
      exists: one input-sized temporary, in the input's dtype; none without an input gradient;
    - then the channels-last kernel alone sums per channel in a zeroed (2, threads, C) float32
      buffer, and with a bfloat16/float16 input (or float32 parameters over one) three
      per-channel float32 sums besides, alive with it; the contiguous kernel makes nothing;
    - the generic kernel (input and gradient in different layouts) makes ``grad_input`` once and
      sums the gradient per channel (C elements of the gradient's dtype).
    """
    if kernel == "generic":
        return channels * grad_itemsize
    temporary = elements * itemsize if input_grad else 0
    if kernel != "channels_last":
        return temporary
    sums = (BN_PARTIAL_SUMS * max(threads, 1) + (BN_REDUCED_SUMS if reduced else 0)) * channels * 4
    return max(temporary, sums)
