"""The time model: each operator call's work counted by hand, the device model's pricing, the
calibration cache, and the time predicted for a model on this machine and on a catalogued card."""
from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from dataclasses import astuple, replace

import pytest
import torch

from profiler.engine.op_cost import OpCost, op_cost
from profiler.engine.step_time import Curve, DeviceModel, predict_times, run_time
from profiler.measuring import calibrate
from profiler.planning.accelerators import CATALOG, roofline_model

aten = torch.ops.aten


def _cost(func, *args, **kwargs):
    return op_cost(func, args, kwargs, func(*args, **kwargs), phase="forward", module="m")


def test_a_matmul_counted_by_hand():
    a, b = torch.randn(6, 5), torch.randn(5, 7)
    cost = _cost(aten.mm.default, a, b)
    assert cost.kind == "matmul"
    assert cost.flops == 2 * 6 * 5 * 7                      # a multiply and an add per term
    assert cost.bytes_read == 4 * (6 * 5 + 5 * 7)
    assert cost.bytes_written == 4 * 6 * 7
    assert cost.work == cost.flops and cost.dtype == "float32"


def test_an_addmm_counts_its_bias_once_and_its_product():
    bias, x, w = torch.randn(7), torch.randn(6, 5), torch.randn(5, 7)
    cost = _cost(aten.addmm.default, bias, x, w)
    assert cost.flops == 2 * 6 * 5 * 7                      # the product; the bias adds are not counted
    assert cost.bytes_read == 4 * (7 + 30 + 35)


def test_an_elementwise_add_moves_three_tensors():
    x, y = torch.randn(1000), torch.randn(1000)
    cost = _cost(aten.add.Tensor, x, y)
    assert cost.kind == "memory" and cost.flops == 0
    assert cost.bytes == 3 * 4000 == cost.work


def test_a_broadcast_operand_is_read_once():
    x, row = torch.randn(100, 10), torch.randn(10).expand(100, 10)
    cost = _cost(aten.mul.Tensor, x, row)
    assert cost.bytes_read == 4 * (1000 + 10)
    assert cost.bytes_written == 4 * 1000


def test_an_in_place_op_reads_and_writes_its_tensor():
    x = torch.randn(256, dtype=torch.bfloat16)
    cost = _cost(aten.mul_.Scalar, x, 2.0)
    assert cost.dtype == "bfloat16" and cost.bytes_read == 512 and cost.bytes_written == 512


def test_a_view_moves_nothing_and_a_device_query_is_no_call():
    x = torch.randn(4, 4)
    view = _cost(aten.view.default, x, [16])
    assert view.kind == "view" and view.bytes == 0 and view.flops == 0
    assert op_cost(torch.ops.prim.device.default, (x,), {}, x.device, phase="forward", module="") is None


def test_a_convolution_counts_its_multiply_adds():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    cost = _cost(aten.convolution.default, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    assert cost.kind == "conv"
    assert cost.flops == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)


def test_flops_are_torch_flop_counters_read_without_its_pytree_wrapper():
    """op_cost calls the registry's formulas of shapes directly (their wrapper maps tensors to
    shapes with torch's pytree, which op_cost has done): the counts stay FlopCounterMode's."""
    from torch.utils.flop_counter import FlopCounterMode
    x, w = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    calls = [(aten.bmm.default, torch.randn(3, 4, 5), torch.randn(3, 5, 6)),
             (aten.baddbmm.default, torch.randn(3, 4, 6), torch.randn(3, 4, 5), torch.randn(3, 5, 6)),
             (aten.convolution_backward.default, torch.randn(2, 4, 8, 8), x, w, None, [1, 1], [1, 1], [1, 1],
              False, [0, 0], 1, [True, True, False])]
    for func, *args in calls:
        with FlopCounterMode(display=False) as counter:
            func(*args)
        assert _cost(func, *args).flops == counter.get_total_flops() > 0, func


def test_curve_interpolates_on_log_axes_and_extrapolates_throughput():
    curve = Curve.of([(100, 1.0), (10_000, 100.0)])
    assert curve(1_000) == pytest.approx(10.0)       # a straight line on log-log axes
    assert curve(10) == 1.0                           # never faster than the smallest call measured
    assert curve(20_000) == pytest.approx(200.0)      # the largest call's throughput beyond
    assert Curve.of([(1, 5.0), (2, 3.0)]).seconds == (5.0, 5.0)   # a bigger call is never faster


def test_the_roofline_prices_a_matmul_by_flops_and_an_add_by_bytes():
    card = CATALOG["h100-80gb"]
    model = roofline_model(card)
    big = torch.empty(4096, 4096, dtype=torch.bfloat16, device="meta")   # nothing allocated
    mm = _cost(aten.mm.default, big, big)
    assert model.op_seconds(mm) == pytest.approx(2 * 4096 ** 3 / 989.4e12)
    vector = torch.empty(1 << 24, device="meta")
    add = _cost(aten.add.Tensor, vector, vector)
    assert add.bytes == 12 * (1 << 24) - 4 * (1 << 24)   # the same tensor twice is read once
    assert model.op_seconds(add) == pytest.approx(8 * (1 << 24) / 3350e9)
    tiny = _cost(aten.add.Tensor, torch.randn(4), torch.randn(4))
    assert model.op_seconds(tiny) == pytest.approx(5e-6)     # a launch at least
    assert "not yet checked on this card" in model.source


def test_every_catalogued_card_has_datasheet_figures():
    for card in CATALOG.values():
        peaks = dict(card.tflops)
        assert peaks["bfloat16"] >= peaks["float32"] > 0 and card.bandwidth_gbs > 0 and card.datasheet


def _toy_model(per_op: float = 0.0) -> DeviceModel:
    return DeviceModel(name="toy", method="measured", curves={"memory": Curve.of([(1, 1e-6), (1e9, 1e-1)]),
                                                              "matmul/float32": Curve.of([(1, 1e-6), (1e12, 10.0)])},
                       view_s=1e-7, per_op_s={"inference": per_op, "forward": per_op, "backward": per_op,
                                              "optimizer": per_op, "loss": per_op})


def test_predicted_time_sums_the_calls_of_each_run_and_counts_samples_per_second():
    from profiler.engine import torch_module
    memory = torch_module.memory(lambda: torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()), [8],
                                 batch=2, optimizers=("sgd", "adam"), record_costs=True)
    model = _toy_model(per_op=1e-6)
    timed = predict_times(model, memory.costs, batch=2)
    inference = run_time(model, memory.costs["inference"])
    assert timed["forward_ms"] == pytest.approx(inference.seconds * 1e3)
    for name in ("sgd", "adam"):   # a step: the training calls and the update, one loop
        step = run_time(model, [*memory.costs["training"], *memory.costs[f"step_{name}"]]).seconds
        assert timed[f"train_{name}_ms"] == pytest.approx(step * 1e3)
        assert timed[f"train_{name}_samples_per_s"] == pytest.approx(2 / step)
    assert timed["train_adam_ms"] > timed["train_sgd_ms"]          # Adam's update does more
    assert set(timed["layers"]["forward"]) >= {"0", "1"}            # per module
    assert set(timed["layers"]["backward"]) >= {"0"}


def test_a_call_python_issued_costs_its_phase_s_python_figure_more():
    x = torch.randn(1000)
    issued = _cost(aten.add.Tensor, x, x)
    from_cpp = op_cost(aten.add.Tensor, (x, x), {}, x + x, phase="forward", module="m", python=False)
    model = replace(_toy_model(per_op=1e-6), per_python_s={"forward": 3e-6})
    # x + x reads 4,000 bytes once and writes 4,000, on the toy memory curve; 1 µs per call, and
    # 3 µs more for Python's
    assert model.op_seconds(issued) - model.op_seconds(from_cpp) == pytest.approx(3e-6, rel=1e-12)
    assert model.op_seconds(from_cpp) == pytest.approx(Curve.of([(1, 1e-6), (1e9, 1e-1)])(8_000) + 1e-6)


