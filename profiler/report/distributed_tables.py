"""A distributed result (``profiler.distributed.run``) as text or Markdown: per rank, the steady
training step's predicted peak, the measured one when there is one, and what was alive at the
peak rank's peak (predicted and measured, by category)."""
from __future__ import annotations

from typing import Any, Callable

from profiler.report import grid, units
from profiler.report.fit_tables import budget_rows
from profiler.report.units import OPTIMIZER_LABELS


def render_distributed(result: dict[str, Any], *, markdown: bool = False) -> str:
    layout: Callable = grid.markdown if markdown else grid.text
    setup = result["distributed"]
    strategy = setup["strategy"]
    options = ", ".join(f"{k}={v}" for k, v in strategy.items() if k != "name")
    title = (f"{result['model']}: {strategy['name']} over {setup['world_size']} ranks"
             f"{' (' + options + ')' if options else ''}, batch {setup['batch_per_rank']} per rank, "
             f"{setup['dtype']}{', autocast ' + setup['amp'] if setup.get('amp') else ''}"
             f"{', CUDA ranks (tensor bytes, unrounded)' if setup.get('device_kind') == 'cuda' else ''}")
    parts = [f"## {title}" if markdown else title]
    measured = result.get("measured_ranks", {})
    for optimizer, ranks in result["predicted_ranks"].items():
        label = OPTIMIZER_LABELS.get(optimizer, optimizer)
        got = measured.get(optimizer)
        headers = ["rank", "parameters (shard)", "alive at start", "predicted peak"]
        if got:
            headers += ["measured peak", "error"]
        rows = []
        for i, r in enumerate(ranks):
            row = [str(r["rank"]), units.nbytes(r["param_bytes"]), units.nbytes(r["start_bytes"]),
                   units.nbytes(r["peak_bytes"])]
            if got:
                error = result["relative_error_ranks"][optimizer][i]
                row += [units.nbytes(got[i]["peak_bytes"]), units.percent(error)]
            rows.append(row)
        peak = result["peak_rank"][optimizer]
        heading = f"Training step ({label}), steady state, per rank; peak rank {peak}"
        parts.append((f"### {heading}" if markdown else heading) + "\n" + layout(headers, rows, right=[True] * len(headers)))
        top = ranks[peak]
        heading = f"Alive at rank {peak}'s predicted peak ({top['at']})"
        compared = result.get("breakdown_comparison_ranks", {}).get(optimizer)   # none in older results
        if compared:
            both = compared[peak]
            alive = [[c, units.nbytes(v["predicted"]), units.nbytes(v["measured"]), units.percent(v["relative_error"])]
                     for c, v in both.items() if v["predicted"] or v["measured"]]
            headers = ["category", "predicted", "measured", "error"]
            heading += " and measured peak"
        else:
            alive = [[category, units.nbytes(n)] for category, n in top["breakdown"].items() if n]
            headers = ["category", "bytes"]
        parts.append((f"### {heading}" if markdown else heading) + "\n"
                     + layout(headers, alive, right=[False] + [True] * (len(headers) - 1)))
    return "\n\n".join(parts) + "\n"


def render_distributed_fit(result: dict[str, Any], *, markdown: bool = False) -> str:
    """The per-rank batch a distributed fit found, its peak and what is alive then."""
    layout: Callable = grid.markdown if markdown else grid.text
    strategy = result["strategy"]
    budget = result["budget"]
    label = OPTIMIZER_LABELS.get(result["optimizer"], result["optimizer"])
    card = (budget.get("accelerator") or {}).get("name") if isinstance(budget.get("accelerator"), dict) else None
    where = f"{result['world_size']} × {card or units.nbytes(budget['memory_bytes'])}"
    title = f"{result['model']}: {strategy['name']} over {where}, {label}"
    lines = [f"## {title}" if markdown else title,
             f"Largest batch per rank: {result['batch_per_rank']} (global {result['global_batch']}); "
             f"limiting rank {result['limiting_rank']}",
             f"Peak per rank at it: {units.nbytes(result['peak']['bytes'])} of {units.nbytes(result['usable_bytes'])} "
             f"usable ({result['peak']['at']}); at the next batch {units.nbytes(result['next']['bytes'])}",
             f"Binding step: the {result['peak']['step']} step ({units.nbytes(result['peak']['steady_bytes'])} "
             f"steady, {units.nbytes(result['peak']['first_step_bytes'])} first)",
             f"Method: {result['method']} ({result['replays']} replays)"]
    alive = [[c, units.nbytes(n)] for c, n in result["peak"]["breakdown"].items() if n]
    return "\n".join(lines) + "\n\nBudget per rank\n" + layout(["", "Bytes", ""], budget_rows(result),
                                                            right=[False, True, False]) \
        + "\n\nAlive at the peak (tensor bytes)\n" + layout(["category", "bytes"], alive, right=[False, True]) + "\n"
