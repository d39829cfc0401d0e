"""Time measured: the forward pass and each optimizer's training step, per module and per operator.

The runner times the calls it defines (``measuring/runner.py``) and, operator by operator under a
dispatch mode, books each operator to the module running it (``engine/module_scope.py``, shared
with the memory engine). These tests hold the result's keys and their arithmetic, the module
names against the model's own, and that the timer changes no code path.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from profiler.engine.module_scope import MODULE_KEY, ModuleScope
from profiler.measuring.memory_trace import OUTSIDE, ROOT
from profiler.measuring.runner import measure
from profiler.report.tables import render

import torch_models as Z

TIMING = ("median_ms", "iqr_ms", "min_ms", "max_ms", "repeats", "warmup", "samples_per_s")
BATCH = 2


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = Z.resnet_tiny()
    measured = measure(model, input_shape=(BATCH, 3, 32, 32), device="cpu", optimizers=("sgd", "adam"),
                       warmup=1, repeats=3, threads=1)
    return model, measured.as_dict()


def _names(model: nn.Module) -> set[str]:
    return {name or ROOT for name, _ in model.named_modules()}


def test_every_optimizer_has_its_training_step_timed(resnet):
    _, measured = resnet
    time = measured["time"]
    for key in ("forward", "train_sgd", "train_adam"):
        assert set(TIMING) <= set(time[key]), key
        t = time[key]
        assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"] and t["iqr_ms"] >= 0
        assert (t["repeats"], t["warmup"]) == (3, 1) and len(t["samples_ms"]) == 3
        assert key in time["ops"] and key in time["instrumented_ms"]
    assert set(time["phases_ms"]) == {"train_sgd", "train_adam"}
    assert set(time["phases_ms"]["train_sgd"]) == {"optimizer", "forward", "backward"}
    # the old top-level keys are the forward pass's timing
    assert measured["forward_ms"] == time["forward"]["median_ms"]
    assert measured["forward_ms_iqr"] == time["forward"]["iqr_ms"]


def test_samples_per_second_is_the_batch_over_the_median(resnet):
    _, measured = resnet
    for key in ("forward", "train_sgd", "train_adam"):
        t = measured["time"][key]
        assert t["samples_per_s"] == pytest.approx(BATCH * 1000 / t["median_ms"], rel=1e-12)


def test_threads_recorded_are_the_ones_asked(resnet):
    _, measured = resnet
    assert measured["time"]["threads"] == 1 == measured["threads"]
    assert measured["time"]["device"] == "cpu"


def test_per_layer_names_are_the_model_modules(resnet):
    model, measured = resnet
    layers = measured["time"]["layers"]
    names = _names(model)
    assert set(layers["forward"]) <= names        # inference: every operator inside the model
    assert ROOT in layers["forward"]              # torch.flatten in ResNet.forward itself
    assert "layer1.0.conv2" in layers["forward"]
    for phase in ("backward", "train_forward"):
        assert set(layers[phase]) <= names | {OUTSIDE}, phase   # the loss is outside every module
    assert set(measured["time"]["top_layers"]["forward"]) <= {ROOT, *(n.split(".")[0] for n in names)}


def test_per_layer_times_add_up_to_the_instrumented_total(resnet):
    _, measured = resnet
    time = measured["time"]
    assert 0 < sum(time["layers"]["forward"].values()) <= time["instrumented_ms"]["forward"] * (1 + 1e-9)
    assert sum(time["ops"]["forward"].values()) == pytest.approx(time["instrumented_ms"]["forward"], rel=1e-9)
    for key in ("train_sgd", "train_adam"):
        assert sum(time["phases_ms"][key].values()) == pytest.approx(time["instrumented_ms"][key], rel=1e-9)
    assert sum(time["top_layers"]["backward"].values()) == pytest.approx(sum(time["layers"]["backward"].values()))
    assert time["layer_repeats"] == 3
    assert "aten.convolution_backward" in time["ops"]["train_sgd"]


def test_backward_is_booked_to_every_module_with_parameters(resnet):
    model, measured = resnet
    backward = measured["time"]["layers"]["backward"]
    with_parameters = {name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert with_parameters and all(backward.get(name, 0) > 0 for name in with_parameters), \
        sorted(with_parameters - set(backward))


def test_the_fused_transformer_inference_path_is_still_taken():
    torch.manual_seed(0)
    encoder = Z._transformer_encoder()
    measured = measure(encoder, input_shape=(2, 5, 16), loss="mse", device="cpu", optimizers=("sgd",),
                       warmup=0, repeats=1, threads=1).as_dict()
    ops = measured["time"]["ops"]["forward"]
    assert "aten._transformer_encoder_layer_fwd" in ops, sorted(ops)
    # each layer's fused operator belongs to the layer; training takes the unfused path, module by module
    assert set(measured["time"]["layers"]["forward"]) == {"layers.0", "layers.1"}
    assert "layers.0.self_attn" in measured["time"]["layers"]["backward"]


def test_default_threads_and_no_per_layer_runs():
    measured = measure(nn.Sequential(nn.Linear(8, 4)), input_shape=(3, 8), device="cpu", optimizers=("sgd",),
                       warmup=0, repeats=2, layer_repeats=0).as_dict()
    time = measured["time"]
    assert time["threads"] == torch.get_num_threads()
    assert time["train_sgd"]["repeats"] == 2 and time["layer_repeats"] == 0
    assert time["layers"] == {"forward": {}, "backward": {}, "train_forward": {}}
    assert time["ops"] == {} and time["instrumented_ms"] == {}


def test_a_bad_layer_repeats_is_refused():
    from profiler.errors import ModelsizeError
    with pytest.raises(ModelsizeError, match="layer_repeats"):
        measure(nn.Linear(2, 2), input_shape=(1, 2), device="cpu", layer_repeats=-1)


class _Body(nn.Module):
    """Three operators and no submodule: only the last one makes the output."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w) * 2


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _Body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 3).sum()