def test_a_view_python_issued_pays_the_measured_issue_costs_even_under_a_negative_per_call_figure():
    x = torch.randn(4, 4)
    view = op_cost(aten.view.default, (x, [16]), {}, x.view(16), phase="forward", module="m", python=True, modules=2)
    model = replace(_toy_model(per_op=-5e-6), per_python_s={"forward": 3e-6}, module_s=2e-6)
    # the fitted -5 µs stops at the view's 0.1 µs; Python's 3 µs and two module calls' 2 µs each are added
    assert model.op_seconds(view) == pytest.approx(1e-7 + 3e-6 + 2 * 2e-6, rel=1e-12)


def test_the_fitted_per_call_figure_sums_a_calibration_run_to_its_plain_time():
    x = torch.randn(1000)
    calls = [_cost(aten.add.Tensor, x, x), op_cost(aten.view.default, (x, [10, 100]), {}, x.view(10, 100),
                                                   phase="forward", module="m", python=True, modules=1)]
    model = replace(_toy_model(), per_op_s={})
    for plain in (50e-6, 0.5e-6):   # one above the calls' own time, one below it (the view at its floor)
        run = {"calls": [(c, 0.0) for c in calls],
               "plain": {"inference": 0.0, "forward": plain, "backward": 0.0, "optimizer": 0.0}}
        per_op, per_cpp = calibrate._fit_overheads([run], model, python_s=1e-7, module_s=2e-7)
        fitted = replace(model, per_op_s=per_op, per_cpp_s=per_cpp, per_python_s={"forward": 1e-7}, module_s=2e-7)
        predicted = sum(fitted.op_seconds(c) for c in calls)
        # both calls issued from Python (0.1 µs each), the view after one module call (0.2 µs)
        assert predicted == pytest.approx(max(plain, 1e-7 + 2 * 1e-7 + 2e-7 + 1e-7), rel=1e-9)


def test_calls_cpp_issued_get_a_per_call_figure_of_their_own_that_sums_each_run_to_its_plain_time():
    # two runs of the same call (b seconds on the toy's memory curve), mixed differently: one issued
    # by Python and three by C++ in 4 b, three and one in 8 b. By hand, with a the figure of a call
    # Python issued and c of one C++ issued: (b + a) + 3 (b + c) = 4 b and 3 (b + a) + (b + c) = 8 b,
    # so a = 1.5 b and c = -0.5 b
    x = torch.randn(1)
    one = op_cost(aten.add.Tensor, (x, x), {}, x + x, phase="forward", module="m", python=True)
    model = replace(_toy_model(), per_op_s={})
    b = model.base_seconds(one)

    def run(python: int, cpp: int, plain: float) -> dict:
        calls = [replace(one, python=True)] * python + [replace(one, python=False)] * cpp
        return {"calls": [(c, 0.0) for c in calls],
                "plain": {"inference": 0.0, "forward": plain, "backward": 0.0, "optimizer": 0.0}}
    runs = [run(1, 3, 4 * b), run(3, 1, 8 * b)]
    per_op, per_cpp = calibrate._fit_overheads(runs, model, python_s=0.0, module_s=0.0)
    assert per_op["forward"] == pytest.approx(1.5 * b, rel=1e-6)
    assert per_cpp["forward"] == pytest.approx(-0.5 * b, rel=1e-6)
    fitted = replace(model, per_op_s=per_op, per_cpp_s=per_cpp)
    for r in runs:
        assert sum(fitted.op_seconds(call) for call, _ in r["calls"]) == pytest.approx(r["plain"]["forward"], rel=1e-6)
    # a model fitted before the split (no per_cpp_s) prices both kinds alike
    assert replace(fitted, per_cpp_s={}).op_seconds(replace(one, python=False)) == pytest.approx(2.5 * b)


def _python_flags(make, x):
    """Which calls Python issued, in order, in the engine's replay (fake tensors) and in a real
    run timed by the calibration's call log."""
    from profiler.engine import torch_module
    from profiler.rules.registry import Context
    memory = torch_module.memory(make, list(x.shape[1:]), batch=x.shape[0], optimizers=(), record_costs=True)
    predicted = [(c.op, c.python, c.modules) for c in memory.costs["inference"] if c.kind != "view"]
    log = calibrate._CallLog(Context(device_kind="cpu", data_format="channels_first", threads=1))
    module = make().eval()
    with torch.no_grad(), log:
        module(x)
    measured = [(c.op, c.python, c.modules) for c, _ in log.calls if c.kind != "view"]
    return predicted, measured


def test_a_recurrent_layer_s_operators_are_issued_from_cpp_and_a_linear_s_from_python():
    torch.manual_seed(0)
    predicted, measured = _python_flags(lambda: torch.nn.GRU(4, 4), torch.randn(2, 5, 4))
    assert predicted == measured
    # nn.GRU's Python makes the initial state (zeros), then _VF.gru runs 5 steps' gates from C++
    assert predicted[0] == ("aten.zeros.default", True, 1) and len(predicted) == 30
    assert sum(p for _, p, _ in predicted) == 1
    predicted, measured = _python_flags(
        lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)),
        torch.randn(2, 4))
    # each linear's first call is its t(), a view; the Sequential's call is booked with the first
    assert predicted == measured == [("aten.addmm.default", False, 0), ("aten.relu.default", True, 1),
                                     ("aten.addmm.default", False, 0)]


def test_a_training_step_s_calls_are_flagged_as_a_real_one_s():
    """Forward, loss, backward (autograd's calls from C++, but the first two, after Python's
    ``backward()``) and SGD's update (a Python loop, one call per parameter)."""
    from profiler.engine import torch_module
    from profiler.rules.registry import Context
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))  # noqa: E731
    memory = torch_module.memory(make, [4], batch=2, optimizers=("sgd",), record_costs=True)
    predicted = [(c.phase, c.op, c.python, c.modules) for c in memory.costs["training"] + memory.costs["step_sgd"]
                 if c.kind != "view"]
    log = calibrate._CallLog(Context(device_kind="cpu", data_format="channels_first", threads=1))
    module = make()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    x, y = torch.randn(2, 4), torch.zeros(2, dtype=torch.long)
    for _ in range(2):   # the second step is the steady one
        log.calls.clear()
        opt.zero_grad(set_to_none=True)
        with log:
            log.phase = "forward"
            out = module(x)
            log.phase = "loss"
            loss = torch.nn.functional.cross_entropy(out, y)
            log.phase = "backward"
            loss.backward()
            log.phase = "optimizer"
            opt.step()
    assert predicted == [(c.phase, c.op, c.python, c.modules) for c, _ in log.calls if c.kind != "view"]
    assert [p for phase, _, p, _ in predicted if phase == "optimizer"] == [True] * 4
    assert sum(p for phase, _, p, _ in predicted if phase == "backward") == 2
    # the Sequential and its three layers, each booked with the next call (views included)
    assert sum(c.modules for c in memory.costs["training"] if c.phase == "forward") == 4


def test_the_steady_update_has_no_state_making_calls():
    from profiler.engine import torch_module
    memory = torch_module.memory(lambda: torch.nn.Linear(8, 4), [8], batch=2, optimizers=("adam",), record_costs=True)
    ops = {cost.packet for cost in memory.costs["step_adam"]}
    assert "aten.zeros_like" not in ops and "aten.lerp_" in ops


# -- the calibration cache ------------------------------------------------------------------------

@pytest.fixture
def fake_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSIZE_CACHE_DIR", str(tmp_path))
    calls = []

    def fake(threads=None, progress=None):
        calls.append(threads)
        return _toy_model()
    monkeypatch.setattr(calibrate, "calibrate", fake)
    return calls


def test_the_calibration_is_measured_once_then_read_from_the_cache(fake_calibration, tmp_path):
    first, fresh = calibrate.cpu_model_for(1)
    second, again = calibrate.cpu_model_for(1)
    assert fresh and not again and fake_calibration == [1]
    assert second == first
    files = list(tmp_path.glob("calibration-cpu-*.json"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))     # written whole, by rename
    assert json.loads(files[0].read_text())["key"]["torch_version"] == torch.__version__


