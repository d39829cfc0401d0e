"""The HTML report's charts: matplotlib figures written as inline SVG.

matplotlib draws on the server side, so the report needs no JavaScript and opens offline; SVG with
its text kept as text (``svg.fonttype = none``) is small (tens of KB a chart) and stays sharp.
Each function takes result dicts (see ``report/results.py``) and returns one ``<svg>`` element.
"""
from __future__ import annotations

import functools
import io
import re
from typing import Any, Callable, Sequence

from profiler.errors import ModelsizeError
from profiler.report import units

#: one colour per memory category (engine/memory_model.CATEGORIES), the same in every chart
CATEGORY_COLOURS = {"parameters": "#4c72b0", "gradients": "#dd8452", "optimizer_state": "#55a868",
                    "inputs": "#8172b3", "activations": "#c44e52", "weight_casts": "#937860",
                    "temporaries": "#da8bc3", "communication": "#ccb974", "workspace": "#8c8c8c"}
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
PREDICTED, MEASURED = "#1f77b4", "#d62728"
_UNITS = ((1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB"), (1, "B"))


#: matplotlib's settings while a chart is drawn and written (the caller's own are left as they were)
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "modelsize", "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False}


def _drawn(chart: Callable[..., str]) -> Callable[..., str]:
    """``chart`` run under :data:`_STYLE`; matplotlib missing is one line naming the extra."""
    @functools.wraps(chart)
    def draw(*args: Any, **kwargs: Any) -> str:
        try:
            import matplotlib
        except ImportError:
            raise ModelsizeError("the HTML report draws its charts with matplotlib, which is not installed",
                                 expected="pip install 'modelsize[report]'") from None
        with matplotlib.rc_context(_STYLE):
            return chart(*args, **kwargs)
    return draw


def _figure(width: float, height: float):
    from matplotlib.figure import Figure   # no pyplot: no global figure manager, no GUI backend
    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, no metadata): ready to inline."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], count=1, flags=re.S)


def _unit(most: float) -> tuple[int, str]:
    """The binary unit a chart's byte axis is drawn in, chosen by its largest value."""
    return next((size, name) for size, name in _UNITS if most >= size or size == 1)


@_drawn
def timeline(result: dict[str, Any], peaks: Sequence[tuple[str, str]]) -> str:
    """One panel per peak: the live bytes through the step, predicted (line) and measured (dashed)
    on one axis; x is the bytes allocated so far as a share of the call's (the measured allocator
    makes small allocations the replay does not book, so event numbers would not line up); each
    peak is marked with its bytes and where it happens."""
    predicted, measured = result.get("timelines") or {}, (result.get("measured") or {}).get("timelines") or {}
    keys = [(k, label) for k, label in peaks if k in predicted or k in measured]
    if not keys:
        return ""
    fig = _figure(7.5, 0.8 + 1.7 * len(keys))
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, (key, label) in zip(axes, keys):
        lines = [(name, colour, style, t) for name, colour, style, t in
                 (("predicted", PREDICTED, "-", predicted.get(key)), ("measured", MEASURED, "--", measured.get(key)))
                 if t]
        size, unit = _unit(max(t["peak_bytes"] for *_, t in lines))
        for name, colour, style, t in lines:
            share = _shares(t)
            ax.step(share, [b / size for b in t["bytes"]], where="post", color=colour,
                    linestyle=style, linewidth=1.3, label=name)
            ax.plot([share[t["x"].index(t["peak_x"])]], [t["peak_bytes"] / size], "o", color=colour, markersize=5)
        top = lines[0][3]
        at = (result.get("peaks") or {}).get(key, {}).get("at", "")
        where = _shares(top)[top["x"].index(top["peak_x"])]
        ax.annotate(f"peak {units.nbytes(top['peak_bytes'])}" + (f" at {at}" if at else ""),
                    (where, top["peak_bytes"] / size), xytext=(-6 if where > 0.5 else 6, -12),
                    textcoords="offset points", fontsize=8, ha="right" if where > 0.5 else "left")
        ax.set_title(label, loc="left", fontsize=9)
        parts = sorted(((result.get("peaks") or {}).get(key, {}).get("breakdown") or {}).items(), key=lambda p: -p[1])
        if parts:   # what the predicted peak is made of, the largest first
            ax.set_title("at the peak: " + ", ".join(f"{c.replace('_', ' ')} {units.nbytes(n)}"
                                                     for c, n in parts[:3] if n), loc="right", fontsize=7.5)
        ax.set_ylabel(unit)
        ax.set_xlim(0, 1)
    axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.12), ncols=2, fontsize=7, frameon=False)
    axes[-1].set_xlabel("bytes allocated so far, as a share of all the call allocates")
    return _svg(fig)


