"""Per-rank training-step peaks on 2 real gloo ranks against the fake-process-group prediction
(issue 13): DDP, FSDP2 (reshard after forward or not), ZeRO-1, SGD and Adam, over models of the
spec zoo and the real-world zoo. ``benchmarks/test_distributed.py`` runs it and writes
``results/distributed.md/.json``."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
BATCH = 2   # per rank
STRATEGIES = (("ddp", {}), ("fsdp", {"reshard_after_forward": True}),
              ("fsdp", {"reshard_after_forward": False}), ("zero1", {}))
#: FSDP2's wrapping per model: per module, per block, or (absent) the root only
WRAP = {"spec zoo mlp": ("Linear",), "torchvision resnet18": ("BasicBlock",), "timm vit (test_vit)": ("Block",),
        "transformers gpt2 (sdpa)": ("GPT2Block",), "transformers llama (sdpa)": ("LlamaDecoderLayer",)}
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class ZooModel:
    """A real-world zoo entry's factory by name (picklable: each rank looks it up again)."""
    name: str

    def __call__(self) -> Any:
        from realworld_zoo import ZOO
        return next(e for e in ZOO if e.name == self.name).factory()


def models() -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, reference for ``resolve`` or a zoo factory, input options) of every model run."""
    from realworld_zoo import ZOO
    chosen = ["torchvision resnet18", "timm vit (test_vit)", "transformers gpt2 (sdpa)",
              "transformers llama (sdpa)", "torch nn.TransformerEncoderLayer"]
    out: list[tuple[str, Any, dict[str, Any]]] = []
    for spec in ("mlp", "cnn", "transformer"):
        out.append((f"spec zoo {spec}", str(ROOT / "benchmarks" / "zoo" / f"{spec}.yaml"), {}))
    for entry in ZOO:
        if entry.name in chosen:
            out.append((entry.name, ZooModel(entry.name),
                        {"input_shape": entry.input_shape, "input_dtype": entry.input_dtype,
                         "int_high": entry.int_high}))
    return out


def jobs_for(name: str, reference: Any, inputs: dict[str, Any]) -> list[Any]:
    from profiler.distributed.run import job_for
    from profiler.distributed.strategies import Strategy
    from profiler.frontends.source import resolve
    source = resolve(reference, **{k: v for k, v in inputs.items() if v is not None})
    args = {"model": reference, **inputs}
    jobs = []
    for kind, options in STRATEGIES:
        for optimizer in OPTIMIZERS:
            if kind == "fsdp":
                options = {**options, "fsdp_wrap": WRAP.get(name, ())}
            job = job_for(source, args, world=WORLD, strategy=Strategy(kind, **options), batch=BATCH,
                          optimizer=optimizer)
            if not isinstance(reference, str):   # a zoo factory travels as itself
                from dataclasses import replace
                job = replace(job, factory=reference)
            jobs.append(job)
    return jobs


def run(name: str, reference: Any, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every strategy and optimizer of one model: one row per (case, rank)."""
    from profiler.distributed import launch, predict
    jobs = jobs_for(name, reference, inputs)
    measured = launch.measure_all(jobs)
    rows = []
    for job, ranks in zip(jobs, measured):
        predicted = predict.predict(job)
        for p, m in zip(predicted, ranks):
            rows.append({"model": name, "strategy": job.strategy.as_dict(), "optimizer": job.optimizer,
                         "rank": p.rank, "predicted": p.peak_bytes, "measured": m.peak_bytes,
                         "error": (p.peak_bytes - m.peak_bytes) / m.peak_bytes,
                         "param_bytes": p.param_bytes, "measured_param_bytes": m.param_bytes,
                         "predicted_breakdown": dict(p.breakdown), "measured_breakdown": dict(m.breakdown),
                         "remeasured": m.remeasured})
    return rows


def category_errors(row: dict[str, Any]) -> dict[str, int]:
    """Category -> predicted - measured bytes at each side's peak, the categories that differ."""
    p, m = row["predicted_breakdown"], row["measured_breakdown"]
    return {c: p.get(c, 0) - m.get(c, 0) for c in (*p, *(c for c in m if c not in p))
            if p.get(c, 0) != m.get(c, 0)}


