"""The answer of ``modelsize fit`` (the dict of :meth:`profiler.planning.fit.Fit.as_dict`) as text or Markdown."""
from __future__ import annotations

from typing import Any, Callable

from profiler.report.time_tables import render_time
from profiler.report import grid, units
from profiler.report.tables import OPTIMIZER_LABELS


def mode_label(mode: str) -> str:
    return "inference" if mode == "inference" else f"training with {OPTIMIZER_LABELS.get(mode, mode)}"


def render_fit(result: dict[str, Any], *, markdown: bool = False, explain: bool = False) -> str:
    layout: Callable = grid.markdown if markdown else grid.text
    title = (f'Model: "{result["model"]}": largest batch for {mode_label(result["mode"])} '
             f'({result["dtype"]}{", autocast " + result["amp"] if result.get("amp") else ""}, '
             f'loss {result["loss"]}) on {_target(result)}')
    parts = [f"## {title}" if markdown else title, layout(["", "Bytes", ""], budget_rows(result),
                                                             right=[False, True, False])]
    parts.append(_answer(result))
    parts.append(layout(["Batch", "Predicted", "Budget", ""], _peak_rows(result), right=[True, True, True, False]))
    if explain and result["peak"]:
        breakdown = result["peak"]["breakdown"]
        parts.append(layout([f"At batch {result['batch']}: {result['peak']['at']}", "Bytes"],
                            [[k, units.nbytes(v)] for k, v in breakdown.items() if v],
                            right=[False, True]))
    if result.get("predicted_time"):
        parts.append(render_time({"predicted_time": result["predicted_time"], "batch": result["batch"]},
                                 layout, markdown))
    if "verification" in result:
        parts.append(_verification(result["verification"], layout))
    return "\n\n".join(parts) + "\n"


def _target(r: dict) -> str:
    accelerator = r["budget"]["accelerator"]
    if accelerator:
        return f"{accelerator['name']} ({accelerator['model']})"
    return "CUDA" if r["target"] == "cuda" else "CPU"


def budget_rows(r: dict) -> list[list[str]]:
    """What comes off the memory before the model's tensors, row by row (``r["budget"]``)."""
    b = r["budget"]
    accelerator = b["accelerator"]
    source = (("nominal: " if accelerator["nominal"] else "") + "catalog") if accelerator else "--memory"
    rows = [["memory", units.nbytes(b["memory_bytes"]), f"{b['memory_bytes']:,} B ({source})"]]
    if b["reserve_bytes"]:
        rows.append(["− reserve", units.nbytes(b["reserve_bytes"]), "CUDA context and handles, outside the allocator"
                     if b["target"] == "cuda" else "--reserve"])
    if b.get("comm_reserve_bytes"):
        rows.append(["− NCCL buffers", units.nbytes(b["comm_reserve_bytes"]),
                     "NCCL buffers (outside the allocator, not measured here)"])
    if b["margin_bytes"]:
        rows.append(["− fragmentation margin", units.nbytes(b["margin_bytes"]),
                     f"{b['margin_fraction'] * 100:g}% of memory − reserves"])
    rows.append(["= usable", units.nbytes(b["usable_bytes"]), f"{b['usable_bytes']:,} B"])
    if b["target"] == "cuda":
        rows.append(["cuBLAS workspace", units.nbytes(b["blas_workspace_bytes"]),
                     "per handle, inside the allocator: counted in the peak"])
    return rows


def _answer(r: dict) -> str:
    usable = r["budget"]["usable_bytes"]
    if not r["fits"]:
        return (f"Nothing fits: batch 1 needs {units.nbytes(r['next']['bytes'])} "
                f"({r['next']['bytes']:,} B), over the usable {units.nbytes(usable)}.")
    text = (f"Largest batch: {r['batch']:,}. Headroom {units.nbytes(r['headroom_bytes'])} "
            f"({r['headroom_bytes']:,} B, {r['headroom_fraction'] * 100:.2f}% of usable); "
            f"peak at {r['peak']['at']}. {r['predict_calls']} predictions"
            + (f" ({r['method']})." if r.get("method") else "."))
    for note in r.get("notes", []):
        text += f" Note: {note}."
    for warning in r.get("warnings", []):
        text += f"\nWarning: {warning}"
    if r["capped"]:
        text += (f" The search stops at {r['max_batch']:,} (2**{r['max_batch'].bit_length() - 1}): "
                 "larger batches may fit too.")
    return text


def _peak_rows(r: dict) -> list[list[str]]:
    usable = r["budget"]["usable_bytes"]
    rows = []
    for evaluation in (r["peak"], r["next"]):
        if evaluation is None:
            continue
        fits = evaluation["bytes"] <= usable
        note = "fits" if fits else "over budget"
        if r["target"] == "cuda":
            note += f"; max_memory_allocated {units.nbytes(evaluation['allocated_bytes'])}"
        rows.append([f"{evaluation['batch']:,}", f"{evaluation['bytes']:,}", ("<= " if fits else "> ") + f"{usable:,}",
                     note])
    return rows


def _verification(v: dict, layout: Callable) -> str:
    rows = []
    for check in (v["at_batch"], v["next"]):
        if check is None:
            continue
        if check["skipped"]:
            measured, verdict = "-", f"not measured: {check['skipped']}"
        elif check["does_not_fit"]:
            measured, verdict = "-", f"does not fit: {check['does_not_fit']}"
        else:
            measured = f"{check['measured_bytes']:,}"
            verdict = "within budget" if check["within_budget"] else "over budget"
        rows.append([f"{check['batch']:,}", f"{check['predicted_bytes']:,}", measured, verdict])
    held = {True: "yes", False: "NO", None: "not known"}[v["held"]]
    table = layout(["Batch", "Predicted", f"Measured ({v['figure']})", f"Budget {v['budget_bytes']:,} B"], rows,
                   right=[True, True, True, False])
    return f"Measured on {v['device']}:\n\n{table}\n\nPrediction held: {held}."
