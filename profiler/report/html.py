"""Saved results as one self-contained HTML page: charts as inline SVG (``report/charts.py``),
every figure also in a plain ``<table>``; no JavaScript, nothing fetched, so it opens offline.

Results of one model are grouped: several batches make a *sweep* (peak against batch), several
runs at one batch (another machine, thread count, dtype or device) a *comparison*. Each run gets
its tables; the charts of a run's timeline, breakdown and layers are drawn for every run, except
in a sweep, where only its largest batch of each series is drawn (the file stays small).
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any, Sequence

from profiler.errors import ModelsizeError
from profiler.report import charts, units
from profiler.report.tables import ALL_PEAKS, PEAKS, render

#: what a result needs to be drawn, with the type each key holds
REQUIRED = {"model": str, "batch": int, "predicted": dict, "peaks": dict}
#: what tells two runs of one model apart, besides the batch: (label, where it is in a result); the
#: first are the run's conditions, the last only name runs that nothing else tells apart
RUN_FIELDS = (("device", ("options", "device")), ("dtype", ("dtype",)), ("autocast", ("amp",)),
              ("threads", ("measured", "threads")), ("host", ("machine_info", "hostname")),
              ("CPU", ("machine_info", "cpu_model")), ("loss", ("loss",)), ("checkpoint", ("checkpoint",)))
TIE_BREAKERS = (("torch", ("machine_info", "torch_version")), ("commit", ("machine_info", "git_commit")),
                ("run", ("datetime",)))

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border-bottom:1px solid #ddd;padding:.15rem .6rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}td:first-child{white-space:nowrap}
figure{margin:.5rem 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.8rem;color:#555}
pre{font-size:.72rem;overflow-x:auto}section.run{border-top:2px solid #ccc;margin-top:1.5rem}"""


def check_result(result: Any, source: str | None = None) -> dict[str, Any]:
    """``result`` if it is a result dict the report can draw, else a :class:`ModelsizeError`
    naming ``source`` and the missing or wrong field."""
    if not isinstance(result, dict):
        raise ModelsizeError("not a modelsize result", source=source, expected="a JSON object saved by "
                             "'modelsize profile' or 'summary --format json'", received=type(result).__name__)
    for key, kind in REQUIRED.items():
        if key not in result:
            raise ModelsizeError("missing from the result", field=key, source=source,
                                 expected="a JSON object saved by 'modelsize profile' or 'summary --format json'")
        if not isinstance(result[key], kind) or isinstance(result[key], bool):
            raise ModelsizeError("has the wrong type", field=key, source=source, expected=kind.__name__,
                                 received=type(result[key]).__name__)
    return result


