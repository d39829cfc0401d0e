"""torch's CPU normalization kernels (``native_batch_norm``, ``native_layer_norm`` and their
backward): the statistics and per-thread sums they make besides their results."""
from __future__ import annotations

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
    few elements: a batch-1 norm of a Dense layer's features)."""
    temporary = Saved("new", elements=elements, what="batch_norm_backward temporary")
    reduced = ctx.dtype != "float32" or ctx.amp is not None
    sums = (BN_PARTIAL_SUMS * max(ctx.threads, 1) + (BN_REDUCED_SUMS if reduced else 0)) * channels
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
