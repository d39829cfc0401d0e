"""A distributed result (``profiler.distributed.run``) as text or Markdown: per rank, the steady
training step's predicted peak, the measured one when there is one, and what was alive at the
peak rank's peak."""
from __future__ import annotations

from typing import Any, Callable

from profiler.report import grid, units
from profiler.report.units import OPTIMIZER_LABELS


def render_distributed(result: dict[str, Any], *, markdown: bool = False) -> str:
    layout: Callable = grid.markdown if markdown else grid.text
    setup = result["distributed"]
    strategy = setup["strategy"]
    options = ", ".join(f"{k}={v}" for k, v in strategy.items() if k != "name")
    title = (f"{result['model']}: {strategy['name']} over {setup['world_size']} ranks"
             f"{' (' + options + ')' if options else ''}, batch {setup['batch_per_rank']} per rank, "
             f"{setup['dtype']}{', autocast ' + setup['amp'] if setup.get('amp') else ''}")
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
        alive = [[category, units.nbytes(n)] for category, n in top["breakdown"].items() if n]
        heading = f"Alive at rank {peak}'s predicted peak ({top['at']})"
        parts.append((f"### {heading}" if markdown else heading) + "\n"
                     + layout(["category", "bytes"], alive, right=[False, True]))
    return "\n\n".join(parts) + "\n"