def render_report(results: Sequence[dict[str, Any]], *, title: str | None = None,
                  budget_bytes: int | None = None, fit_batch: int | None = None,
                  sources: Sequence[str] | None = None) -> str:
    """The HTML page for ``results`` (saved result dicts: ``profile``'s, or predictions alone).

    ``budget_bytes`` draws a memory budget on the sweep charts, ``fit_batch`` marks fit's answer
    there (the largest batch whose predicted peak fits the budget). ``sources`` name the results
    in errors (their files; default "result 1", "result 2", ...).
    """
    if not results:
        raise ModelsizeError("no results to report", expected="at least one result")
    sources = list(sources or [f"result {i + 1}" for i in range(len(results))])
    results = [check_result(r, where) for r, where in zip(results, sources)]
    groups: dict[str, list[dict[str, Any]]] = {}
    where: dict[str, list[str]] = {}
    for r, source in zip(results, sources):
        groups.setdefault(r["model"], []).append(r)
        where.setdefault(r["model"], []).append(source)
    title = title or "modelsize report: " + ", ".join(groups)
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>{len(results)} result{'s' * (len(results) != 1)} of {len(groups)} model"
            f"{'s' * (len(groups) != 1)}; rendered {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
            "Bytes in binary units (1 KiB = 1024 B). Errors are (predicted − measured) / measured.</p>"]
    for model, runs in groups.items():
        try:
            body.append(_model_section(model, runs, budget_bytes, fit_batch))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:   # a hand-edited file
            raise ModelsizeError(f"malformed result ({type(error).__name__}: {error})",
                                 source=", ".join(where[model])) from None
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _model_section(model: str, runs: list[dict[str, Any]], budget_bytes: int | None,
                   fit_batch: int | None) -> str:
    labels = _run_labels(runs)
    series: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        series.setdefault(labels[id(r)], []).append(r)
    out = [f"<h2>Model: {_e(model)}</h2>"]
    swept = any(len({r["batch"] for r in rs}) > 1 for rs in series.values())
    drawn = {id(max(rs, key=lambda r: r["batch"])) for rs in series.values()} if swept else {id(r) for r in runs}
    if swept:
        peaks = _present(PEAKS, runs)
        out.append("<h3>Peak against batch</h3>")
        out.append(_chart(f"sweep-{model}", charts.sweep(list(series.items()), peaks, budget_bytes=budget_bytes,
                                                         fit_batch=fit_batch),
                          "Each peak predicted (line) and measured (crosses) at every batch swept"
                          + (f"; the budget {units.nbytes(budget_bytes)} dotted" if budget_bytes else "")
                          + (f"; fit's answer, batch {fit_batch:,}, dashed" if fit_batch else "") + "."))
        out.append(_sweep_table(series, peaks))
    for batch in sorted({r["batch"] for r in runs}):
        same = [r for r in runs if r["batch"] == batch]
        if len(same) > 1:
            peaks = _present(PEAKS, same)
            out.append(f"<h3>Runs compared at batch {batch:,}</h3>")
            out.append(_chart(f"compare-{model}-b{batch}", charts.comparison([(labels[id(r)], r) for r in same],
                                                                              peaks),
                              "Each run's peaks, predicted (bars) and measured (ticks), and its measured time."))
            out.append(_comparison_table([(labels[id(r)], r) for r in same], peaks))
    for r in sorted(runs, key=lambda r: (labels[id(r)], r["batch"])):
        out.append(_run_section(r, labels[id(r)], draw=id(r) in drawn))
    return "\n".join(out)


def _run_section(r: dict[str, Any], label: str, *, draw: bool) -> str:
    anchor = f"{r['model']}-b{r['batch']}-{label}"
    head = f"{_e(r['model'])}, batch {r['batch']:,}" + (f" ({_e(label)})" if label else "")
    peaks = _present(ALL_PEAKS, [r])
    parts = [_peak_table(r, peaks)]
    if draw:
        parts.append(_chart(f"timeline-{anchor}", charts.timeline(r, peaks),
                            "Live bytes through each call, predicted and measured; the dot marks each peak."))
        if any(k in r["peaks"] or k in ((r.get("measured") or {}).get("breakdown") or {}) for k, _ in peaks):
            parts.append(_chart(f"breakdown-{anchor}", charts.breakdown(r, peaks),
                                "What is alive at each peak, by category, predicted beside measured."))
        if r.get("layers"):
            parts.append(_chart(f"layers-{anchor}", charts.layers(r),
                                "Memory and forward time of the model's own layers (the 25 with most memory)."))
    parts.append(_breakdown_table(r, peaks))
    parts.append(f"<details><summary>Full text report</summary><pre>{_e(render(r))}</pre></details>")
    inner = "\n".join(p for p in parts if p)
    if not draw:
        inner = f"<details><summary>Tables (charts are drawn for the largest batch)</summary>\n{inner}</details>"
    return f"<section class=\"run\" id=\"{_e(_slug(anchor))}\"><h3>{head}</h3>\n{inner}</section>"


def _peak_table(r: dict[str, Any], peaks: Sequence[tuple[str, str]]) -> str:
    measured = r.get("measured") or {}
    rows = []
    for key, label in peaks:
        figure = charts.figure_key(key)
        p, m = r["predicted"].get(figure), measured.get(figure)
        rows.append([label, units.nbytes(p), units.nbytes(m), _error(p, m), (r["peaks"].get(key) or {}).get("at", "")])
    time = measured.get("time") or {}
    guess = r.get("predicted_time") or {}
    for key in [k for k in time if k == "forward" or k.startswith("train_")]:
        if isinstance(time[key], dict) and "median_ms" in time[key]:
            p, m = guess.get(f"{key}_ms"), time[key]["median_ms"]
            rows.append([f"time, {key.replace('_', ' ')} (median)", units.millis(p), units.millis(m), _error(p, m), ""])
    return _table(["Figure", "Predicted", "Measured", "Error", "Predicted peak at"], rows, numeric=(1, 2, 3))


