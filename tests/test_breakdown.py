"""Measured peaks split by category, beside the predicted split: exact against PyTorch on the CPU.

The built-in ``digits`` model (Flatten → Dense(10) → softmax on 28×28×1) at batch 2 in float32:
weight 10 × 784 × 4 = 31,360 B and bias 10 × 4 = 40 B, so parameters P = 7,850 × 4 = 31,400 B and
gradients G = 31,400 B; input x = 2 × 784 × 4 = 6,272 B; cross-entropy target y = 2 × 8 = 16 B
(int64 class indices); the dense output and the softmax output (``out``) 2 × 10 × 4 = 80 B each;
the loss a 0-d float32, 4 B.
"""
from __future__ import annotations

import importlib
import json
import re

import pytest

import profiler.frontends.build
from profiler.measuring import runner
from profiler import workflow
from profiler.cli import main
from profiler.errors import SpecError
from profiler.engine.memory_model import CATEGORIES
from profiler.measuring.peak_breakdown import _operator, _Spans
from profiler.report.tables import render
from profiler.frontends.spec import loads
from isa import modelled_isa

P = G = 7_850 * 4                # 31,400
W = 7_840 * 4                    # the weight alone: 31,360
X = 2 * 784 * 4                  # 6,272
Y = 2 * 8                        # 16
OUT = 2 * 10 * 4                 # 80
LOSS = SEED = 4                  # the loss, and backward's seed ones_like(loss)
STEP = 4                         # Adam's float32 step counter, one per parameter tensor
PEAKS = ("inference", "train_sgd", "train_adam", "train_first_step_sgd", "train_first_step_adam")
FIGURE = {"inference": "inference_peak_bytes", "train_sgd": "train_peak_bytes_sgd",
          "train_adam": "train_peak_bytes_adam", "train_first_step_sgd": "train_first_step_peak_bytes_sgd",
          "train_first_step_adam": "train_first_step_peak_bytes_adam"}


def _profile(spec: str = "digits", **options):
    return workflow.profile(workflow.resolve_spec(spec), batch=2, dtype="float32", loss="cross_entropy",
                            device="cpu", warmup=0, repeats=1, threads=None, **options)


@pytest.fixture(scope="module")
def digits():
    """The digits profile, with every breakdown the runner computed kept to check its replay."""
    seen = []
    original = runner.analyse_parts

    def keep(*args, **kwargs):
        seen.append((kwargs["peak_bytes"], original(*args, **kwargs)))
        return seen[-1][1]

    runner.analyse_parts = keep
    try:
        result = _profile()
    finally:
        runner.analyse_parts = original
    return result, seen


def test_every_peak_is_split_and_sums_to_the_allocator_peak(digits):
    result, _ = digits
    measured = result["measured"]
    assert set(measured["breakdown"]) == set(PEAKS) == set(result["peaks"])
    for peak in PEAKS:
        assert list(measured["breakdown"][peak]) == list(CATEGORIES)
        assert sum(measured["breakdown"][peak].values()) == measured[FIGURE[peak]], peak


def test_the_replay_reaches_the_headline_peak_itself(digits):
    # The categories sum to the allocator peak by construction (what the replay cannot explain
    # would count as workspace); on the CPU there must be nothing to explain: the event replay
    # reaches the headline peak, and every storage freed was listed as alive.
    _, seen = digits
    assert len(seen) == 5   # inference, then per optimizer a first and a steady step
    for headline, split in seen:
        assert split.replayed_bytes == headline
        assert split.unlisted_freed_bytes == 0


def test_inference(digits):
    result, _ = digits
    # parameters, the input, the dense output and the softmax output: no gradients, no state
    assert result["measured"]["breakdown"]["inference"] == {
        "parameters": P, "gradients": 0, "optimizer_state": 0, "inputs": X, "activations": OUT + OUT,
        "weight_casts": 0, "temporaries": 0, "communication": 0, "workspace": 0}
    assert result["measured"]["layer_activations_at_peak"]["inference"] == {"dense": OUT, "activation": OUT}


