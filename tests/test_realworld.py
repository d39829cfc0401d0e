"""The fast subset of the real-world zoo (``benchmarks/realworld_zoo.py``, issue 9): models the
project did not write, predicted on fake tensors and measured on the CPU allocator, every peak
(inference, SGD and Adam steps, first steps) equal to the byte, parameters equal to
``sum(p.numel())``. The whole zoo and its table: ``benchmarks/test_accuracy_realworld.py``."""
import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from realworld_zoo import PEAKS, ZOO, run  # noqa: E402
from isa import require_float32_isa  # noqa: E402

#: (entry, batch sizes), kept to a few seconds each. nn.GRU at batch 4: ATen's ``linear`` of its
#: transposed input adds the bias in place on the CPU, out of place on fake tensors (the engine's
#: ``_CPU_RESULT`` fix for ``add``; 20,480 B over before it).
FAST = {"timm resnet (test_resnet)": (1, 2), "torchvision resnet18": (1, 2), "transformers bert (sdpa)": (1, 2),
        "transformers gpt2 (sdpa)": (1, 2), "transformers llama (eager)": (1, 2), "torch nn.GRU": (1, 4),
        "torch nn.MultiheadAttention": (1, 2), "timm swin_tiny": (1,)}
CASES = [(e, b) for e in ZOO if e.name in FAST for b in FAST[e.name]]


def test_fast_subset_names_exist():
    assert {e.name for e, _ in CASES} == set(FAST)


@pytest.mark.parametrize("entry,batch", CASES, ids=[f"{e.name} b{b}" for e, b in CASES])
def test_predicted_equals_measured(entry, batch):
    for package in entry.needs:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (the test extra installs it)")
    if entry.family in ("timm", "torchvision"):   # convolutions (a ViT's patch embedding too)
        require_float32_isa()
    row = run(entry, batch)
    assert row["params"] == row["params_numel"]
    assert {k: row[k]["predicted"] for k in PEAKS} == {k: row[k]["measured"] for k in PEAKS}