def test_another_thread_count_has_its_own_calibration(fake_calibration):
    calibrate.cpu_model_for(1)
    calibrate.cpu_model_for(2)
    assert fake_calibration == [1, 2]


@pytest.mark.parametrize("field,value", [("torch_version", "1.0.0"), ("cpu_model", "another CPU")])
def test_a_cache_made_on_another_machine_or_torch_is_refused(fake_calibration, field, value):
    model, _ = calibrate.cpu_model_for(1)
    path = calibrate.cache_path(calibrate.machine_key(1))
    data = json.loads(path.read_text())
    data["key"][field] = value
    path.write_text(json.dumps(data))
    _, fresh = calibrate.cpu_model_for(1)
    assert fresh and len(fake_calibration) == 2      # recomputed
    assert json.loads(path.read_text())["key"][field] != value


def test_a_broken_cache_file_is_recomputed(fake_calibration):
    calibrate.cpu_model_for(1)
    calibrate.cache_path(calibrate.machine_key(1)).write_text("{not json")
    _, fresh = calibrate.cpu_model_for(1)
    assert fresh


def test_the_device_model_survives_its_json():
    model = _toy_model(per_op=2e-6)
    assert DeviceModel.from_dict(json.loads(json.dumps(model.as_dict()))) == model


# -- a real calibration ----------------------------------------------------------------------------

def test_a_real_calibration_gives_sane_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSIZE_CACHE_DIR", str(tmp_path))
    model, fresh = calibrate.cpu_model_for(1)
    assert fresh and model.threads == 1 and model.method == "measured"
    for key in ("matmul/float32", "matmul/bfloat16", "conv/float32", "memory"):
        curve = model.curves[key]
        assert list(curve.seconds) == sorted(curve.seconds) and curve.seconds[0] > 0
    gflops = model.curves["matmul/float32"].work[-1] / model.curves["matmul/float32"].seconds[-1] / 1e9
    assert 0.5 < gflops < 10_000
    assert model.bandwidth > 1e8
    for key in ("aten.native_batch_norm/float32", "aten.addmm/float32", "aten.convolution_backward/onednn/float32",
                "aten.addmm/thin/float32", "aten.mm/thin/float32", "aten.mm/outer/float32"):
        assert key in model.op_curves
    # the thin model adds only its thin and outer calls: its layer norms are not on their curves
    assert not any(key.startswith(("aten.addmm/outer", "aten.mm/thin/bfloat16")) for key in model.op_curves)
    assert all(math.isfinite(v) for v in model.per_op_s.values())
    # a call Python issues costs more than one C++ issues, by under 100 µs (about 0.4 µs here)
    assert set(model.per_python_s) == set(model.per_op_s) and all(0 <= v < 1e-4 for v in model.per_python_s.values())
    assert 0 < model.host_call_s < 1e-3   # 1-2 µs with a driver or a CPU build, 40-80 µs without a driver
    # a kernel not run since its caches were flushed: tens of microseconds more (27-40 here)
    assert {"matmul", "conv", "conv_backward", "memory"} <= set(model.cold_call_s)
    assert all(0 <= v < 1e-3 for v in model.cold_call_s.values())


def test_a_host_call_is_priced_on_the_call_after_it():
    """Two host calls booked on an operator call add two of the calibration's figure; none, none."""
    model = replace(_toy_model(1e-6), host_call_s=50e-6)
    x = torch.randn(8)
    plain = _cost(aten.neg.default, x)
    asked = op_cost(aten.neg.default, (x,), {}, torch.neg(x), phase="forward", module="m", host_calls=2)
    assert asked.host_calls == 2 and plain.host_calls == 0
    assert model.op_seconds(asked) - model.op_seconds(plain) == pytest.approx(2 * 50e-6)
    assert OpCost.from_row(astuple(asked)) == asked   # as a forked child sends it


def test_an_optimizer_step_s_own_time_is_fitted_once_per_step_beside_its_per_call_figure():
    """Hand-counted: two calibration models, each stepping with SGD (2 and 4 calls) and Adam (20
    and 40), 1 µs a call predicted, 0.5 µs more a call Python issued; the plain updates took
    what 60 µs a step and 3 µs a call more than that make, so the fit reads them back; a run with
    an update adds its step's time once, a forward pass none."""
    model = replace(_toy_model(), curves={"memory": Curve.of([(1, 1e-6), (1e9, 1e-6)])})
    x = torch.randn(4)
    call = op_cost(aten.add_.Tensor, (x, x), {}, x, phase="optimizer", module="")

    def run(pair: str, calls: int) -> dict:
        plain = 60e-6 + calls * (1e-6 + 0.5e-6 + 3e-6)
        return {"pair": pair, "calls": [(call, 0.0)] * calls, "plain": {"optimizer": plain}}
    runs = [run("a", 2), run("a", 20), run("b", 4), run("b", 40), run("c", 7)]   # c: no Adam run, unpaired
    per_call, per_step = calibrate._fit_optimizer_steps(runs, model, python_s=0.5e-6)
    assert (per_call, per_step) == (pytest.approx(3e-6), pytest.approx(60e-6))
    stepped = replace(model, per_op_s={"optimizer": per_call}, optimizer_step_s=per_step)
    forward = op_cost(aten.neg.default, (x,), {}, torch.neg(x), phase="forward", module="m")
    with_update = run_time(stepped, [forward, call, call])
    assert with_update.phases["optimizer"] == pytest.approx(60e-6 + 2 * (1e-6 + 3e-6))
    assert run_time(stepped, [forward]).seconds == pytest.approx(run_time(model, [forward]).seconds)
    # a call's cold kernel (here 2 µs on every call) is priced in the fit as in a prediction: the
    # per-call figure is what is left beyond it, so the same runs are predicted the same
    cold = replace(model, cold_read=((0.0, 1e-12), (1.0, 1e-12)), cold_call_s={"memory": 2e-6})
    per_call, per_step = calibrate._fit_optimizer_steps(runs, cold, python_s=0.5e-6)
    assert (per_call, per_step) == (pytest.approx(1e-6), pytest.approx(60e-6))
    stepped = replace(cold, per_op_s={"optimizer": per_call}, optimizer_step_s=per_step)
    assert run_time(stepped, [forward, call, call]).phases["optimizer"] == pytest.approx(60e-6 + 2 * (1e-6 + 3e-6))


def test_the_host_calls_time_is_in_the_run_but_not_in_the_module_whose_python_made_them():
    """A layer's predicted time is compared with its operators timed one by one, which never see
    a host call: its time is in the run's total and the phase's, under its own entry."""
    from profiler.engine.step_time import HOST_CALLS
    model = replace(_toy_model(1e-6), host_call_s=50e-6)
    x = torch.randn(8)
    first = op_cost(aten.neg.default, (x,), {}, torch.neg(x), phase="forward", module="root")
    asked = replace(first, host_calls=2)
    quiet, loud = run_time(model, [first, first]), run_time(model, [first, asked])
    assert loud.seconds - quiet.seconds == pytest.approx(2 * 50e-6)
    assert loud.phases["forward"] == pytest.approx(loud.seconds)
    assert loud.modules["forward"]["root"] == pytest.approx(quiet.modules["forward"]["root"])
    assert loud.modules["forward"][HOST_CALLS] == pytest.approx(2 * 50e-6) and HOST_CALLS not in quiet.modules["forward"]


