"""The HTML report: timelines saved in results (predicted and measured, exact at the peak), the page
drawn from real profiles (a sweep and a comparison), bad input as one line, and the page opened
in a real browser (headless Chromium; skipped without one)."""
import json
import random
import re
import shutil
from pathlib import Path

import pytest

from profiler import workflow
from profiler.cli import main
from profiler.frontends.source import resolve
from profiler.report import units
from profiler.report.charts import figure_key
from profiler.report.html import render_report
from profiler.report.tables import ALL_PEAKS
from profiler.timeline import compact

pytest.importorskip("matplotlib")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def _profile(batch: int, threads: int, optimizers=("sgd",)) -> dict:
    """digits profiled for real, in this process; no time prediction (no calibration), few repeats."""
    return workflow.profile(resolve("digits"), batch=batch, threads=threads, warmup=0, repeats=1,
                            layer_repeats=0, predict_time=False, optimizers=optimizers)


@pytest.fixture(scope="module")
def runs():
    """A sweep (batches 2 and 4 on 1 thread) and a comparison (batch 2 on 1 and on 2 threads)."""
    return [_profile(2, 1, ("sgd", "adam")), _profile(4, 1), _profile(2, 2)]


def test_compact_timeline_keeps_the_peak_and_the_totals_it_shows():
    rng = random.Random(0)
    for n in (0, 1, 7, 240, 241, 5000):
        deltas = [rng.randint(-50, 60) for _ in range(n)]
        t = compact(deltas, baseline=1000, points=120)
        totals = [1000]
        for d in deltas:
            totals.append(totals[-1] + d)
        assert t["events"] == n and t["peak_bytes"] == max(totals) == totals[t["peak_x"]]
        assert t["bytes"] == [totals[x] for x in t["x"]] and t["x"] == sorted(set(t["x"]))
        assert t["x"][0] == 0 and len(t["x"]) <= 2 * 120 + 1 and t["peak_x"] in t["x"]


def test_timelines_predicted_and_measured_start_and_peak_where_the_result_says(runs):
    r = runs[0]
    measured = r["measured"]
    for key in ("inference", "train_sgd", "train_adam", "train_first_step_sgd", "train_first_step_adam"):
        predicted, real = r["timelines"][key], measured["timelines"][key]
        assert predicted["peak_bytes"] == r["peaks"][key]["bytes"]
        assert real["peak_bytes"] == measured[figure_key(key)] == predicted["peak_bytes"]   # digits is exact
        assert real["bytes"][0] == predicted["bytes"][0]          # the same baseline
    assert measured["timelines"]["train_sgd"]["bytes"][0] == measured["train_baseline_bytes_sgd"]


def test_spec_replay_and_engine_keep_the_same_timeline_peaks():
    spec = workflow.summary(resolve("bn-conv"), batch=3, timelines=True)
    assert {k: t["peak_bytes"] for k, t in spec["timelines"].items()} == \
        {k: p["bytes"] for k, p in spec["peaks"].items()}
    assert "timelines" not in workflow.summary(resolve("bn-conv"), batch=3)   # only asked for


@pytest.fixture(scope="module")
def page(runs):
    import matplotlib
    before = dict(matplotlib.rcParams)
    drawn = render_report(runs, budget_bytes=64 * 1024, fit_batch=3)
    assert dict(matplotlib.rcParams) == before   # the caller's settings are left alone
    return drawn


def _charts(page: str) -> dict[str, str]:
    return dict(re.findall(r'<figure class="chart" id="([^"]+)">(.*?)</figure>', page, re.S))


def test_report_draws_a_sweep_a_comparison_and_each_run(runs, page):
    charts = _charts(page)
    assert set(charts) == {"sweep-digits", "compare-digits-b2",
                           "timeline-digits-b4-threads-1", "breakdown-digits-b4-threads-1",
                           "layers-digits-b4-threads-1",
                           "timeline-digits-b2-threads-2", "breakdown-digits-b2-threads-2",
                           "layers-digits-b2-threads-2"}
    for name, svg in charts.items():
        assert svg.startswith("<svg") and svg.count("<path") > 10, name
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert ">budget 64.00 KiB<" in page and "answer: batch 3<" in page   # the legend's text
    for r in runs:   # every peak's figures as text, predicted and measured
        for key, _ in ALL_PEAKS:
            if key in r["peaks"]:
                figure = figure_key(key)
                assert f"<td class=\"n\">{units.nbytes(r['predicted'][figure])}</td>" in page
                assert f"<td class=\"n\">{units.nbytes(r['measured'][figure])}</td>" in page
    assert len(page.encode()) < 2 * 1024 * 1024


def test_profile_writes_html_beside_the_result(tmp_path, capsys):
    status = main(["profile", "digits", "--batch", "2", "--in-process", "--warmup", "0", "--repeats", "1",
                   "--optimizers", "sgd",
                   "--layer-repeats", "0", "--results-dir", str(tmp_path), "--format", "html"])
    out = capsys.readouterr().out
    assert status == 0
    saved = next(tmp_path.glob("*.json"))
    page = saved.with_suffix(".html")
    assert f"Report: {page}" in out and f"Saved: {saved}" in out
    assert "timeline-digits-b2" in page.read_text()
    assert main(["report", str(saved), "-o", str(tmp_path / "again.html"), "--title", "T"]) == 0
    assert "<title>T</title>" in (tmp_path / "again.html").read_text()


def test_output_without_html_is_refused_before_measuring(tmp_path, capsys):
    assert main(["profile", "digits", "--in-process", "-o", str(tmp_path / "r.html")]) == 2
    assert "field 'output': writes the HTML report" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, pattern", [
    ("not json", r"bad\.json: not a JSON result file"),
    ("[1, 2]", r"bad\.json: not a modelsize result.*Received list"),
    ('{"model": "m", "batch": 2, "predicted": {}}', r"bad\.json: field 'peaks': missing from the result"),
    ('{"model": "m", "batch": "2", "predicted": {}, "peaks": {}}', r"bad\.json: field 'batch': has the wrong type"),
    ('{"model": "m", "batch": 2, "predicted": {}, "peaks": {"inference": {}}}', r"bad\.json: malformed result"),
])
def test_report_of_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys, content, pattern):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["report", str(bad), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and re.search(pattern, err), err
    assert not (tmp_path / "r.html").exists()


def test_without_matplotlib_the_error_names_the_extra(runs, monkeypatch, capsys, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(runs[0]))
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert main(["report", str(path)]) == 2
    assert "pip install 'modelsize[report]'" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium): the page is "
                                             "not opened in a browser")
def test_report_opens_in_chromium_with_every_chart_drawn(page, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                   "playwright; its browsers are not needed)")
    page_file = tmp_path / "report.html"
    page_file.write_text(page)
    problems = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1000, "height": 800})
            tab.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            tab.on("pageerror", lambda e: problems.append(str(e)))
            tab.goto(page_file.as_uri(), wait_until="load")
            marks = tab.evaluate("""() => [...document.querySelectorAll('figure.chart')].map(f => {
                const box = f.querySelector('svg').getBoundingClientRect();
                return [f.id, f.querySelectorAll('svg path, svg rect').length, box.width, box.height]; })""")
            tables = tab.evaluate("() => document.querySelectorAll('table').length")
            tab.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(marks) == 8 and tables >= 6
    for name, count, width, height in marks:
        assert count > 10 and width > 300 and height > 100, name
    assert (tmp_path / "report.png").stat().st_size > 20_000
