"""Each operator call run again alone: its recipe (plain data from the engine's fake replay), the
tensors made from it, the timing of each distinct signature, and the layers' split of a predicted
time that takes those timings in while the run's total stays the device model's."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from profiler.engine import torch_module
from profiler.engine.module_memory import KEEP_CALLS
from profiler.engine.op_cost import op_cost
from profiler.engine.op_recipe import arguments, key, nbytes, operator, recipe
from profiler.engine.step_time import Curve, DeviceModel, HOST_CALLS, predict_times, run_time
from profiler.measuring.calls_alone import time_alone

aten = torch.ops.aten


def _toy_model() -> DeviceModel:
    return DeviceModel(name="toy", method="measured", curves={"memory": Curve.of([(1, 1e-6), (1e9, 1e-1)]),
                                                              "matmul/float32": Curve.of([(1, 1e-6), (1e12, 10.0)]),
                                                              "conv/float32": Curve.of([(1, 1e-6), (1e12, 10.0)])},
                       view_s=1e-7, threads=1)


class _Twins(torch.nn.Module):
    """Two identical depthwise convolutions on a channels-last map, and a linear head."""
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.b(self.a(x)).flatten(1))


def _costs(record=KEEP_CALLS):
    return torch_module.memory(_Twins, (16, 8, 8), batch=2, optimizers=("sgd",), record_costs=record).costs


def test_a_recipe_remakes_the_call_s_tensors_with_their_layout_and_its_other_arguments():
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    w, grad = torch.randn(16, 1, 3, 3), torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    args = (grad, x, w, [16], [1, 1], [1, 1], [1, 1], False, [0, 0], 16, [True, True, True])
    written = recipe(args, {})
    assert json.loads(json.dumps(written)) == written              # plain data: a forked replay sends it as JSON
    made, kwargs = arguments(written)
    for old, new in zip(args, made):
        if isinstance(old, torch.Tensor):
            assert (new.shape, new.stride(), new.dtype) == (old.shape, old.stride(), old.dtype)
        else:
            assert new == list(old) if isinstance(old, (list, tuple)) else new == old
    out = operator("aten.convolution_backward.default")(*made, **kwargs)
    assert [o.shape for o in out] == [x.shape, w.shape, torch.Size([16])]
    assert nbytes(written) == 2 * (2 * 16 * 8 * 8 * 4) + 16 * 9 * 4   # two maps and the weight


def test_integer_arguments_are_zero_so_an_index_is_valid_and_odd_ones_make_no_recipe():
    made, _ = arguments(recipe((torch.randn(10, 4), torch.tensor([7, 3])), {}))
    assert made[1].tolist() == [0, 0] and operator("aten.embedding.default")(*made).shape == (2, 4)
    assert recipe((torch.randn(2).to_sparse(),), {}) is None
    assert recipe((object(),), {}) is None


def test_the_replay_keeps_recipes_only_when_asked_and_identical_layers_share_a_signature():
    assert all(c.call is None for calls in _costs(True).values() for c in calls)
    costs = _costs()
    convs = [c for c in costs["training"] if c.op == "aten.convolution.default"]
    assert [c.module for c in convs] == ["a", "b"] and key(convs[0]) == key(convs[1])
    views = [c for c in costs["inference"] if c.kind == "view"]
    assert views and all(c.call is None for c in views)   # a view is never run alone
    assert all(c.call is not None for c in costs["inference"] if c.kind != "view")


def test_each_distinct_signature_of_the_passes_is_timed_once_and_the_optimizer_s_not_at_all():
    costs = _costs()
    calls = [c for found in costs.values() for c in found]
    seconds = time_alone(calls, threads=1)
    wanted = {key(c) for c in calls if c.phase in ("inference", "forward", "backward") and c.call is not None}
    assert set(seconds) == wanted and all(s > 0 for s in seconds.values())
    assert len(wanted) < sum(1 for c in calls if c.phase in ("inference", "forward", "backward") and c.call)
    assert not any(key(c) in seconds for c in costs["step_sgd"])
    assert time_alone(calls, budget_s=0.0) == {}                   # past the budget: nothing more is timed
    assert time_alone(calls, max_call_bytes=0) == {}               # over the cap: not timed


def test_signatures_are_timed_in_interleaved_rounds_within_groups_of_held_bytes(monkeypatch):
    from profiler.measuring import calls_alone
    a = op_cost(aten.mm.default, (torch.randn(2, 3), torch.randn(3, 4)), {}, torch.randn(2, 4),
                phase="forward", module="a", keep_call=True)
    b = op_cost(aten.mm.default, (torch.randn(2, 5), torch.randn(5, 4)), {}, torch.randn(2, 4),
                phase="forward", module="b", keep_call=True)
    order = []

    def spy(name):
        mm = operator(name)
        return lambda x, y: order.append(x.shape[1]) or mm(x, y)
    monkeypatch.setattr(calls_alone, "operator", spy)
    seconds = time_alone([a, b], rounds=2)
    assert set(seconds) == {key(a), key(b)}
    turn = [3] * (1 + calls_alone.PER_ROUND) + [5] * (1 + calls_alone.PER_ROUND)
    assert order == [3, 5] + turn * 2               # made and run once, then each round every one in turn
    order.clear()
    monkeypatch.setattr(calls_alone, "GROUP_BYTES", 1)   # each signature its own group, its rounds its own
    assert set(time_alone([a, b], rounds=2)) == {key(a), key(b)}
    assert order == [3] + [3] * (1 + calls_alone.PER_ROUND) * 2 + [5] + [5] * (1 + calls_alone.PER_ROUND) * 2


def test_a_call_that_will_not_run_again_is_left_out():
    good = op_cost(aten.mm.default, (torch.randn(2, 3), torch.randn(3, 4)), {}, torch.randn(2, 4),
                   phase="forward", module="m", keep_call=True)
    refused = replace(good, call=recipe((torch.randn(2, 3), torch.randn(5, 4)), {}))   # shapes mm refuses
    assert set(time_alone([good, refused])) == {key(good)}


def test_the_split_moves_time_between_layers_but_keeps_each_run_s_total():
    costs, model = _costs(), _toy_model()
    alone = time_alone([c for found in costs.values() for c in found], threads=1)
    plain, split = predict_times(model, costs, 2), predict_times(model, costs, 2, alone)
    for figure in ("forward_ms", "train_sgd_ms"):
        assert split[figure] == pytest.approx(plain[figure])
    for phase in ("inference", "forward", "backward"):
        assert sum(split["layers"][phase].values()) == pytest.approx(sum(plain["layers"][phase].values()))
        if phase != "backward":   # the first layer's backward makes no input gradient: another signature
            assert split["layers"][phase]["a"] == pytest.approx(split["layers"][phase]["b"], rel=0.05)
    assert split["layer_split"] == {"signatures_timed_alone": len(alone)} and "layer_split" not in plain
    # the toy prices the head's matrix multiply at its FLOPs' microseconds; timed alone, the two
    # convolutions' share of the forward pass moves from the prices' toward their own times
    inference = run_time(model, costs["inference"], alone).modules["inference"]
    assert inference != run_time(model, costs["inference"]).modules["inference"]


def test_a_call_not_timed_alone_counts_at_its_phase_s_typical_ratio_and_a_phase_with_none_keeps_the_prices():
    costs, model = _costs(), _toy_model()
    alone = time_alone(costs["inference"], threads=1)
    conv = next(c for c in costs["inference"] if c.op == "aten.convolution.default")
    missing = {k: s for k, s in alone.items() if k != key(conv)}
    split = run_time(model, costs["inference"], missing).modules["inference"]
    assert sum(split.values()) == pytest.approx(run_time(model, costs["inference"]).seconds)
    assert split["a"] != split["b"] or split["a"] > 0        # both convolutions still booked
    assert run_time(model, costs["inference"], {"other": 1.0}).modules == run_time(model, costs["inference"]).modules
    assert HOST_CALLS not in run_time(model, costs["inference"], alone).modules["inference"]


def test_an_expanded_argument_is_remade_as_a_view_of_one_compact_storage():
    expanded = torch.randn(1, 8, 1, 1).expand(1, 8, 4, 4)          # a mean's backward divides one
    made, _ = arguments(recipe((expanded, 16), {}))
    assert made[0].stride() == expanded.stride() and operator("aten.div.Scalar")(*made).shape == (1, 8, 4, 4)
    assert nbytes(recipe((expanded,), {})) == 8 * 4
