"""oneDNN's CPU LSTM (``mkldnn_rnn_layer`` and its backward, float32 and bfloat16): what each call
allocates.

PyTorch runs ``nn.LSTM`` on the CPU one layer and one direction per ``mkldnn_rnn_layer`` call
(ATen's ``mkldnn/RNN.cpp``), so oneDNN always sees one layer, one direction. Inside a call, besides
the tensors it returns, the CPU allocator sees (in order):

- ``bias_ih + bias_hh`` (``_shuffle_bias``; zeros without biases): 4·H float32;
- the weights reordered by ideep into the layout the primitive wants (``set_expected_desc``):
  inference runs oneDNN's brgemm LSTM, whose weights are ``ldgOi32o`` (the gates' outputs in
  blocks of ``n_block`` = 2 × the SIMD width in floats: 32 on AVX-512, 16 on AVX2 but for a
  batch of one); training runs the reference (gemm) LSTM: ``ldigo`` forward and ``ldgoi``
  backward, each with a "good" leading dimension (``get_good_ld``), reordered only where that
  layout differs from PyTorch's ``ldgoi``;
- backward only: the weight and bias gradients in oneDNN's layout (``ldigo``), copied out after;
- the primitive's scratchpad (``ref_rnn.cpp``'s ``init_scratchpad``): the RNN space
  (``rnn_utils::set_offsets``, page-aligned regions) booked with 4 KiB alignment, three weight
  pointer arrays and the bias pointers (128 B alignment each), and, for brgemm, a batch of
  ``brgemm_batch_element_t`` (40 B) per thread.

Training keeps a workspace (``workspace_desc``) for backward: a tensor the call returns.
Checked against the CPU allocator's events of the real kernel (torch 2.14, oneDNN 3.12,
AVX-512) on shapes of T, N, I, H from 1 to 300, one and two threads.

bfloat16 (``bf16_lstm_*``; bf16 weights or autocast, oneDNN's AVX512_CORE_BF16) runs brgemm
both ways, training too. The types follow ``ref_rnn.hpp``: states, gates, hidden states and
weights in bf16, the forward's scratch gates and every gradient buffer (``gemm_acc_t``) in
float32, the backward's scratch gates in bf16; weights are packed in VNNI pairs (rows rounded up
to even); the bias pointers are ``8 · sizeof(bias)`` bytes (bf16 bias). ATen hands the backward
its output and state gradients in float32 and returns float32 gradients (RNN.cpp). Checked
against the allocator's events on eight shapes (T, N, I, H from 1 to 300, I = H and not, N = 1
and not; two threads, AVX512_CORE_BF16).
"""
from __future__ import annotations

from typing import Sequence

from profiler.engine.kernels.onednn import ONEDNN_ENTRY_ALIGNMENT, ONEDNN_PAGE, up

F32 = 4
BF16 = 2
LSTM_GATES = 4
#: ``sizeof(brgemm_batch_element_t)``: two pointers (or offsets), two padding sizes, one flag
BRGEMM_BATCH_ELEMENT = 40


