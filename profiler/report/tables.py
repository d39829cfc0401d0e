"""A result (the dict saved as JSON) as a text or Markdown report.

Renderers read the same dict that is saved, so a result file from another machine renders the same
way as a fresh run.
"""
from __future__ import annotations

from typing import Any, Callable

from profiler.report import grid, units
from profiler.report.units import OPTIMIZER_LABELS
from profiler.report.time_tables import render_time

FIGURES = (
    ("param_bytes", "parameters (+ buffers)"),
    ("inference_peak_bytes", "inference peak"),
    *((f"train_peak_bytes_{o}", f"training step peak, {label}") for o, label in OPTIMIZER_LABELS.items()),
    *((f"train_first_step_peak_bytes_{o}", f"first training step peak, {label}")
      for o, label in OPTIMIZER_LABELS.items()),
)

PEAKS = (("inference", "inference"),
         *((f"train_{o}", f"training step, {label}") for o, label in OPTIMIZER_LABELS.items()))
ALL_PEAKS = (*PEAKS, *((f"train_first_step_{o}", f"first training step, {label}")
                       for o, label in OPTIMIZER_LABELS.items()))


def render(result: dict[str, Any], *, markdown: bool = False, explain: bool = False,
           depth: int | None = None) -> str:
    """``depth``: show layers nested that deep (1: the model's own layers; None: all)."""
    layout: Callable = grid.markdown if markdown else grid.text
    parts = [_title(result, markdown)]
    if "layers" in result:
        parts += [_layers(result, layout, explain, depth), _totals(result, markdown)]
    parts.append(_memory(result, layout))
    parts.append(_time(result, layout))
    parts.append(_layer_times(result, layout))
    parts.append(_makeup(result, layout))
    parts.append(render_time(result, layout, markdown))
    parts.append(_warnings(result, markdown))
    if explain:
        parts.append(_breakdowns(result, markdown))
        parts.append(_activations_at_peaks(result, markdown))
    if "machine_info" in result:
        parts.append(_machine(result))
    return "\n\n".join(p for p in parts if p) + "\n"


def _warnings(r: dict, markdown: bool) -> str:
    """What the prediction cannot vouch for on this machine (say, its CPU's instruction set)."""
    return "\n".join(f"{'> **Warning:**' if markdown else 'Warning:'} {w}" for w in r.get("warnings", []))


def _title(r: dict, markdown: bool) -> str:
    opts = r.get("options", {})
    bits = [f"batch {opts.get('batch', r.get('batch'))}", opts.get("dtype", r.get("dtype")),
            f"loss {opts.get('loss', r.get('loss'))}"]
    amp = opts.get("amp", r.get("amp"))
    if amp:
        bits.insert(2, f"autocast {amp}")
    if r.get("checkpoint"):
        bits.append("checkpointed: " + ", ".join(r["checkpoint"]))
    if "device" in opts:
        bits.append(f"device {opts['device']}")
    text = f'Model: "{r["model"]}" ({", ".join(bits)})'
    return f"## {text}" if markdown else text


def _layers(r: dict, layout: Callable, explain: bool, depth: int | None) -> str:
    measured = (r.get("measured") or {}).get("layer_kept_for_backward_bytes")
    layers = [layer for layer in r["layers"] if depth is None or layer.get("depth", 1) <= depth]
    columns: list[tuple[str, bool, Callable[[dict], str]]] = [
        ("Layer (type)", False, lambda l: "  " * (l.get("depth", 1) - 1) + f"{l['name']} ({l['type']})"),
        ("Output Shape", False, lambda l: _shapes(l["output_shape"])),
        ("Param #", True, lambda l: units.count(l["params"])),
        ("Param bytes", True, lambda l: units.nbytes(l["param_bytes"])),
        ("Output", True, lambda l: units.nbytes(l["output_bytes"])),
        ("Kept for backward", True, lambda l: units.nbytes(l["kept_for_backward_bytes"])),
        ("MACs", True, lambda l: units.si(l["macs"])),
    ]
    if _branches(r["layers"]):
        columns.append(("Connected to", False, lambda l: ", ".join(l.get("connected_to", []))))
    if measured is not None:
        columns.append(("Kept (measured)", True, lambda l: units.nbytes(measured.get(l["name"], 0))))
    if explain:
        columns.append(("Arithmetic", False, lambda l: l["formula"] or "no parameters"))
    rows = [[cell(layer) for _, _, cell in columns] for layer in layers]
    return layout([h for h, _, _ in columns], rows, right=[r for _, r, _ in columns])


