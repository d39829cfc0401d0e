"""Recurrent, attention, encoder and embedding layers in bfloat16 and under autocast: predicted
peaks against the CPU allocator's, to the byte, and one case counted by hand.

In bfloat16 on the CPU every matmul of these layers goes to oneDNN, which takes a scratchpad
from the CPU allocator (``memory_model.onednn_bf16_gemm_scratch``), and oneDNN's batched matmul
copies a head's strided slices first (``rules.attention.Attention.bmm``). Under autocast the
layers cast their weights and input once per call and run in bfloat16 throughout
(``modules.lowered``). The specs are small: the whole file runs in seconds.
"""
import pytest

from profiler import workflow
from profiler.engine.kernels.onednn_matmul import onednn_bf16_gemm_scratch
from profiler.engine.predict import predict
from profiler.frontends.spec import Model, from_dict
from isa import modelled_isa

pytestmark = modelled_isa   # kernel workspace measured on oneDNN's AVX512_CORE_BF16

PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam",
         "train_first_step_peak_bytes_sgd", "train_first_step_peak_bytes_adam")

SPECS = {
    "recurrent": Model("recurrent", input_shape=[10, 12], layers=[
        {"GRU": {"units": 24, "return_sequences": True}}, {"LSTM": {"units": 16}}, {"Dense": {"units": 4}}]),
    "bidirectional": Model("bidirectional", input_shape=[10, 12], layers=[
        {"Dense": {"units": 12}}, {"Bidirectional": {"layer": {"GRU": {"units": 16, "return_sequences": True}},
                                                     "merge_mode": "ave"}},
        {"SimpleRNN": {"units": 16}}, {"Dense": {"units": 4}}]),
    "attention": Model("attention", input_shape=[20, 16], layers=[
        {"Dense": {"units": 24}}, {"MultiHeadAttention": {"num_heads": 3, "key_dim": 8, "dropout": 0.2}},
        {"Flatten": {}}, {"Dense": {"units": 4}}]),
    "encoder": Model("encoder", input_shape=[12], layers=[
        {"Embedding": {"input_dim": 50, "output_dim": 16}},
        {"TransformerEncoder": {"intermediate_dim": 32, "num_heads": 2, "dropout": 0.1, "activation": "gelu"}},
        {"TransformerEncoder": {"intermediate_dim": 32, "num_heads": 2, "normalize_first": True}},
        {"Flatten": {}}, {"Dense": {"units": 4}}]),
    # an Embedding feeding a Concatenate gets a strided slice of the gradient (copied in its
    # backward); two outputs, their losses summed
    "towers": from_dict({"name": "towers", "inputs": [{"name": "tokens", "shape": [6]}, {"name": "features", "shape": [4]}],
                         "layers": [{"Embedding": {"name": "embed", "input_dim": 50, "output_dim": 8, "inputs": "tokens"}},
                                    {"Flatten": {}},
                                    {"Dense": {"name": "f", "units": 8, "inputs": ["features"], "activation": "tanh"}},
                                    {"Concatenate": {"name": "joined", "inputs": ["flatten", "f"]}},
                                    {"Dense": {"name": "head", "units": 3}},
                                    {"Dense": {"name": "aux", "units": 2, "inputs": "f"}}],
                         "outputs": ["head", "aux"]}),
}
MODES = {"bfloat16": dict(dtype="bfloat16"), "autocast": dict(dtype="float32", amp="bfloat16"),
         "float32": dict(dtype="float32")}
CASES = [(name, batch, mode) for name in SPECS for batch in (1, 8) for mode in ("bfloat16", "autocast")]
CASES += [("attention", 8, "float32"), ("encoder", 8, "float32"), ("towers", 4, "float32")]


@pytest.mark.parametrize("name, batch, mode", CASES)
def test_predicted_peaks_equal_the_allocators(name, batch, mode):
    result = workflow.profile(SPECS[name], batch=batch, loss="cross_entropy", device="cpu", warmup=0, repeats=1,
                              threads=None, **MODES[mode])
    for key in PEAKS:
        assert result["predicted"][key] == result["measured"][key], key
    kept = result["measured"]["layer_kept_for_backward_bytes"]   # what each layer leaves for backward
    for row in result["layers"]:
        assert row["kept_for_backward_bytes"] == kept.get(row["name"], 0), row["name"]


def test_recurrent_bfloat16_inference_by_hand():
    p = predict(Model("gru", input_shape=[4, 8], layers=[{"GRU": {"units": 16}}]), batch=4, dtype="bfloat16",
                threads=2)
    # bfloat16, 2 bytes each. Parameters 3 × (16 × (8 + 16) + 2 × 16) = 1,248 (2,496 B), input
    # 4 × 4 × 8 (256 B), output 4 × 16 (128 B). The projection P = x·W + b, 4 × 4 × 48 (1,536 B),
    # is one (16 × 8)·(8 × 48) matmul: 6,144 > 16³, so oneDNN's scratchpad comes with it: 16 rows
    # per thread, K_blk 32: 384 + 640 × 2 + 2 × (64 × 32 × 2 + 16 × 48 × 4) = 16,000 B. Then each
    # step's h·U ((4 × 16)·(16 × 32) and (4 × 16)·(16 × 16): at most 16³) stays with PyTorch's
    # kernel beside one (4 × 16) state buffer: the projection's moment is the peak.
    assert onednn_bf16_gemm_scratch("forward", 16, 8, 48, threads=2) == 1_664 + 2 * (4_096 + 3_072) == 16_000
    assert p.inference.bytes == 2_496 + 256 + 128 + 1_536 + 16_000 == 20_416
    assert p.inference.breakdown["workspace"] == 1_536 + 16_000
