"""A kernel whose workspace is not modelled is named in the prediction's warnings, with the
bytes at stake, instead of silently counting nothing (issue 9): oneDNN's bfloat16 LSTM, and its
grouped convolutions outside the widths measured exact."""
import re

import pytest
import torch

import profiler
from isa import modelled_isa


def _lstm():
    return torch.nn.LSTM(32, 64, batch_first=True)


@modelled_isa   # the bytes at stake are the AVX-512 laws'
def test_a_bfloat16_lstm_is_flagged_and_the_gap_is_within_what_it_says():
    result = profiler.profile(_lstm, (10, 32), batch=4, dtype="bfloat16", warmup=0, repeats=1)
    flagged = [w for w in result["warnings"] if w.startswith("NOT MODELLED") and "LSTM" in w]
    assert len(flagged) == 1
    at_stake = int(re.search(r"up to about ([\d,]+) B", flagged[0]).group(1).replace(",", ""))
    for key, predicted in result["predicted"].items():
        missing = result["measured"][key] - predicted
        assert missing <= at_stake, (key, missing, at_stake)


def _grouped(channels, groups):
    return lambda: torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1, groups=groups),
                                       torch.nn.ReLU())


@modelled_isa
@pytest.mark.parametrize("dtype, channels, groups", [("bfloat16", 96, 4), ("float32", 8, 4)])
def test_an_uncovered_grouped_convolution_is_flagged_and_the_gap_is_within_what_it_says(dtype, channels, groups):
    """bfloat16 at 24 channels per group (the sweep's worst miss) and float32 at 2 per group."""
    result = profiler.profile(_grouped(channels, groups), (channels, 8, 8), batch=2, dtype=dtype, warmup=0,
                              repeats=1)
    flagged = [w for w in result["warnings"] if w.startswith("NOT MODELLED") and "grouped convolution" in w]
    assert len(flagged) == 2   # the forward and the backward call
    at_stake = max(int(re.search(r"up to about ([\d,]+) B", w).group(1).replace(",", "")) for w in flagged)
    missing = [result["measured"][k] - p for k, p in result["predicted"].items() if k.endswith("peak_bytes")
               or "_peak_bytes_" in k]
    assert max(missing) > 0 or dtype == "float32"   # bfloat16: really under-predicted, hence the flag
    assert max(missing) <= at_stake


def test_a_float32_grouped_convolution_of_8_channels_per_group_is_not_flagged():
    result = profiler.summary(_grouped(64, 2), (64, 8, 8), batch=2)
    assert not [w for w in result["warnings"] if w.startswith("NOT MODELLED")]


def test_a_float32_lstm_is_modelled_and_not_flagged():
    result = profiler.summary(_lstm, (10, 32), batch=4)
    assert not [w for w in result["warnings"] if w.startswith("NOT MODELLED")]


@modelled_isa
def test_timm_convnext_in_bfloat16_flags_its_7x7_depthwise_backward_and_covers_the_gap():
    """ConvNeXt's 7×7 depthwise convolution's backward in bfloat16 keeps a float32-sized scratch
    (3.2 MB here) the model does not book: the prediction says so, with enough bytes at stake."""
    timm = pytest.importorskip("timm")
    result = profiler.profile(lambda: timm.create_model("test_convnext", num_classes=10), (3, 32, 32), batch=1,
                              dtype="bfloat16", warmup=0, repeats=1, optimizers=("sgd",))
    flagged = [w for w in result["warnings"] if w.startswith("NOT MODELLED") and "7×7 depthwise" in w]
    assert flagged
    at_stake = max(int(re.search(r"up to about ([\d,]+) B", w).group(1).replace(",", "")) for w in flagged)
    missing = result["measured"]["train_peak_bytes_sgd"] - result["predicted"]["train_peak_bytes_sgd"]
    assert 0 < missing <= at_stake
