"""Mixed precision (autocast) and low-precision models: the replay counted by hand, and
predictions against real PyTorch on the CPU, to the byte.

Under ``--amp`` the weights stay float32; the forward pass and the loss run under
``torch.autocast``: a Dense casts its bias, its weight (both cached until the autocast region
exits) and its input to bfloat16, computes in bfloat16, and the loss casts back to float32.
bfloat16 matmuls on the CPU go to oneDNN, which takes a scratchpad from the CPU allocator: its
size is ``onednn_bf16_gemm_scratch`` (oneDNN's own blocking search, for any thread count; the
measurements below use torch's default threads).
"""
import json

import pytest

from profiler import workflow
from profiler.cli import main
from profiler.errors import ModelsizeError, SpecError
from profiler.engine.kernels.onednn_matmul import onednn_bf16_gemm_scratch
from profiler.frontends.models import builtin
from profiler.engine.predict import predict
from profiler.frontends.spec import Model
from isa import modelled_isa

MLP, CNN = "benchmarks/zoo/mlp.yaml", "benchmarks/zoo/cnn.yaml"
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam",
         "train_first_step_peak_bytes_sgd", "train_first_step_peak_bytes_adam")


def test_onednn_scratchpad_by_hand():
    # 2 threads, each with B packed in 64-column panels (64 × K_blk bf16) and a float32
    # accumulator (rows × min(n, 64)), plus 384 + 640 × 2 fixed. K_blk: k rounded up to 32, at most 512.
    # Forward of the digits Dense at batch 2, (2 × 784)·(784 × 10): 1,664 + 2 × (64·512·2 + 2·10·4)
    assert onednn_bf16_gemm_scratch("forward", 2, 784, 10, threads=2) == 1_664 + 2 * (65_536 + 80) == 132_896
    # its input gradient (2 × 10)·(10 × 784): K_blk 32, 64 columns: 1,664 + 2 × (4,096 + 2·64·4)
    assert onednn_bf16_gemm_scratch("grad_input", 2, 10, 784, threads=2) == 10_880
    # its weight gradient gᵀ·x, (10 × 2)·(2 × 784), A transposed and copied (LDA 32 bf16):
    # 1,792 + 2 × (4,096 + 10 × (64·4 + 32·2))
    assert onednn_bf16_gemm_scratch("grad_weight", 10, 2, 784, threads=2) == 1_792 + 2 * (4_096 + 3_200) == 16_384
    # m·k·n ≤ 16³: PyTorch keeps its own kernel, no scratchpad
    assert onednn_bf16_gemm_scratch("forward", 2, 100, 10, threads=2) == 0


def test_amp_inference_peak_by_hand():
    p = predict(builtin("digits"), batch=2, amp="bfloat16", threads=2)
    # float32: parameters 7,850 × 4 = 31,400 and x 2 × 784 × 4 = 6,272. Under autocast the Dense
    # casts, right to left, its bias 10 × 2 = 20, weight 7,840 × 2 = 15,680 (both cached for the
    # region) and input 2 × 784 × 2 = 3,136; addmm's bfloat16 output 2 × 10 × 2 = 40 and oneDNN's
    # scratchpad 132,896 are alive at the peak.
    assert p.inference.bytes == 31_400 + 6_272 + 20 + 15_680 + 3_136 + 40 + 132_896
    assert p.inference.by_dtype == {"float32": 31_400 + 6_272, "bfloat16": 20 + 15_680 + 3_136 + 40 + 132_896}
    assert p.inference.breakdown["weight_casts"] == 20 + 15_680
    assert p.inference.at == "forward dense"


def test_amp_training_step_by_hand():
    p = predict(builtin("digits"), batch=2, amp="bfloat16", threads=2, optimizers=("sgd",))
    sgd = p.training["sgd"]
    # The steady step's gradients are freed by zero_grad, so the peak is the forward's again,
    # with the targets (2 int64 = 16 B) alive too.
    assert sgd.bytes == p.inference.bytes + 16
    assert sgd.by_dtype["int64"] == 16
    kept = {r.name: r.kept_bytes for r in p.rows}
    # The Dense keeps its bfloat16 input (3,136 B) for the weight gradient; its cast weight is not
    # kept (x needs no gradient, so addmm does not save it) and dies when autocast exits, with the
    # bias cast. Softmax keeps its bfloat16 output (2 × 10 × 2 = 40 B), the caller's `out`.
    assert kept == {"flatten": 0, "dense": 3_136, "activation": 40}
    out_bytes = {r.name: r.output_bytes for r in p.rows}
    assert out_bytes == {"flatten": 0, "dense": 40, "activation": 40}   # bfloat16 outputs