class _AsksTheDriver(torch.nn.Module):
    """Asks ``torch.cuda.is_current_stream_capturing()`` as transformers' ``is_tracing`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        try:
            torch.cuda.is_current_stream_capturing()
        except Exception:   # noqa: BLE001 - a CUDA build without a driver raises
            pass
        return self.second(torch.relu(x))


def test_the_replay_books_a_host_call_on_the_next_operator_and_restores_the_function():
    from profiler.engine import torch_module
    from profiler.engine.host_calls import HostCalls
    original = torch.cuda.is_current_stream_capturing
    costs = torch_module.memory(_AsksTheDriver, (4,), batch=2, record_costs=True).costs
    assert torch.cuda.is_current_stream_capturing is original
    booked = [(c.op, c.module, c.host_calls) for c in costs["inference"] if c.host_calls]
    assert booked == [("aten.relu.default", "(root)", 1)]
    with pytest.raises(ZeroDivisionError), HostCalls() as counting:
        _AsksTheDriver()(torch.randn(2, 4))
        1 / 0
    assert counting.count == 1 and torch.cuda.is_current_stream_capturing is original


# -- in every profile ------------------------------------------------------------------------------

def test_profile_predicts_the_time_it_measures_and_says_how_far_off(tmp_path, monkeypatch):
    """A spec and a torch module: the same-device prediction is in the result, with its error."""
    import profiler
    from profiler.report.tables import render
    monkeypatch.setenv("MODELSIZE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate, "calibrate", lambda threads=None, progress=None: _toy_model(1e-6))
    for result in (profiler.profile("digits", batch=4, warmup=1, repeats=3),
                   profiler.profile(lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), (8,),
                                    batch=4, warmup=1, repeats=3)):
        timed = result["predicted_time"]
        assert timed["method"] == "measured" and timed["forward_ms"] > 0
        assert timed["train_sgd_ms"] > timed["forward_ms"] and timed["train_adam_ms"] > 0
        error = result["time_error"]["forward_ms"]
        assert error == pytest.approx((timed["forward_ms"] - result["measured"]["forward_ms"])
                                      / result["measured"]["forward_ms"])
        assert f"Time predicted on {timed['device']} (measured)" in render(result)
        # a torch module's layers are split also by its calls timed alone; a spec's by the prices
        assert ("calls timed alone" in render(result)) == ("model_source" in result)


def test_a_calibration_on_a_busy_machine_says_so(monkeypatch):
    monkeypatch.setattr(calibrate.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert "load average 64.0" in calibrate._busy()
    monkeypatch.setattr(calibrate.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert calibrate._busy() == ""


def test_the_top_layers_table_keeps_the_models_order_among_equal_times():
    """A deep stack of identical layers predicts equal times: the table lists the first of them,
    in the model's order, not the order of a set (which changed from run to run)."""
    from profiler.report.time_tables import _top_layers
    names = [f"dense_{i}/0" for i in range(40)]
    forward = {name: 0.005 for name in names}
    backward = {name: 0.015 for name in names}
    backward["dense_30/0"] = 0.02
    layers = _top_layers({"layers": {"forward": forward, "backward": backward}})
    assert [name for name, _, _ in layers] == ["dense_30/0", "dense_0/0", "dense_1/0", "dense_2/0", "dense_3/0"]


def test_a_call_bound_by_its_bytes_is_priced_by_them_not_by_the_flop_curve():
    """A skinny multiply (4 × 2048 by 2048 × 2048: 34 MFLOPs on a 16 MB weight) and a square one
    of the same FLOPs (256 × 256 × 256) share a factor-of-two bin of work: the curve is the
    square one's (of two, the faster), and the skinny one is priced through its bytes."""
    skinny = _cost(aten.mm.default, torch.randn(4, 2048), torch.randn(2048, 2048))
    square = _cost(aten.mm.default, torch.randn(256, 256), torch.randn(256, 256))
    assert skinny.flops == square.flops == 2 * 256 ** 3
    timed = [(skinny, 1.3e-3), (square, 160e-6)]
    streams = calibrate._streams(timed)
    assert streams["aten.mm/float32"] == pytest.approx(skinny.bytes / 1.3e-3)
    curve = calibrate._kind_curves(timed)["matmul/float32"]
    assert curve.seconds == pytest.approx((160e-6,))
    model = DeviceModel(name="cpu", method="measured", curves={"matmul/float32": curve},
                        op_curves={"aten.mm/float32": curve}, op_bandwidth=streams, bandwidth=1e12)
    assert model.base_seconds(square) == pytest.approx(160e-6)
    assert model.base_seconds(skinny) == pytest.approx(1.3e-3)


def test_a_pool_of_calls_that_broke_the_order_is_flat_across_their_sizes():
    """Two calls whose larger took less time are pooled at one time, which holds from the smaller's
    work to the larger's: a call between them, or the smaller itself, costs that time (a fixed
    cost), not less (pooled at their mean work, the smaller sat below the pool's point)."""
    curve = calibrate._isotonic([(1000.0, 9e-6), (5000.0, 4e-6), (80000.0, 20e-6)])
    pooled = math.sqrt(9e-6 * 4e-6)
    assert curve.work == (1000.0, 5000.0, 80000.0)
    assert curve.seconds == pytest.approx((pooled, pooled, 20e-6))
    assert curve(1000.0) == curve(3000.0) == pytest.approx(pooled)
    assert pooled < curve(20000.0) < 20e-6


def test_a_wide_convolution_on_a_small_map_is_priced_by_its_bytes_not_its_flops():
    """oneDNN's convolutions over few positions for their filters (``onednn_wide``) stream and
    reorder the weight: their curves are of bytes, the operator's FLOP curves never price them, and
    they are left out of the kind's FLOP curve."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.engine.step_time import curve_keys
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=2)
    x, w = torch.randn(4, 288, 1, 1), torch.randn(1024, 288, 1, 1)
    args = (x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    kernel = kernel_of(aten.convolution.default, args, run)
    assert kernel == "onednn_wide"
    wide = op_cost(aten.convolution.default, args, {}, torch.conv2d(x, w), phase="forward", module="head",
                   kernel=kernel)
    assert wide.flops == 2 * 4 * 288 * 1024
    assert wide.bytes_bound and wide.work == wide.bytes == 4 * (4 * 288 + 1024 * 288 + 4 * 1024)
    assert curve_keys(wide) == ("aten.convolution/onednn_wide/float32", "aten.convolution/onednn_wide")
    square = replace(wide, kernel="onednn")
    assert not square.bytes_bound and square.work == square.flops
    assert calibrate._kind_curves([(square, 1e-4), (wide, 3e-4)])["conv/float32"].seconds == pytest.approx((1e-4,))
    model = DeviceModel(name="cpu", method="measured", op_curves={
        "aten.convolution/onednn_wide/float32": Curve((wide.bytes / 2, wide.bytes * 2), (1e-4, 4e-4)),
        "aten.convolution/float32": Curve((1.0, 1e12), (1e-6, 1e-6))})
    assert model.base_seconds(wide) == pytest.approx(2e-4)


def test_a_bin_of_two_calls_takes_the_faster():
    curve = calibrate._isotonic([(1100.0, 5e-6), (1200.0, 9e-6)])   # one bin: 1024 to 2048
    assert curve.seconds == pytest.approx((5e-6,)) and curve.work == pytest.approx((1100.0,))


def test_micro_benchmarks_run_in_interleaved_rounds_each_call_warm(monkeypatch):
    """Each call priced in a run of its own (after one untimed), then round by round over all calls
    (a burst of other work slows one round of a call, not all its runs), each call once untimed
    right before it is timed."""
    from profiler.rules.registry import Context
    order: list[str] = []
    x = torch.zeros(4)

    def call(name):
        def run():
            order.append(name)
            x.add_(1.0)
        return run
    found = calibrate._timed_calls(Context(device_kind="cpu", data_format="channels_first", threads=1),
                                   [call("a"), call("b")], rounds=3)
    assert order == ["a", "a", "b", "b"] * 4
    assert [cost.op for cost, _ in found] == ["aten.add_.Tensor", "aten.add_.Tensor"]


def test_a_batch_norm_in_training_has_its_own_curve_apart_from_one_reading_running_statistics():
    """Training computes the batch's statistics (measured 2.7 × the time of an inference batch norm
    on regnetx_002's calls): the two are two kernel families, two curves."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.engine.step_time import curve_key
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=1)
    x, w, b, mean, var = torch.randn(4, 8, 5, 5), torch.ones(8), torch.zeros(8), torch.zeros(8), torch.ones(8)
    keys = []
    for training in (True, False):
        args = (x, w, b, mean, var, training, 0.1, 1e-5)
        cost = op_cost(aten.native_batch_norm.default, args, {}, aten.native_batch_norm.default(*args),
                       phase="forward", module="m", kernel=kernel_of(aten.native_batch_norm.default, args, run))
        keys.append(curve_key(cost))
    assert keys == ["aten.native_batch_norm/training/float32", "aten.native_batch_norm/float32"]