def _shapes(shape: list) -> str:
    """(None, 10), or several shapes for a layer with several outputs."""
    if shape and isinstance(shape[0], list):
        return ", ".join(units.shape(s) for s in shape)
    return units.shape(shape)


def _branches(layers: list[dict]) -> bool:
    """Whether the model is more than a chain, so that "Connected to" says something."""
    previous = None
    for layer in layers:
        if layer.get("depth", 1) != 1 or "connected_to" not in layer:
            continue
        connected = layer["connected_to"]
        if previous is not None and connected != [previous] or len(connected) > 1:
            return True
        previous = layer["name"]
    return False


def _totals(r: dict, markdown: bool) -> str:
    t = r["totals"]
    lines = [f"Total params: {units.count(t['params'])} ({units.nbytes(t['param_bytes'])})",
             f"Trainable params: {units.count(t['trainable_params'])}",
             f"Non-trainable params: {units.count(t['non_trainable_params'])}",
             *([f"Buffers (not parameters; in every memory figure): {units.count(t['buffers'])} "
                f"({units.nbytes(t.get('buffer_bytes', 0))})"] if t.get("buffers") else []),
             f"Multiply-accumulates per forward pass: {units.si(t['macs'])} ({units.count(t['macs'])})"]
    return "\n".join(f"- {line}" for line in lines) if markdown else "\n".join(lines)


def _memory(r: dict, layout: Callable) -> str:
    predicted = r.get("predicted")
    measured = r.get("measured")
    errors = r.get("relative_error") or {}
    columns = [("Predicted", predicted)] * bool(predicted) + [("Measured", measured)] * bool(measured)
    with_error = bool(predicted and measured)
    headers = ["Memory", *(name for name, _ in columns)] + ["Error"] * with_error
    rows = []
    for key, label in FIGURES:
        if not any(key in figures for _, figures in columns):
            continue
        row = [label, *(units.nbytes(figures.get(key)) for _, figures in columns)]
        rows.append(row + [units.percent(errors.get(key))] * with_error)
    if measured and measured.get("forward_ms") is not None and "forward" not in (measured.get("time") or {}):
        spread = f" ± {measured['forward_ms_iqr'] / 2:.3f}" if measured.get("forward_ms_iqr") is not None else ""
        time = f"{measured['forward_ms']:.3f}{spread} ms"
        rows.append(["forward time (median ± IQR/2)", *("-" * bool(predicted)), time, *("-" * with_error)])
    return layout(headers, rows, right=[False] + [True] * (len(headers) - 1))


def _time(r: dict, layout: Callable) -> str:
    """The forward pass and each training step: measured median ± IQR/2, samples per second, and
    the prediction (``predicted_time``) with its relative error, "-" where there is none."""
    time = (r.get("measured") or {}).get("time") or {}
    if "forward" not in time:
        return ""
    predicted = r.get("predicted_time") or {}
    compared = _compared(r)
    rows = []
    for key, label in (("forward", "forward pass (inference)"),
                       *((f"train_{o}", f"training step, {OPTIMIZER_LABELS.get(o, o)}")
                         for o in _optimizers(time))):
        t = time[key]
        guess = predicted.get(f"{key}_ms")
        error = (guess - t["median_ms"]) / t["median_ms"] if guess is not None and t["median_ms"] else None
        throughput = t.get("samples_per_s")
        rows.append([label, *[units.millis(guess)] * compared, f"{t['median_ms']:.3f} ± {t['iqr_ms'] / 2:.3f} ms",
                     "-" if throughput is None else f"{throughput:,.1f}", *[units.percent(error)] * compared])
    headers = ["Time", *["Predicted"] * compared, "Measured (median ± IQR/2)", "Samples/s", *["Error"] * compared]
    table = layout(headers, rows, right=[False] + [True] * (len(headers) - 1))
    first, threads = time["forward"], time.get("threads", "?")
    note = (f"{_runs(time)}, on {time.get('device', '?')} "
            f"with {threads} CPU thread{'' if threads == 1 else 's'}.")
    return f"{table}\n\n{note}"


