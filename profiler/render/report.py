"""A result (the dict saved as JSON) as a text or Markdown report.

Renderers read the same dict that is saved, so a result file from another machine renders the same
way as a fresh run.
"""
from __future__ import annotations

from typing import Any, Callable

from . import grid, units

OPTIMIZER_LABELS = {"sgd": "SGD", "sgd_momentum": "SGD with momentum", "adam": "Adam", "adamw": "AdamW",
                    "rmsprop": "RMSprop", "adagrad": "Adagrad"}
FIGURES = (
    ("param_bytes", "parameters (+ buffers)"),
    ("inference_peak_bytes", "inference peak"),
    *((f"train_peak_bytes_{o}", f"training step peak, {label}") for o, label in OPTIMIZER_LABELS.items()),
    *((f"train_first_step_peak_bytes_{o}", f"first training step peak, {label}")
      for o, label in OPTIMIZER_LABELS.items()),
)

PEAKS = (("inference", "inference"),
         *((f"train_{o}", f"training step, {label}") for o, label in OPTIMIZER_LABELS.items()))


def render(result: dict[str, Any], *, markdown: bool = False, explain: bool = False) -> str:
    layout: Callable = grid.markdown if markdown else grid.text
    parts = [_title(result, markdown)]
    if "layers" in result:
        parts += [_layers(result, layout, explain), _totals(result, markdown)]
    parts.append(_memory(result, layout))
    if explain:
        parts.append(_breakdowns(result, markdown))
    if "machine_info" in result:
        parts.append(_machine(result))
    return "\n\n".join(p for p in parts if p) + "\n"


def _title(r: dict, markdown: bool) -> str:
    opts = r.get("options", {})
    bits = [f"batch {opts.get('batch', r.get('batch'))}", opts.get("dtype", r.get("dtype")),
            f"loss {opts.get('loss', r.get('loss'))}"]
    if "device" in opts:
        bits.append(f"device {opts['device']}")
    text = f'Model: "{r["model"]}" ({", ".join(bits)})'
    return f"## {text}" if markdown else text


def _layers(r: dict, layout: Callable, explain: bool) -> str:
    measured = (r.get("measured") or {}).get("layer_kept_for_backward_bytes")
    headers = ["Layer (type)", "Output Shape", "Param #", "Param bytes", "Output", "Kept for backward", "MACs"]
    if measured is not None:
        headers.append("Kept (measured)")
    if explain:
        headers.append("Arithmetic")
    rows = []
    for layer in r["layers"]:
        row = [f"{layer['name']} ({layer['type']})", units.shape(layer["output_shape"]),
               units.count(layer["params"]), units.nbytes(layer["param_bytes"]),
               units.nbytes(layer["output_bytes"]), units.nbytes(layer["kept_for_backward_bytes"]),
               units.si(layer["macs"])]
        if measured is not None:
            row.append(units.nbytes(measured.get(layer["name"], 0)))
        if explain:
            row.append(layer["formula"] or "no parameters")
        rows.append(row)
    right = [False, False, True, True, True, True, True] + [True] * (measured is not None) + [False] * explain
    return layout(headers, rows, right=right)


def _totals(r: dict, markdown: bool) -> str:
    t = r["totals"]
    lines = [f"Total params: {units.count(t['params'])} ({units.nbytes(t['param_bytes'])})",
             f"Trainable params: {units.count(t['trainable_params'])}",
             f"Non-trainable params: {units.count(t['non_trainable_params'])}",
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
    if measured and measured.get("forward_ms") is not None:
        spread = f" ± {measured['forward_ms_iqr'] / 2:.3f}" if measured.get("forward_ms_iqr") is not None else ""
        time = f"{measured['forward_ms']:.3f}{spread} ms"
        rows.append(["forward time (median ± IQR/2)", *("-" * bool(predicted)), time, *("-" * with_error)])
    return layout(headers, rows, right=[False] + [True] * (len(headers) - 1))


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
