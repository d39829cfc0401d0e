"""``make gpu-check`` (benchmarks/gpu_check.py) in CPU mode: the script a CUDA machine will run.

The quick subset (one spec and one torch module of the zoo; ``fit --verify`` on two models, one
through the CLI and one through the API) runs on the CPU in a child process, as
``make gpu-check ARGS="--device cpu --quick"`` runs it; the CPU path is byte-exact, so every
predicted peak must equal the measured one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    return _run("--device", "cpu", "--quick", "--out", str(out)), out


def test_cpu_quick_writes_both_files(quick):
    done, out = quick
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "accuracy_cpu.json").read_text())
    md = (out / "accuracy_cpu.md").read_text()
    device = report["device"]
    assert device["kind"] == "cpu" and device["name"].startswith("CPU")
    assert device["driver_version"] == "none"
    assert device["torch_version"] == torch.__version__ and device["cuda_version"] == torch.version.cuda
    assert f"torch {torch.__version__}" in md and "driver none" in md
    assert not (out / "accuracy_cuda.json").exists()   # CPU figures never take the CUDA file names
    assert set(report["steps"]) == {"cuda_tests", "zoo", "fit_verify", "time"}
    for step in report["steps"].values():
        assert step["status"] in ("ok", "skipped", "not available"), step
        assert step["wall_s"] >= 0
    assert report["steps"]["cuda_tests"]["reason"]          # skipped in quick CPU mode, and why
    assert report["keras_imported"] is False                # a GPU machine has no Keras


def test_cpu_quick_predicted_equals_measured(quick):
    """The CPU path is exact: every peak of the quick zoo, spec and torch module alike."""
    done, out = quick
    zoo = json.loads((out / "accuracy_cpu.json").read_text())["steps"]["zoo"]
    assert {row["kind"] for row in zoo["rows"]} == {"spec", "module"} and not zoo["failed"]
    for row in zoo["rows"]:
        for mode, peak in row["peaks"].items():
            assert peak["predicted_allocated"] == peak["measured_allocated"], (row["case"], mode, peak)
            assert peak["measured_reserved"] is None   # no reserved figure on the CPU
    assert zoo["summary"]["allocated"]["exact"] == zoo["summary"]["allocated"]["figures"] == 6


def test_cpu_quick_fit_verify_holds(quick):
    done, out = quick
    fits = json.loads((out / "accuracy_cpu.json").read_text())["steps"]["fit_verify"]
    assert [row["via"] for row in fits["rows"]] == ["cli", "api"]   # `modelsize fit ... --verify`, profiler.fit
    assert "--verify" in fits["rows"][0]["command"]
    for row in fits["rows"]:
        assert row["batch"] >= 1 and row["held"] is True, row
        assert row["at_batch"]["measured_bytes"] == row["at_batch"]["predicted_bytes"]


def test_cuda_mode_without_a_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _run("--device", "cuda", timeout=120)
    assert done.returncode == 2 and "--device cpu" in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_target_installs_without_dependencies():
    done = subprocess.run(["make", "-n", "gpu-check", "PYTHON=python3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stdout and "--no-deps" in done.stdout and "--no-build-isolation" in done.stdout
    assert "venv" not in done.stdout   # into the current Python, not a new environment
    assert "benchmarks/gpu_check.py" in done.stdout
