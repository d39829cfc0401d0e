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
    module_prediction = torch_path_prediction(spec, case)
    for key, _ in FIGURES:
        measured = result["measured"][key]
        row[key] = {"predicted": result["predicted"][key], "measured": measured,
                    "error": result["relative_error"][key],
                    "torch_path": module_prediction[key],
                    "torch_path_error": (module_prediction[key] - measured) / measured}
    return row


def torch_path_prediction(spec, case: Case) -> dict:
    """The same model predicted the other way: built in torch, then summarized as a torch module
    (replayed on fake tensors), as a user arriving with an nn.Module would get it."""
    import profiler
    from profiler.build import build

    module = build(spec, dtype=case.dtype)
    shapes = [i.shape for i in spec.inputs]
    dtypes = [i.dtype for i in spec.inputs]
    result = profiler.summary(module, shapes if len(shapes) > 1 else shapes[0], batch=case.batch,
                              input_dtype=dtypes if len(dtypes) > 1 else dtypes[0], dtype=case.dtype)
    return result["predicted"]


def summarize(rows: list[dict]) -> dict:
    return {path: _errors([row[key][error] for row in rows for key, _ in FIGURES[:3]])
            for path, error in (("spec", "error"), ("torch_module", "torch_path_error"))}


def _errors(errors: list[float]) -> dict:
    return {"figures": len(errors),
            "median_abs_error": statistics.median(abs(e) for e in errors),
            "max_abs_error": max(abs(e) for e in errors),
            "under_predictions": sum(e < 0 for e in errors),
            "under_predictions_over_1pct": sum(e < -0.01 for e in errors)}


def markdown(title: str, rows: list[dict], summary: dict, machine: dict) -> str:
    headers = ["Case"] + [h for _, label in FIGURES[:3]
                          for h in (f"{label} measured", "spec path", "torch path")] \
        + ["parameters", "forward (median ± IQR/2)"]
    cells = []
    for row in rows:
        line = [row["case"]]
        for key, _ in FIGURES[:3]:
            f = row[key]
            line += [units.nbytes(f["measured"]), units.percent(f["error"]), units.percent(f["torch_path_error"])]
        line.append(units.percent(row["param_bytes"]["error"]))
        line.append(f"{row['forward_ms']:.3f} ± {row['forward_ms_iqr'] / 2:.3f} ms")
        cells.append(line)
    table = grid.markdown(headers, cells, right=[False] + [True] * (len(headers) - 1))
    lines = []
    for path, label in (("spec", "From the spec"), ("torch_module", "From the torch module")):
        e = summary[path]
        lines.append(f"- {label}: over {e['figures']} peak figures, median |error| "
                     f"{e['median_abs_error'] * 100:.3f}%, maximum |error| {e['max_abs_error'] * 100:.3f}%, "
                     f"{e['under_predictions']} under-predictions ({e['under_predictions_over_1pct']} by more than 1%).")
    return (f"# {title}\n\nMeasured peaks (CPU allocator level: torch.profiler memory events replayed) "
            f"and the error of each prediction: from the spec (`predict`) and from the torch module built "
            f"from it (`profiler.summary`). Error = (predicted − measured) / measured. One measurement per "
            f"case (memory is deterministic); forward time over the repeats shown.\n\n{table}\n\n"
            + "\n".join(lines) + f"\n\nMachine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} "
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