@pytest.mark.parametrize("peak", ["train_sgd", "train_first_step_sgd"])
def test_sgd_step(digits, peak):
    result, _ = digits
    # The peak is in the dense layer's backward, as it writes the gradients (31,360 + 40). Still
    # alive: the caller's out (80) and loss (4), backward's seed (4) and the gradient w.r.t. the
    # dense output (80); the log-softmax output and the other gradients are gone. SGD keeps no
    # state. The first step peaks at the same moment (zero_grad freed the old gradients).
    assert result["measured"]["breakdown"][peak] == {
        "parameters": P, "gradients": G, "optimizer_state": 0, "inputs": X + Y, "activations": OUT + LOSS,
        "weight_casts": 0, "temporaries": SEED + OUT, "communication": 0, "workspace": 0}
    assert result["measured"]["layer_activations_at_peak"][peak] == {"activation": OUT, "(outside modules)": LOSS}


@pytest.mark.parametrize("peak", ["train_adam", "train_first_step_adam"])
def test_adam_step(digits, peak):
    result, _ = digits
    # State: exp_avg and exp_avg_sq (2 × 31,400) and two float32 steps (2 × 4) = 62,808.
    # The peak is in the weight's update, denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt):
    # sqrt 31,360 and the quotient 31,360 alive together with the Python float divisor wrapped
    # in an 8-byte float64 tensor: 62,728 of temporaries; div's float32 copy of that divisor
    # (4 B) is made and freed inside the operator: workspace. out and loss are still alive.
    assert result["measured"]["breakdown"][peak] == {
        "parameters": P, "gradients": G, "optimizer_state": 2 * P + 2 * STEP, "inputs": X + Y,
        "activations": OUT + LOSS, "weight_casts": 0, "temporaries": 2 * W + 8, "communication": 0, "workspace": 4}


def test_measured_equals_predicted_where_the_prediction_is_exact(digits):
    result, _ = digits
    measured, peaks = result["measured"]["breakdown"], result["peaks"]
    for peak in PEAKS:
        predicted = peaks[peak]["breakdown"]
        assert peaks[peak]["bytes"] == sum(measured[peak].values()), peak
        for category in CATEGORIES:
            assert measured[peak][category] == predicted[category], (peak, category)
    # div's 4-byte float32 copy of Adam's divisor is kernel-internal: workspace on both sides
    for peak in ("train_adam", "train_first_step_adam"):
        assert peaks[peak]["breakdown"]["workspace"] == measured[peak]["workspace"] == 4


def test_comparison_in_the_json(digits):
    result, _ = digits
    compared = json.loads(json.dumps(result))["breakdown_comparison"]
    assert set(compared) == set(PEAKS)
    assert compared["train_sgd"]["gradients"] == {"predicted": G, "measured": G, "relative_error": 0.0}
    assert compared["train_adam"]["workspace"] == {"predicted": 4, "measured": 4, "relative_error": 0.0}
    assert compared["inference"]["optimizer_state"] == {"predicted": 0, "measured": 0, "relative_error": None}
    assert all(isinstance(n, int) for cats in result["measured"]["breakdown"].values() for n in cats.values())


def test_text_and_markdown_put_both_side_by_side(digits):
    result, _ = digits
    text = render(result)
    assert re.search(r"Peak\s+Part\s+Predicted\s+Measured\s+Difference\s+Error", text)
    # 2 × 31,400 + 8 = 62,808 B = 61.34 KiB on both sides
    assert re.search(r"\n\s+optimizer state\s+61\.34 KiB\s+61\.34 KiB\s+0 B\s+\+0\.00%\n", text)
    assert re.search(r"\n\s+workspace\s+4 B\s+4 B\s+0 B\s+\+0\.00%\n", text)
    assert re.search(r"first training step, Adam\s+total\s+190\.15 KiB\s+190\.15 KiB\s+0 B\s+\+0\.00%", text)
    markdown = render(result, markdown=True, explain=True)
    assert "| Peak | Part | Predicted | Measured | Difference | Error |" in markdown
    assert "|  | gradients | 30.66 KiB | 30.66 KiB | 0 B | +0.00% |" in markdown
    assert "- inference: dense 80 B, activation 80 B" in markdown
    # a measurement alone (modelsize measure) shows the measured column only
    alone = render({"model": "digits", "options": result["options"], "measured": result["measured"]})
    assert re.search(r"Peak\s+Part\s+Measured\n", alone) and "Predicted" not in alone


