"""Torch models for the torch-module tests and benchmarks, written here (no torchvision).

Factories take no arguments, so each can be named as ``"torch_models:<factory>"`` (with this
directory on ``sys.path``) and called under ``torch.device("meta")``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# A LLaMA-shaped decoder (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language
# Models", table 2: 7B = 32 layers, width 4096, 32 heads; the 7B MLP width 11008 = 2/3 · 4 · 4096
# rounded up to a multiple of 256). Pre-normalisation with RMSNorm, SwiGLU MLP, rotary position
# embeddings computed in forward (no buffers), untied output projection.


@dataclass(frozen=True)
class LlamaConfig:
    vocab: int = 32000      # tokens
    dim: int = 4096         # model width d
    layers: int = 32        # decoder blocks
    heads: int = 32         # attention heads; head width d / heads = 128
    hidden: int = 11008     # SwiGLU width
    eps: float = 1e-6       # RMSNorm epsilon
    theta: float = 10000.0  # rotary base


class RMSNorm(nn.Module):
    """x / rms(x) · g over the last axis (Zhang & Sennrich 2019), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary(seq: int, head_dim: int, theta: float, device: torch.device,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position · theta^(-2i/d), shape (seq, head_dim), halves repeated."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.heads = c.heads
        self.wq = nn.Linear(c.dim, c.dim, bias=False)
        self.wk = nn.Linear(c.dim, c.dim, bias=False)
        self.wv = nn.Linear(c.dim, c.dim, bias=False)
        self.wo = nn.Linear(c.dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for w in (self.wq, self.wk, self.wv))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) · up(x))."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate = nn.Linear(c.dim, c.hidden, bias=False)
        self.up = nn.Linear(c.dim, c.hidden, bias=False)
        self.down = nn.Linear(c.hidden, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.dim, c.eps)
        self.feed_forward = FeedForward(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, c: LlamaConfig = LlamaConfig()):
        super().__init__()
        self.config = c
        self.tok_embeddings = nn.Embedding(c.vocab, c.dim)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.dim, c.eps)
        self.output = nn.Linear(c.dim, c.vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        c = self.config
        cos, sin = rotary(tokens.shape[1], c.dim // c.heads, c.theta, h.device, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.output(self.norm(h))


LLAMA_7B_PARAMS = 6_738_415_616
# embedding 32000·4096 = 131,072,000 and the same for the output projection;
# per block: attention 4·4096² = 67,108,864, SwiGLU 3·4096·11008 = 135,266,304, two norms 8,192
# → 202,383,360; 32 blocks = 6,476,267,520; final norm 4,096.
# 2·131,072,000 + 6,476,267,520 + 4,096 = 6,738,415,616


def llama_7b() -> Llama:
    return Llama(LlamaConfig())


def llama_tiny() -> Llama:
    return Llama(LlamaConfig(vocab=96, dim=32, layers=2, heads=4, hidden=64))


# ----------------------------------------------------------------------------------------------
# ResNet-50 (He et al. 2016, "Deep Residual Learning", table 1), laid out as torchvision's
# resnet50: stride on the 3×3 convolution of each bottleneck (v1.5), 25,557,032 parameters.


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(width, layers[0], 1)
        self.layer2 = self._stage(width * 2, layers[1], 2)
        self.layer3 = self._stage(width * 4, layers[2], 2)
        self.layer4 = self._stage(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, classes)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion))
        stage = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


RESNET50_PARAMS = 25_557_032


def resnet50() -> ResNet:
    return ResNet()


def resnet_tiny() -> ResNet:
    return ResNet(layers=(1, 1, 1, 1), classes=10, width=8)


# ----------------------------------------------------------------------------------------------
# Small modules with a feature each (ties, owned weights, recurrences, custom matmuls)


class TiedLM(nn.Module):
    """Embedding and output projection share one weight (Press & Wolf 2017)."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


class MatmulMix(nn.Module):
    """A parameter used through torch.matmul in forward, between two child layers."""

    def __init__(self, dim: int = 12, rank: int = 5):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.basis = nn.Parameter(torch.randn(dim, rank) / math.sqrt(dim))
        self.out = nn.Linear(rank, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        scores = torch.matmul(h, self.basis)                       # (N, T, rank)
        mixed = torch.matmul(scores.transpose(1, 2), h)            # (N, rank, dim)
        return self.out(torch.matmul(mixed, self.basis).mean(1))   # (N, 3)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention as self-attention (it owns in_proj_weight itself)."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + y)


class SdpaBlock(nn.Module):
    """F.scaled_dot_product_attention between projections, as a model writes it by hand."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Frozen(nn.Module):
    """A frozen feature extractor with batch norm, and a trainable head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten())
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(6 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LSTMTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 10, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def _transformer_encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True, dropout=0.1)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


def _depthwise_separable() -> nn.Module:
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 16, 1), nn.GroupNorm(4, 16), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _weight_normed() -> nn.Module:
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(6, 5)), nn.PReLU(),
                         nn.Linear(5, 2))


#: name -> (factory, input shape without batch (or a list of them), input dtype)
CASES: dict[str, tuple] = {
    "tied_lm": (TiedLM, (7,), "int64"),
    "matmul_mix": (MatmulMix, (6, 12), "float"),
    "multihead_attention": (lambda: nn.MultiheadAttention(16, 4, batch_first=True),
                            [(5, 16), (7, 16), (7, 16)], "float"),
    "self_attention": (SelfAttention, (6, 16), "float"),
    "sdpa_block": (SdpaBlock, (6, 16), "float"),
    "transformer_encoder": (_transformer_encoder, (6, 16), "float"),
    "lstm_bidirectional": (LSTMTagger, (9, 8), "float"),
    "gru": (lambda: nn.GRU(6, 7, batch_first=True), (5, 6), "float"),
    "grouped_conv": (lambda: nn.Sequential(nn.Conv2d(8, 12, 3, groups=4), nn.ReLU(),
                                           nn.Conv2d(12, 12, 3, groups=3, bias=False)),
                     (8, 9, 9), "float"),
    "transposed_conv": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                                                 output_padding=1),
                                              nn.ConvTranspose2d(6, 2, 2, stride=2, groups=2)),
                        (4, 5, 5), "float"),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.MaxPool3d(2)),
               (2, 6, 6, 6), "float"),
    "conv1d_norms": (lambda: nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.InstanceNorm1d(8, track_running_stats=True),
                                           nn.GELU(), nn.Conv1d(8, 4, 3, dilation=2)),
                     (3, 20), "float"),
    "depthwise_separable": (_depthwise_separable, (8, 10, 10), "float"),
    "frozen_features": (Frozen, (3, 8, 8), "float"),
    "weight_norm": (_weight_normed, (6,), "float"),
    "bilinear": (lambda: nn.Bilinear(4, 5, 3), [(4,), (5,)], "float"),
    "embedding_bag": (lambda: nn.Sequential(nn.EmbeddingBag(30, 6, mode="mean"), nn.Linear(6, 2)),
                      (4,), "int64"),
    "resnet_tiny": (resnet_tiny, (3, 32, 32), "float"),
    "llama_tiny": (llama_tiny, (10,), "int64"),
}


def make_input(shape: tuple[int, ...], input_dtype: str, batch: int, high: int = 7,
               device: str = "cpu") -> torch.Tensor:
    """A real input: float from randn, int64 below ``high`` (every vocabulary here is larger)."""
    generator = torch.Generator().manual_seed(0)
    if input_dtype == "int64":
        return torch.randint(0, high, (batch, *shape), generator=generator).to(device)
    return torch.randn((batch, *shape), generator=generator).to(device)
