"""oneDNN's scratchpad bookkeeping, shared by its primitives: how entries and barriers are booked."""
from __future__ import annotations

# oneDNN's scratchpad: each entry is booked with 128 bytes of alignment room
# (``memory_tracking.hpp``, ``default_alignment``); a barrier's contexts (``simple_barrier::ctx_t``)
# are one page each and page-aligned, so n of them book 4096·(n + 1) bytes.
ONEDNN_ENTRY_ALIGNMENT = 128
ONEDNN_PAGE = 4096


def booked(*entries: int, barriers: tuple[int, ...] = ()) -> int:
    """Bytes of a scratchpad with these entries (bytes each, empty ones skipped) and barriers."""
    return (sum(n + ONEDNN_ENTRY_ALIGNMENT for n in entries if n)
            + sum(ONEDNN_PAGE * (n + 1) for n in barriers if n))


def up(n: int, to: int) -> int:
    return -(-n // to) * to


def up16(n: int) -> int:
    return up(n, 16)


def div_up(a: int, b: int) -> int:
    return -(-a // b)