@modelled_isa
def test_mixed_precision_tells_weight_casts_apart():
    result = _profile(amp="bfloat16", optimizers=("sgd",))
    measured = result["measured"]["breakdown"]["inference"]
    # autocast's cached bfloat16 copies of the weight and bias: 7,840 × 2 + 10 × 2 = 15,700 B;
    # activations: the input's bfloat16 cast 2 × 784 × 2 = 3,136 and the bfloat16 dense output
    # 2 × 10 × 2 = 40, at a peak inside the matmul (its oneDNN scratchpad is the workspace)
    assert measured["weight_casts"] == 15_700
    assert measured["activations"] == 3_136 + 40
    for peak in ("inference", "train_sgd", "train_first_step_sgd"):
        assert result["measured"]["breakdown"][peak] == result["peaks"][peak]["breakdown"], peak


def test_checkpointed_layers_keep_their_rng_state_as_activations():
    result = _profile(checkpoint=True, optimizers=("sgd",))
    for peak in ("inference", "train_sgd", "train_first_step_sgd"):
        assert result["measured"]["breakdown"][peak] == result["peaks"][peak]["breakdown"], peak
    # the dense call keeps its input (a view of x) and torch.get_rng_state(), 5,056 B, not its
    # output; the softmax output and the loss as before
    assert result["measured"]["layer_activations_at_peak"]["train_sgd"] == {
        "dense": 5_056, "activation": OUT, "(outside modules)": LOSS}


PREDICT = importlib.import_module("profiler.engine.predict")   # the package exports the function `predict`
GRU = "{name: gru, input_shape: [6, 4], layers: [{GRU: {units: 8}}, {Dense: {units: 3}}]}"


@pytest.fixture
def refused(monkeypatch):
    """GRU refused under mixed precision whatever the rules say now, and no model ever built."""
    monkeypatch.setattr(PREDICT, "AUTOCAST_UNMODELLED", (*PREDICT.AUTOCAST_UNMODELLED, "GRU"))

    def never(*args, **kwargs):
        raise AssertionError("built or measured before the request was validated")

    monkeypatch.setattr(profiler.frontends.build, "build", never)
    monkeypatch.setattr(runner, "measure", never)


def test_profile_and_measure_validate_before_measuring(refused):
    spec = loads(GRU, source="gru.yaml")
    pattern = r'gru\.yaml: layer 0 \(GRU "gru"\): field \'amp\': mixed precision is not modelled for GRU'
    with pytest.raises(SpecError, match=pattern):
        workflow.profile(spec, batch=2, dtype="float32", loss="cross_entropy", device="cpu", warmup=0,
                         repeats=1, threads=None, amp="bfloat16")
    with pytest.raises(SpecError, match=pattern):
        workflow.measure(spec, batch=2, dtype="float32", loss="cross_entropy", device="cpu", warmup=0,
                         repeats=1, threads=None, amp="bfloat16")


