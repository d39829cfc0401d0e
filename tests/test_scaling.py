"""The cost of measuring and of fitting grows linearly with depth (issue 10: "the cost of summary,
profile and fit grows about linearly with the number of layers"; a 10,000-layer Dense spec's
profile within 5 min, its fit within 20 s).

Wall time is not asserted here (the machine is shared); what the measurement has to process is:
the allocator events a training step's profile records, the bytes and modules the TensorTracker follows and
the events the peak breakdown reads. Each is ``a + b × layers``, so its second difference over depths 8,
16, 32 is zero (within 5 % for the full profile's events, which vary by a few). (benchmarks/test_profile_scaling.py times the whole command.)
"""
import gc
from functools import partial

import pytest
import torch
from torch import nn

from profiler.engine.predict import traced_steps
from profiler.frontends.spec import from_dict
from profiler.measuring import runner
from profiler.measuring.memory_trace import TensorTracker, allocator_peak, capture, profiled
from profiler.measuring.peak_breakdown import Annotator, _read
from profiler.planning import fit
from profiler.planning.module_fit import LinearTimeline
from profiler.step import loss_fn

DEPTHS = (8, 16, 32)


def _step(depth: int):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(16, 16), nn.ReLU())]).train()
    x, y = (torch.randn(4, 16),), (torch.randint(0, 16, (4,)),)
    opt = runner._fresh_optimizer("adam", list(model.parameters()))
    step = partial(runner._train_step, model, opt, x, y, loss_fn("cross_entropy"))
    allocator_peak(lambda: step(lambda phase: None))   # gradients and state, made under the profiler
    return model, opt, x, y, step


def _counts(depth: int) -> dict[str, int]:
    model, opt, x, y, step = _step(depth)
    gc.collect()
    with runner._gc_paused():   # as the runner measures: no collection frees something mid-step
        return _counted(model, opt, x, y, step)


def _counted(model, opt, x, y, step) -> dict[str, int]:
    counts = {"allocator events": allocator_peak(lambda: step(lambda phase: None)).events}
    tracker = TensorTracker(model, runner._tensors(runner._alive(model, opt, x, y)), phase=None)
    with tracker:
        step(tracker.set_phase)
    counts["modules creating tensors"] = len(tracker.created_in("forward"))
    counts["tracked bytes created"] = sum(sum(m.values()) for m in tracker.created.values())

    def annotated():
        with Annotator(model) as notes:
            step(notes.mark)
    with capture() as taken:
        profiled(annotated)
    events, *_ = _read(taken.events, torch.device("cpu"))
    counts["breakdown events"] = len(events)
    return counts


def test_what_a_measurement_processes_grows_linearly_with_depth():
    counts = [_counts(depth) for depth in DEPTHS]
    for key in counts[0]:
        a, b, c = (found[key] for found in counts)
        assert b > a, key                        # it does grow with depth
        # by the same amount per layer; the full profile's allocations vary by a few events from
        # run to run (~400 per 8 layers here, give or take ten), so that one is held to 5 %
        slack = (c - b) // 20 if key == "breakdown events" else 0
        assert abs((c - b) - 2 * (b - a)) <= slack, (key, a, b, c)


def _dense(depth: int):
    return from_dict({"name": f"dense-{depth}", "input_shape": [64],
                      "layers": [{"Dense": {"units": 64, "activation": "relu"}}] * depth})


def test_a_deep_spec_is_fitted_with_the_same_predictions_at_any_depth():
    """fit of a spec: the same four predictions (two traced, b and b + 1) at 100, 200 and
    400 layers, each linear in the layers (its traced events grow by the same amount per layer),
    and the batch read from a few dozen lines whatever the depth (bisection over predictions took
    36 on a GPU budget, each a whole replay)."""
    budget = fit.make_budget(device="h100-80gb")
    events, lines = [], []
    for depth in (100, 200, 400):
        spec = _dense(depth)
        answer = fit.solve(spec, budget, mode="adam")
        assert answer.predict_calls == 4 and answer.method.startswith("every allocation as a × batch + c"), depth
        assert answer.at_batch.bytes <= budget.usable_bytes < answer.at_next.bytes
        (_, (steady2, _)), (_, (steady3, _)) = (traced_steps(spec, "adam", batch=b, device_kind="cuda")
                                                for b in (2, 3))
        events.append(len(steady2.events))
        lines.append(len(LinearTimeline.fit(2, [e[:2] for e in steady2.events],
                                            3, [e[:2] for e in steady3.events]).sizes))
    assert events[2] - events[1] == 2 * (events[1] - events[0]) > 0   # a + b × layers
    assert lines[0] == lines[1] == lines[2]


def test_a_specs_time_is_replayed_in_a_child_with_the_in_process_figures(monkeypatch):
    """The engine's replay behind a spec's predicted time runs in a forked child (which ends
    without freeing its objects, see profiler/forked.py): the same dict, to the bit, as the
    replay run in this process."""
    from profiler import forked, workflow
    spec = _dense(6)
    options = dict(batch=3, dtype="float32", loss="cross_entropy", optimizers=("sgd", "adam"), amp=None,
                   checkpoint=(), threads=None, input_grad=False)
    model = workflow.time_model("h100-80gb")
    child = workflow.spec_time(spec, model, device_kind="cuda", **options)
    monkeypatch.setattr(forked, "call", lambda compute: compute())
    assert child == workflow.spec_time(spec, model, device_kind="cuda", **options)
    assert child["train_adam_ms"] > child["train_sgd_ms"] > child["forward_ms"] > 0


