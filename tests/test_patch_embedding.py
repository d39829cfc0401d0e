"""A vision transformer's patch embedding: a convolution whose kernel is its stride (16×16/16).

oneDNN's jit weight-gradient kernels refuse a kernel wider than 14 (bfloat16's, on fewer than 16
input channels, wider than 24), so its weight gradient runs oneDNN's GEMM convolution, whose
scratchpad books, per thread of its outer threading (batch over 1), a weight-sized float32 sum
counted 4 bytes per byte of weight (``gemm_weights_scratchpad``) and im2col columns. Kernel facts
are checked one call at a time as in ``test_realworld_conv`` (what the call allocates beyond what
it returns equals what the aten table books on fake tensors); a whole ViT at two batches.

Figures from torch 2.14 (oneDNN 3.12, AVX-512 BF16). Before: test_vit at 64×64, batch 4, SGD
under by 1,317,056 B (−30.5%); deit_tiny (depth 2) −31.4%.
"""
import pytest
import torch

from test_realworld_conv import PEAKS, _conv_calls, _exact, _workspace
from profiler import workflow
from profiler.frontends.source import resolve
from isa import float32_isa, modelled_isa

pytestmark = float32_isa   # kernel workspace measured on oneDNN's AVX512_CORE_BF16 (float32: and AMX)

aten = torch.ops.aten


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", (1, 2), indirect=True)
@pytest.mark.parametrize("batch, channels, size, filters, kernel, channels_last", (
    (2, 3, 64, 192, 16, False), (1, 3, 64, 192, 16, False), (4, 3, 32, 64, 16, False),
    (2, 8, 64, 192, 16, False), (2, 32, 64, 64, 16, False), (2, 3, 60, 64, 15, False),
    (2, 3, 64, 192, 16, True), (2, 32, 64, 64, 16, True)))
def test_gemm_weight_gradient(threads, batch, channels, size, filters, kernel, channels_last):
    _exact(_conv_calls(batch, channels, size, filters, kernel, stride=kernel, input_grad=False,
                       channels_last=channels_last))


def test_gemm_weight_gradient_by_hand():
    # test_vit's patch embedding, batch 2, 2 threads: 2 threads × 4 × the weight's 589,824 B
    # (192 × 3 × 16 × 16 floats), columns 2 × (3 × 256 taps × 16 positions) floats, two entries'
    # alignment; at batch 1 one thread
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weight = 192 * 3 * 16 * 16 * 4
        _, two = _exact(_conv_calls(2, 3, 64, 192, 16, stride=16, input_grad=False))
        _, one = _exact(_conv_calls(1, 3, 64, 192, 16, stride=16, input_grad=False))
    finally:
        torch.set_num_threads(before)
    assert two == 2 * 4 * weight + 2 * 3 * 256 * 16 * 4 + 2 * 128 == 4_817_152
    assert one == 1 * 4 * weight + 1 * 3 * 256 * 16 * 4 + 2 * 128 == 2_408_704


@pytest.mark.parametrize("channels, channels_last", ((3, False), (3, True), (32, False), (32, True)))
@modelled_isa
def test_bfloat16_weight_gradient(channels, channels_last):
    # 3 input channels: jit_bf16's "first convolution" takes 16 wide; 32: the GEMM convolution
    # (a float32 accumulator and bias besides the sums, bfloat16 columns)
    x = torch.randn(2, channels, 64, 64, dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, channels, 16, 16, dtype=torch.bfloat16)
    b = torch.randn(64, dtype=torch.bfloat16)
    conv = ([16, 16], [0, 0], [1, 1], False, [0, 0], 1)
    g = torch.randn_like(aten.convolution.default(x, w, b, *conv))
    real, booked = _workspace(aten.convolution_backward.default, (g, x, w, [64], *conv, [False, True, True]))
    assert booked == real, f"booked {booked:,} B, measured {real:,} B"


@pytest.mark.parametrize("batch", (1, 4))
def test_vit_exact(batch):
    timm = pytest.importorskip("timm")
    source = resolve(lambda: timm.create_model("test_vit", num_classes=10, img_size=64),
                     input_shape=(3, 64, 64), name="test_vit")
    result = workflow.profile(source, batch=batch, warmup=0, repeats=1, optimizers=("sgd", "adam"))
    for key in PEAKS:
        predicted, measured = result["predicted"][key], result["measured"][key]
        assert predicted == measured, f"batch {batch} {key}: predicted {predicted:,} B, measured {measured:,} B"
