"""The largest per-rank batch whose predicted peak fits each rank's memory, for a strategy at world
size N, solved as the module fit solves it (``planning.module_fit``): each rank group replayed at
two batch sizes, every allocation and free of its first and its steady training step read as
``a × batch + c``, the batch solved over the larger of the two (a training loop runs both: the
first step makes the optimizer state and whatever the strategy makes once, the steady one starts
with them), and proven by replays at ``b`` and ``b + 1``; the answer says which step binds.

Every rank group (ranks with the same shards) is solved and the smallest answer kept: it is the
batch every rank can take. The budget is the planner's (``planning.fit.Budget``: CPU bytes, or a
card's memory less the CUDA context, a fragmentation margin and cuBLAS workspaces, blocks rounded
as the caching allocator rounds them); collective buffers are counted as the prediction books
them (gloo's on a CPU target; none on CUDA, NCCL's being outside the allocator: the budget sets
NCCL's share of each rank's card aside instead, ``Budget.comm_reserve_bytes``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from profiler.distributed.job import Job
from profiler.distributed.predict import RankPrediction, predict_rank, rank_groups
from profiler.planning.fit import Budget, largest_fitting, modelled_bytes, replayed_bytes
from profiler.planning.module_fit import PROBES, LinearTimeline


def solve(job: Job, budget: Budget, *, max_batch: int = 2 ** 20) -> dict[str, Any]:
    """The answer as a dict: per-rank batch, the peak at it and at the next batch, what is alive
    at the peak, and how it was found."""
    job = replace(job, device_kind=budget.target)
    mode = job.optimizer
    usable = budget.usable_bytes
    answers = []
    replays = 0
    for group in rank_groups(job):
        rank = group[0]
        cache: dict[int, RankPrediction] = {}

        def exact(batch: int) -> RankPrediction:
            nonlocal replays
            if batch not in cache:
                cache[batch] = predict_rank(_at_batch(job, batch), rank)
                replays += 1
            return cache[batch]

        def figure(p: RankPrediction) -> int:
            return replayed_bytes(_timelines(p), budget, mode)

        (b1, b2) = PROBES
        lines = _lines(b1, exact(b1), b2, exact(b2))
        method = f"every allocation as a × batch + c from replays at batches {b1} and {b2}"
        if lines is None:
            batch = largest_fitting(lambda b: figure(exact(b)), usable, max_batch)
            method = "bisection over full replays (the replays at two batches were not the same events)"
        else:
            batch = largest_fitting(lambda b: modelled_bytes(lines, b, budget, mode), usable, max_batch)
            held = (batch == 0 or figure(exact(batch)) <= usable) and figure(exact(batch + 1)) > usable
            if held:
                method += f"; confirmed by replays at {batch} and {batch + 1}"
            else:
                batch = largest_fitting(lambda b: figure(exact(b)), usable, max_batch)
                method += "; not confirmed by replays, then bisection over full replays"
        answers.append((batch, rank, group, method, exact(max(batch, 1)), exact(batch + 1)))
    batch, rank, group, method, at, at_next = min(answers, key=lambda a: (a[0], a[1]))
    peak = _figures(at, budget, mode)
    return {"world_size": job.world, "strategy": job.strategy.as_dict(), "optimizer": mode,
            "dtype": job.dtype, "loss": job.loss, "batch_per_rank": batch, "global_batch": batch * job.world,
            "limiting_rank": rank, "ranks_alike": group, "budget": budget.as_dict(),
            "usable_bytes": usable, "peak": peak, "binding_step": peak["step"],
            "next": _figures(at_next, budget, mode), "method": method, "replays": replays}


def _timelines(p: RankPrediction) -> list[Any]:
    """The steady step's timeline, then the first step's."""
    return [p.timeline, p.first_timeline]


def _lines(b1: int, p1: RankPrediction, b2: int, p2: RankPrediction) -> list[LinearTimeline] | None:
    """Both steps' timelines as lines in the batch (None: the two replays differ in their events)."""
    lines = []
    for t1, t2 in zip(_timelines(p1), _timelines(p2)):
        line = LinearTimeline.fit(b1, t1.events, b2, t2.events, t1.start) if t1.start == t2.start else None
        if line is None:
            return None
        lines.append(line)
    return lines


def _figures(p: RankPrediction, budget: Budget, mode: str) -> dict[str, Any]:
    """The figure compared with the budget (the larger step's), which step it is, and its peak."""
    steady, first = (replayed_bytes([t], budget, mode) for t in _timelines(p))
    binds = "first" if first > steady else "steady"
    peak = p.first if binds == "first" else p
    return {"bytes": max(steady, first), "step": binds, "steady_bytes": steady, "first_step_bytes": first,
            "tensor_bytes": p.first.bytes if binds == "first" else p.peak_bytes,
            "at": (f"first step: {peak.at}" if binds == "first" else p.at),
            "breakdown": dict(peak.breakdown), "shard_bytes": p.param_bytes}


def _at_batch(job: Job, batch: int) -> Job:
    """The job at another per-rank batch; outputs whose first axis is the batch follow it (the
    others are traced again)."""
    if job.output_shapes and all(s and s[0] == job.batch for s in job.output_shapes):
        return replace(job, batch=batch, output_shapes=tuple((batch, *s[1:]) for s in job.output_shapes))
    return replace(job, batch=batch).with_outputs()