def test_every_node_a_module_made_carries_its_name():
    model = _Outer()
    names = {id(m): name for name, m in model.named_modules()}
    x = torch.randn(2, 4, requires_grad=True)
    with ModuleScope(names):
        loss = model(x)
    found, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        found.append((node.name().removeprefix("torch::autograd::"), node.metadata.get(MODULE_KEY)))
        stack.extend(n for n, _ in node.next_functions)
    # the body's matmul and relu are not its output but are its own, as is its weight's
    # accumulation; the outer module's x * 3 and sum are the root's (""), made before and after
    # the body ran, and so is the accumulation of x's gradient (x is first used by the root)
    assert sorted(found) == [("AccumulateGrad", ""), ("AccumulateGrad", "body"), ("MmBackward0", "body"),
                             ("MulBackward0", ""), ("MulBackward0", "body"), ("ReluBackward0", "body"),
                             ("SumBackward0", "")]


def test_the_report_shows_each_step_and_a_prediction_when_there_is_one(resnet):
    _, measured = resnet
    result = {"model": "resnet_tiny", "options": {"batch": BATCH, "dtype": "float32", "loss": "cross_entropy"},
              "measured": measured}
    alone = render(result)      # a measurement alone: no Predicted column, as in the memory table
    assert "training step, SGD" in alone and "training step, Adam" in alone and "forward pass (inference)" in alone
    assert "Layer (by time)" in alone and "operators timed one at a time (3 runs" in alone
    assert "Predicted" not in alone and "predicted" not in alone
    result["predicted"] = {"param_bytes": measured["param_bytes"]}   # a profile: the slot is there, "-"
    row = next(line for line in render(result).splitlines() if line.startswith("training step, SGD"))
    assert row.split()[3] == "-" and row.split()[-1] == "-"
    sgd = measured["time"]["train_sgd"]["median_ms"]
    conv1 = measured["time"]["layers"]["forward"]["conv1"]
    result["predicted_time"] = {"forward_ms": 1.0, "train_sgd_ms": sgd * 1.5,
                                "layers": {"forward": {"conv1": conv1 / 2}, "backward": {}}}
    text = render(result)
    row = next(line for line in text.splitlines() if line.startswith("training step, SGD"))
    assert row.endswith("+50.00%")
    row = next(line for line in text.splitlines() if line.startswith("conv1 "))
    assert row.split()[5] == "-50.00%"    # conv1, predicted, ms, measured, ms, error


class _ScriptedClock:
    """A CPU device whose calls take the times scripted, in order: one slow call in a run."""

    def __init__(self, ms: list[float]):
        from profiler.measuring.devices import CpuDevice
        self._cpu, self._ms = CpuDevice(), iter(ms)

    def synchronize(self) -> None:
        self._cpu.synchronize()

    def elapsed_ns(self, fn) -> float:  # type: ignore[no-untyped-def]
        fn()
        return next(self._ms) * 1e6


def test_a_slow_call_moves_its_own_median_not_its_layer():
    """Three runs of two identical layers; one call slowed by 100 ms in the first counted run (in
    layer "0") and one in the second (in layer "1"): the median run would be a slowed one and make
    its layer the slowest; each call's median keeps both at their calls' 1 ms."""
    from profiler.measuring.timing import time_ops
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    x = torch.randn(2, 4)
    names = {id(m): n for n, m in model.named_modules()}

    def run(mark):  # type: ignore[no-untyped-def]
        mark("forward")
        with torch.no_grad():
            model(x)

    per_layer = time_ops(run, _ScriptedClock([1.0] * 1000), names, runs=1, warmup=0).modules["forward"]
    calls = int(sum(per_layer.values()))   # every call 1 ms: the number of calls per run
    assert per_layer["0"] == per_layer["1"] == calls / 2
    first, second, third = [1.0] * calls, [1.0] * calls, [1.0] * calls
    first[0] = 101.0       # layer "0"'s first call
    second[-1] = 101.0     # layer "1"'s last call
    timed = time_ops(run, _ScriptedClock([1.0] * calls + first + second + third), names, runs=3, warmup=1)
    assert timed.modules["forward"] == {"0": calls / 2, "1": calls / 2}
    assert timed.total_ms == calls and timed.runs == 3
