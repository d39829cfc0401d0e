"""PyTorch's recurrent and attention modules, and attention in timm and Hugging Face models,
predicted by the module engine and measured from the CPU allocator's events (float32): every
peak (inference, SGD and Adam steps, first steps) equal to the byte, at two batch sizes.

What each case leans on: oneDNN's LSTM (``kernels/onednn_rnn.py``: weight reorders, scratchpad,
training workspace, backward's layouts), the fused inference paths of ``nn.MultiheadAttention``
and ``nn.TransformerEncoderLayer`` and the CPU flash attention of
``F.scaled_dot_product_attention`` (``kernels/cpu_attention.py``), autograd summing the
gradients of ``q, k, v = proj[0], proj[1], proj[2]`` in place (``module_memory``'s fixes).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from profiler import workflow
from profiler.frontends.source import resolve


class Outputs(nn.Module):
    """A recurrent layer's output sequence (its states dropped)."""
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


class SelfAttention(nn.Module):
    """nn.MultiheadAttention as self-attention: its fused kernel in inference, sdpa in training
    (without weights) or the math path (with them)."""
    def __init__(self, dim: int, heads: int, need_weights: bool = False, average: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.need_weights, self.average = need_weights, average

    def forward(self, x):
        out, weights = self.attn(x, x, x, need_weights=self.need_weights, average_attn_weights=self.average)
        return out if weights is None else out + weights.sum()


class SdpaBlock(nn.Module):
    """Projections around F.scaled_dot_product_attention: the CPU flash kernel both ways."""
    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.heads, self.causal = heads, causal

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class MaskedSelfAttention(nn.Module):
    """nn.MultiheadAttention with a key padding mask (the last two positions), a causal mask, or
    both: converted to bool inside the fused kernel, a float mask to sdpa's flash kernel."""
    def __init__(self, dim: int, heads: int, padding: bool = True, causal: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.padding, self.causal = padding, causal

    def forward(self, x):
        b, t, _ = x.shape
        padding = causal = None
        if self.padding:
            padding = torch.zeros(b, t, dtype=torch.bool, device=x.device)
            padding[:, -2:] = True
        if self.causal:
            causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        return self.attn(x, x, x, key_padding_mask=padding, attn_mask=causal, need_weights=False)[0]


class MaskedEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's fused path with a key padding mask."""
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)

    def forward(self, x):
        padding = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        padding[:, -2:] = True
        return self.layer(x, src_key_padding_mask=padding)


class HandSplitAttention(nn.Module):
    """q, k, v sliced (``proj[..., :d]``) or selected (``proj[0]``) out of one projection: autograd
    sums their three gradients into one buffer in place."""
    def __init__(self, select: bool):
        super().__init__()
        self.proj, self.out, self.select = nn.Linear(32, 96), nn.Linear(32, 32), select

    def forward(self, x):
        y = self.proj(x)
        if self.select:
            y = y.unflatten(-1, (3, 32)).permute(2, 0, 1, 3).contiguous()
            q, k, v = y[0], y[1], y[2]
        else:
            q, k, v = y[..., :32], y[..., 32:64], y[..., 64:]
        return self.out(torch.softmax(q @ k.transpose(1, 2), -1) @ v)


def _encoder_layer(**kwargs):
    return lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, **kwargs)


def _timm_vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("test_vit", pretrained=False)


VOCAB = 100


def _gpt2(attn: str):
    def make():
        transformers = pytest.importorskip("transformers")
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4)
        return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return make


def _bert(attn: str):
    def make():
        transformers = pytest.importorskip("transformers")
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=32)
        return transformers.AutoModelForMaskedLM.from_config(config, attn_implementation=attn)
    return make