def test_gradients_and_optimizer_state_stay_float32():
    p = predict(builtin("dense-514"), batch=4, amp="bfloat16", optimizers=("adam",))
    adam = p.training["adam"]
    # Adam's peak is in its step: parameters, gradients and both moments float32 (397,065 × 4 each),
    # the step counters float32 too; the only bfloat16 tensor left is the caller's `out`,
    # 4 × 257 × 2 = 2,056 B (the loss is float32: autocast computes it in float32).
    assert adam.at == "optimizer step (adam)"
    assert adam.breakdown["gradients"] == adam.breakdown["parameters"] == 397_065 * 4
    assert adam.breakdown["optimizer_state"] == 2 * 397_065 * 4 + 4 * 4
    assert adam.by_dtype["bfloat16"] == 4 * 257 * 2


def _exact(result: dict) -> None:
    for key in PEAKS:
        assert result["predicted"][key] == result["measured"][key], key
    measured = result["measured"]["layer_kept_for_backward_bytes"]
    for row in result["layers"]:
        assert row["kept_for_backward_bytes"] == measured.get(row["name"], 0), row["name"]


AMP_CASES = [("digits", 2, "cross_entropy"), ("digits", 8, "mse"), ("dense-514", 2, "cross_entropy"),
             (MLP, 2, "cross_entropy"), (MLP, 4, "mse"), (CNN, 2, "cross_entropy"), ("digits-theano", 4, "cross_entropy")]


@modelled_isa
@pytest.mark.parametrize("name, batch, loss", AMP_CASES)
def test_amp_predicted_equals_measured_on_cpu(name, batch, loss):
    result = workflow.profile(workflow.resolve_spec(name), batch=batch, dtype="float32", loss=loss, device="cpu",
                              warmup=0, repeats=1, threads=None, amp="bfloat16")
    assert result["amp"] == result["options"]["amp"] == result["measured"]["amp_dtype"] == "bfloat16"
    _exact(result)


LOW_CASES = [("digits", 8, "bfloat16"), ("dense-514", 2, "bfloat16"), (MLP, 2, "bfloat16"), (CNN, 8, "bfloat16"),
             (MLP, 2, "float16"), ("dense-514", 2, "float16")]


@modelled_isa
@pytest.mark.parametrize("name, batch, dtype", LOW_CASES)
def test_low_precision_predicted_equals_measured_on_cpu(name, batch, dtype):
    # everything in one dtype; bfloat16 Linear layers carry oneDNN's scratchpad, float16 ones
    # (no oneDNN float16 matmul on this CPU) do not
    result = workflow.profile(workflow.resolve_spec(name), batch=batch, dtype=dtype, loss="cross_entropy",
                              device="cpu", warmup=0, repeats=1, threads=None)
    _exact(result)


@modelled_isa   # a CPU with AVX512-FP16 (Xeon with AMX) runs float16 matmuls in oneDNN, with its scratchpad
def test_amp_float16_on_cpu():
    result = workflow.profile(workflow.resolve_spec(MLP), batch=2, dtype="float32", loss="cross_entropy",
                              device="cpu", warmup=0, repeats=1, threads=None, amp="float16",
                              optimizers=("sgd",))
    for key in ("inference_peak_bytes", "train_peak_bytes_sgd", "train_first_step_peak_bytes_sgd"):
        assert result["predicted"][key] == result["measured"][key], key


def test_amp_needs_float32_weights_and_known_layers():
    with pytest.raises(SpecError, match=r"field 'dtype': mixed precision keeps float32 master weights"):
        predict(builtin("digits"), amp="bfloat16", dtype="bfloat16")
    wrapped = Model("td", input_shape=[4, 8], layers=[{"TimeDistributed": {"layer": {"PReLU": {}}}}])
    with pytest.raises(SpecError, match=r'layer 0 \(TimeDistributed "time_distributed"\): field \'amp\': mixed '
                                        r"precision is not modelled for PReLU layers"):
        predict(wrapped, amp="bfloat16")
    with pytest.raises(SpecError, match="unknown mixed-precision dtype"):
        predict(builtin("digits"), amp="float8")
    from profiler.frontends.build import build
    from profiler.measuring.runner import measure
    with pytest.raises(ModelsizeError, match="mixed precision keeps float32 master weights"):
        measure(build(builtin("digits")), input_shape=(2, 28, 28, 1), dtype="bfloat16", amp_dtype="bfloat16")


def test_cli_amp_options(capsys):
    assert main(["summary", "digits", "--batch", "2", "--amp", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["amp"] == "bfloat16"
    peak = out["peaks"]["train_sgd"]
    assert sum(peak["by_dtype"].values()) == peak["bytes"] == sum(peak["breakdown"].values())
    assert main(["summary", "digits", "--amp-dtype", "float16", "--device-kind", "cuda", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["amp"] == "float16"
    assert main(["summary", "digits", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["amp"] is None
