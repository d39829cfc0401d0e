"""``modelsize sweep``: a grid of profiles saved cell by cell, resumed after an interrupt, with
"does not fit" cells saved and the sweep going on."""
from __future__ import annotations

import json

from profiler import cli, workflow
from profiler.report.compare import result_paths

GRID = ["sweep", "digits", "--batch", "2,4", "--repeats", "1", "--warmup", "0", "--layer-repeats", "0",
        "--optimizers", "sgd"]


def _saved(folder):
    """The result files (not ``save``'s temporary ``.partial-*.json``)."""
    return result_paths([str(folder)]) if folder.is_dir() else []


def _files(folder):
    """Each result file's modification time and bytes, by name."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in _saved(folder)}


def _cells(folder):
    return sorted((c["batch"], c["dtype"]) for c in (json.loads(p.read_text())["sweep_cell"] for p in _saved(folder)))


def test_an_interrupted_sweep_resumes_without_measuring_finished_cells(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    profiled = []
    real_profile = workflow.profile

    def interrupted_at_the_second_cell(source, **options):
        profiled.append(options["batch"])
        if len(profiled) == 2:
            raise KeyboardInterrupt
        return real_profile(source, **options)

    monkeypatch.setattr(workflow, "profile", interrupted_at_the_second_cell)
    assert cli.main([*GRID, "--in-process", "--results-dir", str(runs)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"modelsize: interrupted: the cell at batch 4, float32 was stopped; kept 1 finished cell "
                       f"file in {runs} (--resume goes on from there)")
    kept = _files(runs)
    assert _cells(runs) == [(2, "float32")]

    profiled.clear()
    monkeypatch.setattr(workflow, "profile", lambda source, **options: profiled.append(options["batch"])
                        or real_profile(source, **options))
    assert cli.main([*GRID, "--in-process", "--resume", "--results-dir", str(runs), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert profiled == [4]   # only the cell not yet saved
    after = _files(runs)
    assert {name: after[name] for name in kept} == kept   # the finished cell's file untouched
    assert _cells(runs) == [(2, "float32"), (4, "float32")]
    assert "[1/2] batch 2, float32: already saved, skipped" in out.err
    batches = [row["batch"] for row in json.loads(out.out)["rows"]]
    assert batches == [2, 4]


    # the finished sweep as HTML, from sweep itself (every cell saved: nothing measured) and from compare
    page, compared = tmp_path / "sweep.html", tmp_path / "compare.html"
    profiled.clear()
    assert cli.main([*GRID, "--in-process", "--resume", "--results-dir", str(runs), "--format", "html",
                     "-o", str(page)]) == 0
    assert cli.main(["compare", str(runs), "--format", "html", "-o", str(compared)]) == 0
    assert profiled == []
    for html in (page.read_text(), compared.read_text()):
        assert 'id="sweep-digits"' in html and "<svg" in html and "<script" not in html
    assert cli.main(["compare", str(runs), "-o", str(compared)]) == cli.EXIT_BAD_INPUT   # -o is the page's


def test_resume_matches_cells_by_their_options(tmp_path, capsys):
    """A file of the same batch and dtype but other options (optimizers) is not that cell."""
    runs = tmp_path / "runs"
    assert cli.main([*GRID[:3], "2", *GRID[4:-1], "adam", "--in-process", "--results-dir", str(runs)]) == 0
    assert cli.main([*GRID[:3], "2", *GRID[4:], "--in-process", "--resume", "--results-dir", str(runs)]) == 0
    assert "skipped" not in capsys.readouterr().err
    saved = [json.loads(p.read_text())["sweep_cell"]["optimizers"] for p in _saved(runs)]
    assert sorted(saved) == [["adam"], ["sgd"]]


def test_a_cell_that_does_not_fit_is_saved_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    """The device says it has room for batch 2's predicted peak and not for batch 64's: batch 64
    is saved as "does not fit" (nothing built) and batch 2, after it, is still measured."""
    predicted = workflow.summary(workflow.resolve_spec("digits"), batch=2, optimizers=("sgd",))["predicted"]
    room = workflow.peak_of(predicted)
    monkeypatch.setattr("profiler.measuring.devices.CpuDevice.free_bytes", lambda self: room)
    runs = tmp_path / "runs"
    code = cli.main([*GRID[:2], "--batch", "64,2", *GRID[4:], "--in-process", "--results-dir", str(runs)])
    out = capsys.readouterr()
    assert code == 0, out.err
    results = {r["sweep_cell"]["batch"]: r for r in (json.loads(p.read_text()) for p in _saved(runs))}
    assert set(results) == {2, 64}
    assert "does_not_fit" not in results[2] and results[2]["measured"]["train_peak_bytes_sgd"] == \
        predicted["train_peak_bytes_sgd"]
    assert "is more than the" in results[64]["does_not_fit"] and "measured" not in results[64]
    assert "batch 64, float32: does not fit" in out.err
    assert "does not fit" in out.out   # the table at the end shows the cell


def test_the_api_sweeps_in_a_child_and_compares(tmp_path):
    """``profiler.sweep`` measures a named model in a child process (the CLI's way), and
    ``profiler.compare`` reads what it saved."""
    import profiler
    runs = tmp_path / "runs"
    options = {"batches": (2,), "optimizers": ("sgd",), "repeats": 1, "warmup": 0, "layer_repeats": 0,
               "results_dir": str(runs)}
    (cell,) = profiler.sweep("digits", **options)
    assert cell["status"] == "measured" and cell["cell"]["batch"] == 2
    saved = json.loads(open(cell["file"]).read())
    assert cell["peak_bytes"] == saved["measured"]["train_peak_bytes_sgd"] == saved["predicted"]["train_peak_bytes_sgd"]
    assert [c["status"] for c in profiler.sweep("digits", resume=True, **options)] == ["skipped"]
    (row,) = profiler.compare([runs])["rows"]
    assert row["cells"][0]["file"] == cell["file"]
    assert row["cells"][0]["runs"]["forward"]["ms"] == saved["measured"]["time"]["forward"]["median_ms"]


def test_a_grid_the_model_refuses_ends_before_any_cell_is_measured(tmp_path, monkeypatch, capsys):
    """Autocast keeps float32 master weights: a bfloat16 cell with --amp is refused by the
    prediction of the grid, before the float32 cells are measured."""
    profiled = []
    monkeypatch.setattr(workflow, "profile", lambda source, **options: profiled.append(options["batch"]))
    code = cli.main([*GRID[:4], "--dtype", "float32,bfloat16", "--amp", *GRID[4:], "--in-process",
                     "--results-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_INPUT and profiled == [] and not _saved(tmp_path / "runs")
    assert len(err) == 1 and "amp" in err[0] and "float32" in err[0]