# name: (factory, input shape, input dtype, loss, batches)
CASES = {
    # oneDNN: brgemm inference (weights ldgOi32o), reference-gemm training; batch 1 merges the
    # layer's product across steps, I = H fuses the two products' batches
    "lstm batch_first": (lambda: Outputs(nn.LSTM(12, 20, batch_first=True)), (7, 12), "float", "mse", (2, 3)),
    "lstm 2 layers bidirectional": (lambda: Outputs(nn.LSTM(16, 24, num_layers=2, bidirectional=True)), (7, 16),
                                    "float", "mse", (1, 4)),
    "lstm input = hidden, no bias": (lambda: Outputs(nn.LSTM(16, 16, bias=False, batch_first=True)), (5, 16),
                                     "float", "mse", (1, 2)),
    # ATen's own cells (matmuls and pointwise operators)
    "rnn tanh": (lambda: Outputs(nn.RNN(16, 24, batch_first=True)), (7, 16), "float", "mse", (2, 4)),
    "gru 2 layers bidirectional": (lambda: Outputs(nn.GRU(16, 24, num_layers=2, bidirectional=True, batch_first=True)),
                                   (5, 16), "float", "mse", (2, 4)),
    "gru batch_first": (lambda: Outputs(nn.GRU(16, 24, batch_first=True)), (7, 16), "float", "mse", (2, 4)),
    # fused inference paths; sdpa's flash kernel or the math path in training
    "multihead attention": (lambda: SelfAttention(32, 4), (10, 32), "float", "mse", (1, 4)),
    "multihead attention, long": (lambda: SelfAttention(16, 2), (40, 16), "float", "mse", (1, 3)),
    "multihead attention, weights": (lambda: SelfAttention(32, 4, need_weights=True), (10, 32), "float", "mse", (1, 4)),
    "multihead attention, padding mask": (lambda: MaskedSelfAttention(32, 4), (10, 32), "float", "mse", (2, 4)),
    "multihead attention, causal mask": (lambda: MaskedSelfAttention(32, 4, padding=False, causal=True), (10, 32),
                                         "float", "mse", (2, 4)),
    "multihead attention, both masks": (lambda: MaskedSelfAttention(32, 4, causal=True), (10, 32), "float", "mse",
                                        (2, 4)),
    "encoder layer": (_encoder_layer(), (10, 32), "float", "mse", (1, 4)),
    "encoder layer, padding mask": (MaskedEncoderLayer, (10, 32), "float", "mse", (2, 4)),
    "encoder layer, pre-norm gelu": (_encoder_layer(dropout=0.0, norm_first=True, activation="gelu"), (10, 32),
                                     "float", "mse", (1, 4)),
    "encoder of 2 layers": (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                                          enable_nested_tensor=False), (10, 32), "float", "mse", (1, 3)),
    "q, k, v sliced by hand": (lambda: HandSplitAttention(select=False), (10, 32), "float", "mse", (2, 4)),
    "q, k, v selected by hand": (lambda: HandSplitAttention(select=True), (10, 32), "float", "mse", (2, 4)),
    "sdpa block": (lambda: SdpaBlock(32, 4), (40, 32), "float", "mse", (1, 4)),
    "sdpa block, causal, 200 tokens": (lambda: SdpaBlock(16, 2, causal=True), (200, 16), "float", "mse", (1, 2)),
    # (its 16×16 patch embedding's convolution backward at batch 1, or at 64×64, is off: the
    # convolution's workspace, not attention's)
    "timm test_vit": (_timm_vit, (3, 160, 160), "float", "cross_entropy", (2, 4)),
    "gpt-2 sdpa": (_gpt2("sdpa"), (12,), "int64", "cross_entropy", (2, 3)),
    "gpt-2 eager": (_gpt2("eager"), (12,), "int64", "cross_entropy", (2, 3)),
    "bert sdpa": (_bert("sdpa"), (12,), "int64", "cross_entropy", (2, 3)),
    "bert eager": (_bert("eager"), (12,), "int64", "cross_entropy", (2, 3)),
}

# (nn.GRU batch_first at batch 4 was over by 2,688 B in inference until the engine added linear's
# bias in place as the CPU does: every case here is exact now.)
@pytest.mark.parametrize("name", list(CASES))
def test_every_peak_equals_the_allocator(name):
    factory, shape, kind, loss, batches = CASES[name]
    source = resolve(factory, input_shape=shape, input_dtype=kind, int_high=VOCAB if kind == "int64" else None,
                     name=name)
    for batch in batches:
        result = workflow.profile(source, batch=batch, loss=loss, warmup=0, repeats=1, optimizers=("sgd", "adam"))
        for key, predicted in result["predicted"].items():
            assert predicted == result["measured"][key], (name, batch, key, predicted, result["measured"][key])


def test_lstm_kernel_allocations_match_the_source_laws():
    """Each allocation inside oneDNN's LSTM calls, from the CPU allocator's events, equals the
    engine's booking (``lstm_forward_workspace``, ``lstm_backward_workspace``) on shapes that
    reach each branch: padded leading dimensions (I = 8, 300; H = 10, 17), one-row weights
    (I or H = 1: no reorder), a merged layer product (N = 1), fused products (I = H)."""
    from profiler.engine.kernels.onednn_rnn import lstm_backward_workspace, lstm_forward_workspace
    from kernel_events import allocations_inside as inside

    threads = torch.get_num_threads()
    from profiler.engine.kernels.aten_cpu import _cpu_isa
    isa = _cpu_isa()   # oneDNN's, as capped by ONEDNN_MAX_CPU_ISA
    if not isa.startswith("AVX512"):
        pytest.skip(f"the brgemm block was read for AVX-512 ({isa} here)")
    for t, n, i, h in [(9, 3, 8, 10), (7, 5, 300, 17), (1, 1, 1, 1), (5, 1, 16, 16), (4, 2, 16, 16), (2, 7, 1, 9)]:
        lstm, x = nn.LSTM(i, h), torch.randn(t, n, i)

        def infer():
            with torch.no_grad():
                lstm(x)

        def train():
            lstm(x)[0].sum().backward()
        forward = lstm_forward_workspace(t, n, i, h, training=False, threads=threads, isa=isa)
        assert inside(infer, "aten::mkldnn_rnn_layer") == forward[1:], (t, n, i, h)   # the bias sum is an add
        training = lstm_forward_workspace(t, n, i, h, training=True, threads=threads, isa=isa)
        backward = lstm_backward_workspace(t, n, i, h)
        backward[-1] += 4 * h * 4     # booked less the bias gradient's clone, made after
        assert inside(train, "aten::mkldnn_rnn_layer") == training[1:], (t, n, i, h)
        assert inside(train, "aten::mkldnn_rnn_layer_backward") == backward[1:], (t, n, i, h)
