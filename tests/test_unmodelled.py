"""A kernel whose workspace is not modelled is named in the prediction's warnings, with the
bytes at stake, instead of silently counting nothing (issue 9): oneDNN's bfloat16 LSTM off the
ISA its law was read for, grouped convolutions outside the widths measured exact, the strided bf16
depthwise backward, the fused attention paths in low precision."""
import re

import pytest
import torch

import profiler
from isa import modelled_isa


def _lstm():
    return torch.nn.LSTM(32, 64, batch_first=True)


def _at_stake(warnings: list[str], what: str) -> list[int]:
    return [int(re.search(r"up to about ([\d,]+) B", w).group(1).replace(",", "")) for w in warnings
            if w.startswith("NOT MODELLED") and what in w]


def _missing(result: dict) -> dict[str, int]:
    return {k: result["measured"][k] - p for k, p in result["predicted"].items() if k.endswith("peak_bytes")
            or "_peak_bytes_" in k}


def test_a_bfloat16_lstm_is_flagged_only_off_the_isa_its_law_was_read_for(monkeypatch):
    """On AVX512_CORE_BF16 oneDNN's bf16 LSTM is modelled (tests/test_low_precision_layers.py
    holds it exact); capped below it, both calls are flagged with bytes at stake."""
    from profiler.engine.kernels import cpu_isa
    from profiler.engine.kernels.aten_cpu import unmodelled
    from profiler.rules.registry import Context
    aten = torch.ops.aten
    x = torch.empty(10, 4, 32, dtype=torch.bfloat16, device="meta")
    forward = (x, *[None] * 8, 2, 64)               # input ... mode (LSTM), hidden_size
    backward = (x, *[None] * 13, 2, 64)
    run = Context(dtype="bfloat16", threads=2)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    capped = [unmodelled(aten.mkldnn_rnn_layer.default, forward, run),
              unmodelled(aten.mkldnn_rnn_layer_backward.default, backward, run)]
    assert all(flag is not None and flag[1] > 0 for flag in capped), capped
    assert "LSTM backward" in capped[1][0]
    if cpu_isa.cpu_isa() is not None and cpu_isa.NAMES.index(cpu_isa.cpu_isa()) >= cpu_isa.NAMES.index(
            cpu_isa.MODELLED):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cpu_isa.MODELLED)
        assert unmodelled(aten.mkldnn_rnn_layer.default, forward, run) is None
        assert unmodelled(aten.mkldnn_rnn_layer_backward.default, backward, run) is None


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
@pytest.mark.parametrize("side, modelled", [(9, False), (8, True)])
def test_a_strided_bfloat16_depthwise_backward_on_an_uneven_input_is_flagged(side, modelled):
    """Its input gradient runs brgconv_strided on VNNI-paired weights: modelled on NCHW inputs
    whose sides are multiples of the stride (exact, not flagged), flagged on an odd side (oneDNN's
    "uneven" buffers) with the gap within what the flag says; the stride-1 one next to it is
    modelled and not flagged."""
    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(128, 128, 3, padding=1, groups=128),
                                   torch.nn.Conv2d(128, 128, 3, stride=2, padding=1, groups=128))
    result = profiler.profile(model, (128, side, side), batch=2, dtype="bfloat16", warmup=0, repeats=1,
                              optimizers=("sgd",))
    if modelled:
        assert not [w for w in result["warnings"] if w.startswith("NOT MODELLED")]
        assert set(_missing(result).values()) == {0}
        return
    flagged = _at_stake(result["warnings"], "3×3 depthwise")
    assert len(flagged) == 1 and "convolution_backward" in result["warnings"][0]
    missing = _missing(result)
    assert missing["inference_peak_bytes"] == 0
    assert 0 < missing["train_peak_bytes_sgd"] <= flagged[0]


def _encoder_layer():
    return torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)


def _stack():
    return torch.nn.TransformerEncoder(_encoder_layer(), 2, enable_nested_tensor=False)


@modelled_isa
@pytest.mark.parametrize("factory", [lambda: torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True,
                                                                              norm_first=True), _stack],
                         ids=["pre-norm", "two layers"])
def test_the_fused_encoder_layer_under_autocast_outside_its_law_is_flagged_and_the_gap_is_within_what_it_says(
        factory):
    """Its inference fast path under bfloat16 autocast is modelled post-norm on a float32 input
    (tests/test_low_precision_layers.py); pre-norm, and a second layer fed the first's bfloat16
    result (q, k and v then one tensor), are not: 35 and 38 KB under at batch 2."""
    result = profiler.profile(factory, (32 if factory is not _stack else 16, 64), batch=2, amp="bfloat16",
                              warmup=0, repeats=1, optimizers=("sgd",))
    flagged = _at_stake(result["warnings"], "TransformerEncoderLayer")
    assert len(flagged) == 1
    assert 0 < _missing(result)["inference_peak_bytes"] <= flagged[0]


class _PaddedSelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(32, 2, batch_first=True)

    def forward(self, x):
        padding = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        padding[:, -2:] = True
        return self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]


@modelled_isa
def test_masked_self_attention_in_bfloat16_stays_flagged_and_the_gap_is_within_what_it_says():
    """The fused call itself is exact in bfloat16 with a mask, but the module's bfloat16 training
    (sdpa with the mask) is 28 KB under here: the flag stays and covers it."""
    result = profiler.profile(_PaddedSelfAttention, (96, 32), batch=1, dtype="bfloat16", warmup=0, repeats=1,
                              optimizers=("sgd",))
    flagged = _at_stake(result["warnings"], "MultiheadAttention")
    assert len(flagged) == 1
    missing = _missing(result)
    assert missing["inference_peak_bytes"] == 0
    assert 0 < missing["train_peak_bytes_sgd"] <= flagged[0]


def test_the_fused_encoder_layer_in_float32_is_not_flagged():
    result = profiler.summary(_encoder_layer, (32, 64), batch=1)
    assert not [w for w in result["warnings"] if w.startswith("NOT MODELLED")]