def test_forked_call_runs_in_a_child_and_fails_as_in_process():
    import os
    from profiler import forked
    from profiler.errors import SpecError
    assert forked.call(lambda: {"pid": os.getpid()})["pid"] != os.getpid()
    calls = []

    def failing():
        calls.append(os.getpid())
        raise SpecError("bad layer", field="units")
    with pytest.raises(SpecError, match="bad layer"):
        forked.call(failing)
    assert calls == [os.getpid()]   # the child's attempt is not in this process's list


def test_forked_beside_runs_while_the_caller_works_and_fails_as_in_process(monkeypatch):
    """``beside`` forks where there are two CPUs; without (or with ``fork=False``) it computes at
    once in the caller; a failed child is computed again in the caller, which raises its error."""
    import os
    from profiler import forked
    from profiler.errors import SpecError
    monkeypatch.setattr(forked, "_cpus", lambda: 2)
    with forked.beside(lambda: {"pid": os.getpid()}) as child:
        assert child()["pid"] != os.getpid()
    for one_cpu in (dict(), dict(fork=False)):
        monkeypatch.setattr(forked, "_cpus", lambda: 1 if not one_cpu else 2)
        with forked.beside(lambda: {"pid": os.getpid()}, **one_cpu) as here:
            assert here()["pid"] == os.getpid()
    monkeypatch.setattr(forked, "_cpus", lambda: 2)
    calls = []

    def failing():
        calls.append(os.getpid())
        raise SpecError("bad layer", field="units")
    with pytest.raises(SpecError, match="bad layer"), forked.beside(failing) as child:
        child()
    assert calls == [os.getpid()]   # the child's attempt is not in this process's list


@pytest.mark.parametrize("name", ["llama_tiny", "resnet_tiny", "multihead_attention"])
def test_inference_replayed_beside_training_gives_the_in_process_summary(monkeypatch, name):
    """With two CPUs a module's inference is replayed in a forked child while this process
    replays training: every figure, timeline and priced call is the in-process one's."""
    import torch_models
    from profiler import forked, workflow
    from profiler.engine.torch_module import summary
    factory, shape, dtype = torch_models.CASES[name]
    model = workflow.time_model("h100-80gb")
    forks = []
    fork = forked._fork
    monkeypatch.setattr(forked, "_fork", lambda *a, **k: forks.append(1) or fork(*a, **k))
    monkeypatch.setattr(forked, "_cpus", lambda: 2)
    beside = summary(factory, shape, batch=2, input_dtype=dtype, timelines=True, time_model=model)
    assert forks == [1]
    monkeypatch.setattr(forked, "_cpus", lambda: 1)
    assert summary(factory, shape, batch=2, input_dtype=dtype, timelines=True, time_model=model) == beside
    assert forks == [1]


def test_in_place_updates_of_meta_twins_are_booked_without_running(monkeypatch):
    """The CPU path's single-tensor optimizer updates of meta twins (``lerp_``, ``addcdiv_``, ...)
    are not run, and the prediction is the same: peaks, timelines and every priced call."""
    from profiler.engine import module_memory
    from profiler.engine.optimizers import CATALOG
    from profiler.engine.torch_module import _fake_run

    def predicted():
        meta = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to("meta")
        mode, fake, inputs, names = _fake_run(meta, [(8,)], [torch.float32], 2)
        return module_memory.predict_memory(fake, inputs, None, loss="cross_entropy", fake_mode=mode, names=names,
                                            optimizers=tuple(CATALOG), record_costs=True)

    skipped = []
    in_place = module_memory._in_place_on_meta
    monkeypatch.setattr(module_memory, "_in_place_on_meta", lambda f, a: in_place(f, a) and not skipped.append(f))
    fast = predicted()
    assert {torch.ops.aten.addcdiv_.default, torch.ops.aten.lerp_.Scalar} <= set(skipped)
    monkeypatch.setattr(module_memory, "_in_place_on_meta", lambda f, a: False)
    assert predicted() == fast


def test_foreach_updates_of_meta_twins_are_booked_without_running(monkeypatch):
    """The CUDA path's foreach optimizer steps over meta twins are not run (nothing to compute on
    meta tensors), and the prediction is the same: peaks, timelines and every priced call."""
    from profiler.engine import module_memory
    from profiler.engine.optimizers import CATALOG
    from profiler.engine.torch_module import _fake_run

    def predicted():
        torch.manual_seed(0)
        meta = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to("meta")
        mode, fake, inputs, names = _fake_run(meta, [(8,)], [torch.float32], 2)
        return module_memory.predict_memory(fake, inputs, None, loss="cross_entropy", fake_mode=mode, names=names,
                                            optimizers=tuple(CATALOG), device_kind="cuda", record_costs=True)

    skipped = []
    void = module_memory._void_on_meta
    monkeypatch.setattr(module_memory, "_void_on_meta", lambda f, a: void(f, a) and not skipped.append(f))
    fast = predicted()
    assert any("_foreach_" in f.__name__ for f in skipped)
    monkeypatch.setattr(module_memory, "_void_on_meta", lambda f, a: False)
    assert predicted() == fast