def test_a_matrix_multiply_with_a_thin_side_and_a_large_rest_is_a_family_of_its_own():
    """Hand-picked shapes: a 4 MiB weight applied to 16 rows is thin, its weight gradient summed
    over the 16 rows is an outer product; 4 rows, a small weight, few columns or bfloat16 are
    neither; the engine's replay of a linear layer on 16 rows names its three calls as a real
    run's call log does."""
    from profiler.engine import torch_module
    from profiler.engine.kernels.aten_cpu import LARGE, kernel_of, matmul_family
    from profiler.rules.registry import Context
    m = lambda rows, inner, cols, dtype=torch.float32: (torch.empty(rows, inner, dtype=dtype),  # noqa: E731
                                                        torch.empty(inner, cols, dtype=dtype))
    assert matmul_family(*m(16, 512, 2048)) == "thin" == matmul_family(*m(32, 2048, 512))
    assert matmul_family(*m(2048, 16, 512)) == "outer" == matmul_family(*m(512, 4, 512))
    assert 512 * 512 == LARGE and matmul_family(*m(8, 512, 512)) == "thin"
    for shape in ((4, 512, 2048), (7, 512, 2048), (33, 512, 2048), (16, 256, 512), (2048, 256, 16),
                  (64, 48, 64), (512, 33, 512)):
        assert matmul_family(*m(*shape)) == "", shape
    assert matmul_family(*m(16, 512, 2048, torch.bfloat16)) == ""
    run = Context(device_kind="cpu", data_format="channels_first", threads=1)
    a, b, bias = torch.randn(16, 512), torch.randn(512, 2048), torch.randn(2048)
    assert kernel_of(aten.addmm.default, (bias, a, b), run) == "thin" == kernel_of(aten.mm.default, (a, b), run)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512))  # noqa: E731
    memory = torch_module.memory(make, [16, 512], batch=1, optimizers=("sgd",), record_costs=True)
    replay = [(c.packet, c.kernel) for c in memory.costs["training"] if c.packet in ("aten.addmm", "aten.mm")]
    assert sorted(replay) == sorted([("aten.addmm", "thin")] * 2 + [("aten.mm", "thin")] + [("aten.mm", "outer")] * 2)
    torch.manual_seed(0)
    module, x = make(), torch.randn(1, 16, 512)
    log = calibrate._CallLog(run)
    with log:
        module(x).sum().backward()
    assert [(c.packet, c.kernel) for c, _ in log.calls if c.packet in ("aten.addmm", "aten.mm")] == replay


def test_the_call_log_prices_after_the_run_what_pricing_during_it_would():
    """The calibration's call log keeps each call's tensors as metadata and prices them after the
    run: the same costs as pricing the live tensors, a tensor read twice moved once and an in-place
    write the storage it read; the timed runs' calls are matched to them by operator, and a run
    that made other calls is left out."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=1)
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    steps = [(aten.mul.Tensor, (x, x)), (aten.add_.Tensor, (x, 1.0)),
             (aten.convolution.default, (x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)),
             (aten.cat.default, ([x, x], 1))]
    live = []
    for func, args in steps:
        out = func(*args)
        live.append(op_cost(func, args, {}, out, phase="forward", module="", kernel=kernel_of(func, args, run)))
    log = calibrate._CallLog(run)
    with log:
        for func, args in steps:
            func(*args)
    priced = [cost for cost, _ in log.calls]
    assert [replace(cost, python=True) for cost in priced] == live   # (OpOverload calls: no Python of the model's)
    assert priced[0].bytes_read == x.numel() * 4 and priced[1].bytes_written == x.numel() * 4
    timer = calibrate._bare_timer()
    with timer:
        for func, args in steps:
            func(*args)
    assert [cost for cost, _ in calibrate._with_times(priced, timer)] == priced
    assert calibrate._with_times(priced[1:], timer) == []


def test_onednn_s_lstm_layer_trains_whenever_grad_mode_is_on_and_has_its_own_curve_then():
    """oneDNN's LSTM layer keeps its gates for backward whenever grad mode is on (whatever its
    ``train`` argument says): a kernel family of its own, in the engine's replay as in the
    calibration's call log of a real run."""
    from profiler.engine import torch_module
    from profiler.engine.step_time import curve_key
    from profiler.rules.registry import Context
    torch.manual_seed(0)
    make = lambda: torch.nn.LSTM(4, 8, batch_first=True)  # noqa: E731
    memory = torch_module.memory(make, [5, 4], batch=2, optimizers=("sgd",), record_costs=True)
    replay = {phase: [curve_key(c) for c in memory.costs[phase] if c.packet == "aten.mkldnn_rnn_layer"]
              for phase in ("inference", "training")}
    assert replay == {"inference": ["aten.mkldnn_rnn_layer/float32"],
                      "training": ["aten.mkldnn_rnn_layer/training/float32"]}
    module, x = make(), torch.randn(2, 5, 4)
    logged = {}
    for grad in (False, True):
        log = calibrate._CallLog(Context(device_kind="cpu", data_format="channels_first", threads=1))
        with torch.set_grad_enabled(grad), log:
            module(x)
        logged[grad] = [curve_key(c) for c, _ in log.calls if c.packet == "aten.mkldnn_rnn_layer"]
    assert logged == {False: replay["inference"], True: replay["training"]}


# -- reads of tensors last touched far back ------------------------------------------------------

def _touching(reads, writes=(), nbytes=None):
    """A memory-bound call with these (storage, bytes) touches."""
    total = sum(n for _, n in (*reads, *writes)) if nbytes is None else nbytes
    return OpCost("aten.add.Tensor", "memory", "forward", "m", "float32", "", 0, total, 0,
                  reads=tuple(reads), writes=tuple(writes))


def test_a_call_records_the_storages_it_reads_and_writes_but_they_are_not_its_identity():
    """Two copies of a layer make the same calls on other storages (:mod:`profiler.engine.layer_runs`
    compares calls); an in-place call writes what it reads; a forked child's rows come back whole."""
    from dataclasses import astuple
    x, y = torch.randn(1000), torch.randn(10)
    cost = _cost(aten.add.Tensor, x, x)                      # one tensor passed twice: read once
    assert cost.reads == ((id(x.untyped_storage()), 4000),) and len(cost.writes) == 1
    in_place = _cost(aten.mul_.Scalar, y, 2.0)
    assert in_place.reads == in_place.writes == ((id(y.untyped_storage()), 40),)
    assert replace(cost, reads=((1, 4000),), writes=()) == cost
    assert OpCost.from_row(json.loads(json.dumps(astuple(cost)))).reads == cost.reads


def test_a_read_s_distance_is_the_distinct_bytes_touched_since_a_loop_ago_or_just_now():
    """Storage 1 (a weight) is read at the loop's start; 2 is written and read twice, then 3: since
    1's last touch, 2 and 3 were touched (counted once each); 2's second read follows its first."""
    from profiler.engine.reuse import read_distances
    loop = [_touching([(1, 1000)], [(2, 100)]), _touching([(2, 100)]), _touching([(2, 100)], [(3, 10)])]
    assert read_distances(loop) == [((1000, 110.0),), ((100, 0.0),), ((100, 0.0),)]


