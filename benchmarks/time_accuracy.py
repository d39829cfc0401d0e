"""Predicted against measured time on this machine (issue 11): the built-in models and the
real-world zoo, inference and a training step per optimizer, and the layers that take longest.

Each case is one ``profile`` (prediction, then the measurement in this process): the prediction
from the calibrated device model, and beside it the roofline that PyTorch's ``RuntimeEstimator``
uses in its ``operator-level-cost-model`` mode — each call ``max(FLOPs / π, bytes / β)``, nothing
for views — priced here with this machine's π (its fastest calibrated matrix multiply) and β (its
calibrated bandwidth), over the same operator calls. ``RuntimeEstimator`` itself does not run on a
CPU: in both modes the process ends inside the first dispatched call (``terminate called after
throwing an instance of 'python_error'``, torch 2.14.1; the cost model's assertion "Roofline
estimation needs to access CUDA capabilities", the benchmark's CUDA events), so its method is
applied to the same trace instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from realworld_zoo import ZOO, Entry

#: the built-in models (spec path), at the batch a user would first try
BUILT_IN = (("digits", 32), ("dense-514", 32), ("bn-conv", 8), ("conv-224", 2))
RUNS = ("forward", "train_sgd", "train_adam")
#: instrumented runs whose per-call medians rank the measured layers: a call slowed by the
#: machine's other work (a lost time slice is milliseconds, 10x a small layer) in 2 of 3 runs
#: moved a 3-run median, and with it the measured top three (two measurements of the same models
#: under load agreed on their top three in 22 of 52 cases); a 7-run median needs 4 such runs.
#: 7 runs: one pass's measured top three was another's in 42.7-44.7 of 52 (session 22); 15 since
LAYER_REPEATS = 15


def roofline_ms(costs: dict[str, list[Any]], model: Any) -> dict[str, float]:
    """RuntimeEstimator's cost model over the engine's calls, at this machine's peak and bandwidth."""
    peak = max(curve.work[-1] / curve.seconds[-1] for key, curve in model.curves.items() if key.startswith("matmul/"))

    def seconds(calls: list[Any]) -> float:
        return sum(max(c.flops / peak, c.bytes / model.bandwidth) for c in calls if c.kind != "view")
    out = {"forward": seconds(costs["inference"]) * 1e3}
    for key in costs:
        if key.startswith("step_"):
            out["train_" + key.removeprefix("step_")] = (seconds(costs["training"]) + seconds(costs[key])) * 1e3
    return out


def _measured(result: dict[str, Any], run: str) -> float | None:
    from profiler.report.time_tables import measured_ms
    return measured_ms(result["measured"], run)


def _predicted(result: dict[str, Any], run: str) -> float | None:
    key = "forward_ms" if run == "forward" else f"{run}_ms"
    return result.get("predicted_time", {}).get(key)


#: the phases whose per-module times rank the layers: the training step's forward and backward,
#: on both sides (the measured "forward" is the inference call's, "train_forward" the step's)
LAYER_PHASES = {"predicted": ("forward", "backward"), "measured": ("train_forward", "backward")}
#: predicted times this close count as one (sums of the same calls in another order)
TIE = 1e-9


def layer_times(layers: dict[str, dict[str, float]], phases: tuple[str, ...],
                rename: Any = None) -> dict[str, float]:
    """Milliseconds per module over ``phases``, names passed through ``rename`` (a spec's built
    modules as its layers, as its prediction names them); the host calls' time is no layer's (no
    operator timed one by one measures it)."""
    from profiler.engine.step_time import HOST_CALLS
    total: dict[str, float] = {}
    for phase in phases:
        for name, ms in layers.get(phase, {}).items():
            if name == HOST_CALLS:
                continue
            name = rename(name) if rename else name
            if name:
                total[name] = total.get(name, 0.0) + ms
    return total


def top_layers(times: dict[str, float], n: int = 3) -> list[str]:
    """The ``n`` modules with the most time."""
    return [name for name, _ in sorted(times.items(), key=lambda kv: -kv[1])[:n]]


