"""modelsize fit: the solved batch b has peak(b) <= budget < peak(b + 1); sizes, catalog, CLI, --verify."""
import json
import re

import pytest

from profiler.planning import fit
from profiler.frontends import models
from profiler.planning.accelerators import CATALOG, CONTEXT_RESERVE, GiB, MiB, blas_workspace_bytes, lookup
from profiler.cli import main
from profiler.errors import SpecError
from profiler.engine.predict import predict
from isa import modelled_isa

SPECS = {name: models.builtin(name) for name in ("digits", "dense-514", "conv-224", "bn-conv")}
MODES = ("adam", "sgd", "inference")


def cpu(memory: int) -> fit.Budget:
    return fit.Budget(memory_bytes=memory, target="cpu")


def cuda(memory: int) -> fit.Budget:
    return fit.Budget(memory_bytes=memory, target="cuda", reserve_bytes=CONTEXT_RESERVE, margin=fit.DEFAULT_MARGIN,
                      workspace_bytes=blas_workspace_bytes(None))


def bytes_at(spec, batch, budget, mode):
    return fit.evaluate(spec, batch, budget, mode=mode).bytes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("target", ("cpu", "cuda"))
def test_solved_batch_is_the_largest_that_fits(name, mode, target):
    spec = SPECS[name]
    make = cpu if target == "cpu" else cuda
    # budgets around the figure at batch 37 (just at it, just below, a little above) and a round one
    at_37 = bytes_at(spec, 37, make(10 ** 15), mode)
    for memory in (at_37, at_37 - 1, at_37 + 12_345, 6 * GiB):
        if target == "cuda":   # the budget is what remains after the reserve and the margin
            memory = int((memory + 1) / (1 - fit.DEFAULT_MARGIN)) + CONTEXT_RESERVE + 1
        budget = make(memory)
        answer = fit.solve(spec, budget, mode=mode)
        b = answer.batch
        assert b >= 1 and not answer.capped
        assert bytes_at(spec, b, budget, mode) <= budget.usable_bytes < bytes_at(spec, b + 1, budget, mode)
        assert answer.at_batch.bytes == bytes_at(spec, b, budget, mode)
        assert answer.at_next.bytes == bytes_at(spec, b + 1, budget, mode)
        assert answer.headroom_bytes == budget.usable_bytes - answer.at_batch.bytes >= 0
        assert answer.predict_calls <= 2 * b.bit_length() + 3
        if memory == at_37 and target == "cpu":
            assert b == 37


@pytest.mark.parametrize("name", sorted(SPECS))
def test_predicted_memory_is_non_decreasing_in_the_batch(name):
    spec = SPECS[name]
    batches = [*range(1, 65), 1000, 1001, 4096, 10 ** 6, 10 ** 6 + 1]
    for mode in MODES:
        for budget in (cpu(1), cuda(10 ** 12)):
            figures = [fit.evaluate(spec, b, budget, mode=mode) for b in batches]
            for f in (lambda e: e.bytes, lambda e: e.allocated_bytes):
                values = [f(e) for e in figures]
                assert values == sorted(values), (name, mode, budget.target)


def test_nothing_fits():
    answer = fit.solve(SPECS["conv-224"], cpu(10 ** 6), mode="sgd")
    assert answer.batch == 0 and answer.at_batch is None and answer.headroom_bytes is None
    assert answer.at_next.batch == 1 and answer.at_next.bytes > 10 ** 6
    assert answer.predict_calls == 3   # the lines' two traces guess 0; the prediction at batch 1 proves it


@pytest.mark.parametrize("engine", ["", "module"])
@pytest.mark.parametrize("name", ["dense-514", "bn-conv"])
def test_one_replay_gives_both_cuda_figures(name, engine, monkeypatch):
    """``predict(also=...)``: each peak's bytes under a second footprint, from the same replay,
    equal that footprint's own prediction (the spec replay, and the engine's)."""
    monkeypatch.setenv("MODELSIZE_ENGINE", engine)
    for optimizers, keys in (((), ["inference"]), (("adam",), ["train_adam", "train_first_step_adam"])):
        options = {"batch": 5, "device_kind": "cuda", "optimizers": optimizers, "peaks_only": True}
        both = predict(SPECS[name], footprint=fit.segment_bytes, also=fit.block_bytes, **options)
        alone = predict(SPECS[name], footprint=fit.block_bytes, **options)
        peaks = {"inference": alone.inference, **{f"train_{o}": p for o, p in alone.training.items()},
                 **{f"train_first_step_{o}": p for o, p in alone.first_step.items()}}
        assert {key: both.also_peaks[key] for key in keys} == {key: peaks[key].bytes for key in keys}
        reserved = predict(SPECS[name], footprint=fit.segment_bytes, **options)
        assert (both.inference, both.training, both.first_step) == (reserved.inference, reserved.training,
                                                                     reserved.first_step)


