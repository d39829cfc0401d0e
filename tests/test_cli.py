"""The command line: JSON keys, one-line errors with exit status 2, no traceback."""
import json
import subprocess
import sys

import pytest

from profiler.cli import main

BAD = {
    "unknown_layer.yaml": ("input_shape: [4]\nlayers:\n  - Dense: {units: 2}\n  - Blah: {}\n",
                           r"unknown_layer\.yaml: layer 1 \(Blah \"blah\"\): unknown layer type"),
    "missing_arg.yaml": ("input_shape: [4]\nlayers:\n  - Dense: {activation: relu}\n",
                         r"missing_arg\.yaml: layer 0 \(Dense \"dense\"\): field 'units': missing required"),
    "wrong_type.yaml": ("input_shape: [4]\nlayers:\n  - Dense: {units: ten}\n",
                        r"wrong_type\.yaml: layer 0 \(Dense \"dense\"\): field 'units'"),
    "big_kernel.yaml": ("input_shape: [8, 8, 3]\nlayers:\n  - Conv2D: {filters: 4, kernel_size: 9, name: c1}\n",
                        r"big_kernel\.yaml: layer 0 \(Conv2D \"c1\"\): field 'kernel_size'"),
    "negative.yaml": ("input_shape: [8, 8, 3]\nlayers:\n  - Conv2D: {filters: -4, kernel_size: 3}\n",
                      r"negative\.yaml: layer 0 \(Conv2D \"conv2d\"\): field 'filters'"),
    "broken.yaml": ("input_shape: [8, 8\nlayers:\n", r"broken\.yaml: malformed YAML"),
    "broken.json": ('{"input_shape": [8], "layers": [}', r"broken\.json: malformed JSON at line 1"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, name):
    text, pattern = BAD[name]
    path = tmp_path / name
    path.write_text(text)
    assert main(["summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(pattern, err), err


def test_missing_file(capsys):
    assert main(["summary", "no/such/model.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "modelsize: error: no/such/model.yaml: no such file"


def test_json_output_has_the_documented_keys(capsys):
    assert main(["summary", "digits", "--format", "json", "--batch", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    dense = out["layers"][1]
    assert {k: dense[k] for k in ("name", "type", "output_shape", "params", "trainable_params", "formula")} == {
        "name": "dense", "type": "Dense", "output_shape": [None, 10], "params": 7850,
        "trainable_params": 7850, "formula": "10 × (784 + 1) = 7,850"}
    assert out["totals"]["params"] == 7850 and out["totals"]["param_bytes"] == 31400
    assert {"param_bytes", "inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam"} <= set(out["predicted"])


def test_text_and_markdown_render(capsys):
    assert main(["summary", "conv-224", "--explain"]) == 0
    text = capsys.readouterr().out
    assert "conv2d (Conv2D)" in text and "(None, 222, 222, 32)" in text and "896" in text
    assert "32 × (3 × 3×3 + 1) = 896" in text
    assert main(["summary", "dense-514", "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "| dense (Dense) | (None, 514) | 264,710 |" in md and "397,065" in md


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input_shape: [4]\nlayers:\n  - Dense: {units: 0}\n")
    run = subprocess.run([sys.executable, "-m", "profiler", "summary", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "field 'units'" in run.stderr


def test_program_ends_quickly_with_its_output_and_atexit_handlers(tmp_path):
    """After ``summary`` the program skips the interpreter's teardown (``profiler.cli.run``): the
    whole output is written, the exit status kept, and ``atexit`` handlers run (a user module's);
    called as a function, ``main`` leaves the garbage collector as it found it."""
    import gc
    (tmp_path / "my_models.py").write_text(
        "import atexit, sys\n"
        "from torch import nn\n"
        "atexit.register(lambda: sys.stderr.write('atexit ran\\n'))\n"
        "def digits():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(-1))\n")
    args = ["summary", "my_models:digits", "--input-shape", "1,28,28", "--format", "json"]
    run = subprocess.run([sys.executable, "-m", "profiler", *args], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["totals"]["params"] == 7850
    assert run.stderr == "atexit ran\n"
    assert gc.isenabled() and main(["summary", "dense-514", "--format", "json"]) == 0 and gc.isenabled()


def test_torch_factory_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def digits():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(-1))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["summary", "my_models:digits", "--input-shape", "1,28,28", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["params"] == 7850
    assert [layer["output_shape"] for layer in out["layers"]] == [[None, 784], [None, 10], [None, 10]]
    # mixed precision is replayed under autocast for torch models too; checkpointing is for specs
    assert main(["summary", "my_models:digits", "--input-shape", "1,28,28", "--amp"]) == 0
    assert 'Model: "my_models:digits" (batch 32, float32, autocast bfloat16, loss cross_entropy)' \
        in capsys.readouterr().out
    assert main(["summary", "my_models:digits", "--input-shape", "1,28,28", "--checkpoint"]) == 2
    assert "field 'checkpoint'" in capsys.readouterr().err
    assert main(["summary", "my_models:nothing", "--input-shape", "4"]) == 2
    assert "has no attribute 'nothing'" in capsys.readouterr().err
    assert main(["summary", "my_models:digits"]) == 2
    assert "field 'input-shape'" in capsys.readouterr().err


def test_input_grad_option(capsys):
    assert main(["summary", "digits", "--batch", "4", "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["summary", "digits", "--batch", "4", "--input-grad", "--format", "json"]) == 0
    with_grad = json.loads(capsys.readouterr().out)
    assert with_grad["input_grad"] is True and plain["input_grad"] is False
    # d x (4 × 784 × 4 bytes) is alive at the backward peak and kept as x.grad
    assert with_grad["peaks"]["train_sgd"]["bytes"] == plain["peaks"]["train_sgd"]["bytes"] + 4 * 784 * 4
    assert with_grad["peaks"]["inference"] == plain["peaks"]["inference"]
