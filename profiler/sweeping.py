"""``sweep``: profile one model over a grid of batches and dtypes, one result file per cell.

Each cell is ``workflow.profile`` (measured in a child process when the model is named by a
reference, so running out of memory is a "does not fit" cell, saved as such, and the sweep goes
on). Every file is written atomically as its cell finishes and carries ``sweep_cell``, the
options that make the cell; ``resume`` skips the cells whose options a file in the folder already
carries, whatever its name. The job yields what happens, cell by cell, so that its caller shows
progress and knows, when interrupted, what was kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from profiler import workflow
from profiler.report.results import save

#: profile's options that make a cell what it is (with the model, its batch and dtype): a saved
#: file whose ``sweep_cell`` has the same values is that cell, measured
CELL_OPTIONS = ("loss", "optimizers", "amp", "checkpoint", "input_grad", "device", "threads")


@dataclass
class Event:
    """One step of a sweep: a cell "skipped" (already saved), "running", "measured" or "does not fit"."""
    index: int                      # the cell's place in the grid, from 0
    total: int                      # cells in the grid
    cell: dict[str, Any]
    status: str
    path: Path | None = None        # the cell's result file (skipped, measured, does not fit)
    peak_bytes: int | None = None   # the highest measured peak (measured)
    message: str = ""               # why it does not fit
    result: dict[str, Any] = field(default_factory=dict, repr=False)


def cells(model: Any, batches: Sequence[int], dtypes: Sequence[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid, dtype by dtype, batches in the order given; each cell its identifying options."""
    common = {k: _plain(options.get(k)) for k in CELL_OPTIONS}
    return [{"model": _plain(model), "batch": b, "dtype": d, **common} for d in dtypes for b in batches]


def _plain(value: Any) -> Any:
    """As JSON keeps it (tuples are lists), so a cell equals the one read back from its file."""
    return json.loads(json.dumps(value))


def saved_cells(directory: str | Path) -> dict[str, Path]:
    """The cells already saved in ``directory``: their options (as a key) → file."""
    from profiler.report.compare import result_paths
    found: dict[str, Path] = {}
    for path in result_paths([str(directory)]) if Path(directory).is_dir() else []:
        try:
            cell = json.loads(path.read_text(encoding="utf-8")).get("sweep_cell")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue   # not a result file (or not ours): never a reason to stop a sweep
        if isinstance(cell, dict):
            found[_key(cell)] = path
    return found


def _key(cell: dict[str, Any]) -> str:
    return json.dumps(cell, sort_keys=True)


def run(source: workflow.Source, *, model: Any, batches: Sequence[int], dtypes: Sequence[str],
        results_dir: str | Path, resume: bool = False, isolate_from: dict[str, Any] | None = None,
        **options: Any) -> Iterator[Event]:
    """Profile every cell of batches × dtypes, saving each as it finishes. ``model``: how the
    cells name the model (the reference it was resolved from: plain data); ``options``: ``workflow.profile``'s
    (loss, optimizers, amp, device, threads, warmup, repeats, ...)."""
    from profiler.measuring.devices import DoesNotFit, get_device

    options["device"] = get_device(options.get("device")).name
    grid = cells(model, batches, dtypes, options)
    done = saved_cells(results_dir) if resume else {}
    check_grid([c for c in grid if _key(c) not in done], source, options)
    for index, cell in enumerate(grid):
        if _key(cell) in done:
            yield Event(index, len(grid), cell, "skipped", done[_key(cell)])
            continue
        yield Event(index, len(grid), cell, "running")
        try:
            result = workflow.profile(source, batch=cell["batch"], dtype=cell["dtype"], isolate_from=isolate_from,
                                      **options)
        except DoesNotFit as error:
            result = does_not_fit(source, cell, options, error.message())
            result["sweep_cell"] = cell
            yield Event(index, len(grid), cell, "does not fit", save(result, results_dir), message=error.message(),
                        result=result)
            continue
        result["sweep_cell"] = cell
        yield Event(index, len(grid), cell, "measured", save(result, results_dir), measured_peak(result),
                    result=result)


def check_grid(todo: Sequence[dict[str, Any]], source: workflow.Source, options: dict[str, Any]) -> None:
    """Each dtype of the cells to run predicted once, at its smallest batch, before anything is
    measured: an option the model refuses (``--amp`` with a bfloat16 cell, a layer mixed precision
    does not model) ends the sweep in one line now, not after the cells before it ran."""
    smallest: dict[str, int] = {}
    for cell in todo:
        smallest[cell["dtype"]] = min(smallest.get(cell["dtype"], cell["batch"]), cell["batch"])
    device_kind = "cuda" if str(options.get("device", "cpu")).startswith("cuda") else "cpu"
    for dtype, batch in smallest.items():
        workflow.summary(source, batch=batch, dtype=dtype, loss=options.get("loss", "cross_entropy"),
                         device_kind=device_kind, optimizers=tuple(options.get("optimizers", ())),
                         amp=options.get("amp"), checkpoint=options.get("checkpoint") or (),
                         input_grad=bool(options.get("input_grad")), threads=options.get("threads"))


def measured_peak(result: dict[str, Any]) -> int | None:
    """The highest measured peak of the runs predicted (inference, each training step)."""
    measured = result.get("measured", {})
    peaks = [measured[k] for k in result.get("predicted", {}) if "peak_bytes" in k and isinstance(measured.get(k), int)]
    return max(peaks, default=None)


def does_not_fit(source: workflow.Source, cell: dict[str, Any], options: dict[str, Any],
                 message: str) -> dict[str, Any]:
    """The result file of a cell that ran out of memory (or was predicted not to fit): what was
    asked, where, and why; ``compare`` shows it as "does not fit"."""
    from profiler.measuring.machine import machine_info
    asked = {k: options.get(k) for k in ("device", "loss", "amp", "threads", "warmup", "repeats")}
    return {"model": getattr(source, "name", "model"), "batch": cell["batch"], "dtype": cell["dtype"],
            "options": {**asked, "batch": cell["batch"], "dtype": cell["dtype"],
                        "optimizers": list(options.get("optimizers", ())),
                        "checkpoint": ["(all)"] if cell["checkpoint"] is True else list(cell["checkpoint"] or []),
                        "input_grad": cell["input_grad"]},
            "machine_info": machine_info(), "does_not_fit": message}
