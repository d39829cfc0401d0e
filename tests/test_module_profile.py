"""`profile` of a torch module: every peak and each of its categories, predicted == measured.

The zoo's models (benchmarks/zoo), where the spec path is exact, are handed to the tool as torch
modules made by a factory — as a user arriving with an ``nn.Module`` would — and profiled on the
CPU: the module engine's prediction (fake tensors) against the CPU allocator's measurement, peak
by peak and category by category (parameters, gradients, optimizer state, inputs, activations,
weight casts, temporaries, workspace).
"""
from pathlib import Path

import pytest
import torch

from profiler import workflow
from profiler.frontends.build import build
from profiler.frontends.source import ModuleSource

ZOO = sorted((Path(__file__).resolve().parent.parent / "benchmarks" / "zoo").glob("*.yaml"))


def _as_module(spec) -> ModuleSource:
    return ModuleSource(f"{spec.name} (torch module)", lambda: build(spec), tuple(i.shape for i in spec.inputs),
                        tuple(i.dtype for i in spec.inputs),
                        tuple(workflow.token_range(spec, i.name) for i in spec.inputs))


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_module_profile_is_exact_per_category(path):
    spec = workflow.resolve_spec(str(path))
    result = workflow.profile(_as_module(spec), batch=2, warmup=0, repeats=1, optimizers=("sgd", "adam"))
    for key, predicted in result["predicted"].items():
        assert predicted == result["measured"][key], key
    assert set(result["breakdown_comparison"]) == {"inference", "train_sgd", "train_adam", "train_first_step_sgd",
                                                   "train_first_step_adam"}
    for peak, categories in result["breakdown_comparison"].items():
        for category, figures in categories.items():
            assert figures["predicted"] == figures["measured"], (peak, category, figures)
    # the same model from its spec: the same peaks
    from_spec = workflow.summary(spec, batch=2, optimizers=("sgd", "adam"))
    for key in ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam"):
        assert from_spec["predicted"][key] == result["predicted"][key], key


class _ScalesLast(torch.nn.Module):
    """Its inference peak is inside ``h * 0.5``: the wrapped number (a 0-d double, 8 B) alive
    there, made in the forward pass, as a GPT-2's attention and activation make theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 0.5


def test_a_python_number_alive_at_the_peak_is_an_activation_in_the_forward_pass():
    """The measurement books what the forward pass makes, a wrapped number too, as activations;
    the prediction had booked the wrapped number as a temporary (8 B off in GPT-2's inference
    breakdown from a config.json, the total exact)."""
    source = ModuleSource("scales last", _ScalesLast, ((16,),), ("float",), (None,))
    result = workflow.profile(source, batch=2, warmup=0, repeats=1, optimizers=("sgd",))
    inference = result["breakdown_comparison"]["inference"]
    assert inference["activations"]["predicted"] == inference["activations"]["measured"]
    assert inference.get("temporaries", {}).get("predicted", 0) == inference.get("temporaries", {}).get("measured", 0)
    for peak, categories in result["breakdown_comparison"].items():
        for category, figures in categories.items():
            assert figures["predicted"] == figures["measured"], (peak, category, figures)


def test_the_fused_encoder_layer_makes_its_result_last():
    """``nn.TransformerEncoderLayer``'s fused inference call (post-norm) makes its result in its
    last phase, the second norm: at its peak (the feed-forward's) the result is not there yet and
    its bytes are the kernel's, as measured (before: 8,192 B of activations predicted at batch 1 on
    32 tokens, measured as workspace)."""
    def make() -> torch.nn.Module:
        return torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)
    for batch in (1, 4):
        source = ModuleSource("encoder layer", make, ((32, 64),), ("float",), (None,))
        result = workflow.profile(source, batch=batch, warmup=0, repeats=1, optimizers=("sgd",))
        for peak, categories in result["breakdown_comparison"].items():
            for category, figures in categories.items():
                assert figures["predicted"] == figures["measured"], (batch, peak, category, figures)


def test_the_lstm_backward_makes_its_second_bias_gradient_last():
    """oneDNN's LSTM backward (``mkldnn_rnn_layer_backward``) returns the bias gradient twice, the
    second cloned once its buffers are freed: at a training step's peak inside the call it is not
    there yet, its bytes the kernel's (before: 1,024 B of gradients predicted for nn.LSTM(32, 64, 2
    layers) at batch 1, measured as workspace)."""
    def make() -> torch.nn.Module:
        return torch.nn.LSTM(32, 64, num_layers=2, batch_first=True)
    for batch in (1, 4):
        source = ModuleSource("lstm", make, ((20, 32),), ("float",), (None,))
        result = workflow.profile(source, batch=batch, warmup=0, repeats=1, optimizers=("sgd", "adam"))
        for peak, categories in result["breakdown_comparison"].items():
            for category, figures in categories.items():
                assert figures["predicted"] == figures["measured"], (batch, peak, category, figures)
