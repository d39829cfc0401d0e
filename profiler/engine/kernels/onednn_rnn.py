"""oneDNN's CPU LSTM (``mkldnn_rnn_layer`` and its backward, float32): what each call allocates.

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
"""
from __future__ import annotations

from typing import Sequence

from profiler.engine.kernels.onednn import ONEDNN_ENTRY_ALIGNMENT, ONEDNN_PAGE, up

F32 = 4
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