def _shares(t: dict[str, Any]) -> list[float]:
    """Each kept point's bytes allocated so far, as a share of the call's (event number's share in a
    timeline saved without ``allocated``)."""
    if "allocated" in t:
        total = max(t["allocated"][-1], 1)
        return [a / total for a in t["allocated"]]
    return [x / max(t["events"], 1) for x in t["x"]]


@_drawn
def breakdown(result: dict[str, Any], peaks: Sequence[tuple[str, str]]) -> str:
    """Each peak's categories stacked, predicted beside measured."""
    predicted = result.get("peaks") or {}
    measured = (result.get("measured") or {}).get("breakdown") or {}
    bars: list[tuple[str, dict[str, int]]] = []
    for key, label in peaks:
        if key in predicted:
            bars.append((f"{label}, predicted", predicted[key]["breakdown"]))
        if key in measured:
            bars.append((f"{label}, measured", measured[key]))
    size, unit = _unit(max(sum(b.values()) for _, b in bars))
    fig = _figure(7.5, 0.9 + 0.28 * len(bars))
    ax = fig.subplots()
    y = list(range(len(bars)))[::-1]
    left = [0.0] * len(bars)
    for category, colour in CATEGORY_COLOURS.items():
        widths = [b.get(category, 0) / size for _, b in bars]
        if any(widths):
            ax.barh(y, widths, left=left, color=colour, label=category.replace("_", " "), height=0.7)
            left = [a + w for a, w in zip(left, widths)]
    ax.set_yticks(y, [label for label, _ in bars], fontsize=8)
    ax.set_xlabel(unit)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.2 / (len(bars) + 3)), ncols=4, fontsize=7,
              frameon=False)
    return _svg(fig)


@_drawn
def layers(result: dict[str, Any], top: int = 25) -> str:
    """Per layer: memory (output, kept for backward predicted and measured, parameters) and forward
    time (predicted and measured), the ``top`` layers with the most memory."""
    rows = [r for r in result.get("layers") or [] if r.get("depth", 1) == 1]
    kept = (result.get("measured") or {}).get("layer_kept_for_backward_bytes") or {}
    rows = sorted(rows, key=lambda r: -(r["output_bytes"] + r["kept_for_backward_bytes"] + r["param_bytes"]))[:top]
    rows = sorted(rows, key=lambda r: r["index"])
    predicted_ms = ((result.get("predicted_time") or {}).get("layers") or {})
    predicted_ms = predicted_ms.get("inference") or predicted_ms.get("forward") or {}
    measured_ms = (((result.get("measured") or {}).get("time") or {}).get("top_layers") or {}).get("forward") or {}
    names = [r["name"] for r in rows]
    size, unit = _unit(max([1] + [max(r["output_bytes"], r["kept_for_backward_bytes"], r["param_bytes"],
                                      kept.get(r["name"], 0)) for r in rows]))
    fig = _figure(7.5, 1.4 + 0.32 * len(rows))
    memory, time = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    y = list(range(len(rows)))[::-1]
    series = [("output", "#8172b3", [r["output_bytes"] for r in rows]),
              ("kept for backward, predicted", PREDICTED, [r["kept_for_backward_bytes"] for r in rows]),
              ("kept for backward, measured", MEASURED, [kept.get(n, 0) for n in names]) if kept else None,
              ("parameters", CATEGORY_COLOURS["parameters"], [r["param_bytes"] for r in rows])]
    series = [s for s in series if s]
    height = 0.8 / len(series)
    for i, (label, colour, values) in enumerate(series):
        memory.barh([v + 0.4 - height * (i + 0.5) for v in y], [v / size for v in values], height=height,
                    color=colour, label=label)
    memory.set_yticks(y, names, fontsize=8)
    memory.set_xlabel(unit)
    memory.set_title("memory per layer", loc="left", fontsize=9)
    memory.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.06), ncols=2)
    timed = [("predicted", PREDICTED, predicted_ms), ("measured", MEASURED, measured_ms)]
    timed = [t for t in timed if t[2]]
    for i, (label, colour, ms) in enumerate(timed):
        h = 0.8 / max(len(timed), 1)
        time.barh([v + 0.4 - h * (i + 0.5) for v in y], [ms.get(n, 0.0) for n in names], height=h,
                  color=colour, label=label)
    time.set_xlabel("ms")
    time.set_title("forward time per layer (inference)", loc="left", fontsize=9)
    if timed:
        time.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.06), ncols=2)
    else:
        time.text(0.5, 0.5, "no time recorded", transform=time.transAxes, ha="center")
    return _svg(fig)