def test_nothing_fits_from_the_cli_is_exit_3(capsys):
    assert main(["fit", "conv-224", "--memory", "1MB", "--train", "sgd"]) == 3
    out = capsys.readouterr().out
    assert "Nothing fits: batch 1 needs" in out
    assert main(["fit", "conv-224", "--memory", "1MB", "--train", "sgd", "--format", "json"]) == 3
    result = json.loads(capsys.readouterr().out)
    assert result["batch"] == 0 and result["fits"] is False and result["peak"] is None


def test_huge_budgets_are_capped():
    answer = fit.solve(SPECS["digits"], cpu(10 ** 18), mode="inference")
    assert answer.capped and answer.batch == fit.MAX_BATCH == 2 ** 31
    assert answer.at_next.batch == 2 ** 31 + 1
    small = fit.solve(SPECS["digits"], cpu(10 ** 18), mode="adam", max_batch=1000)
    assert small.capped and small.batch == 1000
    # a cap that is not a power of two, with a budget that stops below it
    budget = cpu(bytes_at(SPECS["digits"], 700, cpu(1), "adam"))
    assert fit.solve(SPECS["digits"], budget, mode="adam", max_batch=1000).batch == 700
    assert fit.solve(SPECS["digits"], budget, mode="adam", max_batch=600).batch == 600


def test_capped_from_the_cli(capsys):
    assert main(["fit", "digits", "--memory", "1000TB", "--inference"]) == 0
    assert "The search stops at 2,147,483,648 (2**31)" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ("24GiB", 24 * 2 ** 30), ("80GB", 80 * 10 ** 9), ("512MiB", 512 * 2 ** 20), ("512 mib", 512 * 2 ** 20),
    ("1.5GiB", 3 * 2 ** 29), ("85899345920", 85_899_345_920), ("1_000", 1000), ("100B", 100), ("2kb", 2000),
    ("3KiB", 3072), ("1TiB", 2 ** 40), ("1TB", 10 ** 12),
])
def test_sizes(text, expected):
    assert fit.parse_size(text) == expected


@pytest.mark.parametrize("text, what", [
    ("24Gx", "not a size"), ("GiB", "not a size"), ("-1GiB", "must be positive"), ("0", "must be positive"),
    ("0.3B", "not a whole number of bytes"), ("1.2.3GB", "not a size"), ("", "not a size"),
])
def test_bad_sizes_name_the_field(text, what):
    with pytest.raises(SpecError, match=rf"^field 'memory': {what}\. Expected .*Received"):
        fit.parse_size(text)
    assert fit.parse_size("0", field="reserve", allow_zero=True) == 0


def test_margins():
    assert fit.parse_margin("10") == pytest.approx(0.1) and fit.parse_margin("0%") == 0
    for bad in ("100", "-1", "ten", "nan"):
        with pytest.raises(SpecError, match="field 'margin'"):
            fit.parse_margin(bad)


def test_catalog_lookups():
    assert lookup("h100-80gb") is lookup("H100_80GB") is lookup(" h100 80gb ") is CATALOG["h100-80gb"]
    for name in ("h100-80gb", "h100-94gb", "a100-80gb", "a100-40gb", "l40s-48gb", "l4-24gb", "a10-24gb",
                 "rtx-4090-24gb", "rtx-3090-24gb", "t4-16gb", "v100-16gb", "v100-32gb", "mi300x-192gb"):
        accelerator = lookup(name)
        nominal_gib = int(re.search(r"(\d+)gb$", name).group(1))
        # what CUDA reports is a little under the chips' binary capacity, never over
        assert 0.9 * nominal_gib * GiB < accelerator.memory_bytes <= nominal_gib * GiB, name
    assert CATALOG["h100-80gb"].memory_bytes == 85_017_755_648 < 80 * GiB
    assert not CATALOG["h100-80gb"].nominal and CATALOG["h100-94gb"].nominal
    assert blas_workspace_bytes(CATALOG["h100-80gb"]) == 32 * MiB
    assert blas_workspace_bytes(CATALOG["a100-40gb"]) == 4096 * 1024 * 2 + 16 * 1024 * 8


