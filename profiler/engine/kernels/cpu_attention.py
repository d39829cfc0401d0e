"""PyTorch's fused CPU attention kernels: what ``_native_multi_head_attention`` (the inference
fast path of ``nn.MultiheadAttention``) and ``_transformer_encoder_layer_fwd`` (that of
``nn.TransformerEncoderLayer``) allocate and free inside.

Both are one operator to the dispatcher; inside they run a fixed sequence of ATen calls
(``aten/src/ATen/native/transformers/attention.cpp`` and ``transformer.cpp``), each allocating its
result while the earlier ones live. What is alive is known at every step, so the peak inside a
call is the largest of a few sums; the log books it beside the call's results as one block: the
peak less the results (which the log already holds). Self-attention, dense tensors;
X = B·T·D (the input's size), S = B·H·T·T (the heads' scores), in bytes of the dtype.
"""
from __future__ import annotations


def mha_peak(x: int, scores: int, averaged: int, *, need_weights: bool, average: bool,
             mask: int | None = None, gemms: tuple[int, int, int, int] = (0, 0, 0, 0)) -> int:
    """Bytes alive at the peak inside ``native_multi_head_attention_cpu`` (self-attention), its
    results included. ``mask``: bytes of the boolean copy of the mask the kernel makes (0 when it
    is boolean already; None: no mask). ``gemms``: the scratchpads oneDNN takes in bfloat16 for
    the four matmuls (the projection to q, k, v; q·kᵀ; the scores·v; the output projection),
    each beside what is alive while it runs (none in float32).

    1. ``qkv = gemm_nt(query, qkv_weight)`` (3X) and ``_transform_bias_rescale_qkv`` into one
       (3, B, H, T, D/H) buffer (3X) while ``qkv`` lives: 6X; then ``qkv`` goes.
    2. ``qkt = bmm_nt(q, k)``: 3X + S; the softmax runs in place, ``bmm_nn`` writes into q's
       storage; without weights wanted the scores go. With a mask, ``masked_softmax`` converts it
       to bool (``mask`` bytes) and ``_masked_softmax`` writes new scores: 3X + 2S + mask.
    3. ``transform0213_gemm_nt_bias``: the heads made contiguous (X), then the projection, the
       result (X): 5X (+ S).
    4. Weights averaged: ``qkt.sum(1)`` (B·T·T) while the scores live, the copy (3.) gone:
       4X + S + B·T·T.
    """
    kept = scores if need_weights else 0
    qkv, qk, av, proj = gemms
    phases = [6 * x, 3 * x + qkv, 3 * x + scores + max(qk, av), 5 * x + kept + proj]
    if mask is not None:
        phases.append(3 * x + 2 * scores + mask)
    if need_weights and average:
        phases.append(4 * x + scores + averaged)
    return max(phases)


def encoder_layer_peak(x: int, scores: int, hidden: int, stats: int, *, norm_first: bool,
                       mask: int | None = None, gemms: tuple[int, ...] = (0,) * 6) -> int:
    """Bytes alive at the peak inside ``transformer_encoder_layer_forward``, its result included
    (``mask`` as for ``mha_peak``): ``hidden`` = B·T·F (the feed-forward's), ``stats`` = a layer norm's mean
    and 1/std (2·B·T, in the input's dtype). ``gemms``: oneDNN's bfloat16 scratchpads, the four of
    ``mha_peak`` then the feed-forward's two matmuls, each beside what is alive while it runs.

    Post-norm: attention (``mha_peak``, no weights); its result plus the first norm's (2X + stats);
    the first norm's result with the feed-forward's hidden and output (2X + hidden), then the
    second norm beside both (3X + stats). Pre-norm: the first norm (X + stats); attention on it
    (X + ``mha_peak``); its result and the second norm (2X + stats); the feed-forward on that, the
    residual alive (3X + hidden).
    """
    return max(_encoder_layer_phases(x, scores, hidden, stats, norm_first=norm_first, mask=mask, gemms=gemms))


def encoder_layer_result_last(x: int, scores: int, hidden: int, stats: int, *, norm_first: bool,
                              mask: int | None = None, gemms: tuple[int, ...] = (0,) * 6) -> bool:
    """Whether the layer's result does not exist yet at the peak of :func:`encoder_layer_peak`:
    post-norm, the second norm makes it in the last phase, so at any earlier peak its bytes are
    the kernel's (measured: ``nn.TransformerEncoderLayer(64, 4, 128)`` at batch 1 on 32 tokens,
    its 8,192 B result not there at the peak). Pre-norm is not measured so: counted as made."""
    if norm_first:
        return False
    phases = _encoder_layer_phases(x, scores, hidden, stats, norm_first=False, mask=mask, gemms=gemms)
    return phases.index(max(phases)) < len(phases) - 1   # the allocator's peak: the first moment at it


