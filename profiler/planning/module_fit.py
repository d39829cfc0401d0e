"""Capacity planning for torch modules (and the lines specs are solved over): solved from two
traces, then proven by two more.

A fake-tensor replay of a large model takes seconds, so the planner does not bisect over full
replays. It replays the step at two batch sizes (:data:`PROBES`), where the kernels make the
same allocations in the same order, and reads each allocation and free of the timeline as
``a × batch + c`` (two points fix ``a`` and ``c``; both must come out whole numbers). The peak at
any batch is then the highest prefix sum of those lines — milliseconds to evaluate — and the
largest batch whose peak fits is found by doubling and bisection over that model. The answer is
confirmed by two full replays, at ``b`` and ``b + 1``. When either disagrees with the model (a
kernel that chooses differently at another batch size: im2col at batch 1, another oneDNN
algorithm or scratchpad size), the lines are read again from two replays next to the answer and
the batch solved again between the batches proven so far; after :data:`REFITS` tries, bisection
over full replays finishes the search. The answer says which way it was found.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

from profiler.frontends.source import ModuleSource

if TYPE_CHECKING:
    from profiler.engine.module_memory import MemoryPrediction

#: The two batch sizes the linear model is read from (batch 1 is avoided: some CPU kernels
#: choose differently there).
PROBES = (2, 3)
#: How many times the lines are read again near a batch the replays did not confirm.
REFITS = 3


@dataclass(frozen=True)
class LinearTimeline:
    """A timeline whose every event is ``a × batch + c`` bytes, kept as what it does to its
    block: the block's size before and after the event, each an index into ``sizes``, the
    distinct lines (a 10,000-layer step's ~200,000 events have a few dozen), so that a peak at
    any batch is a footprint per line and one running sum."""
    sizes: tuple[tuple[int, int], ...]      # distinct (a, c) of a block's size
    steps: tuple[tuple[int, int], ...]      # per event: (size before, size after)
    start: int

    @classmethod
    def fit(cls, b1: int, events1: Sequence[tuple[Hashable, int]], b2: int, events2: Sequence[tuple[Hashable, int]],
            start: int = 0) -> "LinearTimeline | None":
        """The lines through two timelines of the same (block, ±bytes) events, or None when they
        are not the same events or a line has no whole-number slope."""
        if len(events1) != len(events2):
            return None
        index: dict[tuple[int, int], int] = {(0, 0): 0}
        size: dict[Hashable, tuple[int, int]] = {}
        steps = []
        for (block1, d1), (block2, d2) in zip(events1, events2):
            rise = d2 - d1
            if block1 != block2 or rise % (b2 - b1) or (d1 > 0) != (d2 > 0):
                return None
            a = rise // (b2 - b1)
            old = size.get(block1, (0, 0))
            new = size[block1] = (old[0] + a, old[1] + d1 - a * b1)
            steps.append((index.setdefault(old, len(index)), index.setdefault(new, len(index))))
        return cls(tuple(index), tuple(steps), start)

    def peak(self, batch: int, footprint: Callable[[int], int] | None = None) -> int:
        """The highest live total at ``batch`` (after the first ``start`` events), each block
        counted as ``footprint(its bytes)`` (default: exact)."""
        at = [a * batch + c for a, c in self.sizes]
        if footprint is not None:
            at = [footprint(n) for n in at]
        totals = list(accumulate(at[new] - at[old] for old, new in self.steps))
        return max(0, max(totals[max(self.start - 1, 0):], default=0))


def keys(mode: str) -> tuple[str, ...]:
    """The timelines a mode's figure is the largest of: a training loop runs the first and the
    steady step."""
    return ("inference",) if mode == "inference" else (f"train_{mode}", f"train_first_step_{mode}")


def replay(source: ModuleSource, batch: int, *, mode: str, dtype: str, loss: str, amp: str | None,
           threads: int | None, device_kind: str) -> MemoryPrediction:
    """One full fake-tensor replay of the mode at ``batch``."""
    from profiler.engine.torch_module import memory
    return memory(source.for_prediction(), list(source.input_shapes), batch=batch,
                  input_dtype=list(source.input_dtypes), dtype=dtype, loss=loss,
                  optimizers=() if mode == "inference" else (mode,), amp=amp, threads=threads,
                  device_kind=device_kind, name=source.name)


def linear_model(probes: dict[int, MemoryPrediction], mode: str) -> dict[str, LinearTimeline] | None:
    """Each timeline of ``mode`` as lines in the batch, from the two probe replays (None: the
    kernels allocate differently at the two probes)."""
    (b1, m1), (b2, m2) = sorted(probes.items())
    lines = {}
    for key in keys(mode):
        t1, t2 = m1.timelines[key], m2.timelines[key]
        line = LinearTimeline.fit(b1, t1.events, b2, t2.events, t1.start) if t1.start == t2.start else None
        if line is None:
            return None
        lines[key] = line
    return lines
