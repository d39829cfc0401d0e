"""The distributed job behind ``summary``/``profile --world-size N``: each rank's steady
training-step peak predicted (fake process group) and, for ``profile``, measured on N local gloo
ranks, as one result dict (the saved JSON; ``report.distributed_tables`` renders it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from profiler.distributed import launch
from profiler.distributed.job import Job
from profiler.distributed.predict import RankPrediction, predict
from profiler.distributed.strategies import Strategy
from profiler.frontends.source import ModuleSource
from profiler.report.results import breakdown_comparison


@dataclass(frozen=True)
class Reference:
    """A factory that resolves a model reference (``frontends.source.resolve``'s arguments) in the
    process that calls it: each measured rank builds its own model from it (a factory closure does
    not travel to a spawned process; its reference does)."""
    arguments: tuple[tuple[str, Any], ...]

    def __call__(self) -> torch.nn.Module:
        from profiler.frontends.build import build
        from profiler.frontends.source import resolve
        arguments = dict(self.arguments)
        source = resolve(arguments.pop("model"), **arguments)
        if isinstance(source, ModuleSource):
            return source.factory() if torch.get_default_device().type == "meta" else source.build()
        return build(source, device=str(torch.get_default_device()))


def job_for(source: Any, reference: dict[str, Any], *, world: int, strategy: Strategy, batch: int,
            optimizer: str, loss: str = "cross_entropy", dtype: str = "float32", amp: str | None = None,
            threads: int = 1, checkpoint: tuple[str, ...] = (), device_kind: str = "cpu") -> Job:
    """The job every rank runs for ``source`` (resolved from ``reference``)."""
    from profiler.workflow import token_range
    if isinstance(source, ModuleSource):
        shapes, kinds, highs = source.input_shapes, source.input_dtypes, source.bounds()
    else:
        shapes = tuple(tuple(i.shape) for i in source.inputs)
        kinds = tuple(i.dtype for i in source.inputs)
        highs = tuple(token_range(source, i.name) for i in source.inputs)
    factory = Reference(tuple(sorted(reference.items())))
    return Job(factory, tuple(shapes), tuple(kinds), tuple(highs), batch, strategy, world,
               optimizer=optimizer, loss=loss, dtype=dtype, amp=amp, threads=threads,
               checkpoint=tuple(checkpoint), device_kind=device_kind).with_outputs()


def run(jobs: Sequence[Job], *, name: str, measure: bool) -> dict[str, Any]:
    """Predict every job (one per optimizer), measure them in one launch when asked."""
    first = jobs[0]
    result: dict[str, Any] = {
        "model": name,
        "distributed": {"world_size": first.world, "strategy": first.strategy.as_dict(),
                        "batch_per_rank": first.batch, "dtype": first.dtype, "amp": first.amp,
                        "loss": first.loss, "threads_per_rank": first.threads,
                        "checkpoint": list(first.checkpoint), "device_kind": first.device_kind,
                        "optimizers": [j.optimizer for j in jobs]},
        "predicted_ranks": {}, "peak_rank": {},
        # what a saved result's file name is made of (report.results.file_name)
        "options": {"device": f"{first.strategy.name}-{first.world}-ranks"}, "dtype": first.dtype,
        "batch": first.batch,
    }
    for job in jobs:
        ranks = predict(job)
        result["predicted_ranks"][job.optimizer] = [r.as_dict() for r in ranks]
        result["peak_rank"][job.optimizer] = peak_rank(ranks)
    if measure:
        measured = launch.measure_all(list(jobs))
        result["measured_ranks"] = {job.optimizer: [m.as_dict() for m in ranks]
                                    for job, ranks in zip(jobs, measured)}
        result["relative_error_ranks"] = {
            job.optimizer: [_error(p["peak_bytes"], m["peak_bytes"])
                            for p, m in zip(result["predicted_ranks"][job.optimizer],
                                            result["measured_ranks"][job.optimizer])]
            for job in jobs}
        # per rank, category -> predicted and measured bytes at each one's peak
        result["breakdown_comparison_ranks"] = {
            job.optimizer: [breakdown_comparison({"peak": p}, {"peak": m["breakdown"]})["peak"]
                            for p, m in zip(result["predicted_ranks"][job.optimizer],
                                            result["measured_ranks"][job.optimizer])]
            for job in jobs}
    return result


def peak_rank(ranks: Sequence[RankPrediction]) -> int:
    """The rank with the highest peak (the lowest such rank)."""
    return max(ranks, key=lambda r: (r.peak_bytes, -r.rank)).rank


def _error(predicted: int, measured: int) -> float | None:
    return None if not measured else (predicted - measured) / measured
