"""The HTML report of a zoo sweep (digits and bn-conv, batches 1, 2, 4, ..., 64, profiled for real)
and of a comparison (bn-conv at batch 16 on 1 and on 2 threads): its size (under 2 MB) and how
long headless Chromium takes to load it (under 2 s, pytest-benchmark's rounds). Writes full-page
screenshots under results/report_screenshots/ and the figures in results/report_html.md.

``REPORT_RESULTS=DIR`` reads the sweep's result files from DIR (``modelsize profile ... --results-dir
DIR``) instead of profiling in this process.
"""
import os
import shutil
import statistics
from pathlib import Path

import pytest

from profiler import workflow
from profiler.frontends.source import resolve
from profiler.report.html import render_report
from profiler.report.results import load

pytest.importorskip("matplotlib")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None:
    pytest.skip("no Chromium installed (apt-get install chromium)", allow_module_level=True)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
RESULTS = Path(__file__).resolve().parent.parent / "results"
SHOTS = RESULTS / "report_screenshots"
BATCHES = (1, 2, 4, 8, 16, 32, 64)
LIMIT_BYTES, LIMIT_S = 2 * 1024 * 1024, 2.0
FIGURES: dict[str, str] = {}


def _profile(model: str, batch: int, threads: int | None = None) -> dict:
    return workflow.profile(resolve(model), batch=batch, threads=threads, warmup=1, repeats=5, layer_repeats=3)


@pytest.fixture(scope="module")
def sweep():
    folder = os.environ.get("REPORT_RESULTS")
    if folder:
        return [load(p) for p in sorted(Path(folder).glob("*.json"))]
    return [_profile(model, b) for model in ("digits", "bn-conv") for b in BATCHES]


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def _open(browser, path: Path, shot: Path | None = None) -> tuple[float, list[str], list]:
    """Load ``path`` in a fresh tab: (seconds to the load event, console errors, per chart [id,
    marks drawn]); a full-page screenshot to ``shot``."""
    tab = browser.new_page(viewport={"width": 1000, "height": 900})
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.goto(path.as_uri(), wait_until="load")
    seconds = tab.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd / 1000")
    marks = tab.evaluate("""() => [...document.querySelectorAll('figure.chart')].map(
        f => [f.id, f.querySelectorAll('svg path, svg rect').length])""")
    if shot:
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(shot), full_page=True)
        _palette(shot)
    tab.close()
    return seconds, problems, marks


def _palette(png: Path) -> None:
    """The screenshot in 256 colours (a third of the bytes; charts and text use a few dozen)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(256)
    small.save(png, optimize=True)


def test_zoo_sweep_report_is_small_and_loads_fast(benchmark, sweep, browser, tmp_path):
    models = sorted({r["model"] for r in sweep})
    page = render_report(sweep, title="modelsize: zoo sweep (digits, bn-conv; batches 1-64)")
    size = len(page.encode())
    path = tmp_path / "report_zoo_sweep.html"
    path.write_text(page)
    loads = []

    def load_once():
        seconds, problems, marks = _open(browser, path)
        loads.append(seconds)
        return problems, marks

    problems, marks = benchmark.pedantic(load_once, rounds=5, warmup_rounds=1)
    del loads[:-5]   # the warm-up round's
    _open(browser, path, SHOTS / "zoo_sweep.png")
    assert problems == [] and all(n > 10 for _, n in marks), (problems, marks)
    assert len(marks) == len(models) * 4   # a sweep, and each model's largest batch: timeline, breakdown, layers
    FIGURES["sweep"] = (f"| zoo sweep: {len(sweep)} results ({', '.join(models)}; batches "
                        f"{', '.join(map(str, BATCHES))}) | {size / 1024:,.0f} KiB | {len(marks)} | "
                        f"{statistics.median(loads) * 1000:,.0f} ms (min {min(loads) * 1000:,.0f}, "
                        f"max {max(loads) * 1000:,.0f}; {len(loads)} loads after 1) |")
    assert size < LIMIT_BYTES
    assert statistics.median(loads) < LIMIT_S


def test_sweep_with_a_budget_and_fit_answer(sweep, browser, tmp_path):
    """bn-conv's sweep with a budget between two swept batches' Adam peaks, and fit's answer for it."""
    from profiler.planning import fit
    runs = [r for r in sweep if r["model"] == "bn-conv"]
    peaks = sorted(r["predicted"]["train_peak_bytes_adam"] for r in runs)
    budget = (peaks[-2] + peaks[-1]) // 2
    answer = fit.solve(resolve("bn-conv"), fit.make_budget(memory=str(budget)), mode="adam")
    page = render_report(runs, title=f"modelsize: bn-conv sweep, Adam within {budget:,} B",
                         budget_bytes=budget, fit_batch=answer.batch)
    path = tmp_path / "report_fit.html"
    path.write_text(page)
    seconds, problems, marks = _open(browser, path, SHOTS / "sweep_fit.png")
    assert problems == [] and all(n > 10 for _, n in marks)
    assert 32 <= answer.batch < 64
    FIGURES["fit"] = (f"| bn-conv sweep, budget {budget:,} B, fit's answer batch {answer.batch} | "
                      f"{len(page.encode()) / 1024:,.0f} KiB | {len(marks)} | {seconds * 1000:,.0f} ms (1 load) |")


def test_comparison_report(browser, tmp_path):
    runs = [_profile("bn-conv", 16, threads) for threads in (1, 2)]
    page = render_report(runs, title="modelsize: bn-conv at batch 16, 1 thread against 2")
    path = tmp_path / "report_comparison.html"
    path.write_text(page)
    seconds, problems, marks = _open(browser, path, SHOTS / "comparison.png")
    assert problems == [] and all(n > 10 for _, n in marks)
    assert [m for m, _ in marks][0] == "compare-bn-conv-b16"
    FIGURES["comparison"] = (f"| bn-conv at batch 16, 1 and 2 threads | {len(page.encode()) / 1024:,.0f} KiB | "
                             f"{len(marks)} | {seconds * 1000:,.0f} ms (1 load) |")
    assert len(page.encode()) < LIMIT_BYTES and seconds < LIMIT_S


def teardown_module():
    if not FIGURES:
        return
    machine = os.uname()
    folder = os.environ.get("REPORT_RESULTS")
    made = ("the sweep's results read from REPORT_RESULTS, files of `modelsize profile MODEL --batch B "
            "--repeats 5`" if folder else "the sweep profiled in the benchmark's process")
    (RESULTS / "report_html.md").write_text(
        "# HTML report: size and load time in headless Chromium\n\n"
        "`pytest benchmarks/test_report_html.py` (rendered by `profiler.report.html.render_report`; load "
        "time is the navigation's loadEventEnd, a fresh tab each time, Chromium "
        f"`{CHROMIUM}` driven by playwright; {machine.nodename}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} when written: times on a busy machine; {made}).\n\n"
        "| report | size | charts | load (median) |\n| --- | --- | --- | --- |\n"
        + "\n".join(FIGURES.values()) + "\n\n"
        "Screenshots: [zoo sweep](report_screenshots/zoo_sweep.png), [sweep with fit](report_screenshots/sweep_fit.png), "
        "[comparison](report_screenshots/comparison.png).\n")