def same_top(predicted: dict[str, float], measured: dict[str, float], n: int = 3,
             kinds: dict[str, str] | None = None) -> bool:
    """Whether the measured top ``n`` are the predicted top ``n``. Where the prediction ties (the
    same layer repeated: six identical transformer blocks), it does not say which of the tied
    layers is ahead, so the measured ones may be any of them: the measured top ``n`` must all be
    predicted at least the ``n``-th largest predicted time, and every layer predicted above it
    must be among them. ``kinds`` (:func:`layer_kinds`) says which layers are the same layer
    repeated, whose predicted times differ only by how far back their reads were last touched
    (blocks.0.attn and blocks.5.attn of a ViT, 0.15695 and 0.15680 ms): the measured top ``n``
    may then be any of them too, as many of each kind as the predicted.

    >>> same_top({"a": 3.0, "b": 2.0, "c": 2.0}, {"a": 9.0, "c": 5.0}, n=2)
    True
    >>> same_top({"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 9.0, "c": 5.0}, n=2)
    False
    >>> same_top({"a": 3.0, "b": 2.0, "c": 1.99}, {"a": 9.0, "c": 5.0}, n=2, kinds={"b": "k", "c": "k"})
    True
    """
    top = top_layers(measured, n)
    if len(predicted) < len(top):
        return False
    nth = sorted(predicted.values(), reverse=True)[len(top) - 1]
    above = {name for name, ms in predicted.items() if ms > nth * (1 + TIE)}
    if all(predicted.get(name, -1.0) >= nth * (1 - TIE) for name in top) and above <= set(top):
        return True
    kind = (kinds or {}).get
    return bool(kinds) and Counter(kind(name, name) for name in top) == \
        Counter(kind(name, name) for name in top_layers(predicted, len(top)))


def layer_kinds(costs: dict[str, list[Any]], rename: Any = None) -> dict[str, str]:
    """Each layer's operator calls in the training step's forward and backward (operator, kernel
    family, FLOPs, bytes read and written, in order) as a digest: two layers with the same digest
    are the same layer repeated, which no prediction can order but by their reads' distances."""
    calls: dict[str, list[tuple]] = {}
    for c in costs.get("training", []):
        name = rename(c.module) if rename else c.module
        if name and c.phase in ("forward", "backward"):
            calls.setdefault(name, []).append((c.phase, c.op, c.kernel, c.flops, c.bytes_read, c.bytes_written))
    return {name: hashlib.sha1(repr(found).encode()).hexdigest()[:16] for name, found in calls.items()}


#: an earlier device model (a calibration cache file) to price the same calls with, beside the
#: current one: a comparison of the two on the same measurements
BASELINE = "MODELSIZE_TIME_BASELINE"


def baseline_model() -> Any:
    """The device model named by ``$MODELSIZE_TIME_BASELINE`` (a calibration cache file), or None."""
    path = os.environ.get(BASELINE)
    if not path:
        return None
    from profiler.engine.step_time import DeviceModel
    return DeviceModel.from_dict(json.loads(Path(path).read_text(encoding="utf-8"))["model"])


def _error(predicted: float | None, measured: float | None) -> float | None:
    return (predicted - measured) / measured if predicted and measured else None


def row(label: str, family: str, batch: int, result: dict[str, Any], roofline: dict[str, float],
        rename: Any = None, baseline: dict[str, Any] | None = None,
        kinds: dict[str, str] | None = None, prices: dict[str, Any] | None = None) -> dict[str, Any]:
    """One case: each run's predicted, measured and roofline time and errors, the top three layers;
    ``baseline``: the same calls priced by :func:`baseline_model` (layers named as predicted);
    ``prices``: the prediction's layers split by the device model's prices alone, without the
    calls timed alone (:mod:`profiler.measuring.calls_alone`), to compare on the same measurements."""
    out: dict[str, Any] = {"model": label, "family": family, "batch": batch,
                           "threads": result["measured"].get("threads")}
    for run in RUNS:
        predicted, measured = _predicted(result, run), _measured(result, run)
        out[run] = {"predicted_ms": predicted, "measured_ms": measured, "roofline_ms": roofline.get(run),
                    "error": _error(predicted, measured), "roofline_error": _error(roofline.get(run), measured)}
        if baseline is not None:
            out[run]["baseline_ms"] = _predicted({"predicted_time": baseline}, run)
            out[run]["baseline_error"] = _error(out[run]["baseline_ms"], measured)
    measured_layers = result["measured"].get("time", {}).get("layers")
    if measured_layers:
        predicted_times = layer_times(result["predicted_time"]["layers"], LAYER_PHASES["predicted"])
        measured_times = layer_times(measured_layers, LAYER_PHASES["measured"], rename)
        out["layer_ms"] = {"predicted": predicted_times, "measured": measured_times}
        if baseline is not None:
            out["layer_ms"]["baseline"] = layer_times(baseline["layers"], LAYER_PHASES["predicted"], rename)
        if prices is not None:
            out["layer_ms"]["prices"] = layer_times(prices["layers"], LAYER_PHASES["predicted"], rename)
        out["layer_kinds"] = kinds or {}
        out["top3"] = _top3(out["layer_ms"], out["layer_kinds"])
    return out