def largest_category_error(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest per-category difference over ``rows``: bytes, share of the measured peak and of
    the measured category, and where."""
    worst = max(((abs(d), d, c, r) for r in rows for c, d in category_errors(r).items()),
                key=lambda w: w[0], default=None)
    if worst is None:
        return None
    _, d, c, r = worst
    category = r["measured_breakdown"].get(c, 0)
    return {"bytes": d, "category": c, "of_peak": d / r["measured"], "of_category": d / category if category else None,
            "model": r["model"], "strategy": label(r["strategy"]), "optimizer": r["optimizer"], "rank": r["rank"]}


def label(strategy: dict[str, Any]) -> str:
    if strategy["name"] == "fsdp":
        return "FSDP2, reshard" if strategy["reshard_after_forward"] else "FSDP2, no reshard"
    return {"ddp": "DDP", "zero1": "ZeRO-1"}[strategy["name"]]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in rows]
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(label(r["strategy"]), []).append(r["error"])
    stats = lambda e: {"figures": len(e), "exact": sum(x == 0 for x in e),   # noqa: E731
                       "median_abs_error": statistics.median(abs(x) for x in e),
                       "max_abs_error": max(abs(x) for x in e)}
    out = {"all": stats(errors), **{k: stats(v) for k, v in by.items()}}
    for group in out:
        chosen = [r for r in rows if group == "all" or label(r["strategy"]) == group]
        out[group]["breakdowns_exact"] = sum(not category_errors(r) for r in chosen)
        out[group]["largest_category_error"] = largest_category_error(chosen)
        out[group]["communication_bytes_max"] = max(r["measured_breakdown"].get("communication", 0) for r in chosen)
    return {**out, "models": len({r["model"] for r in rows})}


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any], machine: dict[str, Any]) -> str:
    from profiler.report import grid, units
    headers = ["Model", "strategy", "FSDP2 wraps", "optimizer", "rank", "shard", "predicted peak", "measured peak",
               "error", "communication", "categories"]
    cells = [[r["model"], label(r["strategy"]), ", ".join(r["strategy"].get("fsdp_wrap", [])) or "-", r["optimizer"],
              str(r["rank"]), units.nbytes(r["param_bytes"]),
              units.nbytes(r["predicted"]), units.nbytes(r["measured"]), units.percent(r["error"]),
              units.nbytes(r["measured_breakdown"].get("communication", 0)),
              ", ".join(f"{c} {d:+,} B" for c, d in category_errors(r).items()) or "exact"]
             for r in rows]
    lines = [f"- {group}: {s['figures']} per-rank peaks, {s['exact']} exact; median |error| "
             f"{s['median_abs_error'] * 100:.3f}%, maximum |error| {s['max_abs_error'] * 100:.3f}%; "
             f"{s['breakdowns_exact']} per-rank breakdowns exact in every category"
             + _worst(s["largest_category_error"])
             + f"; communication at the measured peak up to {units.nbytes(s['communication_bytes_max'])}."
             for group, s in summary.items() if isinstance(s, dict)]
    return ("# Scale-out memory: per-rank training-step peaks on 2 gloo ranks (CPU, float32)\n\n"
            f"Each rank's steady (second) training step, batch {BATCH} per rank: predicted in one process on "
            "fake tensors with a fake process group (rank r of 2), measured on 2 real gloo ranks "
            "(torch.multiprocessing, the CPU allocator's events). FSDP2 wraps the classes named (then the "
            "root), or the root only. Each rank's peak is also split by category on both sides (the "
            "measured split: the runner's peak_breakdown in each rank); \"categories\" lists the categories "
            "that differ (predicted − measured bytes), \"communication\" what the collectives hold at the "
            "measured peak (gloo's copies; FSDP2's all-gather output, its packed reduce-scatter input "
            "and output, the input's padding). "
            f"{summary['models']} models; one run each.\n\n" + "\n".join(lines) + "\n\n"
            + grid.markdown(headers, cells, right=[False, False, False, False, True, True, True, True, True, True,
                                                   False])
            + f"\n\nMachine: {machine.get('cpu_model', '')}, {machine.get('cpu_logical_cores', '')} logical cores, "
            f"torch {machine.get('torch_version', '')}.\n")


def _worst(worst: dict[str, Any] | None) -> str:
    if worst is None:
        return ""
    of_category = "" if worst["of_category"] is None else f", {worst['of_category'] * 100:+.2f}% of the category"
    return (f" (largest category error {worst['bytes']:+,} B in {worst['category']}{of_category}, "
            f"{worst['of_peak'] * 100:+.3f}% of the peak: {worst['model']}, {worst['strategy']}, "
            f"{worst['optimizer']}, rank {worst['rank']})")