def _runs(time: dict) -> str:
    """How many runs were timed: "20 timed runs of each after 3 untimed", or each function's when
    a time budget stopped some early (see ``profiler.measuring.timing.time_fn``)."""
    keys = ["forward", *(f"train_{o}" for o in _optimizers(time))]
    first = time["forward"]
    cut = [key for key in keys if time[key].get("requested") is not None]
    if not cut:
        return f"{first['repeats']} timed runs of each after {first['warmup']} untimed"
    budget = next(time[key]["budget_s"] for key in cut)
    each = ", ".join(f"{'forward' if key == 'forward' else key.removeprefix('train_') + ' step'} "
                     f"{time[key]['repeats']} after {time[key]['warmup']}" for key in keys)
    return (f"timed runs after untimed ones: {each} ({time[cut[0]]['requested']} requested; the runs "
            f"stop after the first {budget:g} s once a minimum ran, --time-budget)")


def _compared(r: dict) -> bool:
    """Whether time tables have Predicted and Error columns: in a result that predicts (profile;
    "-" until it has ``predicted_time``), not in a measurement alone."""
    return "predicted" in r or "predicted_time" in r


def _optimizers(time: dict) -> list[str]:
    return [key.removeprefix("train_") for key, value in time.items()
            if key.startswith("train_") and isinstance(value, dict) and "median_ms" in value]


def _layer_times(r: dict, layout: Callable, top: int = 10) -> str:
    """The layers that took longest (forward of the inference call + backward), measured operator
    by operator, beside their predicted times; and how much of each plain run the operators cover."""
    time = (r.get("measured") or {}).get("time") or {}
    layers = time.get("layers") or {}
    forward, backward = layers.get("forward") or {}, layers.get("backward") or {}
    if not forward and not backward:
        return ""
    predicted = (r.get("predicted_time") or {}).get("layers") or {}
    # the measured forward is the inference call's: beside it, the predicted inference
    p_forward, p_backward = predicted.get("inference") or predicted.get("forward") or {}, predicted.get("backward") or {}
    names = sorted(set(forward) | set(backward), key=lambda n: -(forward.get(n, 0.0) + backward.get(n, 0.0)))

    compared = _compared(r)

    def cells(measured: dict, guessed: dict, name: str) -> list[str]:
        m, p = measured.get(name), guessed.get(name)
        if not compared:
            return [units.millis(m)]
        error = (p - m) / m if p is not None and m else None
        return [units.millis(p), units.millis(m), units.percent(error)]

    rows = [[name, *cells(forward, p_forward, name), *cells(backward, p_backward, name)] for name in names[:top]]
    headers = ["Layer (by time)", *(f"{phase} {column}" if column != "error" else "Error"
                                    for phase in ("Forward", "Backward")
                                    for column in (("predicted", "measured", "error") if compared else ("measured",)))]
    table = layout(headers, rows, right=[False] + [True] * (len(headers) - 1))
    covered = []
    for key, ms in (time.get("instrumented_ms") or {}).items():
        plain = (time.get(key) or {}).get("median_ms")
        if plain:
            label = "forward pass" if key == "forward" else \
                f"{OPTIMIZER_LABELS.get(key.removeprefix('train_'), key)} step"
            covered.append(f"{label} {ms:.3f} ms of {plain:.3f} ms ({ms / plain:.0%})")
    shown = f"the {top} longest of {len(names)}" if len(names) > top else f"all {len(names)}"
    runs = time.get("layer_runs") or {}
    counted = sorted(set(runs.values()))
    asked = time.get("layer_repeats", "?")
    ran = (f"{asked} runs" if not counted or counted == [asked] else
           f"{'/'.join(map(str, counted))} of {asked} runs within the time budget")
    note = (f"Layers: {shown}; operators timed one at a time ({ran}, each call's median), each booked to the innermost module running it (backward: the module whose forward "
            f"made the node). Operator time: " + ("; ".join(covered) or "-") + ".")
    return f"{table}\n\n{note}"