def _encoder_layer_phases(x: int, scores: int, hidden: int, stats: int, *, norm_first: bool,
                          mask: int | None, gemms: tuple[int, ...]) -> list[int]:
    attention = mha_peak(x, scores, 0, need_weights=False, average=True, mask=mask, gemms=gemms[:4])
    ff1, ff2 = gemms[4:]
    if norm_first:
        return [x + stats, x + attention, 2 * x + stats, 2 * x + hidden + ff1, 3 * x + hidden + ff2]
    return [attention, 2 * x + stats, x + hidden + ff1, 2 * x + hidden + ff2, 3 * x + stats]


def autocast_encoder_layer_peak(x: int, scores: int, hidden: int, stats: int, *, attention_casts: int,
                                ffn_weight: int, ffn_biases: tuple[int, int], gemms: tuple[int, ...]) -> int:
    """Bytes alive at the peak inside ``transformer_encoder_layer_forward`` under bfloat16
    autocast (post-norm, no mask), its result included: X, S, hidden in bfloat16 (the result too),
    ``stats`` the layer norms' float32 mean and 1/std. The kernel re-dispatches its inner calls, so
    autocast casts them: ``_native_multi_head_attention`` gets its weights cast
    (``attention_casts``: qkv and output projections, weights and biases, kept in autocast's cache
    to the region's end) and query, key and value cast apart (3X): no longer one tensor, so the
    projection is three matmuls and a ``cat``. The feed-forward's weights are cast per call (their
    transposes are not cached; ``ffn_weight`` each), their biases cached (``ffn_biases``).
    ``gemms``: oneDNN's scratchpads of one projection (rows × D × D), q·kᵀ, scores·v, the output
    projection and the feed-forward's two.

    In order: the three projections beside the casts (W + 6X + scratch), the ``cat`` and
    ``_transform_bias_rescale_qkv`` (W + 9X), the heads' matmuls (W + 6X + S), the output
    projection with the heads made contiguous (W + 8X); the residual added through float32 copies
    (W + X + 2·2X), the first norm (W + 2X + stats); the feed-forward's first matmul (W + X + its
    weight, bias, hidden), the second (W + 2X + its weight, both biases, hidden); the second norm
    (W + 3X + both biases + stats)."""
    w = attention_casts
    projection, qk, av, out, ff1, ff2 = gemms
    b1, b2 = ffn_biases
    return max(w + 6 * x + projection, w + 9 * x, w + 6 * x + scores + max(qk, av), w + 8 * x + out,
               w + 5 * x, w + 2 * x + stats, w + x + ffn_weight + b1 + hidden + ff1,
               w + 2 * x + b1 + hidden + ffn_weight + b2 + ff2, w + 3 * x + b1 + b2 + stats)


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention's CPU flash kernel (``aten/src/ATen/native/cpu/FlashAttentionKernel.cpp``)

#: the kernel's accumulation type for float32, bfloat16 and float16 (``opmath_type``): float32
ACCUMULATE = 4


def flash_split(q_len: int, kv_len: int) -> tuple[int, int]:
    """(qSplitSize, kvSplitSize): query blocks of 32 rows (64 from 192 rows, 256 from 768),
    key blocks of 512, neither longer than the sequence."""
    q_split = 256 if q_len >= 768 else 64 if q_len >= 192 else 32
    return min(q_split, q_len), min(512, kv_len)


def flash_forward_workspace(q_len: int, kv_len: int, head: int, *, threads: int, itemsize: int) -> list[int]:
    """Bytes ``cpu_flash_attention`` allocates beside its output and logsumexp (no packing: float32
    and bfloat16): per thread, in float32, a block of scores (q × kv), its row maxima and sums
    (2q) and an output block (q × head); for bfloat16/float16 also the scores in that dtype."""
    q, kv = flash_split(q_len, kv_len)
    buf = threads * (q * kv + 2 * q + q * head) * ACCUMULATE
    reduced = threads * q * kv * itemsize if itemsize < ACCUMULATE else 0
    return [buf, reduced]


def flash_backward_workspace(q_len: int, kv_len: int, *, threads: int, itemsize: int,
                             grad_out_copy: int = 0) -> list[int]:
    """Bytes ``cpu_flash_attention_backward`` allocates beside the three zeroed gradients it
    returns: the output's gradient made contiguous (``grad_out_copy`` bytes, when it is not), per
    thread a block of scores and one of their gradient (2 × q × kv, float32; again in the dtype
    for bfloat16/float16), and ``dsum`` (q float32) in each parallel chunk: the CPU allocator's
    events come from the calling thread, which runs one chunk."""
    q, kv = flash_split(q_len, kv_len)
    reduced = threads * 2 * q * kv * itemsize if itemsize < ACCUMULATE else 0
    return [grad_out_copy, threads * 2 * q * kv * ACCUMULATE, reduced, q * ACCUMULATE]