def _top3(layer_ms: dict[str, dict[str, float]], kinds: dict[str, str]) -> dict[str, Any]:
    predicted, measured = layer_ms["predicted"], layer_ms["measured"]
    out = {"predicted": top_layers(predicted), "measured": top_layers(measured),
           "same": same_top(predicted, measured, kinds=kinds), "same_names": same_top(predicted, measured)}
    if "measured_low" in layer_ms:
        out["within_spread"] = top_within_spread(predicted, layer_ms["measured_low"], layer_ms["measured_high"])
    if "baseline" in layer_ms:
        out["baseline_same"] = same_top(layer_ms["baseline"], measured)
    if "prices" in layer_ms:
        out["prices_same"] = same_top(layer_ms["prices"], measured, kinds=kinds)
    if len(layer_ms.get("measured_passes", ())) > 1:
        out.update(pass_agreement(layer_ms["predicted_passes"], layer_ms["measured_passes"], kinds))
    return out


def pass_agreement(predicted: list[dict[str, float]], measured: list[dict[str, float]],
                   kinds: dict[str, str], n: int = 3) -> dict[str, float]:
    """How far the measured top three is itself reproducible, beside the prediction's agreement:
    ``measured_agree``, the share of ordered pairs of passes in which one pass's measured top three
    is the other's (:func:`same_top`, each pass's layers standing for a prediction), and
    ``pass_same``, the share of passes whose own prediction (their own calibration) names their
    own measured top three (top ``n``). Both compare one pass with one pass: the first is what a prediction
    that knew each layer's time exactly, as one pass measured it, would score against another.

    >>> pass_agreement([{"a": 3.0, "b": 1.0}] * 2, [{"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 2.0}], {}, n=1)
    {'measured_agree': 0.0, 'pass_same': 0.5}
    """
    pairs = [(i, j) for i in range(len(measured)) for j in range(len(measured)) if i != j]
    agree = sum(same_top(measured[i], measured[j], n, kinds) for i, j in pairs)
    own = sum(same_top(p, m, n, kinds) for p, m in zip(predicted, measured))
    return {"measured_agree": agree / len(pairs), "pass_same": own / len(measured)}


def run_case(kind: str, name: str, batch: int) -> dict[str, Any]:
    """One case, by name (a built-in spec, or a zoo entry's name), in this process."""
    if kind == "built-in":
        return run_built_in(name, batch)
    return run_entry(next(entry for entry in ZOO if entry.name == name), batch)


