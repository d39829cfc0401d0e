"""Activation checkpointing: the replay counted by hand, and predictions against real PyTorch.

``torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False)`` keeps a checkpointed call's
inputs and the CPU generator's state (5,056 bytes) instead of what its ops save, and runs the call
again when backward reaches it. The measured per-layer kept bytes come from a dispatch-mode tracker
that does not see ``torch.get_rng_state()``: they miss those 5,056 bytes per checkpointed call.
"""
import pytest
import torch

from profiler import workflow
from profiler.frontends.build import Checkpointed, build
from profiler.cli import main
from profiler.errors import SpecError
from profiler.engine.memory_model import RNG_STATE_BYTES, Op, Setting, inference_peak, kept_for_backward, training_peak, training_timeline
from profiler.frontends.models import builtin
from profiler.engine.predict import predict
from profiler.rules.registry import Saved
from isa import require_modelled_isa_for

MLP, CNN = "benchmarks/zoo/mlp.yaml", "benchmarks/zoo/cnn.yaml"
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam",
         "train_first_step_peak_bytes_sgd", "train_first_step_peak_bytes_adam")


def _tiny():
    """x (2 × 8) → Dense(4) + ReLU, checkpointed → Dense(3); float32, batch 2."""
    ops = [Op("fc", inputs=("x",), output="fc/pre", in_elements=(16,), out_elements=8, saved=(Saved("input"),),
              param_bytes=36 * 4, param_tensors=(32 * 4, 4 * 4), layer="fc", weights="fc", checkpoint="fc"),
           Op("fc/relu", inputs=("fc/pre",), output="fc", in_elements=(8,), out_elements=8,
              saved=(Saved("output"),), fused=True, layer="fc", checkpoint="fc"),
           Op("out", inputs=("fc",), output="out", in_elements=(8,), out_elements=6, saved=(Saved("input"),),
              param_bytes=15 * 4, param_tensors=(12 * 4, 3 * 4), layer="out", weights="out")]
    setting = Setting(batch=2, dtype="float32", inputs={"x": 64}, outputs=("out",), target_bytes=16,
                      buffer_bytes=0)
    return ops, setting


def test_checkpointed_call_keeps_its_inputs_and_the_generator_state():
    ops, s = _tiny()
    # Without checkpointing "fc" would keep its ReLU output (2 × 4 × 4 = 32 B, saved by ReLU and by
    # "out"). Checkpointed, ReLU saves nothing, but "out" still keeps that output as its input:
    # 32 B, plus the CPU generator's state the checkpoint saved, 5,056 B. The input x is the
    # caller's (no layer's). "out" keeps its output 2 × 3 × 4 = 24 B (the caller's `out`).
    assert kept_for_backward(ops, s) == {"fc": 32 + 5_056, "out": 24}


def test_recomputation_replayed_in_order():
    ops, s = _tiny()
    events = [(key, n) for key, n, _, _ in training_timeline(ops, s, "sgd", trace=True).events]
    start = events.index(("rng_fork:fc", 5_056))
    # When ReLU's backward unpacks its output, the call runs again under a fork of the generator
    # state: the Dense's output (32 B) and ReLU's (32 B, what ReLU saves: the early stop), then
    # the fork is restored (freed) and the unsaved pre-activation dies. ReLU's backward makes the
    # pre-activation's gradient (32 B) and lets go of its recomputed output and of its output's
    # gradient; the Dense's backward makes the weight and bias gradients (128 + 16 B), and with
    # its saved tensors the checkpoint's frame goes: the generator state (5,056 B).
    assert events[start:start + 13] == [
        ("rng_fork:fc", 5_056), ("re:fc:fc/pre", 32), ("re:fc:fc", 32), ("rng_fork:fc", -5_056),
        ("re:fc:fc/pre", -32), ("grad_in:1:0", 32), ("re:fc:fc", -32), ("grad_in:2:0", -32),
        ("weight_grad:fc:0", 128), ("weight_grad:fc:1", 16), ("rng_state:fc", -5_056),
        ("grad_in:1:0", -32), ("grad_seed", -4)]


def test_checkpointed_peak_by_hand():
    ops, s = _tiny()
    peak = training_peak(ops, s, "sgd")
    # The peak is the recomputation's: parameters 36 × 4 + 15 × 4 = 204, target 2 int64 = 16,
    # x 64; "out"'s weight and bias gradients 48 + 12 = 60; the original ReLU output is gone
    # (freed after "out"'s backward); activations: the generator state 5,056, loss 4 (nll's total
    # weight is freed), the caller's `out` 24, the recomputed pre-activation and ReLU output
    # 32 + 32; temporaries: backward's seed 4, the fork of the generator state 5,056 and the
    # gradient of fc's output 32.
    assert peak.bytes == 204 + 16 + 64 + 60 + (5_056 + 4 + 24 + 32 + 32) + (4 + 5_056 + 32) == 10_584
    assert peak.at == "backward fc/relu (recomputing fc)"
    assert peak.by_dtype == {"float32": peak.bytes - 16 - 2 * 5_056, "int64": 16, "uint8": 2 * 5_056}
    assert sum(peak.breakdown.values()) == peak.bytes