def test_a_layer_of_its_own_pays_its_kernel_s_cold_cost_and_the_second_of_two_identical_layers_less():
    """A call's signature (operator, kernel family, dtype, FLOPs, bytes) is touched with no bytes:
    the distance since it last ran is the bytes touched since. Two identical layers (the same calls
    on other storages) and one of its own in a loop: the first twin's kernel last ran in the other
    twin, the layer of its own between; the second twin's just before it; the layer of its own's
    a whole loop ago. The cold cost follows the cold reads' ramp: all of it as far as their
    farthest, the same fraction of it nearer."""
    from profiler.engine.reuse import call_distances
    twin = lambda storage: OpCost("aten.mm.default", "matmul", "forward", "", "float32", "", 2000, 800, 400,
                                  reads=((storage, 800),), writes=((storage + 1, 400),))
    own = OpCost("aten.relu.default", "memory", "forward", "", "float32", "", 0, 400, 400,
                 reads=((12, 400),), writes=((13, 400),))
    loop = [twin(10), twin(20), own]
    since = [d for _, d in call_distances(loop)]
    assert since == [400.0 + 400.0, 0.0, 2 * (800.0 + 400.0)]
    model = DeviceModel(name="cpu", method="measured", cold_read=((500.0, 1e-12), (2400.0, 4e-12)),
                        cold_call_s={"matmul": 40e-6, "memory": 5e-6})
    near = (1e-12 + 3e-12 * 300 / 1900) / 4e-12
    assert model.cold_call_seconds(loop[0], since[0]) == pytest.approx(40e-6 * near)
    assert model.cold_call_seconds(loop[1], since[1]) == pytest.approx(40e-6 / 4)
    assert model.cold_call_seconds(own, since[2]) == pytest.approx(5e-6)
    assert model.cold_call_seconds(replace(own, kind="view"), since[2]) == 0.0
    priced = run_time(model, loop).seconds - run_time(replace(model, cold_call_s={}), loop).seconds
    assert priced == pytest.approx(40e-6 * (near + 0.25) + 5e-6)


def test_the_cold_cost_of_a_kind_is_its_calls_median_first_run_over_their_second_less_their_cold_reads():
    """A micro-benchmark's first run in a round (all the others ran since its last) against its run
    right after: the median by kind of what is left once its inputs' reads from memory (the cold
    reads' farthest rate) are taken off; a kind whose first runs were faster costs nothing more; a
    call moving more than a mebibyte, mostly its data's cold reads, is left out."""
    mm = lambda nbytes: OpCost("aten.mm.default", "matmul", "forward", "", "float32", "", 10, nbytes, 0,
                               reads=((1, nbytes),))
    add = OpCost("aten.add.Tensor", "memory", "forward", "", "float32", "", 0, 100, 100, reads=((2, 100),))
    conv = OpCost("aten.convolution_backward.default", "conv", "backward", "", "float32", "onednn", 10, 0, 0)
    cold_read = ((10.0, 0.0), (1e6, 1e-9))   # 1 ns a byte from memory
    large = mm(calibrate.COLD_CALL_BYTES + 1)   # mostly its data's cold reads: not counted
    found = calibrate._cold_calls([(mm(1000), 31e-6), (mm(2000), 12e-6), (mm(0), 40e-6), (add, -3e-6),
                                   (conv, 25e-6), (large, 5e-3)], cold_read)
    assert found == pytest.approx({"matmul": 30e-6, "memory": 0.0, "conv_backward": 25e-6}, rel=1e-3)


def test_a_module_s_weight_is_read_from_a_loop_ago_and_its_activation_just_after_it_was_made():
    """An MLP's inference: the first layer's weight was last read a whole pass ago (the second
    layer's weight, 256 KiB, and the activations came since); the ReLU reads what the first layer
    wrote a call before; the update reads the parameters the forward pass read, not its twins'."""
    from profiler.engine import torch_module
    from profiler.engine.reuse import read_distances
    memory = torch_module.memory(lambda: torch.nn.Sequential(torch.nn.Linear(256, 512, bias=False), torch.nn.ReLU(),
                                                             torch.nn.Linear(512, 128, bias=False)),
                                 [256], batch=4, optimizers=("sgd",), record_costs=True)
    calls = [c for c in memory.costs["inference"] if c.reads]
    assert [c.packet for c in calls] == ["aten.mm", "aten.relu", "aten.mm"]
    distances = read_distances(calls)
    weight_bytes = dict(distances[0])[512 * 256 * 4]
    assert 512 * 128 * 4 < weight_bytes < 512 * 128 * 4 + 4 * (512 + 512 + 128) * 4 + 1
    assert distances[1] == ((4 * 512 * 4, 0.0),)
    forward_weights = {key for c in memory.costs["training"] if c.packet == "aten.mm" and c.phase == "forward"
                       for key, nbytes in c.reads if nbytes in (512 * 256 * 4, 512 * 128 * 4)}
    updated = {key for c in memory.costs["step_sgd"] for key, _ in c.writes}
    assert len(forward_weights) == 2 and updated == forward_weights


def test_a_read_from_far_back_costs_what_its_distance_costs_more_than_the_call_s_own():
    """A 1 MB read last touched 300 MB back costs the far rate per byte, 30 MB back half of it
    (linear between the measured 10 and 50 MB); a call moving 400 MB was measured that cold
    already; a read a loop never touched before is as far as the farthest. The call's own time
    overlaps its reads but for the exposed share of the shorter: with none exposed, a call taking
    10 µs of its own adds 30 of the 40, one taking 100 none; with half, 35 and 20; with all, 40."""
    model = replace(_toy_model(per_op=0.0), curves={}, cold_read=((1e6, 0.0), (1e7, 0.0), (5e7, 4e-11)))
    small, huge = _touching([(1, 10**6)]), _touching([(1, 10**6)], nbytes=4 * 10**8)
    assert model.base_seconds(small) == 0.0
    assert model.cold_seconds(small, [(10**6, 3e8)]) == pytest.approx(10**6 * 4e-11)
    assert model.cold_seconds(small, [(10**6, 3e7)]) == pytest.approx(10**6 * 2e-11)
    assert model.cold_seconds(small, [(10**6, 5e6)]) == 0.0
    assert model.cold_seconds(huge, [(10**6, 3e8)]) == 0.0
    assert model.cold_seconds(small, [(10**6, math.inf)]) == pytest.approx(10**6 * 4e-11)
    for exposed, own, more in ((0.0, 1e-5, 3e-5), (0.0, 1e-4, 0.0), (0.5, 1e-5, 3.5e-5), (0.5, 1e-4, 2e-5),
                               (1.0, 1e-5, 4e-5), (1.0, 1e-4, 4e-5)):
        busy = replace(model, curves={"memory": Curve.of([(1, own), (1e9, own)])}, cold_exposed=exposed)
        assert busy.base_seconds(small) == pytest.approx(own)
        assert busy.cold_seconds(small, [(10**6, 3e8)]) == pytest.approx(more)
    assert DeviceModel.from_dict(json.loads(json.dumps(model.as_dict()))) == model


def test_a_network_whose_weights_outgrow_the_cache_is_predicted_slower_by_its_cold_reads():
    """Three 4 MB layers and a 4 KB one: with the cold rate from 6 MB back, each large weight (8 MB
    of other weights since its last read) costs its bytes at that rate in the forward pass (each
    call's own 4 MB was measured warm), less the call's own time where the reads overlap it whole,
    nothing less where none of it does; the small reads from as far add a little (20 KB of
    biases, input and last weight); without a cold rate, nothing."""
    from profiler.engine import torch_module
    layers = [torch.nn.Linear(1024, 1024) for _ in range(3)] + [torch.nn.Linear(1024, 1)]
    memory = torch_module.memory(lambda: torch.nn.Sequential(*layers), [1024], batch=1, optimizers=("sgd",),
                                 record_costs=True)
    warm = replace(_toy_model(per_op=0.0), curves={"memory": Curve.of([(1, 1e-9), (1e9, 1e-3)]),
                                                   "matmul/float32": Curve.of([(1, 1e-9), (1e12, 1e-3)])})
    large = [c for c in memory.costs["inference"] if c.kind == "matmul" and c.flops == 2 * 1024 * 1024]
    own = sum(warm.base_seconds(c) for c in large)
    assert len(large) == 3 and 0 < own < 3 * 1024 * 1024 * 4 * 1e-10 / 10
    for exposed, hidden in ((0.0, own), (1.0, 0.0)):
        cold = replace(warm, cold_read=((5e6, 0.0), (6e6, 1e-10)), cold_exposed=exposed)
        slower = predict_times(cold, memory.costs, 1)["forward_ms"] - predict_times(warm, memory.costs, 1)["forward_ms"]
        assert slower == pytest.approx((3 * 1024 * 1024 * 4 * 1e-10 - hidden) * 1e3, rel=0.01)
    assert predict_times(cold, memory.costs, 1)["train_sgd_ms"] > predict_times(warm, memory.costs, 1)["train_sgd_ms"]