def run_isolated(kind: str, name: str, batch: int) -> dict[str, Any]:
    """:func:`run_case` in a process of its own, as ``modelsize profile`` measures in a child: a
    process that measured one model after another ran them slower and slower (a Hugging Face
    BERT's forward pass read 1.56 ms as the 37th case of one process, 0.57-0.63 ms in fresh ones,
    same machine, minutes apart)."""
    import subprocess
    import sys
    code = ("import json, sys; from time_accuracy import run_case; "
            "print(json.dumps(run_case(sys.argv[1], sys.argv[2], int(sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, kind, name, str(batch)], cwd=Path(__file__).parent,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def merge(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's rows from several passes as one. Each pass was priced by the calibration taken
    at its start and measured after it: each run's figure is the median of the passes' predictions
    against the median of their measurements (with the measurements' spread, (max - min) /
    median), and each pass's own error is kept (what one calibration gives); each layer's predicted
    and measured time is its median, with its lowest and highest measurement."""
    out = dict(passes[-1])
    out["passes"] = len(passes)
    for run in RUNS:
        measured = [p[run]["measured_ms"] for p in passes if p[run]["measured_ms"]]
        predicted = [p[run]["predicted_ms"] for p in passes if p[run]["predicted_ms"]]
        median = statistics.median(measured) if measured else None
        f = dict(out[run])
        f.update(measured_ms=median, measured_passes_ms=measured,
                 predicted_ms=statistics.median(predicted) if predicted else None, predicted_passes_ms=predicted,
                 pass_errors=[p[run]["error"] for p in passes],
                 spread=(max(measured) - min(measured)) / median if median else None)
        f.update(error=_error(f["predicted_ms"], median), roofline_error=_error(f["roofline_ms"], median))
        if "baseline_ms" in f:
            f["baseline_error"] = _error(f["baseline_ms"], median)
        out[run] = f
    layers = [p["layer_ms"] for p in passes if "layer_ms" in p]
    if layers:
        merged = dict(layers[-1])
        for side in ("predicted", "measured", "prices"):
            if not all(side in layer for layer in layers):
                continue
            names = set().union(*(layer[side] for layer in layers))
            merged[side] = {n: statistics.median(layer[side].get(n, 0.0) for layer in layers) for n in names}
        names = set(merged["measured"])
        merged["measured_low"] = {n: min(layer["measured"].get(n, 0.0) for layer in layers) for n in names}
        merged["measured_high"] = {n: max(layer["measured"].get(n, 0.0) for layer in layers) for n in names}
        merged["predicted_passes"] = [layer["predicted"] for layer in layers]
        merged["measured_passes"] = [layer["measured"] for layer in layers]
        out["layer_ms"] = merged
        out["top3"] = _top3(merged, out.get("layer_kinds", {}))
    return out


def top_within_spread(predicted: dict[str, float], low: dict[str, float], high: dict[str, float],
                      n: int = 3) -> bool:
    """Whether each of the predicted top ``n`` could be among the measured top ``n``: fewer than
    ``n`` layers measured above it in every pass (their lowest measurement above its highest).
    Weaker than :func:`same_top`, which compares medians: where layers measure within each other's
    spread, the passes do not say which is ahead.

    >>> top_within_spread({"a": 3.0, "b": 2.0}, {"a": 5.0, "b": 4.0, "c": 6.0}, {"a": 7.0, "b": 4.5, "c": 6.5}, n=2)
    False
    >>> top_within_spread({"a": 3.0, "b": 2.0}, {"a": 5.0, "b": 4.0, "c": 6.0}, {"a": 7.0, "b": 6.1, "c": 6.5}, n=2)
    True
    """
    for name in top_layers(predicted, n):
        above = sum(1 for other, lowest in low.items() if other != name and lowest > high.get(name, 0.0))
        if above >= n:
            return False
    return True


def _baseline(costs: dict[str, list[Any]], batch: int) -> dict[str, Any] | None:
    from profiler.engine.step_time import predict_times
    model = baseline_model()
    return None if model is None else predict_times(model, costs, batch)


def run_built_in(name: str, batch: int) -> dict[str, Any]:
    from profiler import workflow
    from profiler.engine import spec_memory
    from profiler.engine.step_time import predict_times
    spec = workflow.resolve_spec(name)
    result = workflow.profile(spec, batch=batch, device="cpu", warmup=3, repeats=10,
                              layer_repeats=LAYER_REPEATS)
    memory = spec_memory.replay(spec, batch=batch, dtype="float32", loss="cross_entropy", device_kind="cpu",
                                optimizers=("sgd", "adam"), amp=None, checkpoint=(), threads=None, input_grad=False, record_costs=True)
    model = workflow.time_model("cpu")
    return row(name, "built-in", batch, result, roofline_ms(memory.costs, model), rename=spec_memory.layer_of,
               baseline=_baseline(memory.costs, batch), kinds=layer_kinds(memory.costs, spec_memory.layer_of),
               prices=predict_times(model, memory.costs, batch))


def run_entry(entry: Entry, batch: int) -> dict[str, Any]:
    import profiler
    from profiler import workflow
    from profiler.engine import torch_module
    from profiler.engine.step_time import predict_times
    result = profiler.profile(entry.factory, entry.input_shape, batch=batch, input_dtype=entry.input_dtype,
                              int_high=entry.int_high, warmup=3, repeats=10, name=entry.name,
                              layer_repeats=LAYER_REPEATS)
    memory = torch_module.memory(entry.factory, entry.input_shape, batch=batch,
                                 input_dtype=entry.input_dtype or "float", record_costs=True)
    model = workflow.time_model("cpu")
    return row(entry.name, entry.family, batch, result, roofline_ms(memory.costs, model),
               baseline=_baseline(memory.costs, batch), kinds=layer_kinds(memory.costs),
               prices=predict_times(model, memory.costs, batch))


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for run in RUNS:
        ours = [abs(r[run]["error"]) for r in rows if r[run]["error"] is not None]
        roof = [abs(r[run]["roofline_error"]) for r in rows if r[run]["roofline_error"] is not None]
        out[run] = {"cases": len(ours), "median_abs_error": statistics.median(ours) if ours else None,
                    "max_abs_error": max(ours) if ours else None,
                    "roofline_median_abs_error": statistics.median(roof) if roof else None,
                    "better_than_roofline": sum(abs(r[run]["error"]) < abs(r[run]["roofline_error"])
                                                for r in rows if r[run]["error"] is not None
                                                and r[run]["roofline_error"] is not None)}
        passes = max((len(r[run].get("pass_errors", [])) for r in rows), default=0)
        if passes > 1:   # each pass priced by its own calibration: what one calibration gives
            out[run]["pass_median_abs_errors"] = [
                statistics.median(abs(r[run]["pass_errors"][i]) for r in rows
                                  if len(r[run]["pass_errors"]) > i and r[run]["pass_errors"][i] is not None)
                for i in range(passes)]
        base = [abs(r[run]["baseline_error"]) for r in rows if r[run].get("baseline_error") is not None]
        if base:
            out[run]["baseline_median_abs_error"] = statistics.median(base)
    with_layers = [r for r in rows if "top3" in r]
    out["top3_same"] = {"models": len(with_layers), "same": sum(r["top3"]["same"] for r in with_layers),
                        "same_names": sum(r["top3"].get("same_names", r["top3"]["same"]) for r in with_layers)}
    if any("within_spread" in r["top3"] for r in with_layers):
        out["top3_same"]["within_spread"] = sum(r["top3"].get("within_spread", False) for r in with_layers)
    if any("measured_agree" in r["top3"] for r in with_layers):
        # expected numbers of cases, one pass against one pass: see pass_agreement
        out["top3_same"]["measured_agree"] = sum(r["top3"].get("measured_agree", 0.0) for r in with_layers)
        out["top3_same"]["pass_same"] = sum(r["top3"].get("pass_same", 0.0) for r in with_layers)
    if any("prices_same" in r["top3"] for r in with_layers):
        out["top3_same"]["prices_same"] = sum(r["top3"].get("prices_same", False) for r in with_layers)
    if any("baseline_same" in r["top3"] for r in with_layers):
        out["top3_same"]["baseline_same"] = sum(r["top3"].get("baseline_same", False) for r in with_layers)
    baseline = os.environ.get(BASELINE)
    if baseline:
        out["baseline"] = baseline
    spreads = [r[run]["spread"] for r in rows for run in RUNS if r[run].get("spread") is not None]
    if spreads:
        out["passes"] = max(r.get("passes", 1) for r in rows)
        out["median_spread"] = statistics.median(spreads)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = ["# Time: predicted on this machine against measured", "",
             "Each case: `profile` (3 warm-up + 10 timed runs, median) in a process of its own, "
             f"{summary.get('passes', 1)} passes over all cases one after another, the measured time the median "
             "of the passes' medians (± in a cell: half their spread, (max - min) / median); the prediction from the "
             "device model calibrated (`modelsize calibrate`) at the start of each pass, the median of the passes' "
             "predictions, and RuntimeEstimator's roofline (max(FLOPs/π, "
             "bytes/β) per call, π and β this machine's calibrated peak and bandwidth) over the same calls; per "
             f"layer, each operator call's median over {LAYER_REPEATS} instrumented runs, booked to its module, "
             "and each layer's median over the passes. Written by `benchmarks/test_time_accuracy.py`.", "",
             "| Run | Cases | Median abs error | Max abs error | Roofline median abs error | Better than roofline |",
             "|:---|---:|---:|---:|---:|---:|"]
    for run in RUNS:
        s = summary[run]
        lines.append(f"| {run} | {s['cases']} | {_pct(s['median_abs_error'])} | {_pct(s['max_abs_error'])} | "
                     f"{_pct(s['roofline_median_abs_error'])} | {s['better_than_roofline']}/{s['cases']} |")
    if summary.get("baseline"):
        lines += ["", f"The same calls priced by the device model in `{summary['baseline']}` (the same "
                      "measurements): median abs error " + ", ".join(
                          f"{run} {_pct(summary[run].get('baseline_median_abs_error'))}" for run in RUNS)
                  + f"; top three layers the same in {summary['top3_same'].get('baseline_same', '-')} cases."]
    if any(summary[run].get("pass_median_abs_errors") for run in RUNS):
        lines += ["", "Each pass against its own calibration alone (what one calibration gives), median abs error "
                      "per pass: " + "; ".join(f"{run} " + " / ".join(_pct(e) for e in summary[run]["pass_median_abs_errors"])
                                               for run in RUNS if summary[run].get("pass_median_abs_errors")) + "."]
    if summary.get("median_spread") is not None:
        lines += ["", f"Measurement spread over the passes, median over cases and runs: "
                      f"{summary['median_spread'] * 100:.1f}% ((max - min) / median)."]
    top = summary["top3_same"]
    lines += ["", f"Top three layers by predicted time = top three measured: {top['same']} of {top['models']} cases "
                  "(both from the training step's forward and backward; where the prediction ties identical "
                  "layers, or names one of the same layer repeated, the same operator calls on the same "
                  "shapes, the measured may be any of them; name for name, "
                  f"{top.get('same_names', top['same'])} of {top['models']})" + (
                      f"; each predicted top-three layer measured below fewer than three others in every pass (the "
                      f"passes do not order layers within their spread): {top['within_spread']} of {top['models']}"
                      if "within_spread" in top else "") + "." + (
                      f" One pass against one pass: a pass's measured top three is another pass's in "
                      f"{top['measured_agree']:.1f} of {top['models']} cases (mean over the ordered pairs of "
                      f"passes: how far the measured top three reproduces), and a pass's prediction names its own "
                      f"measured top three in {top['pass_same']:.1f} (mean over passes)"
                      if "measured_agree" in top else "") + (
                      f". Split by the device model's prices alone, without each call timed alone (the same "
                      f"calibrations and measurements): {top['prices_same']} of {top['models']}"
                      if "prices_same" in top else ""),
              "", "| Model | Batch | Forward pred / meas (err; roofline err) | SGD step | Adam step | Top-3 layers same |",
              "|:---|---:|---:|---:|---:|:---|"]
    for r in rows:
        cells = []
        for run in RUNS:
            f = r[run]
            if f["measured_ms"] is None or f["predicted_ms"] is None:
                cells.append("-")
            else:
                spread = "" if f.get("spread") is None else f" ±{f['spread'] * 50:.0f}%"
                cells.append(f"{f['predicted_ms']:.2f} / {f['measured_ms']:.2f} ms{spread} ({_pct(f['error'])}; "
                             f"{_pct(f['roofline_error'])})")
        same = "-" if "top3" not in r else ("yes" if r["top3"]["same"] else "no")
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + f" | {same} |")
    lines += ["", f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} CPUs, "
                  f"{machine.get('torch_threads')} threads, torch {machine.get('torch_version')}, "
                  f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')} (PASSIVE "
                  "wakes the threads for every parallel region: small models' steps measured 2-5 x slower)."]
    return "\n".join(lines) + "\n"


__all__ = ["BUILT_IN", "ZOO", "markdown", "merge", "run_built_in", "run_case", "run_entry", "run_isolated",
           "summarize"]
