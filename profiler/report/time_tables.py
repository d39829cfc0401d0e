"""The predicted time of a result (``predicted_time``) as a text or Markdown table, for results
without a measurement (``summary``, ``fit``); a measured result's time tables (``report.tables``)
show the prediction beside the measurement, and this adds only where the prediction comes from."""
from __future__ import annotations

from typing import Any, Callable

from profiler.engine.step_time import HOST_CALLS
from profiler.report import units

#: layers listed by predicted time
TOP_LAYERS = 5


def runs(predicted: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, predicted key, measured run) of each timed run: the forward pass, each training step."""
    found = [("inference forward", "forward_ms", "forward")] if "forward_ms" in predicted else []
    for key in predicted:
        if key.startswith("train_") and key.endswith("_ms") and not key.endswith("phases_ms"):
            name = key[len("train_"):-len("_ms")]
            found.append((f"training step, {units.OPTIMIZER_LABELS.get(name, name)}", key, f"train_{name}"))
    return found


def measured_ms(measured: dict[str, Any], run: str) -> float | None:
    """The measured median of a run: ``measured["time"][run]``, or the older ``forward_ms``."""
    timed = measured.get("time", {}).get(run)
    if isinstance(timed, dict) and timed.get("median_ms") is not None:
        return timed["median_ms"]
    return measured.get("forward_ms") if run == "forward" else None


def time_errors(predicted: dict[str, Any], measured: dict[str, Any]) -> dict[str, float | None]:
    """(predicted − measured) / measured of each timed run, by predicted key."""
    errors: dict[str, float | None] = {}
    for _, key, run in runs(predicted):
        real = measured_ms(measured, run)
        errors[key] = (predicted[key] - real) / real if real else None
    return errors


def render_time(result: dict[str, Any], layout: Callable, markdown: bool) -> str:
    predicted = result.get("predicted_time")
    if not predicted:
        return ""
    title = f"Time predicted on {predicted.get('device', '?')} ({predicted.get('method', '?')}): " \
            f"{predicted.get('source', '')}"
    split = predicted.get("layer_split")
    if split:   # see profiler.measuring.calls_alone
        title += f"; layers' shares also from {split['signatures_timed_alone']:,} distinct calls timed alone"
    title = ("**" + title + "**") if markdown else title
    if "measured" in result:   # the measured report's time tables show the prediction beside it
        return title
    batch = result.get("options", {}).get("batch", result.get("batch", 1))
    rows = [[label, units.millis(predicted[key]), _rate(batch, predicted[key])] for label, key, _ in runs(predicted)]
    headers = ["Time", "Predicted", "samples/s"]
    parts = [title, layout(headers, rows, right=[False] + [True] * (len(headers) - 1))]
    layers = _top_layers(predicted)
    if layers:
        parts.append(layout(["Layer (most predicted time)", "forward", "backward"],
                            [[name, units.millis(f), units.millis(b)] for name, f, b in layers],
                            right=[False, True, True]))
    return "\n\n".join(parts)


def _rate(batch: int, ms: float | None) -> str:
    return "-" if not ms else f"{batch * 1000 / ms:,.1f}"


def _top_layers(predicted: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    layers = predicted.get("layers", {})
    forward = layers.get("forward") or layers.get("inference") or {}
    backward = layers.get("backward", {})
    names = [n for n in dict.fromkeys([*forward, *backward]) if n and n != HOST_CALLS]   # the model's order: ties keep it
    names.sort(key=lambda n: -(forward.get(n, 0.0) + backward.get(n, 0.0)))
    return [(n, forward.get(n), backward.get(n)) for n in names[:TOP_LAYERS]]