@pytest.mark.parametrize("command", ["profile", "measure"])
def test_cli_refusal_is_one_line_and_exit_2(refused, tmp_path, capsys, command):
    path = tmp_path / "gru.yaml"
    path.write_text(GRU)
    extra = ["--no-save"] if command == "profile" else []
    assert main([command, str(path), "--amp", "--batch", "2", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "mixed precision is not modelled for GRU layers" in err


def test_spans_give_the_innermost_label():
    spans = _Spans([(0, 10, "model"), (2, 5, "conv"), (6, 8, "relu")])
    assert [spans.at(t) for t in (1, 3, 5, 7, 9, 11)] == ["model", "conv", "model", "relu", "model", None]


def test_operators_are_those_a_dispatch_mode_sees():
    assert _operator("aten::mm") == _operator("aten::_to_copy") == "operator"
    assert _operator("aten::linear") == _operator("aten::cross_entropy_loss") == "composite"
    assert _operator("autograd::engine::evaluate_function: MmBackward0") is None
    assert _operator("Optimizer.step#Adam.step") is None


def test_a_free_the_profiler_missed_is_put_back_before_its_address_is_reused():
    """An address handed out again while its block is still open in the trace: that block was
    freed unseen (a collective's buffer dropped by gloo's worker), at the latest just before."""
    from profiler.measuring.peak_breakdown import _Event, _peak, _unrecorded_frees
    events = [_Event(1, 0, 0xA, 100, 1), _Event(2, 1, 0xB, 30, 1), _Event(3, 2, 0xA, 50, 1), _Event(4, 3, 0xA, -50, 1)]
    fixed = _unrecorded_frees(events)
    assert [(e.ptr, e.nbytes) for e in fixed] == [(0xA, 100), (0xB, 30), (0xA, -100), (0xA, 50), (0xA, -50)]
    assert _peak(fixed) == (1, 130) and _peak(events) == (2, 180)
    assert [e.put_back for e in fixed] == [False, False, True, False, False]   # a rank re-measures then


def _small_adam():
    """A small model in training mode, a fresh Adam optimizer and the runner's training step."""
    import torch
    from functools import partial
    from torch import nn
    from profiler.step import loss_fn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).train()
    x, y = (torch.randn(4, 16),), (torch.randint(0, 8, (4,)),)
    opt = runner._fresh_optimizer("adam", list(model.parameters()))
    return model, opt, x, y, partial(runner._train_step, model, opt, x, y, loss_fn("cross_entropy"))


def _annotated_in_parts(model, opt, x, y, step, reduce):
    """One annotated call of ``step`` profiled whole (``reduce`` None) or in parts: its reading, its
    breakdown and the capture."""
    import torch
    from profiler.measuring.memory_trace import allocator_peak, capture
    from profiler.measuring.peak_breakdown import Annotator, Known, analyse, analyse_parts, storages

    def annotated() -> None:
        with Annotator(model) as notes:
            step(notes.mark)

    before = storages(runner._alive(model, opt, x, y))
    baseline = sum(n for _, n in before.values())
    with capture(reduce=reduce) as taken, runner._gc_paused():
        reading = allocator_peak(annotated, baseline)
    known = Known(before=before, after=storages(runner._alive(model, opt, x, y)),
                  weights=frozenset(storages(("parameters", p) for p in model.parameters())))
    figures = dict(known=known, baseline_bytes=baseline, peak_bytes=baseline + reading.peak_bytes)
    split = (analyse(taken.events, device=torch.device("cpu"), **figures) if reduce is None
             else analyse_parts(taken.parts, **figures))
    return reading, split, taken


def test_a_step_profiled_in_parts_reads_as_one_profile():
    """The runner profiles a step phase by phase (a deep model's whole-step profile was its peak
    RSS): the headline replay and the breakdown are those of one profile of the same step. Adam's
    steady steps allocate alike, so two of them, one profiled whole and one in parts, compare."""
    import torch
    from functools import partial
    from profiler.measuring.memory_trace import allocator_peak
    from profiler.measuring.peak_breakdown import Annotator, gather

    model, opt, x, y, step = _small_adam()
    with Annotator(model) as notes:   # the first step: its state and gradients made under the profiler
        allocator_peak(partial(step, notes.mark))
    whole, whole_split, _ = _annotated_in_parts(model, opt, x, y, step, None)
    parts, parts_split, taken = _annotated_in_parts(model, opt, x, y, step, partial(gather, device=torch.device("cpu")))
    # one part before the first mark, one per phase (optimizer, forward, backward, optimizer), one after
    assert len(taken.parts) == 6 and not taken.events
    assert parts == whole and parts.events > 0
    assert parts_split == whole_split
    assert sum(parts_split.categories.values()) == parts_split.replayed_bytes > whole.peak_bytes > 0


@pytest.mark.parametrize("first", [True, False], ids=["first step", "steady step"])
def test_the_optimizer_phase_split_between_its_calls_reads_as_one_part(monkeypatch, first):
    """A deep model's first Adam step is too large a part even phase by phase (~124 profiler events
    per Dense layer in its optimizer's phase): that phase is split between calls of torch.optim's
    code (``memory_trace.PartMarks``), here before every one. The same step of the same model
    (made afresh, same seed) split only at the phase marks reads the same: peak, events, timeline
    and breakdown."""
    import torch
    from functools import partial
    from profiler.measuring import memory_trace
    from profiler.measuring.peak_breakdown import Annotator, gather

    def measured(calls_per_part):
        model, opt, x, y, step = _small_adam()
        if not first:
            with Annotator(model) as notes:
                memory_trace.allocator_peak(partial(step, notes.mark))
        monkeypatch.setattr(memory_trace, "CALLS_PER_PART", calls_per_part)
        return _annotated_in_parts(model, opt, x, y, step, partial(gather, device=torch.device("cpu")))

    at_marks, at_marks_split, at_marks_taken = measured(10 ** 9)
    split, split_split, split_taken = measured(1)
    assert len(at_marks_taken.parts) == 6
    # Adam's step over 4 parameter tensors makes tens of calls into C from torch.optim's code
    assert len(split_taken.parts) > 6 + 20
    assert split == at_marks and split.events > 0
    assert split_split == at_marks_split
    assert sum(split_split.categories.values()) == split_split.replayed_bytes


def test_the_tracked_runs_allocator_events_are_recorded_in_parts(monkeypatch):
    """The tracked runs record the allocator's events alone (~2 KiB each while the profiler holds
    them: 620,000 in Adam's first step of 10,000 Dense layers): in parts too, at the phase marks
    and between torch.optim's calls. Two steady Adam steps allocate alike: one tracked whole, one
    in parts (a part before every such call), read the same, the tracker's figures included."""
    from profiler.measuring import memory_trace
    from profiler.measuring.devices import get_device

    model, opt, x, y, step = _small_adam()
    cpu = get_device("cpu")
    sessions = []
    stop = memory_trace._stop_session

    def counted():
        sessions.append(1)
        return stop()

    monkeypatch.setattr(memory_trace, "_stop_session", counted)
    tracked = {}
    for calls_per_part in (None, 10 ** 9, 1):   # the first step; then at the marks only; then split
        monkeypatch.setattr(memory_trace, "CALLS_PER_PART", calls_per_part or 10 ** 9)
        sessions.clear()
        reading, tracker = runner._tracked_run(cpu, model, step, runner._tensors(runner._alive(model, opt, x, y)))
        tracked[calls_per_part] = (reading, tracker.peak_bytes, tracker.created, tracker.retained, len(sessions))
    at_marks, split = tracked[10 ** 9], tracked[1]
    assert at_marks[-1] == 5 and split[-1] > 5 + 20   # a part before each of the step's 4 marks, one after
    assert split[:-1] == at_marks[:-1] and split[0].peak_bytes > 0


def test_no_part_ends_inside_a_phase_under_a_python_profiler_or_after_an_error(monkeypatch):
    """Parts end inside the optimizer's phase through Python's profile hook: not where another
    one (a Python profiler's) is set, which is left as it was; and an error inside the phase
    leaves no hook behind."""
    import sys
    import torch
    from functools import partial
    from profiler.measuring import memory_trace
    from profiler.measuring.peak_breakdown import Annotator, gather

    model, opt, x, y, step = _small_adam()
    monkeypatch.setattr(memory_trace, "CALLS_PER_PART", 1)

    def other(frame, event, arg):
        return None

    sys.setprofile(other)
    try:
        _, _, taken = _annotated_in_parts(model, opt, x, y, step, partial(gather, device=torch.device("cpu")))
        assert sys.getprofile() is other
    finally:
        sys.setprofile(None)
    assert len(taken.parts) == 6

    def failing() -> None:
        with Annotator(model) as notes:
            notes.mark("optimizer")
            assert sys.getprofile() is not None
            raise RuntimeError("inside the optimizer's phase")

    with memory_trace.capture(reduce=partial(gather, device=torch.device("cpu"))):
        with pytest.raises(RuntimeError, match="optimizer's phase"):
            memory_trace.allocator_peak(failing)
    assert sys.getprofile() is None


def test_each_part_lets_go_of_its_profile_with_the_collector_paused(monkeypatch):
    """The measured call pauses the garbage collector: each part's profiler results must go as
    the part ends (nothing may hold them in a reference cycle), or all parts stay in memory."""
    import gc
    import weakref
    import torch
    from functools import partial
    from profiler.measuring import memory_trace
    from profiler.measuring.peak_breakdown import Annotator, gather

    held = []
    stop = memory_trace._stop_session

    def watched():
        results = stop()
        held.append(weakref.ref(results))
        return results

    monkeypatch.setattr(memory_trace, "_stop_session", watched)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())

    def annotated() -> None:
        with Annotator(model) as notes:
            notes.mark("forward")
            model(torch.randn(2, 4))

    gc.disable()
    try:
        with memory_trace.capture(reduce=partial(gather, device=torch.device("cpu"))) as taken:
            memory_trace.allocator_peak(annotated)
        assert len(taken.parts) == len(held) == 3 and all(ref() is None for ref in held)
        memory_trace.allocator_peak(annotated)   # the allocator's events alone: parts too
        assert len(held) == 6 and all(ref() is None for ref in held)
    finally:
        gc.enable()
