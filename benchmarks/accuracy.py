"""Accuracy of predictions against measurements: run cases, write the tables in results/.

Used by benchmarks/test_accuracy.py; the tables are data apart from their rendering, so a run's
JSON keeps every raw figure (peaks and their components, predicted and measured) and the Markdown
is made from it.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from profiler import workflow
from profiler.measuring.machine import machine_info
from profiler.engine.memory_model import CATEGORIES
from profiler.report import grid, units

RESULTS = Path(__file__).resolve().parent.parent / "results"
#: (result key, label, name of the peak in ``result["peaks"]``)
PEAKS = (("inference_peak_bytes", "inference", "inference"), ("train_peak_bytes_sgd", "train SGD", "train_sgd"),
         ("train_peak_bytes_adam", "train Adam", "train_adam"))
PATHS = (("spec", "error", "From the spec"), ("torch_module", "torch_path_error", "From the torch module"))


@dataclass(frozen=True)
class Case:
    model: str               # a built-in model name or a spec path
    batch: int
    dtype: str = "float32"   # the parameters' dtype
    amp: str | None = None   # autocast's dtype (float32 weights)

    @property
    def precision(self) -> str:
        return f"autocast {self.amp}" if self.amp else self.dtype

    @property
    def label(self) -> str:
        name = Path(self.model).stem if self.model.endswith((".yaml", ".json")) else self.model
        return f"{name} b{self.batch} {self.precision}"


def run_case(case: Case, *, repeats: int = 5) -> dict:
    """Predict and measure one case; the torch-module path predicts it too where it can."""
    spec = workflow.resolve_spec(case.model)
    result = workflow.profile(spec, batch=case.batch, dtype=case.dtype, loss="cross_entropy", amp=case.amp,
                              device="cpu", warmup=2, repeats=repeats, threads=None)
    measured = result["measured"]
    row = {"case": case.label, "model": case.model, "batch": case.batch, "dtype": case.dtype, "amp": case.amp,
           "precision": case.precision, "forward_ms": measured["forward_ms"],
           "forward_ms_iqr": measured["forward_ms_iqr"],
           "predicted_time": result.get("predicted_time"), "time_error": result.get("time_error")}
    module_result = torch_path_prediction(spec, case)
    module_prediction = module_result["predicted"]
    for key, _, peak in PEAKS:
        row[key] = _figure(result["predicted"][key], measured[key], module_prediction.get(key))
        row[key]["components"] = {"predicted": result["peaks"][peak]["breakdown"],
                                  "measured": measured.get("breakdown", {}).get(peak),
                                  "torch_path": module_result["peaks"][peak]["breakdown"]}
    row["param_bytes"] = _figure(result["predicted"]["param_bytes"], measured["param_bytes"],
                                 module_prediction.get("param_bytes"))
    return row


def _figure(predicted: int, measured: int, torch_path: int | None) -> dict:
    return {"predicted": predicted, "measured": measured, "error": (predicted - measured) / measured,
            "torch_path": torch_path,
            "torch_path_error": None if torch_path is None else (torch_path - measured) / measured}


def torch_path_prediction(spec, case: Case) -> dict:
    """The same model predicted the other way: built in torch, then summarized as a torch module
    (replayed on fake tensors, under autocast for autocast cases), as a user arriving with an
    nn.Module would get it."""
    import profiler
    from profiler.frontends.build import build

    module = build(spec, dtype=case.dtype)
    shapes = [i.shape for i in spec.inputs]
    dtypes = [i.dtype for i in spec.inputs]
    result = profiler.summary(module, shapes if len(shapes) > 1 else shapes[0], batch=case.batch,
                              input_dtype=dtypes if len(dtypes) > 1 else dtypes[0], dtype=case.dtype,
                              amp=case.amp)
    return result


def summarize(rows: list[dict]) -> dict:
    """Error statistics of the peaks per prediction path: over all rows and per precision."""
    groups = {"all": rows}
    for row in rows:
        groups.setdefault(row["precision"], []).append(row)
    summary: dict = {path: {group: _errors([row[key][error] for row in members for key, _, _ in PEAKS
                                           if row[key][error] is not None])
                            for group, members in groups.items()}
                     for path, error, _ in PATHS}
    summary["categories_exact"] = categories_exact(rows)
    return summary


def _errors(errors: list[float]) -> dict:
    if not errors:
        return {"figures": 0}
    return {"figures": len(errors),
            "median_abs_error": statistics.median(abs(e) for e in errors),
            "max_abs_error": max(abs(e) for e in errors),
            "under_predictions": sum(e < 0 for e in errors),
            "under_predictions_over_1pct": sum(e < -0.01 for e in errors)}


def markdown(title: str, rows: list[dict], summary: dict, machine: dict) -> str:
    return (f"# {title}\n\nMeasured peaks (CPU allocator level: torch.profiler memory events replayed) "
            f"and the error of each prediction: from the spec (`predict`) and from the torch module built "
            f"from it (`profiler.summary`; it has no autocast option, hence '-'). Error = (predicted − "
            f"measured) / measured. One measurement per case (memory is deterministic); forward time over "
            f"the repeats shown.\n\n{_peak_table(rows)}\n\n{_summary_lines(summary)}\n\n"
            f"{_components_section(rows)}"
            f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} logical cores, torch "
            f"{machine.get('torch_version')}, modelsize commit {machine.get('git_commit')}.\n")


def _peak_table(rows: list[dict]) -> str:
    headers = ["Case"] + [h for _, label, _ in PEAKS for h in (f"{label} measured", "spec path", "torch path")] \
        + ["parameters", "forward (median ± IQR/2)"]
    cells = []
    for row in rows:
        line = [row["case"]]
        for key, _, _ in PEAKS:
            f = row[key]
            line += [units.nbytes(f["measured"]), units.percent(f["error"]), units.percent(f["torch_path_error"])]
        line.append(units.percent(row["param_bytes"]["error"]))
        line.append(f"{row['forward_ms']:.3f} ± {row['forward_ms_iqr'] / 2:.3f} ms")
        cells.append(line)
    return grid.markdown(headers, cells, right=[False] + [True] * (len(headers) - 1))


def categories_exact(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """Per path: (peaks whose every category equals the measured one, peaks compared)."""
    counts = {}
    for side in ("predicted", "torch_path"):
        compared = exact = 0
        for row in rows:
            for key, _, _ in PEAKS:
                parts = row[key]["components"]
                if not parts.get("measured") or not parts.get(side):
                    continue
                compared += 1
                exact += all(parts[side].get(c, 0) == parts["measured"].get(c, 0) for c in CATEGORIES)
        counts["spec" if side == "predicted" else "torch_module"] = (exact, compared)
    return counts


def _summary_lines(summary: dict) -> str:
    lines = []
    for path, _, label in PATHS:
        for group, e in summary[path].items():
            if not e["figures"]:
                continue
            lines.append(f"- {label}, {'all precisions' if group == 'all' else group}: over {e['figures']} "
                         f"peak figures, median |error| {e['median_abs_error'] * 100:.3f}%, maximum |error| "
                         f"{e['max_abs_error'] * 100:.3f}%, {e['under_predictions']} under-predictions "
                         f"({e['under_predictions_over_1pct']} by more than 1%).")
    for path, _, label in PATHS:
        exact, compared = summary.get("categories_exact", {}).get(path, (0, 0))
        if compared:
            lines.append(f"- {label}: every category (parameters, gradients, optimizer state, inputs, "
                         f"activations, weight casts, temporaries, workspace) equal to the measured one in "
                         f"{exact} of {compared} peaks.")
    return "\n".join(lines)


def _components_section(rows: list[dict]) -> str:
    """Each peak split by category, predicted / measured (measured where the runner splits it)."""
    if not any(row[key]["components"]["measured"] for row in rows for key, _, _ in PEAKS):
        shown = CATEGORIES
    else:
        shown = tuple(c for c in CATEGORIES if any(
            row[key]["components"][side] and row[key]["components"][side].get(c)
            for row in rows for key, _, _ in PEAKS for side in ("predicted", "measured")))
    cells = []
    for row in rows:
        for key, label, _ in PEAKS:
            parts = row[key]["components"]
            measured = parts["measured"] or {}
            cells.append([row["case"], label] + [
                f"{units.nbytes(parts['predicted'].get(c, 0))} / "
                f"{units.nbytes(measured.get(c)) if parts['measured'] else '-'}" for c in shown])
    table = grid.markdown(["Case", "Peak", *shown], cells, right=[False, False] + [True] * len(shown))
    return ("## Components of each peak\n\nPredicted / measured bytes per category at the peak. "
            "Workspace is what kernels allocate inside (allocator peak − tensors alive); temporaries are "
            "tensors an op or the optimizer makes and drops.\n\n<details><summary>Table</summary>\n\n"
            f"{table}\n\n</details>\n\n")


def write(name: str, title: str, rows: list[dict]) -> Path:
    """Write results/NAME.json and results/NAME.md, each atomically."""
    machine = machine_info()
    summary = summarize(rows)
    RESULTS.mkdir(exist_ok=True)
    _atomic(RESULTS / f"{name}.json", json.dumps({"title": title, "summary": summary, "rows": rows,
                                                  "machine_info": machine}, indent=2) + "\n")
    path = RESULTS / f"{name}.md"
    _atomic(path, markdown(title, rows, summary, machine))
    return path


def _atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
