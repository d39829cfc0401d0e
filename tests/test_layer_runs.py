"""A spec's runs of identical layers replayed cut short (profiler/engine/layer_runs.py): the operator
calls the time model prices are the whole spec's replay's, call for call, so predicted times are
identical. Each spec below has a run of MIN_RUN + 2 layers; the whole replay is the reference."""
import dataclasses

import pytest

from profiler.engine import layer_runs, spec_memory
from profiler.engine.layer_runs import KEEP, MIN_RUN, Run, Shortened, shorten
from profiler.engine.op_cost import OpCost
from profiler.engine.optimizers import CATALOG
from profiler.frontends.spec import from_dict

DEPTH = MIN_RUN + 2


def _spec(name, input_shape, before=(), run=None, after=({"Dense": {"units": 3}},)):
    return from_dict({"name": name, "input_shape": input_shape,
                      "layers": [*before, *[run] * DEPTH, *after]})


SPECS = {
    "dense relu": _spec("dense", [8], run={"Dense": {"units": 8, "activation": "relu"}}),
    # the run first: its first layer's input needs no gradient, nor do the activations'
    "activations first": _spec("act", [8], run={"Activation": {"activation": "tanh"}},
                               after=({"Dense": {"units": 8}}, {"Dense": {"units": 3}})),
    "conv": _spec("conv", [6, 6, 2], before=({"Conv2D": {"filters": 4, "kernel_size": 3, "padding": "same"}},),
                  run={"Conv2D": {"filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False}},
                  after=({"GlobalAveragePooling2D": {}}, {"Dense": {"units": 3}})),
    "lstm": _spec("lstm", [3, 3], before=({"LSTM": {"units": 4, "return_sequences": True}},),
                  run={"LSTM": {"units": 4, "return_sequences": True}},
                  after=({"Flatten": {}}, {"Dense": {"units": 3}})),
    "layer norm": _spec("ln", [8], before=({"Dense": {"units": 8}},), run={"LayerNormalization": {}}),
}


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("device_kind", ["cpu", "cuda"])
def test_a_cut_replay_makes_the_whole_replays_calls(name, device_kind):
    spec = SPECS[name]
    short = shorten(spec)
    assert short is not None and len(short.spec.nodes) == len(spec.nodes) - DEPTH + KEEP
    options = dict(batch=2, dtype="float32", loss="cross_entropy", device_kind=device_kind,
                   optimizers=tuple(CATALOG), amp=None, checkpoint=(), threads=1, input_grad=False)
    whole = spec_memory.replay(spec, **options, record_costs=True).costs
    assert _cut_costs(spec, options) == whole


def _cut_costs(spec, options):
    """``spec_memory.costs``, asserting that it replayed the cut spec alone (not the whole as well)."""
    replayed = []
    replay = spec_memory.replay

    def spy(spec, **kwargs):
        replayed.append(len(spec.nodes))
        return replay(spec, **kwargs)
    spec_memory.replay = spy
    try:
        found = spec_memory.costs(spec, **options)
    finally:
        spec_memory.replay = replay
    assert replayed == [len(spec.nodes) - DEPTH + KEEP]
    return found


def test_mixed_precision_and_input_gradients_too():
    spec = SPECS["dense relu"]
    options = dict(batch=3, dtype="float32", loss="mse", device_kind="cpu", optimizers=("adamw",), amp="bfloat16",
                   checkpoint=(), threads=1, input_grad=True)
    assert _cut_costs(spec, options) == spec_memory.replay(spec, **options, record_costs=True).costs


def test_short_runs_checkpoints_and_graphs_are_not_cut():
    assert shorten(_spec("alone", [8], run={"Dense": {"units": 8}}, after=())) is not None
    assert shorten(from_dict({"name": "s", "input_shape": [8],
                              "layers": [{"Dense": {"units": 8}}] * (MIN_RUN - 1)})) is None
    spec = SPECS["dense relu"]
    assert shorten(spec, frozenset({spec.nodes[0].layer.name})) is None
    # different arguments or shapes break a run: 8 units then 9
    mixed = from_dict({"name": "m", "input_shape": [8], "layers": [{"Dense": {"units": 8}}] * (MIN_RUN - 1)
                       + [{"Dense": {"units": 9}}] * (MIN_RUN - 1)})
    assert shorten(mixed) is None


def _cost(module: str, op: str = "aten.mm.default", phase: str = "forward", nbytes: int = 4) -> OpCost:
    return OpCost(op, "matmul", phase, module, "float32", "", 8, nbytes, nbytes)


def test_the_cut_layers_calls_are_the_second_copys_renamed_in_each_phases_order():
    short = Shortened(SPECS["dense relu"], (Run("m1", "m2", ("m2", "m3", "m4")),))
    forward = [_cost("h"), _cost("m1"), _cost("m1.0", "aten.relu.default"), _cost("m2"),
               _cost("m2.0", "aten.relu.default"), _cost("t")]
    backward = [dataclasses.replace(c, phase="backward") for c in reversed(forward)]
    out = short.expand(forward + backward)
    modules = [c.module for c in out]
    assert modules == ["h", "m1", "m1.0", "m2", "m2.0", "m3", "m3.0", "m4", "m4.0", "t",
                       "t", "m4.0", "m4", "m3.0", "m3", "m2.0", "m2", "m1.0", "m1", "h"]
    assert [c.op for c in out[5:7]] == ["aten.mm.default", "aten.relu.default"]


def test_copies_that_differ_or_make_no_forward_calls_are_not_expanded():
    short = Shortened(SPECS["dense relu"], (Run("m1", "m2", ("m2", "m3")),))
    assert short.expand([_cost("m1"), _cost("m2", nbytes=8)]) is None      # not the same calls
    assert short.expand([_cost("m1"), _cost("x"), _cost("m2")]) is None     # something between them
    assert short.expand([_cost("h"), _cost("t")]) is None                   # no forward calls to repeat
    assert short.expand([_cost("m1"), _cost("m2")]) == [_cost("m1"), _cost("m2"), _cost("m3")]
    assert layer_runs._of("m1.0", "m1") and not layer_runs._of("m10", "m1")


def test_fit_prices_the_updates_beside_the_solve_with_the_whole_replays_times(monkeypatch):
    """fit's time on a card: the optimizer's update priced in a child beside the solve, the rest
    from the cut replay; the same dict as the whole spec's replay gives."""
    from profiler import workflow
    from profiler.planning import fit
    spec = SPECS["dense relu"]
    answer, result = workflow.fit(spec, fit.make_budget(device="h100-80gb"), device="h100-80gb", mode="adam",
                                  dtype="float32", loss="cross_entropy", amp=None, threads=None)
    assert answer.batch > 0 and result["predicted_time"]["train_adam_ms"] > 0
    monkeypatch.setattr(layer_runs, "MIN_RUN", len(spec.nodes) + 1)   # nothing cut: the whole replay
    assert layer_runs.shorten(spec) is None
    assert result["predicted_time"] == workflow.time_at(spec, answer, "h100-80gb")