def _good_ld(dim: int, itemsize: int = F32) -> int:
    """oneDNN's leading dimension: a multiple of 64 bytes, not of 256 elements (4K aliasing)."""
    ld = up(dim, 64 // itemsize)
    return ld + 64 // itemsize if ld % 256 == 0 else ld


def _regions(*sizes: int) -> int:
    """Bytes of regions laid out one after another, each starting on a page (``register_space``)."""
    offset = 0
    for size in sizes:
        offset = up(offset, ONEDNN_PAGE) + size
    return offset


def onednn_lstm_workspace_bytes(t: int, n: int, i: int, h: int) -> int:
    """Bytes of the workspace oneDNN's float32 LSTM keeps for backward (one layer, one direction).

    ``set_offsets``' mandatory regions for T steps of a batch of N, input I, hidden H: the gates
    (T·N·ld(4H)), the hidden states (T·N·ld(H)), the states (2·(T+1)·N·ld(max(H, I))), the cell
    states (2·(T+1)·N·H), the states' gradients (twice 2·(T+1)·N·ld(max(H, I))) and the cell
    states' (2·(T+1)·N·H), each page-aligned, then the (empty) grid region's alignment.

    >>> onednn_lstm_workspace_bytes(t=9, n=3, i=8, h=10)
    32768
    """
    states = 2 * (t + 1) * n * F32
    wide = states * _good_ld(max(h, i))
    return up(_regions(t * n * _good_ld(LSTM_GATES * h) * F32, t * n * _good_ld(h) * F32,
                       wide, states * h, wide, wide, states * h), ONEDNN_PAGE)


def _scratchpad(space: int, brgemm_batch: int = 0) -> int:
    """The primitive's scratchpad: the RNN space (4 KiB aligned), three weight pointer arrays and
    the bias pointers of one layer and direction (``init_scratchpad``), and brgemm's batch."""
    entries = [(space, ONEDNN_PAGE), *[(8, ONEDNN_ENTRY_ALIGNMENT)] * 3, (8 * F32, ONEDNN_ENTRY_ALIGNMENT),
               (brgemm_batch, ONEDNN_ENTRY_ALIGNMENT)]
    return sum(size + align for size, align in entries if size)


def brgemm_n_block(isa: str, batch: int) -> int:
    """oneDNN's ``brgemm_calc_n_block`` for a float32 LSTM: two vectors of floats, four on AVX2
    for a batch of one."""
    if isa.upper().startswith("AVX512"):
        return 32
    return 32 if batch == 1 else 16


def lstm_forward_workspace(t: int, n: int, i: int, h: int, *, training: bool, threads: int,
                           isa: str = "AVX512") -> list[int]:
    """Bytes one forward ``mkldnn_rnn_layer`` call allocates and frees inside, alive together:
    the summed bias, the reordered weights and the scratchpad (the training workspace is a
    result, not counted here).

    Inference (brgemm): weights ``ldgOi32o`` (outputs padded to ``n_block``; AVX2's blocks read
    from the source, not measured here); the space holds the
    states, cell states, one step's gates and hidden state; with one sample and two or more steps
    the layer's product is merged across the steps (gates for every step) and the layer and
    iteration products are not fused, else they are fused when I = H (a batch twice as long).
    Training (reference gemm): weights ``ldigo`` with ld(4H), none when I (or H) is 1 (the layouts
    then coincide); the space holds every step's gates (the layer's product is merged) and two
    hidden-state rows.
    """
    gates = LSTM_GATES * h
    bias = gates * F32
    if not training:
        block = brgemm_n_block(isa, n)
        padded = LSTM_GATES * up(h, block)
        merged = n == 1 and t >= 2
        space = up(_regions(2 * (t + 1) * n * _good_ld(max(h, i)) * F32, 2 * (t + 1) * n * h * F32,
                            0, 0, 0, 0,
                            (t if merged else 1) * n * _good_ld(gates) * F32, n * _good_ld(h) * F32, 0, 0),
                   ONEDNN_PAGE)
        k_blocks = 2 * (2 if i == h and not merged else 1)
        return [bias, i * padded * F32, h * padded * F32,
                _scratchpad(space, BRGEMM_BATCH_ELEMENT * k_blocks * threads)]
    return [bias, *_ldigo_weights(i, h), *_ldigo_weights(h, h), _scratchpad(_training_space(t, n, h))]


def _ldigo_weights(rows: int, h: int) -> list[int]:
    """A weight reordered to ``ldigo`` with a good leading dimension: none when it has one row."""
    return [] if rows == 1 else [rows * _good_ld(LSTM_GATES * h) * F32]


def _training_space(t: int, n: int, h: int) -> int:
    """The reference LSTM's RNN space in training: every step's gates, a hidden state row and its
    gradient's, then the (empty) cell region's alignment."""
    return up(_regions(t * n * _good_ld(LSTM_GATES * h) * F32, n * _good_ld(h) * F32,
                       n * _good_ld(h) * F32, 0), ONEDNN_PAGE)


def lstm_backward_workspace(t: int, n: int, i: int, h: int, *, made: Sequence[int] = ()) -> list[int]:
    """Bytes one ``mkldnn_rnn_layer_backward`` call allocates and frees inside, alive together.

    ``made``: bytes of the operands the call makes first (an absent gradient of the output or
    states as zeros, a non-contiguous one copied, ``cx`` cloned). Then the summed bias, the
    weights in ``ldgoi`` with ld(I) (ld(H)), reordered when that is not I (H); the weights' and
    bias's gradients in oneDNN's layouts (``ldigo``: I·ld(4H), or 4H for one row), and the
    scratchpad (the same space as the forward's), less the bias gradient's clone the kernel makes
    after freeing all of this and returns (4H): the log books a call's workspace after its results.
    """
    gates = LSTM_GATES * h
    weights = [gates * _good_ld(k) * F32 for k in (i, h) if _good_ld(k) != k]
    grads = [k * _good_ld(gates) * F32 if k > 1 else gates * F32 for k in (i, h)]
    # the second bias gradient (``at::clone(diff_b_)``) is made once all of this is freed, where
    # the log holds it with the call's results: booked less it, the call's peak is the allocator's
    return [*made, gates * F32, *weights, *grads, gates * F32,
            _scratchpad(_training_space(t, n, h)) - gates * F32]


# ----------------------------------------------------------------------------------------------
# bfloat16 (brgemm forward and backward)


def _vnni_weights(rows: int, h: int) -> int:
    """A bf16 weight packed for brgemm (``ldgOI32o2i``): rows in pairs, each gate's outputs in
    blocks of 32 (two vectors of floats on AVX-512)."""
    return up(rows, 2) * LSTM_GATES * up(h, 32) * BF16


def bf16_lstm_workspace_bytes(t: int, n: int, i: int, h: int) -> int:
    """Bytes of the workspace oneDNN's bf16 LSTM keeps for backward: the float32 law's regions
    with bf16 gates, hidden states, states and cell states, float32 gradients of the states.

    >>> bf16_lstm_workspace_bytes(t=9, n=3, i=8, h=10)
    28672
    """
    states = 2 * (t + 1) * n
    diff = states * _good_ld(max(h, i)) * F32
    return up(_regions(t * n * _good_ld(LSTM_GATES * h, BF16) * BF16, t * n * _good_ld(h, BF16) * BF16,
                       states * _good_ld(max(h, i), BF16) * BF16, states * h * BF16,
                       diff, diff, states * h * F32), ONEDNN_PAGE)


def _bf16_scratchpad(space: int, brgemm_batch: int, *extra: int) -> int:
    """:func:`_scratchpad` with bf16 bias pointers (8 · 2 bytes) and the backward's extra
    entries (128 B aligned each)."""
    entries = [(space, ONEDNN_PAGE), *[(8, ONEDNN_ENTRY_ALIGNMENT)] * 3, (8 * BF16, ONEDNN_ENTRY_ALIGNMENT),
               (brgemm_batch, ONEDNN_ENTRY_ALIGNMENT), *[(e, ONEDNN_ENTRY_ALIGNMENT) for e in extra]]
    return sum(size + align for size, align in entries if size)


def bf16_lstm_forward_workspace(t: int, n: int, i: int, h: int, *, training: bool, threads: int) -> list[int]:
    """Bytes one bf16 forward ``mkldnn_rnn_layer`` call allocates and frees inside, alive
    together: the summed bias (bf16), the packed weights and the scratchpad.

    brgemm in inference and training alike: the scratch gates are float32 (``acc_type``), every
    step's with one sample and two or more steps (the layer's product merged), and the layer and
    iteration products fused when I = H otherwise (a batch twice as long), as in float32. The
    space holds, in inference, the states and cell states (bf16) before them; in training (they
    are in the workspace) the hidden state row (bf16) and its gradient's (float32) after.
    """
    gates = LSTM_GATES * h
    merged = n == 1 and t >= 2
    scratch_gates = (t if merged else 1) * n * _good_ld(gates) * F32
    ht = n * _good_ld(h, BF16) * BF16
    if training:
        space = _regions(scratch_gates, ht, n * _good_ld(h) * F32, 0)
    else:
        states = 2 * (t + 1) * n * BF16
        space = _regions(states * _good_ld(max(h, i), BF16), states * h, 0, 0, 0, 0, scratch_gates, ht, 0, 0)
    k_blocks = 2 * (2 if i == h and not merged else 1)
    return [gates * BF16, _vnni_weights(i, h), _vnni_weights(h, h),
            _bf16_scratchpad(up(space, ONEDNN_PAGE), BRGEMM_BATCH_ELEMENT * k_blocks * threads)]


def bf16_lstm_backward_workspace(t: int, n: int, i: int, h: int, *, threads: int,
                                 made: Sequence[int] = ()) -> list[int]:
    """Bytes one bf16 ``mkldnn_rnn_layer_backward`` call allocates and frees inside, alive
    together.

    ``made``: the operands ATen makes first (the output's and states' gradients in float32). Then
    the summed bias (bf16), the weights reordered to bf16 ``ldgoi`` (outputs in pairs, ld(I) and
    ld(H) of bf16), the weights' and bias's gradients (float32, as in the float32 law), and the
    brgemm backward's scratchpad: the space (one step's bf16 scratch gates, the hidden state row,
    its float32 gradient), the batch (four gates' K blocks, plus one, per thread), and the
    transposes of ``rnn_brgemm_t<backward>::init_scratchpad`` over K = the batch in pairs: the
    blocked gates (per thread, 32 columns), the layer and iteration inputs (once for a batch
    above one, else per thread). Read for K ≤ the diff-weights ``m_block`` (= max(I, H) on every
    shape measured) and one K block per gate. Less the bias gradient's clone, as in float32.
    """
    gates = LSTM_GATES * h
    weights = [up(h, 2) * LSTM_GATES * _good_ld(k, BF16) * BF16 for k in (i, h)]
    grads = [k * _good_ld(gates) * F32 if k > 1 else gates * F32 for k in (i, h)]
    space = _regions(n * _good_ld(gates, BF16) * BF16, n * _good_ld(h, BF16) * BF16, n * _good_ld(h) * F32, 0)
    k = up(n, 2)
    copies = 1 if n > 1 else threads
    transposes = [threads * k * 32 * BF16, copies * i * k * BF16, copies * h * k * BF16]
    scratchpad = _bf16_scratchpad(up(space, ONEDNN_PAGE), BRGEMM_BATCH_ELEMENT * (LSTM_GATES + 1) * threads,
                                  *transposes)
    return [*made, gates * BF16, *weights, *grads, gates * F32, scratchpad - gates * F32]