def test_a_buffer_too_large_for_the_heap_costs_its_bytes_at_the_fresh_rate_each_time_it_is_made():
    """A 16-to-8192 linear layer and its ReLU at batch 2048: each result is 2048 × 8192 × 4 B =
    64 MiB, over a 32 MiB threshold, so each costs 64 MiB at the fresh rate in inference (the 128 KiB
    input nothing); the replay records what each call allocated; under the threshold, nothing."""
    from profiler.engine import torch_module
    memory = torch_module.memory(lambda: torch.nn.Sequential(torch.nn.Linear(16, 8192), torch.nn.ReLU()), [16],
                                 batch=2048, optimizers=("sgd",), record_costs=True)
    made = {c.packet: c.allocated for c in memory.costs["inference"] if c.allocated}
    assert made["aten.addmm"] == made["aten.relu"] == (2048 * 8192 * 4,)
    plain = _toy_model(per_op=0.0)
    fresh = replace(plain, fresh_from=32 * 2**20, fresh_byte_s=1e-10)
    slower = predict_times(fresh, memory.costs, 2048)["forward_ms"] - predict_times(plain, memory.costs, 2048)["forward_ms"]
    assert slower == pytest.approx(2 * 2048 * 8192 * 4 * 1e-10 * 1e3)
    assert predict_times(fresh, memory.costs, 2048)["train_sgd_ms"] > predict_times(plain, memory.costs, 2048)["train_sgd_ms"]
    high = replace(fresh, fresh_from=2**27)
    assert predict_times(high, memory.costs, 2048)["forward_ms"] == pytest.approx(
        predict_times(plain, memory.costs, 2048)["forward_ms"])
    assert DeviceModel.from_dict(json.loads(json.dumps(fresh.as_dict()))) == fresh


def test_the_fresh_memory_benchmark_finds_a_mapped_buffer_slower_than_a_reused_one():
    """glibc maps a 64 MiB buffer fresh at each allocation: its page faults cost, on any Linux."""
    per_byte = calibrate._fresh_memory(rounds=3)
    assert 0.0 < per_byte < 1e-8   # slower than 100 GB/s of faults, faster than 100 MB/s


def test_the_cold_read_benchmark_gives_a_rising_cost_with_distance_and_the_share_a_call_s_time_hides():
    points, exposed = calibrate._cold_reads(rounds=2, counts=(1, 2, 4, 12))
    distances, costs = [d for d, _ in points], [c for _, c in points]
    assert distances == sorted(distances) and distances[-1] > 40e6
    assert costs == sorted(costs) and costs[0] == 0.0
    assert all(c < 1e-9 for c in costs)   # never slower than 1 GB/s
    assert 0.0 <= exposed <= 1.0


def test_above_its_largest_call_a_memory_bound_operator_follows_the_memory_curve_and_a_matmul_its_throughput():
    """A calibration model's largest ``cat`` is a few kilobytes: a 0.5 MB one is priced along the
    memory curve from it (a cache-resident copy costs about as much as a small one), not at its
    throughput (2.7 GB/s: timm densenet121's cats 6 x their time); a matrix multiply above its
    largest runs at that call's FLOP rate."""
    memory = Curve.of([(1e3, 1e-6), (1e6, 4e-6)])
    model = DeviceModel(name="cpu", method="measured", curves={"memory": memory},
                        op_curves={"aten.cat/float32": Curve.of([(1e3, 1e-6), (4e3, 2e-6)]),
                                   "aten.mm/float32": Curve.of([(1e6, 1e-5), (1e7, 5e-5)])})
    cat = _touching([(1, 250_000)], [(2, 250_000)])
    cat = replace(cat, op="aten.cat.default")
    assert model.base_seconds(cat) == pytest.approx(2e-6 * memory(5e5) / memory(4e3))
    mm = OpCost("aten.mm.default", "matmul", "forward", "m", "float32", "", 4 * 10**7, 1000, 1000)
    assert model.base_seconds(mm) == pytest.approx(5e-5 * 4)


