"""The torch-module path's kernel workspace and mixed precision, against the CPU allocator and the
spec path.

``profiler.summary`` replays a module on fake tensors and books, per operator call, what the CPU
kernel allocates inside (``module_memory.kernel_workspace``), through the functions the spec path's
rules use. So a model built from a spec must come out at the allocator's peaks, as the spec path
does, and both paths must book the same workspace.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from torch import nn

from profiler import workflow
from profiler.frontends.build import build
from profiler.engine.kernels.aten_cpu import _WORKSPACE
from profiler.engine.module_memory import outputs, predict_memory
from profiler.engine.predict import predict
from profiler.frontends.spec import loads
from profiler.engine.torch_module import summary
from isa import require_modelled_isa_for

aten = torch.ops.aten
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam")

# two oneDNN convolutions at batch 2: weight reorders and scratchpads forward, three phases
# backward (the second one strided, with fewer than 32 output channels: reduction buffers)
CONV = loads("""
name: conv-workspace
input_shape: [12, 12, 3]
layers:
  - Conv2D: {filters: 16, kernel_size: 3, padding: same, activation: relu}
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2}
  - Flatten: {}
  - Dense: {units: 10}
""")
# bfloat16 matmuls of 8 × 64 · 64 × 128 and 8 × 128 · 128 × 10: oneDNN's scratchpad each
MLP = loads("""
name: mlp-workspace
input_shape: [64]
layers:
  - Dense: {units: 128, activation: relu}
  - Dense: {units: 10}
""")
CASES = {"conv b2 float32": (CONV, 2, "float32", None),
         "mlp b8 bfloat16": (MLP, 8, "bfloat16", None),
         "mlp b8 autocast bfloat16": (MLP, 8, "float32", "bfloat16")}

_SUMMARIES: dict[str, dict] = {}


def torch_path(case: str) -> dict:
    """The case's spec built as a torch module and summarized (once per session)."""
    if case not in _SUMMARIES:
        spec, batch, dtype, amp = CASES[case]
        _SUMMARIES[case] = summary(build(spec, dtype=dtype), spec.inputs[0].shape, batch=batch, dtype=dtype,
                                   amp=amp)
    return _SUMMARIES[case]


@pytest.mark.parametrize("case", CASES)
def test_torch_path_equals_the_allocator_peaks(case):
    spec, batch, dtype, amp = CASES[case]
    require_modelled_isa_for(spec, dtype=dtype, amp=amp)
    measured, _ = workflow.measure(spec, batch=batch, dtype=dtype, loss="cross_entropy", device="cpu",
                                   warmup=0, repeats=1, threads=None, amp=amp)
    result = torch_path(case)
    assert {key: result["predicted"][key] for key in PEAKS} == {key: measured[key] for key in PEAKS}
    # the peaks are not the tensors' alone: the allocator sees workspace, and so does the replay
    assert measured["inference_peak_bytes"] > measured["inference_tensor_peak_bytes"]
    assert result["peaks"]["inference"]["breakdown"]["workspace"] > 0


@pytest.mark.parametrize("case", CASES)
def test_torch_and_spec_paths_book_the_same_workspace(case):
    spec, batch, dtype, amp = CASES[case]
    from_spec = predict(spec, batch=batch, dtype=dtype, amp=amp, threads=torch.get_num_threads()).as_dict()
    from_torch = torch_path(case)
    for peak in ("inference", "train_sgd", "train_adam"):
        assert from_torch["peaks"][peak]["bytes"] == from_spec["peaks"][peak]["bytes"], peak
        assert (from_torch["peaks"][peak]["breakdown"]["workspace"]
                == from_spec["peaks"][peak]["breakdown"]["workspace"]), peak


def test_autocast_weight_casts_live_until_the_region_exits():
    # Linear(64, 128) and Linear(128, 10) cast to bfloat16 once each: (8,192 + 128 + 1,280 + 10) × 2
    casts = (64 * 128 + 128 + 128 * 10 + 10) * 2
    inference = torch_path("mlp b8 autocast bfloat16")["peaks"]["inference"]
    assert inference["breakdown"]["weight_casts"] == casts
    assert torch_path("mlp b8 autocast bfloat16")["layers"][-1]["output_bytes"] == 8 * 10 * 2   # bfloat16


def test_the_ops_fake_cpu_tensors_dispatch_have_their_workspace():
    """What a convolution and a bfloat16 Linear dispatch on fake CPU tensors, forward and backward,
    is what the workspace table knows (a torch upgrade that renames them fails here)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set = set()

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "conv" in str(func) or "mm" in str(func):
                seen.add(func)
            return func(*args, **(kwargs or {}))

    with FakeTensorMode():
        conv = nn.Conv2d(3, 8, 3)
        linear = nn.Linear(16, 4, dtype=torch.bfloat16)
        x = torch.empty(2, 3, 8, 8).to(memory_format=torch.channels_last)
        x.requires_grad_()
        tokens = torch.empty(2, 5, 16, dtype=torch.bfloat16, requires_grad=True)
        with Spy():
            conv(x).sum().backward()
            linear(tokens).sum().backward()
    assert seen and seen <= set(_WORKSPACE)
    assert {aten.convolution.default, aten.convolution_backward.default, aten.addmm.default,
            aten.mm.default} <= seen


def test_mixed_precision_normalizations_replay_as_on_real_tensors():
    """Under autocast, batch, group and layer norm get bfloat16 inputs and keep float32 weights: the
    CPU kernels keep their statistics in float32 (the fake ones would not)."""
    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GroupNorm(2, 8), nn.Flatten(),
                             nn.LayerNorm(8 * 6 * 6), nn.Linear(8 * 6 * 6, 5))

    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 5, (4,))
    model = make()
    real = predict_memory(model, [x], [y], loss="cross_entropy", fake_mode=contextlib.nullcontext(),
                          names={id(m): n for n, m in model.named_modules()}, amp="bfloat16")
    fake = summary(make(), (3, 8, 8), batch=4, amp="bfloat16")["predicted"]
    assert fake["inference_peak_bytes"] == real.inference.bytes
    for opt in ("sgd", "adam"):
        assert fake[f"train_peak_bytes_{opt}"] == real.training[opt].bytes
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert outputs(model(x))[0].dtype == torch.bfloat16


def test_bfloat16_head_products_copy_their_strided_operands():
    """Under autocast, the attention's per-head ``baddbmm``/``bmm`` go to oneDNN, which copies each
    head's strided slice (and takes alpha as a float32 tensor) before its scratchpad: the zoo
    transformer's inference peak (P·V at batch 16, 4,950,304 B on the allocator) is there."""
    spec = workflow.resolve_spec(str(Path(__file__).parents[1] / "benchmarks" / "zoo" / "transformer.yaml"))
    from_spec = predict(spec, batch=16, dtype="float32", amp="bfloat16",
                        threads=torch.get_num_threads()).as_dict()["peaks"]["inference"]
    from_torch = summary(build(spec, dtype="float32"), spec.inputs[0].shape, batch=16,
                         input_dtype=spec.inputs[0].dtype, amp="bfloat16", optimizers=())["peaks"]["inference"]
    assert from_torch["bytes"] == from_spec["bytes"]
    # the allocator's split: P's and V's head slices copied (16·64·64 + 16·64·32 bfloat16) and the
    # scratchpad (``gemm_workspace``, 34,432); the spec path books the attention's tensors as its
    # workspace, so only the totals compare
    assert from_torch["breakdown"]["workspace"] == (16 * 64 * 64 + 16 * 64 * 32) * 2 + 34_432
