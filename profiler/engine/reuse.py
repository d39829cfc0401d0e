"""How long ago each call's inputs were last touched: their reuse distance, in bytes.

A CPU reads a tensor at its cache's speed when little else was touched since it was last used,
and at its memory's speed otherwise: a 9.4 MB weight multiplied by one row took 94 µs read again
at once and 430-500 µs after three other such weights (AMD EPYC, 32 MB L3, 2 threads); a network
whose weights do not fit its caches reads every weight from memory on every pass (torchvision's
resnet18, 47 MB: its last stage's convolutions measured 1.7 × their warm micro-benchmarks). The
distance of a read is the bytes of the distinct storages touched since that storage was last
touched, read or written (an LRU cache's stack distance): below the cache's size it hits.

The calls are one repeated loop (an inference pass, or a training step with its update): each
distance is taken in the loop's second run, so a weight last touched by the previous step's
update counts the whole loop since. Storages are the calls' ``reads`` and ``writes``
(:class:`~profiler.engine.op_cost.OpCost`), identities within one log: the copies of a layer that
:mod:`profiler.engine.layer_runs` repeats touch the same storages, so a long run of identical
layers cut short reads as if its weights were shared (warmer than a real run).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from profiler.engine.op_cost import OpCost

#: a read of a storage not touched before in the loop: farther than any cache
NEVER = math.inf


def read_distances(calls: Sequence[OpCost]) -> list[tuple[tuple[int, float], ...]]:
    """For each call, (bytes, distance) of each storage it reads, in its ``reads`` order (see the
    module docstring).

    >>> from profiler.engine.op_cost import OpCost
    >>> def call(reads, writes):
    ...     return OpCost("aten.x", "memory", "forward", "", "float32", "", 0, 0, 0, reads=reads, writes=writes)
    >>> loop = [call(((1, 100), (2, 10)), ((3, 10),)), call(((3, 10),), ((4, 10),))]
    >>> read_distances(loop)   # since 1's last touch: 2, 3, 4; since 2's: 3, 4; 3 just written
    [((100, 30.0), (10, 20.0)), ((10, 0.0),)]
    """
    return [reads for reads, _ in call_distances(calls)]


def signature(call: OpCost) -> tuple:
    """What makes two calls the same kernel call: the operator, its kernel family and dtype, its
    FLOPs and bytes (the same layer repeated makes the same calls on other storages)."""
    return (call.op, call.kernel, call.dtype, call.flops, call.bytes_read, call.bytes_written)


def call_distances(calls: Sequence[OpCost]) -> list[tuple[tuple[tuple[int, float], ...], float]]:
    """For each call, its reads' (bytes, distance) (:func:`read_distances`) and the distance
    since a call of its :func:`signature` last ran: the bytes of the storages touched since (the
    whole loop for a layer of its own; the layer before's for the second of two identical
    layers). A Fenwick tree over the touches holds each storage's bytes at its latest touch (a
    signature is touched with no bytes), so the bytes touched since any touch are a suffix sum:
    O(log n) a touch (300,000 calls, ~4 s).

    >>> from profiler.engine.op_cost import OpCost
    >>> def call(op, reads):
    ...     return OpCost(op, "memory", "forward", "", "float32", "", 0, 0, 0, reads=reads)
    >>> [d for _, d in call_distances([call("a", ((1, 100),)), call("b", ((2, 10),)), call("a", ((3, 5),))])]
    [0.0, 105.0, 10.0]
    """
    size = 2 * sum(len(c.reads) + len(c.writes) + 1 for c in calls)
    tree = [0] * (size + 1)
    latest: dict[object, tuple[int, int]] = {}   # storage or signature -> (position of its latest touch, bytes)
    total = position = 0
    found: list[tuple[tuple[tuple[int, float], ...], float]] = []

    def since(key: object) -> float:
        last = latest.get(key)
        if last is None:
            return NEVER
        before, i = 0, last[0]
        while i > 0:
            before += tree[i]
            i -= i & -i
        return float(total - before)

    for loop in range(2):
        for call in calls:
            key = signature(call)
            distances = tuple((nbytes, since(storage)) for storage, nbytes in call.reads)
            own = since(key)
            for storage, nbytes in (*call.reads, *call.writes, (key, 0)):
                last = latest.get(storage)
                if last is not None:
                    i = last[0]
                    while i <= size:
                        tree[i] -= last[1]
                        i += i & -i
                    total -= last[1]
                position += 1
                i = position
                while i <= size:
                    tree[i] += nbytes
                    i += i & -i
                total += nbytes
                latest[storage] = (position, nbytes)
            if loop:
                found.append((distances, own))
    return found