def _makeup(r: dict, layout: Callable) -> str:
    """Each measured peak by category; beside the predicted one when the result has both."""
    compared = r.get("breakdown_comparison")
    measured = (r.get("measured") or {}).get("breakdown")
    if not compared and not measured:
        return ""
    headers = ["Peak", "Part", *(["Predicted"] if compared else []), "Measured",
               *(["Difference", "Error"] if compared else [])]
    rows = []
    for key, label in ALL_PEAKS:
        if compared:
            parts = {c: (v["predicted"], v["measured"]) for c, v in compared.get(key, {}).items()}
        else:
            parts = {c: (None, n) for c, n in (measured or {}).get(key, {}).items()}
        if not parts:
            continue
        total = (sum(p for p, _ in parts.values()) if compared else None, sum(m for _, m in parts.values()))
        rows.append(_makeup_row(label, "total", *total, compared=bool(compared)))
        rows += [_makeup_row("", category.replace("_", " "), p, m, compared=bool(compared))
                 for category, (p, m) in parts.items() if p or m]
    right = [False, False] + [True] * (len(headers) - 2)
    return layout(headers, rows, right=right)


def _makeup_row(peak: str, part: str, predicted: int | None, measured: int, *, compared: bool) -> list[str]:
    if not compared:
        return [peak, part, units.nbytes(measured)]
    error = (predicted - measured) / measured if measured else None
    return [peak, part, units.nbytes(predicted), units.nbytes(measured),
            units.signed_nbytes(predicted - measured), units.percent(error)]


def _activations_at_peaks(r: dict, markdown: bool) -> str:
    measured = r.get("measured") or {}
    by_layer = measured.get("layer_activations_at_peak") or measured.get("activations_at_peak") or {}
    lines = ["Measured activations alive at each peak, by layer:"]
    for key, label in ALL_PEAKS:
        layers = by_layer.get(key)
        if layers:
            parts = ", ".join(f"{name} {units.nbytes(n)}" for name, n in layers.items())
            lines.append(f"{'- ' if markdown else '  '}{label}: {parts}")
    return "\n".join(lines) if len(lines) > 1 else ""


def _breakdowns(r: dict, markdown: bool) -> str:
    lines = ["Where each predicted peak happens and what is alive then:"]
    for key, label in PEAKS:
        peak = r.get("peaks", {}).get(key)
        if not peak:
            continue
        parts = [f"{cat.replace('_', ' ')} {units.nbytes(n)}" for cat, n in peak["breakdown"].items() if n]
        lines.append(f"{'- ' if markdown else '  '}{label}: {units.nbytes(peak['bytes'])} at {peak['at']} = "
                     + " + ".join(parts))
    return "\n".join(lines)


def _machine(r: dict) -> str:
    m = r["machine_info"]
    gpus = ", ".join(g.get("name", "?") for g in m.get("gpus", [])) or "none"
    threads = (r.get("measured") or {}).get("threads") or m.get("torch_threads", "?")
    return (f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_physical_cores', '?')} cores / "
            f"{m.get('cpu_logical_cores', '?')} logical, {threads} torch threads used, "
            f"RAM {units.nbytes(m.get('total_ram_bytes'))}, GPUs: {gpus}, torch {m.get('torch_version', '?')}")
