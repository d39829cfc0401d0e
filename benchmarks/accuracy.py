"""Accuracy of predictions against measurements: run cases, write the table in results/.

Used by benchmarks/test_accuracy.py; the table is data apart from its rendering, so a run's JSON
keeps every raw figure and the Markdown is made from it.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from profiler import workflow
from profiler.machine import machine_info
from profiler.render import grid, units

RESULTS = Path(__file__).resolve().parent.parent / "results"
FIGURES = (("inference_peak_bytes", "inference"), ("train_peak_bytes_sgd", "train SGD"),
           ("train_peak_bytes_adam", "train Adam"), ("param_bytes", "parameters"))


@dataclass(frozen=True)
class Case:
    model: str        # a built-in model name or a spec path
    batch: int
    dtype: str = "float32"

    @property
    def label(self) -> str:
        name = Path(self.model).stem if self.model.endswith((".yaml", ".json")) else self.model
        return f"{name} b{self.batch} {self.dtype}"


def run_case(case: Case, *, repeats: int = 5) -> dict:
    spec = workflow.resolve_spec(case.model)
    result = workflow.profile(spec, batch=case.batch, dtype=case.dtype, loss="cross_entropy",
                              device="cpu", warmup=2, repeats=repeats, threads=None)
    row = {"case": case.label, "model": case.model, "batch": case.batch, "dtype": case.dtype,
           "forward_ms": result["measured"]["forward_ms"], "forward_ms_iqr": result["measured"]["forward_ms_iqr"]}
    for key, _ in FIGURES:
        row[key] = {"predicted": result["predicted"][key], "measured": result["measured"][key],
                    "error": result["relative_error"][key]}
    return row


def summarize(rows: list[dict]) -> dict:
    errors = [row[key]["error"] for row in rows for key, _ in FIGURES[:3]]
    return {"cases": len(rows), "figures": len(errors),
            "median_abs_error": statistics.median(abs(e) for e in errors),
            "max_abs_error": max(abs(e) for e in errors),
            "under_predictions": sum(e < 0 for e in errors),
            "under_predictions_over_1pct": sum(e < -0.01 for e in errors)}


def markdown(title: str, rows: list[dict], summary: dict, machine: dict) -> str:
    headers = ["Case"] + [h for _, label in FIGURES for h in (f"{label} predicted", "measured", "error")] \
        + ["forward (median ± IQR/2)"]
    cells = []
    for row in rows:
        line = [row["case"]]
        for key, _ in FIGURES:
            f = row[key]
            line += [units.nbytes(f["predicted"]), units.nbytes(f["measured"]), units.percent(f["error"])]
        line.append(f"{row['forward_ms']:.3f} ± {row['forward_ms_iqr'] / 2:.3f} ms")
        cells.append(line)
    table = grid.markdown(headers, cells, right=[False] + [True] * (len(headers) - 1))
    return (f"# {title}\n\nPredicted against measured peaks (CPU allocator level: torch.profiler "
            f"memory events replayed). Error = (predicted − measured) / measured. One measurement per "
            f"case (memory is deterministic); forward time over the repeats shown.\n\n{table}\n\n"
            f"Over {summary['figures']} peak figures in {summary['cases']} cases: median |error| "
            f"{summary['median_abs_error'] * 100:.4f}%, maximum |error| {summary['max_abs_error'] * 100:.4f}%, "
            f"{summary['under_predictions']} under-predictions ({summary['under_predictions_over_1pct']} "
            f"by more than 1%).\n\nMachine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} "
            f"logical cores, torch {machine.get('torch_version')}, modelsize commit {machine.get('git_commit')}.\n")


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