def test_a_pooling_on_a_channels_last_tensor_is_its_own_kernel_family():
    """torch's CPU pooling vectorises over channels when they are innermost (a 2 x 2 max pool of
    8 x 16 x 32 x 32: 244 us contiguous, 28 us channels-last): the two layouts are two curves, for
    the pooling and its backward; a 1 x 1 convolution on torch's im2col kernel is one too."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=1)
    x = torch.randn(2, 8, 6, 6)
    last = x.contiguous(memory_format=torch.channels_last)
    pool, backward = aten.max_pool2d_with_indices.default, aten.max_pool2d_with_indices_backward.default
    out, indices = pool(last, [2, 2], [2, 2])
    assert kernel_of(pool, (x, [2, 2], [2, 2]), run) == ""
    assert kernel_of(pool, (last, [2, 2], [2, 2]), run) == "channels_last"
    assert kernel_of(backward, (out, last, [2, 2], [2, 2], [0, 0], [1, 1], False, indices), run) == "channels_last"
    assert kernel_of(aten.avg_pool2d.default, (last, [2, 2]), run) == "channels_last"
    w1, w3 = torch.randn(8, 8, 1, 1), torch.randn(8, 8, 3, 3)
    one = (x[:1], w1, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    three = (x[:1], w3, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    assert (kernel_of(aten.convolution.default, one, run), kernel_of(aten.convolution.default, three, run)) == \
        ("im2col_1x1", "im2col")


def test_a_strided_convolution_is_its_own_kernel_family_beside_each():
    """Per FLOP a convolution of stride 2 runs 1.5-4 x slower than one of stride 1 (fewer outputs
    per input read; backward scatters its gradient), so it is priced by a curve of its own, forward
    and backward, in each family; the calibration times them."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=2)
    x, w = torch.randn(4, 8, 8, 8), torch.randn(8, 8, 3, 3)
    forward = lambda stride, groups=1, x=x: kernel_of(
        aten.convolution.default, (x, w[:, :8 // groups], None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], groups), run)
    assert (forward(1), forward(2)) == ("onednn", "onednn_strided")
    assert (forward(1, 8), forward(2, 8)) == ("depthwise", "depthwise_strided")
    assert forward(2, x=x[:1]) == "im2col_strided"
    grad = torch.randn(4, 8, 4, 4)
    backward = (grad, x, w, [0], [2, 2], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])
    assert kernel_of(aten.convolution_backward.default, backward, run) == "onednn_strided"
    timed = {cost.kernel and f"{cost.packet}/{cost.kernel}/{cost.dtype}" for cost, _ in
             calibrate._timed_calls(run, calibrate._micro_benchmarks(torch.float32), rounds=1)}
    assert {f"aten.{op}/{family}_strided/float32" for op in ("convolution", "convolution_backward")
            for family in ("onednn", "im2col", "depthwise", "grouped")} <= timed
    assert "aten.convolution_backward/onednn_wide/float32" in timed   # the family below, timed too


def test_a_channels_last_convolution_is_its_own_kernel_family_priced_by_its_contiguous_one_until_timed():
    """A convolution on channels-last tensors runs another loop nest of its family (timm convnext's
    depthwise convolutions after its permutes): a family of its own in each kernel, forward and
    backward, which the calibration times; a model without its curve prices it by the contiguous
    family's."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.engine.step_time import curve_keys
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=2)
    last = lambda t: t.contiguous(memory_format=torch.channels_last)
    x, dw, w = torch.randn(1, 24, 16, 16), torch.randn(24, 1, 7, 7), torch.randn(32, 24, 2, 2)
    depthwise = lambda x, dw: kernel_of(aten.convolution.default, (x, dw, None, [1, 1], [3, 3], [1, 1], False, [0, 0], 24), run)
    assert (depthwise(x, dw), depthwise(last(x), dw)) == ("depthwise", "depthwise_cl")
    down = lambda x, w=w: kernel_of(aten.convolution.default, (x, w, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 1), run)
    assert (down(x), down(last(x)), down(x, last(w))) == ("im2col_strided", "im2col_strided_cl", "im2col_strided_cl")
    grad = torch.randn(1, 32, 8, 8)
    backward = (last(grad), last(x), w, [0], [2, 2], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
    assert kernel_of(aten.convolution_backward.default, backward, run) == "im2col_strided_cl"
    assert kernel_of(aten.convolution.default, (torch.randn(1, 64, 1, 1), torch.randn(8, 64, 1, 1), None, [1, 1],
                                                [0, 0], [1, 1], False, [0, 0], 1), run) == "im2col_1x1"   # no layout

    call = OpCost("aten.convolution.default", "conv", "forward", "m", "float32", "depthwise_cl", 10**6, 1000, 1000)
    assert curve_keys(call) == ("aten.convolution/depthwise_cl/float32", "aten.convolution/depthwise_cl",
                                "aten.convolution/depthwise/float32", "aten.convolution/depthwise",
                                "aten.convolution/float32", "aten.convolution")
    contiguous = Curve((1e5, 1e7), (1e-4, 1e-3))
    model = DeviceModel(name="cpu", method="measured", op_curves={"aten.convolution/depthwise/float32": contiguous})
    assert model.base_seconds(call) == pytest.approx(contiguous(1e6))
    own = Curve((1e5, 1e7), (4e-5, 4e-4))
    timed = replace(model, op_curves={**model.op_curves, "aten.convolution/depthwise_cl/float32": own})
    assert timed.base_seconds(call) == pytest.approx(own(1e6))

    families = {cost.kernel and f"{cost.packet}/{cost.kernel}" for cost, _ in
                calibrate._timed_calls(run, calibrate._micro_benchmarks(torch.float32), rounds=1)}
    assert {f"aten.{op}/{family}_cl" for op in ("convolution", "convolution_backward")
            for family in ("depthwise", "depthwise_strided", "onednn", "onednn_strided", "im2col", "im2col_1x1",
                           "im2col_strided")} <= families


def test_a_wide_layer_s_weight_gradient_on_a_small_map_is_its_own_kernel_family():
    """oneDNN's weight gradient summed over fewer positions (batch × map) than a quarter of the
    weights a filter has runs far below the FLOP rate (densenet121's last transition: 1024 -> 512 1 × 1 on
    4 × 4 at batch 4), so that backward has a curve of its own, and so has its forward pass (a
    matrix-vector product streaming the weight); the input's gradient alone and a long reduction
    keep oneDNN's."""
    from profiler.engine.kernels.aten_cpu import kernel_of
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=2)

    def family(batch: int, channels: int, out: int, side: int, kernel: int, weight_grad: bool = True,
               backward: bool = True) -> str:
        x, w = torch.randn(batch, channels, side, side), torch.randn(out, channels, kernel, kernel)
        pad = [kernel // 2] * 2
        if not backward:
            return kernel_of(aten.convolution.default, (x, w, None, [1, 1], pad, [1, 1], False, [0, 0], 1), run)
        grad = torch.randn(batch, out, side, side)
        return kernel_of(aten.convolution_backward.default, (grad, x, w, [0], [1, 1], pad, [1, 1], False, [0, 0], 1,
                                                             [True, weight_grad, False]), run)
    assert family(4, 1024, 512, 4, 1) == "onednn_wide"      # 64 positions, 1,024 weights a filter
    assert family(4, 512, 512, 2, 3) == "onednn_wide"       # 16 against 4,608
    assert family(4, 64, 64, 32, 3) == "onednn"             # 4,096 against 576
    assert family(4, 128, 32, 16, 3) == "onednn"            # 1,024 against 1,152: not a quarter
    assert family(4, 1024, 512, 4, 1, weight_grad=False) == "onednn"
    assert family(4, 1024, 512, 4, 1, backward=False) == "onednn_wide"   # its forward streams the weight
    assert family(4, 64, 64, 32, 3, backward=False) == "onednn"
    assert family(1, 512, 512, 2, 3) == "im2col"            # batch 1: torch's own kernel


def test_a_softmax_over_rows_shorter_than_a_vector_is_its_own_kernel_family():
    """The CPU softmax vectorises along each row: a row shorter than one vector runs scalar code
    (rows of 10: 9.3 ms for 4 MiB, rows of 16: 0.69 ms, AVX-512). Only along the last axis, forward
    and backward, softmax and log-softmax; the calibration times that family in both dtypes."""
    from profiler.engine.kernels.aten_cpu import _vector_floats, kernel_of
    from profiler.rules.registry import Context
    run = Context(device_kind="cpu", data_format="channels_first", threads=1)
    lanes = _vector_floats()
    short, long = torch.randn(4, 3, lanes - 1), torch.randn(4, 3, lanes)
    assert kernel_of(aten._softmax.default, (short, -1, False), run) == "short_rows"
    assert kernel_of(aten._log_softmax.default, (short, 2, False), run) == "short_rows"
    assert kernel_of(aten._softmax.default, (long, -1, False), run) == ""
    assert kernel_of(aten._softmax.default, (short, 1, False), run) == ""
    assert kernel_of(aten._softmax_backward_data.default, (short, short, -1, torch.float32), run) == "short_rows"
    assert kernel_of(aten._log_softmax_backward_data.default, (long, long, 2, torch.float32), run) == ""
    timed = {cost.kernel and f"{cost.packet}/{cost.kernel}/{cost.dtype}" for cost, _ in
             calibrate._timed_calls(run, calibrate._micro_benchmarks(torch.bfloat16), rounds=1)}
    assert {"aten._softmax/short_rows/bfloat16", "aten._log_softmax_backward_data/short_rows/bfloat16"} <= timed


def test_a_timed_call_c_plus_plus_issued_sheds_python_s_issuing_too():
    """The timer calls every operator from Python; a call C++ issued never paid that in a real run."""
    issued = _cost(aten.add.Tensor, torch.randn(4), torch.randn(4))
    from_cpp = replace(issued, python=False)
    assert calibrate._deflated([(issued, 5e-6), (from_cpp, 5e-6)], 1e-6, 0.5e-6) == \
        [(issued, pytest.approx(4e-6)), (from_cpp, pytest.approx(3.5e-6))]
    assert calibrate._deflated([(from_cpp, 1e-6)], 1e-6, 0.5e-6)[0][1] == pytest.approx(1e-7)   # a tenth at least


_HEAP_PROBE = """
import resource, sys, torch
from profiler.measuring import calibrate
if sys.argv[1] == "steady":
    calibrate._steady_heap()
faults = []
for _ in range(8):   # three 10 MiB results alive together, then freed together, as a step's are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.ones(10 * 2**18) for _ in range(3)]
    del held
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_the_calibration_s_heap_keeps_its_pages_where_a_fresh_process_s_gives_them_back():
    """In a fresh process glibc maps the first 10 MiB results on their own, then serves them from
    its heap and trims the heap once 20 MiB is free at its top: three made and freed together are
    new pages again after the first round (at least two buffers' worth over rounds 2-4: 7,641 +
    5,088 + 5,088 and 7,621 + 5,088 + 5,121 pages in two runs; the process's other allocations may
    pin its top later). After ``_steady_heap`` the heap never trims: it grows while the buffers'
    places shift and then keeps them, none from the fifth round (7,650, 2,560, 0, 0; 7,651, 0,
    5,120, 0; 7,669, 7,680, 0, 0 over the first four in three runs; CI once saw 2,560 in the
    third)."""
    def faults(mode: str) -> list[int]:
        done = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True,
                              check=True)
        return [int(n) for n in done.stdout.split()[-8:]]
    assert sum(faults("fresh")[1:4]) >= 2 * 10 * 2**20 // 4096
    assert sum(faults("steady")[4:]) < 50