def test_checkpointed_inference_holds_the_state_only_during_the_call():
    ops, s = _tiny()
    # parameters 204 + x 64 + generator state 5,056 + pre-activation 32 + ReLU output 32
    assert inference_peak(ops, s).bytes == 204 + 64 + 5_056 + 32 + 32


def test_checkpointing_trades_kept_activations_for_recomputation():
    spec = workflow.resolve_spec(MLP)
    plain, ckpt = (predict(spec, batch=2, checkpoint=c) for c in ((), ("dense_1",)))
    kept = {r.name: r.kept_bytes for r in plain.rows}
    kept_ckpt = {r.name: r.kept_bytes for r in ckpt.rows}
    # dense_1 (Dense 256, gelu): GELU keeps its input, 2 × 256 × 4 = 2,048 B, and dense_2 keeps
    # dense_1's output (2,048 B). Checkpointed: the output and the generator state only.
    assert kept["dense_1"] == 2_048 + 2_048
    assert kept_ckpt["dense_1"] == 2_048 + RNG_STATE_BYTES
    assert ckpt.checkpoint == ("dense_1",)


def _kept_matches(result: dict, checkpointed: set[str]) -> None:
    measured = result["measured"]["layer_kept_for_backward_bytes"]
    for row in result["layers"]:
        # the tracker misses the generator state of each checkpointed call that kept a frame
        rng = RNG_STATE_BYTES if row["name"] in checkpointed and row["kept_for_backward_bytes"] >= RNG_STATE_BYTES \
            else 0
        assert row["kept_for_backward_bytes"] - rng == measured.get(row["name"], 0), row["name"]


CASES = [
    ("digits", 2, True, None), ("dense-514", 4, True, None), (MLP, 2, True, None), (CNN, 2, True, None),
    (MLP, 8, ("dense_1", "dropout"), None), (CNN, 4, ("conv2d_1",), None),
    (MLP, 2, True, "bfloat16"), (CNN, 2, True, "bfloat16"), ("dense-514", 4, ("dense_1",), "bfloat16"),
]


@pytest.mark.parametrize("name, batch, checkpoint, amp", CASES)
def test_predicted_equals_measured_on_cpu(name, batch, checkpoint, amp):
    spec = workflow.resolve_spec(name)
    require_modelled_isa_for(spec, amp=amp)
    result = workflow.profile(spec, batch=batch, dtype="float32", loss="cross_entropy", device="cpu",
                              warmup=0, repeats=1, threads=None, checkpoint=checkpoint, amp=amp)
    for key in PEAKS:
        assert result["predicted"][key] == result["measured"][key], key
    chosen = {layer.name for layer in spec.layers} if checkpoint is True else set(checkpoint)
    _kept_matches(result, chosen)


def test_seed_conv_model_and_mse_loss_exact():
    for name, batch, loss in (("conv-224", 1, "cross_entropy"), ("digits", 8, "mse")):
        result = workflow.profile(builtin(name), batch=batch, dtype="float32", loss=loss, device="cpu",
                                  warmup=0, repeats=1, threads=None, checkpoint=True, optimizers=("sgd",))
        for key in ("inference_peak_bytes", "train_peak_bytes_sgd", "train_first_step_peak_bytes_sgd"):
            assert result["predicted"][key] == result["measured"][key], (name, key)


def test_builder_wraps_the_chosen_layers_and_computes_the_same():
    spec = workflow.resolve_spec(MLP)
    torch.manual_seed(0)
    plain = build(spec)
    torch.manual_seed(0)
    wrapped = build(spec, checkpoint=("dense", "dense_2"))
    assert isinstance(wrapped.dense, Checkpointed) and isinstance(wrapped.dense_2, Checkpointed)
    assert not isinstance(wrapped.dense_1, Checkpointed)
    assert "dense.inner.0.weight" in dict(wrapped.named_parameters())
    x = torch.randn(3, 784)
    for model in (plain, wrapped):
        model.eval()
    assert torch.equal(plain(x), wrapped(x))
    wrapped.train()
    torch.manual_seed(1)
    wrapped(x).sum().backward()   # dropout's mask drawn again identically in the recomputation
    assert wrapped.dense.inner[0].weight.grad is not None


def test_unknown_layer_is_refused_with_the_names():
    with pytest.raises(SpecError, match=r"field 'checkpoint': no such layer to checkpoint. Expected names "
                                        r"among the model's own layers: flatten, dense, activation. Received 'fc'"):
        predict(builtin("digits"), checkpoint=("fc",))


def test_cli_checkpoint_option(capsys):
    import json
    assert main(["summary", MLP, "--batch", "2", "--checkpoint", "dense,dense_1", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == ["dense", "dense_1"]
    assert main(["summary", MLP, "--batch", "2", "--checkpoint", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == ["dense", "dense_1", "dense_2", "dropout"]
