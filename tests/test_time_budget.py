"""Timed runs held to a time budget (issue 10: a 10,000-layer step takes seconds, and 3 + 20 runs
of each function made ``profile`` take many minutes). With a budget the runs stop early after a
minimum, the result says how many ran of how many asked; an explicit count is run in full."""
from __future__ import annotations

import torch
from torch import nn

from profiler import cli
from profiler.measuring.devices import CpuDevice
from profiler.measuring.runner import measure
from profiler.measuring.timing import LEAST_REPEATS, time_fn, time_ops
from profiler.report.tables import _layer_times, _runs


class SlowClock(CpuDevice):
    """Runs ``fn`` and says it took ``ms``: a slow model without the wait."""

    def __init__(self, ms: float):
        self.ms = ms

    def elapsed_ns(self, fn):  # type: ignore[no-untyped-def]
        fn()
        return self.ms * 1e6


def counted():
    calls = []
    return calls, lambda: calls.append(1)


def test_a_slow_function_stops_at_the_minimum_and_says_so():
    calls, fn = counted()
    timing = time_fn(fn, SlowClock(400.0), warmup=3, repeats=20, budget_s=1.0)
    # warm-ups: 400, 800 ms, then 1,200 >= 1 s: three; timed: 2 s after 5, the minimum
    assert (timing.warmup, timing.repeats, timing.requested, timing.budget_s) == (3, LEAST_REPEATS, 20, 1.0)
    assert len(calls) == 3 + LEAST_REPEATS and timing.samples_ms == (400.0,) * LEAST_REPEATS
    timing = time_fn(fn, SlowClock(5000.0), warmup=3, repeats=20, budget_s=1.0)
    assert (timing.warmup, timing.repeats, timing.requested) == (1, LEAST_REPEATS, 20)


def test_without_a_budget_every_run_asked_for_is_run():
    calls, fn = counted()
    timing = time_fn(fn, SlowClock(5000.0), warmup=3, repeats=20)
    assert (timing.warmup, timing.repeats, timing.requested, timing.budget_s) == (3, 20, None, None)
    assert len(calls) == 23


def test_a_fast_function_runs_them_all_within_the_budget():
    timing = time_fn(lambda: None, CpuDevice(), warmup=3, repeats=20, budget_s=10.0)
    assert (timing.warmup, timing.repeats, timing.requested, timing.budget_s) == (3, 20, None, None)


def test_fewer_repeats_than_the_minimum_are_all_run():
    timing = time_fn(lambda: None, SlowClock(5000.0), warmup=0, repeats=2, budget_s=1.0)
    assert (timing.warmup, timing.repeats, timing.requested) == (0, 2, None)


def test_the_instrumented_runs_stop_after_one_past_the_budget():
    model = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    names = {id(m): n for n, m in model.named_modules()}
    calls = []

    def run(mark):  # type: ignore[no-untyped-def]
        calls.append(1)
        mark("forward")
        model(x)

    assert time_ops(run, CpuDevice(), names, runs=3, warmup=1, budget_s=0.0).runs == 1
    assert len(calls) == 2   # the warm-up and one counted run
    assert time_ops(run, CpuDevice(), names, runs=3, warmup=1).runs == 3


def test_the_measurement_and_its_report_say_how_many_ran():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    found = measure(model, input_shape=(4, 8), optimizers=("sgd",), warmup=3, repeats=20,
                    time_budget_s=0.0)
    time = found.time
    assert (time["forward"]["repeats"], time["forward"]["warmup"], time["forward"]["requested"]) == (5, 1, 20)
    assert time["train_sgd"]["budget_s"] == 0.0 and len(time["train_sgd"]["samples_ms"]) == 5
    assert found.repeats == 5 and found.warmup == 1
    assert time["layer_repeats"] == 3 and time["layer_runs"] == {"forward": 1, "train_sgd": 1}
    assert _runs(time) == ("timed runs after untimed ones: forward 5 after 1, sgd step 5 after 1 "
                           "(20 requested; the runs stop after the first 0 s once a minimum ran, --time-budget)")
    assert "1 of 3 runs within the time budget, each call's median" in _layer_times({"measured": {"time": time}}, _plain)
    full = measure(model, input_shape=(4, 8), optimizers=("sgd",), warmup=3, repeats=20).time
    assert "requested" not in full["forward"] and full["layer_runs"] == {"forward": 3, "train_sgd": 3}
    assert _runs(full) == "20 timed runs of each after 3 untimed"
    assert "(3 runs, each call's median)" in _layer_times({"measured": {"time": full}}, _plain)


def _plain(headers, rows, right):  # type: ignore[no-untyped-def]
    return "\n".join(" ".join(map(str, row)) for row in [headers, *rows])


def test_the_cli_budget_is_off_when_a_count_is_given():
    parse = cli._parser().parse_args
    default = cli._measure_options(parse(["profile", "digits"]))
    assert (default["warmup"], default["repeats"], default["time_budget_s"]) == (3, 20, 10.0)
    for flag in ("--repeats", "--warmup", "--layer-repeats"):
        options = cli._measure_options(parse(["profile", "digits", flag, "2"]))
        assert options["time_budget_s"] is None, flag
    assert cli._measure_options(parse(["profile", "digits", "--time-budget", "0"]))["time_budget_s"] is None
    assert cli._measure_options(parse(["measure", "digits", "--time-budget", "2.5"]))["time_budget_s"] == 2.5