def _breakdown_table(r: dict[str, Any], peaks: Sequence[tuple[str, str]]) -> str:
    measured = (r.get("measured") or {}).get("breakdown") or {}
    rows = []
    for key, label in peaks:
        predicted = (r["peaks"].get(key) or {}).get("breakdown") or {}
        real = measured.get(key) or {}
        for category in charts.CATEGORY_COLOURS:
            p, m = predicted.get(category), real.get(category)
            if p or m:
                rows.append([label, category.replace("_", " "), units.nbytes(p),
                             units.nbytes(m) if real else "-", _error(p, m)])
    return _table(["Peak", "Category", "Predicted", "Measured", "Error"], rows, numeric=(2, 3, 4))


def _sweep_table(series: dict[str, list[dict[str, Any]]], peaks: Sequence[tuple[str, str]]) -> str:
    rows = []
    for name, runs in series.items():
        for r in sorted(runs, key=lambda r: r["batch"]):
            cells = []
            for key, _ in peaks:
                figure = charts.figure_key(key)
                p, m = r["predicted"].get(figure), (r.get("measured") or {}).get(figure)
                cells.append(f"{units.nbytes(p)} / {units.nbytes(m)} ({_error(p, m)})")
            rows.append([name or r["model"], f"{r['batch']:,}", *cells])
    return _table(["Run", "Batch", *(f"{label}: predicted / measured (error)" for _, label in peaks)], rows,
                  numeric=range(1, 2 + len(peaks)))


def _comparison_table(runs: Sequence[tuple[str, dict[str, Any]]], peaks: Sequence[tuple[str, str]]) -> str:
    rows = []
    for name, r in runs:
        measured = r.get("measured") or {}
        time = measured.get("time") or {}
        cells = [f"{units.nbytes(r['predicted'].get(charts.figure_key(k)))} / "
                 f"{units.nbytes(measured.get(charts.figure_key(k)))}" for k, _ in peaks]
        forward = (time.get("forward") or {}).get("median_ms")
        rows.append([name, *cells, units.millis(forward)])
    return _table(["Run", *(f"{label}: predicted / measured" for _, label in peaks), "forward time (median)"],
                  rows, numeric=range(1, 2 + len(peaks)))


def _run_labels(runs: list[dict[str, Any]]) -> dict[int, str]:
    """Each run named by the conditions that set it apart from the model's other runs (batch
    aside; "" when none do); runs at one batch that still share a name are told apart by torch's
    version, the commit, then the time they ran."""
    def value(r: dict[str, Any], path: tuple[str, ...]) -> Any:
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        return r

    def labels(fields) -> dict[int, str]:
        differ = [(label, path) for label, path in fields if len({repr(value(r, path)) for r in runs}) > 1]
        return {id(r): ", ".join(f"{label} {value(r, path)}" for label, path in differ) for r in runs}

    fields = list(RUN_FIELDS)
    for extra in (None, *TIE_BREAKERS):
        if extra:
            fields.append(extra)
        named = labels(fields)
        if len({(r["batch"], named[id(r)]) for r in runs}) == len(runs):
            break
    return named


def _present(peaks: Sequence[tuple[str, str]], runs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, label) for k, label in peaks if any(k in r["peaks"] for r in runs)]


def _chart(anchor: str, svg: str, caption: str) -> str:
    if not svg:
        return ""
    return (f"<figure class=\"chart\" id=\"{_e(_slug(anchor))}\">{svg}"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    if not rows:
        return ""
    numeric = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _error(predicted: float | None, measured: float | None) -> str:
    return units.percent((predicted - measured) / measured) if predicted is not None and measured else "-"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _e(text: Any) -> str:
    return html.escape(str(text))
