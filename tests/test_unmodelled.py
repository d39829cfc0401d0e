"""A kernel whose workspace is not modelled is named in the prediction's warnings, with the
bytes at stake, instead of silently counting nothing (issue 9): oneDNN's bfloat16 LSTM."""
import re

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


def test_a_float32_lstm_is_modelled_and_not_flagged():
    result = profiler.summary(_lstm, (10, 32), batch=4)
    assert not [w for w in result["warnings"] if w.startswith("NOT MODELLED")]