@_drawn
def sweep(series: Sequence[tuple[str, Sequence[dict[str, Any]]]], peaks: Sequence[tuple[str, str]], *,
          budget_bytes: int | None = None, fit_batch: int | None = None) -> str:
    """Peak against batch: each peak's prediction as a line, its measurements as points; the budget
    as a horizontal line and fit's answer as a vertical one. ``series``: (label, results by batch)."""
    values = [r["predicted"][f] for _, rs in series for r in rs for f in r["predicted"]]
    size, unit = _unit(max(values + [budget_bytes or 0]))
    fig = _figure(7.5, 3.6)
    ax = fig.subplots()
    colour = iter(SERIES_COLOURS * 8)
    for name, results in series:
        results = sorted(results, key=lambda r: r["batch"])
        for key, label in peaks:
            figure = figure_key(key)
            if not any(figure in r["predicted"] for r in results):
                continue
            c = next(colour)
            text = f"{label}{', ' + name if name else ''}"
            done = [r for r in results if figure in r["predicted"]]
            ax.plot([r["batch"] for r in done], [r["predicted"][figure] / size for r in done], "-", color=c,
                    linewidth=1.3, label=f"{text}: predicted")
            seen = [r for r in done if (r.get("measured") or {}).get(figure) is not None]
            if seen:
                ax.plot([r["batch"] for r in seen], [r["measured"][figure] / size for r in seen], "x", color=c,
                        markersize=7, markeredgewidth=1.6, label=f"{text}: measured")
    if budget_bytes:
        ax.axhline(budget_bytes / size, color="black", linestyle=":", linewidth=1.2,
                   label=f"budget {units.nbytes(budget_bytes)}")
    if fit_batch:
        ax.axvline(fit_batch, color="black", linestyle="--", linewidth=1, label=f"fit's answer: batch {fit_batch:,}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel(unit)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


@_drawn
def comparison(runs: Sequence[tuple[str, dict[str, Any]]], peaks: Sequence[tuple[str, str]]) -> str:
    """Runs of one model side by side: each peak predicted (light) and measured (dark) per run; and
    the measured time of inference and each training step per run."""
    keys = [(k, label) for k, label in peaks if any(figure_key(k) in r["predicted"] for _, r in runs)]
    size, unit = _unit(max(max(r["predicted"].values()) for _, r in runs))
    timed = [k for k in ("forward", *(k for k, _ in keys if k != "inference"))
             if any(k in ((r.get("measured") or {}).get("time") or {}) for _, r in runs)]
    fig = _figure(7.5, 3.0)
    memory, time = fig.subplots(1, 2, width_ratios=(3, 2) if timed else (1, 0.01))
    width = 0.8 / len(runs)
    for i, (name, r) in enumerate(runs):
        c = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        x = [j - 0.4 + width * (i + 0.5) for j in range(len(keys))]
        memory.bar(x, [r["predicted"].get(figure_key(k), 0) / size for k, _ in keys], width=width * 0.9,
                   color=c, alpha=0.35, label=f"{name}: predicted")
        meas = r.get("measured") or {}
        memory.plot(x, [(meas.get(figure_key(k)) or 0) / size for k, _ in keys], "_", color=c, markersize=14,
                    markeredgewidth=2.5, label=f"{name}: measured")
        if timed:
            t = meas.get("time") or {}
            time.bar([j - 0.4 + width * (i + 0.5) for j in range(len(timed))],
                     [(t.get(k) or {}).get("median_ms", 0.0) for k in timed], width=width * 0.9, color=c, label=name)
    memory.set_xticks(range(len(keys)), [label for _, label in keys], fontsize=7, rotation=15)
    memory.set_ylabel(unit)
    memory.set_title("peaks: predicted (bars), measured (ticks)", loc="left", fontsize=9)
    memory.legend(fontsize=6, frameon=False, loc="upper left")
    if timed:
        time.set_xticks(range(len(timed)), [k.replace("train_", "step ") for k in timed], fontsize=7)
        time.set_ylabel("ms (median)")
        time.set_title("measured time", loc="left", fontsize=9)
    else:
        time.set_axis_off()
    return _svg(fig)


def figure_key(peak: str) -> str:
    """A peak's key ("train_adam") to its headline figure's ("train_peak_bytes_adam")."""
    if peak == "inference":
        return "inference_peak_bytes"
    first = peak.startswith("train_first_step_")
    name = re.sub(r"^train_(first_step_)?", "", peak)
    return f"train_{'first_step_' if first else ''}peak_bytes_{name}"
