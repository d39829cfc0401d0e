"""Result files side by side: rows are what ran, columns are where it ran.

A row is a model and the options that change what it computes (model, batch, loss, optimizers,
checkpointed layers, input gradients); a column is a run's setting (machine, its CPU or GPU,
device, dtype and autocast, threads, torch version), so float32 and bfloat16 runs of a model sit
side by side with their speed-up. Each cell holds, for the forward pass and each
training step, the predicted and measured peaks, the measured time, samples/s and the speed-up
against the baseline column (baseline time / this time). What-if columns hold a catalogued
accelerator's predictions for the same rows and say so. Files of other modelsize versions are read
when they carry :data:`REQUIRED`; an older one without ``measured.time`` has only a forward time.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from profiler.errors import ModelsizeError
from profiler.report import grid, units
from profiler.report.time_tables import measured_ms

#: keys (dotted paths) a result file needs to be compared, with their types; a "does not fit" file
#: needs no measurement
REQUIRED = {"model": str, "options.batch": int, "options.dtype": str, "options.device": str,
            "options.optimizers": list, "machine_info.hostname": str, "machine_info.torch_version": str}
MEASURED = {"predicted": dict, "measured": dict}
#: what a row is made of: options of the run that change its figures
ROW_KEYS = ("model", "batch", "loss", "optimizers", "checkpoint", "input_grad")
#: what a column is made of
COLUMN_KEYS = ("machine", "processor", "device", "dtype", "amp", "threads", "torch_version")
#: the figures of each run in a cell, in the order the tables show them, with their raw unit (CSV)
FIGURES = (("peak_predicted", "peak, predicted", "bytes"), ("peak_measured", "peak, measured", "bytes"),
           ("ms", "time", "ms"), ("samples_per_s", "samples/s", ""), ("speedup", "speed-up", "×"))

WhatIf = Callable[[dict[str, Any], str], "dict[str, Any] | None"]


def result_paths(names: Sequence[str]) -> list[Path]:
    """Each name a result file, or a folder whose ``*.json`` files are (a sweep's, a results/runs),
    but for hidden ones (``results.save``'s temporary ``.partial-*.json``)."""
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        paths += sorted(p for p in path.glob("*.json") if not p.name.startswith(".")) if path.is_dir() else [path]
    return paths


def load_results(names: Sequence[str]) -> list[dict[str, Any]]:
    """The result files named, each checked for the keys :func:`compare` reads: a file without one
    is refused in one line naming it and the key."""
    from profiler.report.results import read
    loaded = []
    for path in result_paths(names):
        result = read(path)
        problem = key_problem(result)
        if problem:
            raise ModelsizeError(problem, source=str(path))
        result["_file"] = str(path)
        loaded.append(result)
    if not loaded:
        raise ModelsizeError("no result files to compare", received=", ".join(names) or "nothing")
    return loaded


def key_problem(result: Any) -> str | None:
    """What is wrong with ``result``'s first key of :data:`REQUIRED` (and :data:`MEASURED`, unless
    it did not fit) that is missing or of another type; None when nothing is."""
    needed = {**REQUIRED, **({} if isinstance(result, dict) and "does_not_fit" in result else MEASURED)}
    for dotted, kind in needed.items():
        value = result
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                return f"missing key '{dotted}' (not a modelsize profile result, or one from a version without it)"
            value = value[part]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"key '{dotted}' holds {type(value).__name__}, expected {kind.__name__}"
    return None


def row_key(result: dict[str, Any]) -> dict[str, Any]:
    opts = result["options"]
    return {"model": result["model"], "batch": opts["batch"], "loss": opts.get("loss", "cross_entropy"),
            "optimizers": list(opts["optimizers"]), "checkpoint": list(opts.get("checkpoint") or []), "input_grad": bool(opts.get("input_grad"))}


def column_key(result: dict[str, Any]) -> dict[str, Any]:
    info, opts = result["machine_info"], result["options"]
    gpus = [g.get("name") for g in info.get("gpus") or [] if isinstance(g, dict)]
    processor = gpus[0] if opts["device"].startswith("cuda") and gpus else info.get("cpu_model")
    threads = opts.get("threads") or (result.get("measured") or {}).get("threads") or info.get("torch_threads")
    return {"machine": info["hostname"], "processor": processor, "device": opts["device"],
            "dtype": opts["dtype"], "amp": opts.get("amp"), "threads": threads, "torch_version": info["torch_version"]}


def runs(optimizers: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(run, label, peak key, predicted time key) of the forward pass and each training step."""
    return [("forward", "inference", "inference_peak_bytes", "forward_ms"),
            *((f"train_{o}", f"step {units.OPTIMIZER_LABELS.get(o, o)}", f"train_peak_bytes_{o}", f"train_{o}_ms")
              for o in optimizers)]


def compare(results: Sequence[dict[str, Any]], *, baseline: int = 1, devices: Sequence[str] = (),
            what_if: WhatIf | None = None) -> dict[str, Any]:
    """The comparison of ``results`` (loaded by :func:`load_results`) as data: columns, rows and
    their cells. ``baseline``: the column (numbered from 1) speed-ups are against; ``devices``:
    what-if columns, each cell ``what_if(result, device)``'s prediction (a summary result)."""
    columns: list[dict[str, Any]] = []
    rows: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    replaced = 0
    for result in results:
        column = column_key(result)
        if column not in [c["key"] for c in columns]:
            columns.append({"key": column, "predicted": False, "files": []})
        index = [c["key"] for c in columns].index(column)
        columns[index]["files"].append(result["_file"])
        key = row_key(result)
        name = json.dumps(key, sort_keys=True)
        rows.setdefault(name, {**key, "sources": []})["sources"].append(result)
        older = cells.get((name, index))
        if older is not None:
            replaced += 1
            if older["datetime"] > str(result.get("datetime", "")):
                continue
        cells[(name, index)] = _measured_cell(result)
    precisions = list(dict.fromkeys((c["key"]["dtype"], c["key"]["amp"]) for c in columns))
    last = len(columns) + len(devices) * len(precisions)   # one what-if column per device and precision
    if not 1 <= baseline <= last:
        raise ModelsizeError("no such column", field="baseline", expected=f"1 to {last}",
                             received=str(baseline))
    unpredicted = 0
    for device in devices:
        for dtype, amp in precisions:
            columns.append({"key": {"device": device, "dtype": dtype, "amp": amp}, "predicted": True, "files": []})
            index = len(columns) - 1
            for name, row in rows.items():
                source = next((r for r in row["sources"] if "does_not_fit" not in r
                               and (r["options"]["dtype"], r["options"].get("amp")) == (dtype, amp)), None)
                prediction = what_if(source, device) if (what_if and source) else None
                if prediction is not None:
                    cells[(name, index)] = _predicted_cell(prediction, row["optimizers"])
                else:
                    unpredicted += 1
    out_rows = []
    for name in sorted(rows, key=lambda n: _order(rows[n])):
        row = {k: v for k, v in rows[name].items() if k != "sources"}
        row["cells"] = [cells.get((name, i)) for i in range(len(columns))]
        _speedups(row["cells"], baseline - 1)
        out_rows.append(row)
    notes = [f"{replaced} result(s) of a cell already filled: the newest kept"] if replaced else []
    if unpredicted:
        notes.append(f"{unpredicted} what-if cell(s) left empty: no run of that row in that dtype, or a model "
                     f"the file cannot rebuild (a module passed from Python, a Hugging Face config)")
    return {"baseline": baseline, "columns": [{"number": i + 1, **c} for i, c in enumerate(columns)],
            "rows": out_rows, "notes": notes}


def _order(row: dict[str, Any]) -> tuple:
    return (row["model"], row["loss"], row["optimizers"], row["checkpoint"], row["input_grad"], row["batch"])


def _measured_cell(result: dict[str, Any]) -> dict[str, Any]:
    opts, batch = result["options"], result["options"]["batch"]
    cell: dict[str, Any] = {"file": result["_file"], "datetime": str(result.get("datetime", "")),
                            "params": (result.get("totals") or {}).get("params"),
                            "does_not_fit": result.get("does_not_fit"), "runs": {}}
    predicted, measured = result.get("predicted") or {}, result.get("measured") or {}
    for run, _, peak, _ in runs(opts["optimizers"]):
        ms = measured_ms(measured, run)
        cell["runs"][run] = {"peak_predicted": predicted.get(peak), "peak_measured": measured.get(peak),
                             "ms": ms, "samples_per_s": batch * 1000 / ms if ms else None}
    return cell


def _predicted_cell(prediction: dict[str, Any], optimizers: Sequence[str]) -> dict[str, Any]:
    predicted, timed = prediction["predicted"], prediction.get("predicted_time") or {}
    cell: dict[str, Any] = {"file": None, "params": (prediction.get("totals") or {}).get("params"),
                            "does_not_fit": None, "source": timed.get("source"), "runs": {}}
    for run, _, peak, time_key in runs(optimizers):
        ms = timed.get(time_key)
        cell["runs"][run] = {"peak_predicted": predicted.get(peak), "peak_measured": None, "ms": ms,
                             "samples_per_s": prediction["batch"] * 1000 / ms if ms else None}
    return cell


def _speedups(cells: list[dict[str, Any] | None], baseline: int) -> None:
    base = cells[baseline]
    for cell in cells:
        if cell is None:
            continue
        for run, figures in cell["runs"].items():
            reference = ((base or {}).get("runs") or {}).get(run, {}).get("ms")
            figures["speedup"] = reference / figures["ms"] if reference and figures["ms"] else None


def column_label(column: dict[str, Any]) -> str:
    key = column["key"]
    precision = key["dtype"] + (f", autocast {key['amp']}" if key.get("amp") else "")
    if column["predicted"]:
        return f"{key['device']}, {precision}: predicted (catalogue figures, not measured)"
    threads = f"{key['threads']} thread{'s' * (key['threads'] != 1)}" if key["threads"] else "threads ?"
    return f"{key['machine']} ({key['processor']}), {key['device']}, {precision}, {threads}, torch {key['torch_version']}"


def row_label(row: dict[str, Any]) -> str:
    bits = [row["model"], f"batch {row['batch']}"]
    if row["loss"] != "cross_entropy":
        bits.append(f"loss {row['loss']}")
    if row["checkpoint"]:
        bits.append("checkpointed " + "+".join(row["checkpoint"]))
    if row["input_grad"]:
        bits.append("input gradients")
    return ", ".join(bits)


def _formatted(figure: str, value: Any) -> str:
    if value is None:
        return "-"
    if figure == "params":
        return units.count(value)
    if figure.startswith("peak"):
        return units.nbytes(value)
    if figure == "ms":
        return units.millis(value)
    if figure == "samples_per_s":
        return f"{value:,.1f}"
    return f"{value:.2f}×"


def _lines(data: dict[str, Any], format_value: Callable[[str, Any], Any], *, with_unit: bool = False
           ) -> list[tuple[dict, str, list]]:
    """(row, figure label, one value per column) of every line of the table; speed-ups only
    where there is something to compare."""
    figures = [f for f in FIGURES if f[0] != "speedup" or len(data["columns"]) > 1]
    lines = []
    for row in data["rows"]:
        cells = row["cells"]
        lines.append((row, "parameters", [None if c is None or c["does_not_fit"] else format_value("params", c["params"])
                                          for c in cells]))
        if any(c and c["does_not_fit"] for c in cells):
            lines.append((row, "does not fit", ["does not fit" if c and c["does_not_fit"] else "" for c in cells]))
        for run, label, _, _ in runs(row["optimizers"]):
            for figure, figure_label, unit in figures:
                if with_unit and unit:
                    figure_label += f" ({unit})"
                values = [None if c is None or c["does_not_fit"] else format_value(figure, c["runs"][run][figure])
                          for c in cells]
                lines.append((row, f"{label} {figure_label}", values))
    return lines


def render_table(data: dict[str, Any], *, markdown: bool = False) -> str:
    """Text or Markdown: the columns' legend, then one block of lines per row."""
    layout = grid.markdown if markdown else grid.text
    columns = data["columns"]
    legend = [f"[{c['number']}] {column_label(c)}" + (" (baseline)" if c["number"] == data["baseline"] else "")
              for c in columns]
    headers = ["Model", "Figure", *(f"[{c['number']}]" + ("*" if c["predicted"] else "") for c in columns)]
    body, previous = [], None
    for row, figure, values in _lines(data, _formatted):
        shown = row_label(row) if row is not previous else ""
        previous = row
        body.append([shown, figure, *("-" if v is None else v for v in values)])
    title = f"Speed-up: baseline time / this time, against column [{data['baseline']}]" \
        + ("; * predicted, not measured" if any(c["predicted"] for c in columns) else "")
    if markdown:
        parts = ["**Columns**", "\n".join(f"- {line}" for line in legend), title,
                 layout(headers, body, right=[False, False] + [True] * len(columns))]
    else:
        parts = ["Columns:\n" + "\n".join(f"  {line}" for line in legend), title,
                 layout(headers, body, right=[False, False] + [True] * len(columns))]
    parts += [f"Note: {note}" for note in data["notes"]]
    return "\n\n".join(parts) + "\n"


def render_csv(data: dict[str, Any]) -> str:
    """One line per row and figure, one value column per run column; raw numbers (bytes, ms)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*ROW_KEYS, "figure", *(f"[{c['number']}] {column_label(c)}" for c in data["columns"])])
    for row, figure, values in _lines(data, lambda figure, value: value, with_unit=True):
        writer.writerow([*("+".join(row[k]) if isinstance(row[k], list) else row[k] for k in ROW_KEYS), figure,
                         *("" if v is None else v for v in values)])
    return out.getvalue()