def test_unknown_device_is_one_line_listing_the_names(capsys):
    assert main(["fit", "digits", "--device", "b200-192gb", "--train", "adam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("modelsize: error: field 'device': unknown accelerator. Expected one of h100-80gb, ")
    assert all(name in err for name in CATALOG) and "Received 'b200-192gb'" in err


@pytest.mark.parametrize("argv, field", [
    (["--memory", "24Gx"], "memory"), (["--memory", "1GiB", "--reserve", "2GiB"], "reserve"),
    (["--memory", "1GiB", "--margin", "150"], "margin"), (["--device", "t4-16gb", "--target", "cpu"], "target"),
])
def test_bad_budgets_are_one_line_and_exit_2(capsys, argv, field):
    assert main(["fit", "digits", "--train", "adam", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"field '{field}'" in err


def test_budgets():
    budget = fit.make_budget(device="h100-80gb")
    assert (budget.target, budget.reserve_bytes, budget.workspace_bytes) == ("cuda", 512 * MiB, 32 * MiB)
    assert budget.margin_bytes == -(-(85_017_755_648 - 512 * MiB) // 10)
    assert budget.usable_bytes == 85_017_755_648 - 512 * MiB - budget.margin_bytes
    plain = fit.make_budget(memory="24GiB")
    assert (plain.target, plain.usable_bytes, plain.reserve_bytes, plain.margin) == ("cpu", 24 * GiB, 0, 0)
    custom = fit.make_budget(memory="24GiB", target="cuda", reserve="1GiB", margin="5")
    assert custom.usable_bytes == 23 * GiB - -(-23 * GiB // 20)
    with pytest.raises(SpecError, match="exactly one of"):
        fit.make_budget(memory="1GiB", device="t4-16gb")
    with pytest.raises(SpecError, match="field 'train'"):
        fit.solve(SPECS["digits"], plain, mode="lbfgs")


def test_nccl_reserve_comes_off_cuda_ranks_only():
    """CUDA ranks at world size > 1 set aside NCCL's buffers (1 GiB by default, or --comm-reserve)
    before the margin; a CPU target and a single CUDA device do not."""
    from profiler.planning.accelerators import COMM_RESERVE
    one = fit.make_budget(device="h100-80gb")
    eight = fit.make_budget(device="h100-80gb", world=8)
    assert (one.comm_reserve_bytes, eight.comm_reserve_bytes, COMM_RESERVE) == (0, GiB, GiB)
    assert eight.usable_bytes == 85_017_755_648 - 512 * MiB - GiB - eight.margin_bytes
    assert eight.margin_bytes == -(-(85_017_755_648 - 512 * MiB - GiB) // 10)
    assert fit.make_budget(device="h100-80gb", world=8, comm_reserve="3GiB").comm_reserve_bytes == 3 * GiB
    assert fit.make_budget(device="h100-80gb", world=8, comm_reserve="0").usable_bytes == one.usable_bytes
    cpu_ranks = fit.make_budget(memory="24GiB", world=8)
    assert (cpu_ranks.comm_reserve_bytes, cpu_ranks.usable_bytes) == (0, 24 * GiB)


def test_distributed_fit_prints_the_nccl_reserve(capsys):
    """``fit --world-size 2`` on a CUDA target: the budget lines name NCCL's share, and the batch
    is solved against what is left."""
    assert main(["fit", "digits", "--train", "adam", "--world-size", "2", "--memory", "1700MiB",
                 "--target", "cuda"]) == 0
    out = capsys.readouterr().out
    budget = fit.make_budget(memory="1700MiB", target="cuda", world=2)
    assert re.search(r"− NCCL buffers +1\.00 GiB +NCCL buffers \(outside the allocator, not measured here\)", out)
    assert f"{budget.usable_bytes:,} B" in out and budget.comm_reserve_bytes == GiB


def test_api_fit_takes_the_nccl_reserve_for_ranks():
    """``api.fit(world_size=2, comm_reserve=...)``: the per-rank answer, solved against the budget
    less that reserve."""
    from profiler import api
    result = api.fit("digits", memory="1700MiB", target="cuda", train="adam", world_size=2, strategy="ddp",
                     comm_reserve="512MiB")
    budget = fit.make_budget(memory="1700MiB", target="cuda", world=2, comm_reserve="512MiB")
    assert (result["world_size"], result["budget"]["comm_reserve_bytes"]) == (2, 512 * MiB)
    assert result["usable_bytes"] == budget.usable_bytes and result["peak"]["bytes"] <= budget.usable_bytes
    assert result["next"]["bytes"] > budget.usable_bytes


@pytest.mark.parametrize("argv", [
    ["--device", "h100-80gb", "--world-size", "2", "--comm-reserve", "lots"],
    ["--device", "h100-80gb", "--world-size", "2", "--comm-reserve", "-1GiB"],
    ["--memory", "1GiB", "--world-size", "2", "--comm-reserve", "1GiB"],   # a CPU target
    ["--device", "h100-80gb", "--comm-reserve", "1GiB"],                   # one device
])
def test_bad_comm_reserve_is_one_line_and_exit_2(capsys, argv):
    assert main(["fit", "digits", "--train", "adam", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'comm-reserve'" in err


def test_cuda_figures_round_blocks_and_count_segments():
    assert [fit.block_bytes(n) for n in (0, 1, 511, 512, 513, 1000)] == [0, 512, 512, 512, 1024, 1024]
    assert fit.segment_bytes(5 * MiB) == 5 * MiB                  # shares a 20 MiB segment
    assert fit.segment_bytes(10 * MiB) == 10 * MiB                # its own segment, already 2 MiB-aligned
    assert fit.segment_bytes(10 * MiB + 1) == 12 * MiB            # its own segment, rounded up to 2 MiB
    spec, budget = SPECS["bn-conv"], cuda(80 * GiB)
    plain = predict(spec, batch=3, device_kind="cuda", optimizers=("adam",)).training["adam"].bytes
    evaluation = fit.evaluate(spec, 3, budget, mode="adam")
    extras = {k: evaluation.breakdown[k] for k in ("blas_workspace", "per_tensor_rounding", "shared_segments")}
    assert extras["blas_workspace"] == 2 * 32 * MiB              # forward and autograd threads
    assert extras["shared_segments"] == 22 * MiB
    assert (evaluation.reserved_bytes - sum(extras.values())) % 512 == 0   # every block rounded
    assert evaluation.bytes == evaluation.reserved_bytes >= evaluation.allocated_bytes > plain
    again = predict(spec, batch=3, device_kind="cuda", optimizers=("adam",)).training["adam"].bytes
    assert again == plain                                        # rounding is per call, not global


def test_cli_json_keys(capsys):
    assert main(["fit", "digits", "--device", "t4-16gb", "--train", "adam", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"model", "mode", "dtype", "loss", "target", "budget", "batch", "fits", "capped", "max_batch", "peak",
            "next", "headroom_bytes", "headroom_fraction", "predict_calls"} <= set(result)
    assert {"memory_bytes", "reserve_bytes", "margin_fraction", "margin_bytes", "blas_workspace_bytes",
            "usable_bytes", "accelerator"} <= set(result["budget"])
    assert {"batch", "bytes", "allocated_bytes", "reserved_bytes", "at", "breakdown"} <= set(result["peak"])
    assert result["target"] == "cuda" and result["budget"]["accelerator"]["name"] == "t4-16gb"
    assert isinstance(result["peak"]["bytes"], int) and result["next"]["batch"] == result["batch"] + 1
    assert result["peak"]["bytes"] <= result["budget"]["usable_bytes"] < result["next"]["bytes"]


def test_text_output(capsys):
    assert main(["fit", "dense-514", "--device", "h100-80gb", "--train", "sgd", "--explain"]) == 0
    out = capsys.readouterr().out
    for text in ("on h100-80gb (NVIDIA H100 80GB HBM3)", "− reserve", "− fragmentation margin", "= usable",
                 "cuBLAS workspace", "Largest batch:", "max_memory_allocated", "over budget", "blas_workspace"):
        assert text in out, text


def test_verify_on_the_cpu_for_digits(capsys):
    """CPU predictions are exact for the seed models: measured(b) <= budget < measured(b + 1)."""
    assert main(["fit", "digits", "--memory", "1MB", "--train", "adam", "--verify", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    v = result["verification"]
    assert 100 <= result["batch"] <= 1000
    assert v["device"] == "cpu" and v["held"] is True
    assert v["at_batch"]["measured_bytes"] <= 10 ** 6 < v["next"]["measured_bytes"]
    assert v["at_batch"]["measured_bytes"] == result["peak"]["bytes"]


def test_verify_counts_running_out_of_memory_as_not_fitting(monkeypatch):
    from profiler import workflow
    from profiler.measuring.devices import DoesNotFit

    answer = fit.solve(SPECS["digits"], cpu(10 ** 6), mode="sgd")

    def measure(spec, *, batch, **options):
        if batch > answer.batch:
            raise DoesNotFit("training step with sgd does not fit in the memory of cpu")
        return {"train_peak_bytes_sgd": 10, "train_first_step_peak_bytes_sgd": 12}, {}

    monkeypatch.setattr(workflow, "measure", measure)
    v = fit.verify(SPECS["digits"], answer)
    assert v.at_batch.measured_bytes == 12 and v.fits_at_batch
    assert v.at_next.does_not_fit and v.at_next.measured_bytes is None and v.over_at_next and v.held
    assert fit.Check(1, 5, skipped="too big").within(10) is None


def test_verify_skips_what_the_ram_cannot_hold(monkeypatch):
    answer = fit.solve(SPECS["digits"], cpu(10 ** 15), mode="adam")
    v = fit.verify(SPECS["digits"], answer)
    assert v.at_batch.skipped and v.at_next.skipped and v.held is None


@modelled_isa
def test_fit_with_mixed_precision_solves_on_autocast_predictions_and_verifies(capsys):
    # the same budget fits more samples under autocast (bfloat16 activations); --verify measures
    # the autocast step at b and b + 1 and the prediction holds to the byte
    assert main(["fit", "benchmarks/zoo/lstm.yaml", "--memory", "3MiB", "--train", "adam", "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["fit", "benchmarks/zoo/lstm.yaml", "--memory", "3MiB", "--train", "adam", "--amp", "--verify",
                 "--format", "json"]) == 0
    amp = json.loads(capsys.readouterr().out)
    assert plain["amp"] is None and amp["amp"] == "bfloat16"
    assert amp["batch"] > plain["batch"]
    checks = amp["verification"]
    assert checks["held"] is True
    assert checks["at_batch"]["measured_bytes"] == checks["at_batch"]["predicted_bytes"] == amp["peak"]["bytes"]
    assert checks["next"]["measured_bytes"] == checks["next"]["predicted_bytes"] == amp["next"]["bytes"]


def test_the_guided_search_finds_what_bisection_finds():
    """On non-decreasing figures of every shape (linear, with steps, convex, flat, capped), the
    guided search answers as doubling and bisection do, in at most as many calls on linear ones."""
    from hypothesis import given, settings, strategies as st

    from profiler.planning.fit import guided_largest_fitting, largest_fitting

    @settings(max_examples=300, derandomize=True, deadline=None)
    @given(st.integers(1, 10 ** 6), st.integers(0, 10 ** 6), st.integers(0, 3), st.integers(1, 10 ** 9),
           st.integers(1, 2 ** 16))
    def check(slope, base, shape, usable, max_batch):
        def figure(b):
            return [base + slope * b, base + slope * b + (b // 7) * slope * 3, base + slope * b * b,
                    base + (b > 40) * slope][shape]
        calls = []

        def counted(b):
            calls.append(b)
            return figure(b)
        assert guided_largest_fitting(counted, usable, max_batch) == largest_fitting(figure, usable, max_batch)
        if shape == 0:
            assert len(set(calls)) <= 6
    check()
