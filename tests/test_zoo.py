"""The issue's figures on a small zoo, kept fast enough for every run: each model of the accuracy
zoo (benchmarks/zoo) at batch 2, predicted against the CPU allocator's measured peaks. The full
sweep (batch 1 and 16, three precisions, both prediction paths) is benchmarks/test_accuracy.py.

Also: parameters, gradients and optimizer state equal their measured bytes exactly for every
optimizer and dtype (the measured peak split by category, profiler.measuring.peak_breakdown).
"""
from pathlib import Path

import pytest

from profiler import workflow
from profiler.engine.optimizers import CATALOG
from isa import require_modelled_isa_for

ZOO = sorted(Path(__file__).resolve().parent.parent.glob("benchmarks/zoo/*.yaml"))
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam")


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_zoo_peaks_within_the_issue_figures(path):
    result = workflow.profile(workflow.resolve_spec(str(path)), batch=2, dtype="float32", loss="cross_entropy",
                              device="cpu", warmup=0, repeats=1, threads=None)
    for key in PEAKS:
        error = result["relative_error"][key]
        assert -0.01 <= error <= 0.05, (key, error)   # the issue's bounds per figure; exact today
        assert result["predicted"][key] == result["measured"][key], key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_parameters_gradients_and_state_exact_for_every_optimizer(dtype):
    require_modelled_isa_for(dtype=dtype)
    result = workflow.profile(workflow.resolve_spec("dense-514"), batch=2, dtype=dtype, loss="cross_entropy",
                              device="cpu", optimizers=tuple(CATALOG), warmup=0, repeats=1, threads=None)
    assert result["predicted"]["param_bytes"] == result["measured"]["param_bytes"]
    for optimizer in CATALOG:
        for peak in (f"train_{optimizer}", f"train_first_step_{optimizer}"):
            predicted = result["peaks"][peak]["breakdown"]
            measured = result["measured"]["breakdown"][peak]
            for category in ("parameters", "gradients", "optimizer_state"):
                assert predicted[category] == measured[category], (peak, category)
