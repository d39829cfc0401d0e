"""Predict before building (issue 10, item 1): a measurement whose predicted peak is more than
the device has free is "does not fit" (exit 3) and builds nothing, unless --force."""
import subprocess
import sys

import pytest

from profiler import workflow
from profiler.measuring.devices import CpuDevice, DoesNotFit

BIG = "name: big\ninput_shape: [100000]\nlayers:\n  - Dense: {units: 100000}\n"   # 40 GB of weights


@pytest.mark.parametrize("command", ["measure", "profile"])
def test_the_40_gb_dense_does_not_fit_and_nothing_is_built(tmp_path, command):
    spec = tmp_path / "big.yaml"
    spec.write_text(BIG)
    saving = ["--results-dir", str(tmp_path / "runs")] if command == "profile" else []
    out = subprocess.run([sys.executable, "-m", "profiler", command, str(spec), "--batch", "1", *saving],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert "does not fit" in out.stderr and "nothing was built" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_nothing_is_built_when_the_prediction_is_over_the_free_memory(monkeypatch):
    built = []
    import profiler.frontends.build as build_module
    real_build = build_module.build
    monkeypatch.setattr(build_module, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    monkeypatch.setattr(CpuDevice, "free_bytes", lambda self: 10_000)
    spec = workflow.resolve_spec("digits")
    with pytest.raises(DoesNotFit, match="free on cpu: nothing was built"):
        workflow.measure(spec, batch=2, device="cpu", warmup=0, repeats=1)
    assert built == []
    measured, _ = workflow.measure(spec, batch=2, device="cpu", warmup=0, repeats=1, force=True)
    assert built and measured["inference_peak_bytes"] > 10_000


def test_a_torch_module_is_predicted_before_it_is_built(monkeypatch):
    import torch

    import profiler
    calls = []

    def factory():
        calls.append(torch.empty(0).device.type)
        return torch.nn.Linear(8, 4)
    monkeypatch.setattr(CpuDevice, "free_bytes", lambda self: 100)
    with pytest.raises(DoesNotFit):
        profiler.measure(factory, (8,), batch=2, device="cpu", warmup=0, repeats=1)
    assert calls == ["meta"]   # called for the prediction only (under the meta device), never for real


def test_forced_the_allocator_refuses_and_it_is_does_not_fit(tmp_path):
    """With --force the 40 GB weights are asked of the allocator, which refuses on a machine with
    less memory: "does not fit" while building, exit 3, one line."""
    spec = tmp_path / "big.yaml"
    spec.write_text(BIG)
    out = subprocess.run([sys.executable, "-m", "profiler", "measure", str(spec), "--batch", "1", "--force"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert "building the model does not fit" in out.stderr and len(out.stderr.strip().splitlines()) == 1
