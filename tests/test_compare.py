"""``modelsize compare``: result files of two (edited) machines and two dtypes side by side.

Each result is a real ``profile`` of the built-in digits classifier; copies of it play other
machines by having their host, threads and times edited, so every speed-up below is exact.
"""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import pytest

from profiler import cli, workflow
from profiler.report import compare

QUICK = ["--batch", "2", "--repeats", "1", "--warmup", "0", "--layer-repeats", "0", "--optimizers", "sgd",
         "--in-process"]
OLD_RESULTS = Path(__file__).parent / "results" / "runs"   # written by an older modelsize: forward_ms only


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """One real profile result per dtype (float32, bfloat16)."""
    folder = tmp_path_factory.mktemp("real")
    results = {}
    for dtype in ("float32", "bfloat16"):
        assert cli.main(["profile", "digits", *QUICK, "--dtype", dtype, "--results-dir", str(folder / dtype)]) == 0
        (path,) = (folder / dtype).iterdir()
        results[dtype] = json.loads(path.read_text())
    return results


def _machine(result: dict, host: str, threads: int, forward_ms: float, step_ms: float) -> dict:
    edited = copy.deepcopy(result)
    edited["machine_info"]["hostname"] = host
    edited["options"]["threads"] = threads
    edited["measured"]["time"]["forward"]["median_ms"] = forward_ms
    edited["measured"]["time"]["train_sgd"]["median_ms"] = step_ms
    return edited


@pytest.fixture(scope="module")
def files(real, tmp_path_factory):
    """Machine a and machine b (8 threads, faster), each with a float32 and a bfloat16 result."""
    folder = tmp_path_factory.mktemp("machines")
    figures = {("a", "float32"): (10.0, 40.0), ("b", "float32"): (4.0, 16.0),
               ("a", "bfloat16"): (20.0, 50.0), ("b", "bfloat16"): (5.0, 25.0)}
    paths = {}
    for (host, dtype), (forward, step) in figures.items():
        paths[host, dtype] = folder / f"{host}-{dtype}.json"
        edited = _machine(real[dtype], f"machine-{host}", 2 if host == "a" else 8, forward, step)
        paths[host, dtype].write_text(json.dumps(edited))
    return paths


def _run(capsys, *argv):
    code = cli.main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rows_are_models_and_columns_are_machines_and_dtypes(files, real, capsys):
    order = [files["b", "bfloat16"], files["a", "float32"], files["b", "float32"], files["a", "bfloat16"]]
    code, out, err = _run(capsys, *order, "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [(c["key"]["machine"], c["key"]["dtype"], c["key"]["threads"]) for c in data["columns"]] == [
        ("machine-b", "bfloat16", 8), ("machine-a", "float32", 2), ("machine-b", "float32", 8),
        ("machine-a", "bfloat16", 2)]
    (row,) = data["rows"]
    assert (row["model"], row["batch"]) == ("digits", 2)
    assert [c["file"] for c in row["cells"]] == [str(p) for p in order]
    # baseline column 1 is machine-b in bfloat16: each column's speed-up is its time against that one
    times = {("b", "bfloat16"): (5.0, 25.0), ("a", "float32"): (10.0, 40.0), ("b", "float32"): (4.0, 16.0),
             ("a", "bfloat16"): (20.0, 50.0)}
    for cell, key in zip(row["cells"], [("b", "bfloat16"), ("a", "float32"), ("b", "float32"), ("a", "bfloat16")]):
        forward, step = times[key]
        assert cell["runs"]["forward"]["speedup"] == 5.0 / forward
        assert cell["runs"]["train_sgd"]["speedup"] == 25.0 / step
        assert cell["runs"]["forward"]["samples_per_s"] == 2 * 1000 / forward
        dtype = key[1]
        measured, predicted = real[dtype]["measured"], real[dtype]["predicted"]
        assert cell["params"] == real[dtype]["totals"]["params"] == 7850
        assert cell["runs"]["forward"]["peak_measured"] == measured["inference_peak_bytes"]
        assert cell["runs"]["train_sgd"]["peak_predicted"] == predicted["train_peak_bytes_sgd"]
    assert real["bfloat16"]["predicted"]["train_peak_bytes_sgd"] != real["float32"]["predicted"]["train_peak_bytes_sgd"]


def test_the_baseline_column_is_chosen(files, capsys):
    code, out, err = _run(capsys, files["b", "float32"], files["a", "float32"], "--baseline", "2", "--format", "csv")
    assert code == 0, err
    lines = list(csv.reader(io.StringIO(out)))
    by_figure = {line[6]: line[7:] for line in lines[1:]}
    assert by_figure["inference speed-up (×)"] == [str(10.0 / 4.0), "1.0"]
    assert by_figure["step SGD speed-up (×)"] == [str(40.0 / 16.0), "1.0"]
    assert by_figure["inference time (ms)"] == ["4.0", "10.0"]
    code, out, err = _run(capsys, files["b", "float32"], files["a", "float32"], "--baseline", "2")
    assert code == 0 and "2.50×" in out and "[2] machine-a" in out and "(baseline)" in out


def test_a_file_without_a_needed_key_is_refused_in_one_line(files, tmp_path, capsys):
    broken = json.loads(files["a", "float32"].read_text())
    del broken["machine_info"]["hostname"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(broken))
    code, out, err = _run(capsys, files["b", "float32"], path)
    assert code == cli.EXIT_BAD_INPUT and out == ""
    assert err.strip().splitlines() == [f"modelsize: error: {path}: missing key 'machine_info.hostname' "
                                        "(not a modelsize profile result, or one from a version without it)"]
    path.write_text("{not json")
    code, out, err = _run(capsys, path)
    assert code == cli.EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1 and str(path) in err
    code, out, err = _run(capsys, files["b", "float32"], "--baseline", "3")
    assert code == cli.EXIT_BAD_INPUT and "baseline" in err and len(err.strip().splitlines()) == 1


def test_results_of_an_older_version_are_read():
    """Files from before ``measured.time``: the forward time from ``forward_ms``, no step time."""
    paths = sorted(OLD_RESULTS.glob("*.json"))
    data = compare.compare(compare.load_results([str(OLD_RESULTS)]))
    (row,) = data["rows"]
    newest = json.loads(paths[-1].read_text())
    cell = row["cells"][0]
    assert cell["file"] == str(paths[-1]) and data["notes"]   # the same cell twice: the newest kept
    assert cell["runs"]["forward"]["ms"] == newest["measured"]["forward_ms"]
    assert cell["runs"]["train_sgd"]["ms"] is None
    assert cell["runs"]["train_adam"]["peak_measured"] == newest["measured"]["train_peak_bytes_adam"]


def test_what_if_columns_are_the_catalogued_cards_predictions(files, real, tmp_path, capsys):
    code, out, err = _run(capsys, files["a", "float32"], "--device", "a100-80gb", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [c["predicted"] for c in data["columns"]] == [False, True]
    cell = data["rows"][0]["cells"][1]
    opts = real["float32"]["options"]
    expected = workflow.summary(workflow.resolve_spec("digits"), batch=2, dtype="float32", device_kind="cuda",
                                optimizers=tuple(opts["optimizers"]), time_on="a100-80gb")
    assert cell["runs"]["train_sgd"]["peak_predicted"] == expected["predicted"]["train_peak_bytes_sgd"]
    assert cell["runs"]["forward"]["ms"] == expected["predicted_time"]["forward_ms"]
    assert cell["runs"]["forward"]["peak_measured"] is None
    assert cell["runs"]["forward"]["speedup"] == 10.0 / expected["predicted_time"]["forward_ms"]
    torch_result = json.loads(files["b", "float32"].read_text())
    torch_result["model_source"] = {"name": "mymodels:digits", "kind": "torch"}   # names code, not data
    del torch_result["spec"]
    (tmp_path / "torch.json").write_text(json.dumps(torch_result))
    data = compare.compare(compare.load_results([str(tmp_path / "torch.json")]), devices=["a100-80gb"],
                           what_if=workflow.what_if)
    assert data["rows"][0]["cells"][1] is None and "1 what-if cell(s) left empty" in data["notes"][0]
    with pytest.raises(SystemExit) as refused:   # argparse's way out: one line, status 2
        cli.main(["compare", str(files["a", "float32"]), "--device", "a100-81gb"])
    err = capsys.readouterr().err
    assert refused.value.code == cli.EXIT_BAD_INPUT and "unknown accelerator" in err
    assert len(err.strip().splitlines()) == 1


def test_a_torch_models_what_if_imports_its_factory_again(files, tmp_path, monkeypatch, capsys):
    """A torch model's result names its factory and inputs: the what-if column rebuilds it from
    there (its module imported from the current directory, as every command does)."""
    (tmp_path / "tinynet.py").write_text("import torch.nn as nn\n\ndef net():\n"
                                         "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch_result = json.loads(files["a", "float32"].read_text())
    torch_result["model"] = "tinynet:net"
    torch_result["model_source"] = {"name": "tinynet:net", "kind": "torch", "input_shapes": [[4]],
                                    "input_dtypes": ["float"], "int_high": [None]}
    del torch_result["spec"]
    (tmp_path / "torch.json").write_text(json.dumps(torch_result))
    code, out, err = _run(capsys, tmp_path / "torch.json", "--device", "h100-80gb", "--format", "json")
    assert code == 0, err
    cell = json.loads(out)["rows"][0]["cells"][1]
    expected = workflow.summary(workflow.resolve("tinynet:net", input_shape=[[4]]), batch=2, dtype="float32",
                                device_kind="cuda", optimizers=tuple(torch_result["options"]["optimizers"]),
                                time_on="h100-80gb")
    assert expected["totals"]["params"] == 4 * 8 + 8 + 8 * 3 + 3 == cell["params"]
    assert cell["runs"]["train_sgd"]["peak_predicted"] == expected["predicted"]["train_peak_bytes_sgd"]
    assert cell["runs"]["forward"]["ms"] == expected["predicted_time"]["forward_ms"]


def test_hostile_files_are_refused_in_one_line(files, tmp_path, capsys):
    """Nesting deep enough to exhaust json's recursion, and a key of the wrong type: one line,
    exit 2, from compare and from report alike (one reader)."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    typed = json.loads(files["a", "float32"].read_text())
    typed["options"]["batch"] = "32"
    wrong = tmp_path / "typed.json"
    wrong.write_text(json.dumps(typed))
    for path, says in ((deep, "not a result file (JSON nested too deeply)"), (wrong, "key 'options.batch' holds str, expected int")):
        code, out, err = _run(capsys, path)
        assert code == cli.EXIT_BAD_INPUT and err.strip().splitlines() == [f"modelsize: error: {path}: {says}"]
    assert cli.main(["report", str(deep), "-o", str(tmp_path / "page.html")]) == cli.EXIT_BAD_INPUT
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
