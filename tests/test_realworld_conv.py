"""Convolution kernels on real architectures: every peak predicted equal to the CPU allocator's.

Two levels. Whole models (timm's test ConvNeXt and EfficientNet, torchvision's MobileNetV3 small;
specs with depthwise, grouped and transposed convolutions) are profiled — predicted on fake
tensors, measured from the allocator's events — at two batch sizes. Kernel facts are checked one
convolution call at a time: the call runs for real under the allocator's events, and what it
allocates beyond what it returns (its peak minus its net) must equal the workspace the aten table
books for the same call on fake tensors (``kernel_workspace``).

Figures from torch 2.14 (oneDNN 3.12, AVX-512) with torch's default threads (2 here).
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.autograd import DeviceType

from profiler import workflow
from profiler.engine.kernels.aten_cpu import kernel_workspace
from profiler.frontends.source import resolve
from profiler.frontends.spec import Model, layer as L
from profiler.measuring.memory_trace import MEMORY_EVENT, _raw_events, profiled
from profiler.rules.registry import Context
from isa import float32_isa, modelled_isa

pytestmark = float32_isa   # kernel workspace measured on oneDNN's AVX512_CORE_BF16 (float32: and AMX)

aten = torch.ops.aten
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam",
         "train_first_step_peak_bytes_sgd", "train_first_step_peak_bytes_adam")


def _assert_exact(result: dict, where: str) -> None:
    for key in PEAKS:
        predicted, measured = result["predicted"][key], result["measured"][key]
        assert predicted == measured, f"{where} {key}: predicted {predicted:,} B, measured {measured:,} B"


# --- whole models --------------------------------------------------------------------------------

def _timm(name: str):
    timm = pytest.importorskip("timm")
    return lambda: timm.create_model(name)


def _torchvision(name: str):
    models = pytest.importorskip("torchvision.models")
    return lambda: getattr(models, name)()


def _torchvision_channels_last(name: str):
    models = pytest.importorskip("torchvision.models")
    return lambda: getattr(models, name)().to(memory_format=torch.channels_last)


# test_convnext: channels-last 7×7 depthwise weight gradients (oneDNN's generic grouped kernel, a
# 16×16 block per channel: 3,211,264 B for 64 channels), a patch embedding whose gradient comes
# back channels-last from LayerNorm2d (copied, batch-sized), 2×2/2 downsampling (brgemm's filter
# blocks, the one-column forward, the strided data phase) and a depthwise convolution on a
# channels-last (N, C, 1, 1) input. Before: SGD −46% at batch 2 on 64×64 images.
# test_efficientnet: NCHW depthwise convolutions (jit_dw on 16-channel blocked copies) and NCHW
# strided data phases. mobilenet_v3_small: NCHW depthwise and squeeze-excitation convolutions.
# torchvision resnet18 moved to channels-last: its weights are channels-last already, so oneDNN's
# channels-last kernels copy none of them (before: each 3×3 weight's copy booked, +9 MiB at
# layer4's 512 × 512 × 3 × 3, inference +17.4% at batch 2 on 64×64 images).
# (64×64 images, measured exact too, take several times longer.)
MODELS = {
    "timm test_convnext": (_timm, "test_convnext"),
    "timm test_efficientnet": (_timm, "test_efficientnet"),
    "torchvision mobilenet_v3_small": (_torchvision, "mobilenet_v3_small"),
    "torchvision resnet18 channels-last": (_torchvision_channels_last, "resnet18"),
}


@pytest.mark.parametrize("batch", (2, 3))
@pytest.mark.parametrize("model", MODELS)
def test_real_architectures_exact(model, batch):
    make, name = MODELS[model]
    source = resolve(make(name), input_shape=(3, 32, 32), name=name)
    result = workflow.profile(source, batch=batch, warmup=0, repeats=1, optimizers=("sgd", "adam"))
    _assert_exact(result, f"{model} batch {batch}")


def test_timm_convnext_atto_moved_to_channels_last_is_exact():
    # its weights channels-last already: at batch 1 the 2×2/2 downsampling layers run torch's own
    # kernel (at most 20,480 input elements) and copy no weight (before: each copy booked, the
    # inference peak +2.91 %, 445,440 B over, 64×64 images); at batch 2 oneDNN's
    timm = pytest.importorskip("timm")
    for batch in (1, 2):
        source = resolve(timm.create_model("convnext_atto").to(memory_format=torch.channels_last),
                         input_shape=(3, 64, 64), name="convnext_atto")
        result = workflow.profile(source, batch=batch, warmup=0, repeats=1, optimizers=("sgd", "adam"))
        _assert_exact(result, f"convnext_atto channels-last batch {batch}")


# Each peak's categories too: oneDNN's depthwise kernels on NCHW tensors make the output last in
# forward (blocked copies first), the input's gradient last in the data phase and the weight's in
# the weights phase, so at those moments their bytes are the kernel's (workspace). Before: the
# MobileNetV3s' inference peaks booked 10,240 / 18,432 B of output as activations, their SGD peaks
# and EfficientNet's 14,400 / 24,000 / 4,608 B of weight gradient as gradients.
CATEGORIZED = {
    "timm test_efficientnet": (_timm, "test_efficientnet"),
    "timm mobilenetv3_small_050": (_timm, "mobilenetv3_small_050"),
    "torchvision mobilenet_v3_small": (_torchvision, "mobilenet_v3_small"),
}


@pytest.mark.parametrize("model", CATEGORIZED)
def test_depthwise_nchw_peaks_are_exact_category_by_category(model):
    make, name = CATEGORIZED[model]
    source = resolve(make(name), input_shape=(3, 64, 64), name=name)
    result = workflow.profile(source, batch=1, warmup=0, repeats=1, optimizers=("sgd", "adam"))
    _assert_exact(result, f"{model} batch 1")
    for peak, categories in result["breakdown_comparison"].items():
        for category, figures in categories.items():
            assert figures["predicted"] == figures["measured"], (model, peak, category, figures)


def _spec(name: str, shape: list[int], conv) -> Model:
    return Model(name, input_shape=shape, layers=[L("BatchNormalization"), conv, L("GlobalAveragePooling2D"),
                                                  L("Dense", units=10)])


SPECS = {
    # 7×7 and 5×5: the generic grouped weight-gradient kernel (before: under by ~49% in training)
    "depthwise 7x7": _spec("dw7", [16, 16, 32], L("DepthwiseConv2D", kernel_size=7, padding="same")),
    "depthwise 5x5": _spec("dw5", [16, 16, 32], L("DepthwiseConv2D", kernel_size=5, padding="same")),
    # 8 channels per group: the weight gradient blocks them by 16 (before: under by 27,648 B)
    "grouped 8 per group": _spec("g4", [16, 16, 32], L("Conv2D", filters=32, kernel_size=3, padding="same",
                                                      groups=4)),
    # 32 per group: brgemm forward and data phases, as a one-group convolution
    "grouped 32 per group": _spec("g2", [8, 8, 64], L("Conv2D", filters=64, kernel_size=3, padding="same",
                                                     groups=2)),
    # its forward is a strided data phase, with the output's gradient buffered per thread
    # (before: over by 45,056 B, +28% at batch 2)
    "transposed 4x4/2": _spec("up", [8, 8, 16], L("Conv2DTranspose", filters=16, kernel_size=4, strides=2,
                                                  padding="same")),
}


@pytest.mark.parametrize("batch", (2, 32))
@pytest.mark.parametrize("name", SPECS)
def test_convolution_specs_exact(name, batch):
    result = workflow.profile(SPECS[name], batch=batch, device="cpu", warmup=0, repeats=1, threads=None)
    _assert_exact(result, f"{name} batch {batch}")


# --- kernel facts, one call at a time --------------------------------------------------------------

def _allocated(fn) -> tuple[int, int]:
    """(peak, net) of the allocator's events while ``fn`` runs."""
    events = [e for e in _raw_events(profiled(fn)) if e.name() == MEMORY_EVENT and e.device_type() == DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak, current


def _workspace(func, args) -> tuple[int, int]:
    """(measured, booked) workspace of one call: what it allocates beyond what it returns, and
    what the aten table books for it on fake copies of its arguments."""
    kept = []
    peak, net = _allocated(lambda: kept.append(func(*args)))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        out = func(*fake)
        booked = kernel_workspace(func, fake, out, Context(threads=torch.get_num_threads()),
                                  func is aten.convolution_backward.default)
    return peak - net, sum(booked)


def _conv_calls(batch, channels, size, out_channels, kernel, *, stride=1, padding=0, groups=1, bias=True,
                channels_last=False, grad_channels_last=None, input_grad=True, dtype=torch.float32,
                weight_channels_last=False):
    """Forward and backward calls of one convolution on real tensors."""
    x = torch.randn(batch, channels, size, size, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(out_channels, channels // groups, kernel, kernel, dtype=dtype)
    if weight_channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(out_channels, dtype=dtype) if bias else None
    conv = ([stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups)
    y = aten.convolution.default(x, w, b, *conv)
    g = torch.randn_like(y)
    if grad_channels_last is not None:
        g = g.contiguous(memory_format=torch.channels_last if grad_channels_last else torch.contiguous_format)
    forward = (x, w, b, *conv)
    backward = (g, x, w, [out_channels] if bias else [0], *conv, [input_grad, True, bias])
    return (aten.convolution.default, forward), (aten.convolution_backward.default, backward)


def _exact(calls) -> list[int]:
    measured = []
    for func, args in calls:
        real, booked = _workspace(func, args)
        assert booked == real, f"{func}: booked {booked:,} B, measured {real:,} B"
        measured.append(real)
    return measured


@pytest.mark.parametrize("batch", (1, 2, 4))
def test_wide_channels_last_depthwise_weight_gradient_blocks_each_channel_by_16x16(batch):
    # 7×7 on 24 channels: oneDNN's depthwise weight-gradient kernel takes at most 3 wide; the
    # generic grouped one reorders the gradient to 24 × 16 × 16 × 49 floats, 1,204,224 B, then
    # copies it out (4,704 B) beside the bias (96 B): 1,209,024 B whatever the batch
    _, backward = _exact(_conv_calls(batch, 24, 16, 24, 7, padding=3, groups=24, channels_last=True))
    assert backward == 24 * 16 * 16 * 49 * 4 + 24 * 49 * 4 + 24 * 4


def test_narrow_channels_last_depthwise_weight_gradient_sums_per_thread():
    # 3×3: jit_dw, every working thread but the first sums into its own padded weight gradient
    _exact(_conv_calls(3, 32, 8, 32, 3, padding=1, groups=32, channels_last=True))
    _exact(_conv_calls(3, 64, 8, 64, 3, stride=2, padding=1, groups=64, channels_last=True))


@pytest.mark.parametrize("groups, channels", ((4, 32), (2, 64), (3, 96), (2, 40)))
def test_grouped_channels_last_convolutions(groups, channels):
    _exact(_conv_calls(2, channels, 8, channels, 3, padding=1, groups=groups, channels_last=True))


@pytest.mark.parametrize("groups", (1, 4))
def test_a_channels_last_weight_is_not_copied_by_a_channels_last_kernel(groups):
    # a 3 × 3 weight laid out NCHW is copied to channels-last for the whole call, forward and
    # backward: 32 × (32 / groups) × 9 × 4 B more than the same weight made channels-last
    shape = (2, 32, 8, 32, 3)
    nchw = _exact(_conv_calls(*shape, padding=1, groups=groups, channels_last=True))
    moved = _exact(_conv_calls(*shape, padding=1, groups=groups, channels_last=True, weight_channels_last=True))
    weight = 32 * (32 // groups) * 9 * 4
    assert [a - b for a, b in zip(nchw, moved)] == [weight, weight]
    # an NCHW input with a channels-last weight runs channels-last too: the input is copied instead
    _exact(_conv_calls(*shape, padding=1, groups=groups, weight_channels_last=True))


def test_gradient_in_another_layout_is_copied():
    # ConvNeXt's patch embedding: an NCHW image, a channels-last gradient back from LayerNorm2d;
    # torch copies it to NCHW for the call: 2 × 24 × 16 × 16 × 4 = 49,152 B more than with an
    # NCHW gradient
    _, same = _exact(_conv_calls(2, 3, 64, 24, 4, stride=4, input_grad=False, grad_channels_last=False))
    _, other = _exact(_conv_calls(2, 3, 64, 24, 4, stride=4, input_grad=False, grad_channels_last=True))
    assert other - same == 2 * 24 * 16 * 16 * 4


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("channels, size, kernel, stride", ((72, 8, 3, 1), (128, 8, 3, 2), (24, 16, 7, 1),
                                                            (40, 8, 5, 2), (8, 8, 3, 1)))
def test_nchw_depthwise(channels, size, kernel, stride, threads):
    # oneDNN's blocked copies pad 72 channels to 80; 7×7 and 5×5 weight gradients run its GEMM
    # convolution (a column buffer and 4 floats per weight, per thread)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (1, 3):
            _exact(_conv_calls(batch, channels, size, channels, kernel, stride=stride, padding=kernel // 2,
                               groups=channels))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("channels, filters, size, kernel, stride, padding", (
    (24, 64, 16, 3, 2, 1), (24, 256, 15, 3, 2, 1), (24, 128, 33, 3, 2, 1), (24, 128, 24, 2, 2, 0),
    (24, 256, 16, 5, 2, 2), (24, 128, 16, 4, 2, 0), (24, 256, 17, 3, 3, 1), (24, 96, 8, 3, 2, 1),
    (16, 520, 8, 1, 2, 0), (16, 256, 16, 1, 2, 0)))
def test_strided_data_phase_buffers_the_output_gradient(channels, filters, size, kernel, stride, padding):
    # brgconv_strided books, per thread, the output's gradient extended by the kernel's reach in
    # 16 KiB steps (``strided_data_buffer``): 256 filters on a 15-wide 3×3/2 input, 196,656 B
    _exact(_conv_calls(2, channels, size, filters, kernel, stride=stride, padding=padding, channels_last=True))


@pytest.mark.parametrize("filters, size, kernel", ((40, 8, 3), (40, 16, 3), (48, 8, 3), (48, 16, 3), (80, 8, 3),
                                                  (144, 16, 3), (40, 8, 1), (48, 8, 1), (80, 8, 1), (520, 8, 1)))
def test_forward_pads_filters_to_brgemm_blocks(filters, size, kernel):
    # 32-filter blocks (40 → 64), or 48 on an input of more than 81 positions (40 → 48 at 16×16);
    # 1×1: 48 from 48 filters up (520 → 528), else 32 (40 → 64, 80 → 96)
    _exact(_conv_calls(2, 32, size, filters, kernel, padding=kernel // 2, channels_last=True))


@pytest.mark.parametrize("batch, size, filters", ((2, 2, 320), (2, 2, 688), (2, 8, 688), (2, 8, 640), (4, 16, 416),
                                                  (1, 32, 512), (2, 4, 1280)))
def test_a_1x1_forward_pads_filters_to_the_block_onednn_s_estimate_picks(batch, size, filters):
    # the block depends on the batch, the map, the threads and the caches, not only on the filters
    # (Intel Xeon with AMX, 48 KiB L1d and 2 MiB L2 a core, 2 threads: 320 → 336 and 688 → 720
    # on 2×2 maps, 688 → 720 and 640 → 640 on 8×8, 416 → 432 on 16×16 at batch 4, 512 → 528 on
    # 32×32 at batch 1; the rule before, 32-filter blocks, booked 320, 704, 704, 640, 416, 512)
    _exact(_conv_calls(batch, 64, size, filters, 1, channels_last=True)[:1])


def test_kernel_as_wide_as_its_stride_leaving_one_column_books_strided_buffers():
    # ConvNeXt's last downsampling on a 2×2 input: 61,488 B of scratchpad, not brgemm's 12,336 B
    forward, _ = _exact(_conv_calls(2, 48, 2, 64, 2, stride=2, channels_last=True))
    assert forward == 4 * 64 * 48 * 2 * 2 * 2 + 61_488   # the weight copied, reordered, scratchpad


@pytest.mark.parametrize("size, kernel, padding, bias", ((8, 4, 1, True), (16, 4, 1, False), (8, 3, 1, True),
                                                         (8, 3, 1, False), (8, 2, 0, True)))
def test_strided_transposed_forward(size, kernel, padding, bias):
    # a deconvolution's forward is the strided data phase; with a bias and an output width not a
    # multiple of the stride (3×3/2 on 8: 15 wide) it also books a copy of its output
    for batch in (2, 8):
        x = torch.randn(batch, 16, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.randn(16, 16, kernel, kernel)
        b = torch.randn(16) if bias else None
        _exact([(aten.convolution.default, (x, w, b, [2, 2], [padding] * 2, [1, 1], True, [0, 0], 1))])


@pytest.mark.parametrize("batch, channels, size, groups, stride, bias", (
    (1, 152, 4, 19, 1, False), (4, 152, 4, 19, 2, True), (1, 24, 32, 3, 2, False), (4, 56, 16, 7, 2, False),
    (2, 64, 8, 2, 1, True), (2, 96, 8, 2, 1, False),
    (1, 368, 2, 46, 1, False), (4, 152, 2, 19, 1, True), (2, 48, 8, 4, 1, False),
    (2, 128, 8, 2, 1, True), (1, 192, 8, 2, 2, False), (3, 512, 5, 2, 1, True)))
def test_nchw_grouped(batch, channels, size, groups, stride, bias):
    # RegNetX's grouped 3×3 convolutions (8 channels per group) on NCHW tensors: blocked copies
    # as large as the plain tensors, the weight reordered; the weight gradient on oneDNN's GEMM
    # convolution on a 2×2 input and at 12 per group. RegNetX-200MF at batch 1 before: forward
    # 46,080 B over (152 channels on 4×4), backward 526,592 B under (368 on 2×2). 64, 96 and 256
    # per group: the same kernels (before: booked 1.8× the forward, 3.2× the backward at 64)
    forward, backward = _exact(_conv_calls(batch, channels, size, channels, 3, stride=stride, padding=1,
                                           groups=groups, bias=bias))
    if (batch, channels, size) == (1, 152, 4):
        assert (forward, backward) == (9_728 + 43_776, 43_776)   # x' and w'; dw' beside dw
    if (batch, channels, size) == (1, 368, 2):
        assert backward == 8 * 105_984 + 4 * 2 * 8 * 9 * 4 + 2 * 128


def test_nchw_grouped_without_the_input_gradient():
    _exact(_conv_calls(2, 152, 4, 152, 3, padding=1, groups=19, input_grad=False))
    _exact(_conv_calls(2, 152, 2, 152, 3, padding=1, groups=19, input_grad=False))


@pytest.mark.parametrize("channels, size, stride", ((144, 56, 2), (240, 28, 2), (672, 14, 2), (576, 7, 1)))
def test_keras_224_depthwise_5x5(channels, size, stride):
    # the 5×5 depthwise convolutions of keras.applications' EfficientNetB0 and MobileNetV3Small
    # at 224×224 (channels-last; stride 2 on 56, 28 and 14, and the small 7×7 maps): booked equal
    # to the allocator's, forward and backward. The whole models through the spec path, measured
    # once each: MobileNetV3Small exact at batch 1 and 4 (inference, SGD) and 2 (all five peaks),
    # EfficientNetB0 at batch 1 (inference, SGD) and 2 (all five)
    _exact(_conv_calls(2, channels, size, channels, 5, stride=stride, padding=2, groups=channels,
                       channels_last=True))


# --- bfloat16 (issue 9: the autocast zoo) ------------------------------------------------------------

@pytest.mark.parametrize("batch", (1, 2, 4))
@modelled_isa
def test_wide_channels_last_bf16_depthwise_weight_gradient_sums_in_float32_per_group(batch):
    # 7×7 on 24 channels, bfloat16: oneDNN's jit_bf16 weight gradient, every channel a group of
    # 16 × 16: its blocked bfloat16 gradient (602,112 B) beside a float32 sum of it (1,204,224 B),
    # the input and the output's gradient transposed per group, the bias sums and a barrier, whatever
    # the batch (timm's ConvNeXt in bfloat16 was 3,227,656 B under before, flagged)
    _, backward = _exact(_conv_calls(batch, 24, 16, 24, 7, padding=3, groups=24, channels_last=True,
                                     dtype=torch.bfloat16))
    assert backward == 2_256_472


@pytest.mark.parametrize("channels, size, kernel, stride", ((24, 16, 5, 1), (40, 8, 5, 2), (20, 16, 7, 1),
                                                            (24, 8, 3, 1), (72, 8, 3, 1)))
@modelled_isa
def test_channels_last_bf16_depthwise(channels, size, kernel, stride):
    # 3×3: jit_dw, every working thread (the first too) sums in float32, one channel block a step,
    # and converts the bias gradient through float32; 5×5, 7×7: jit_bf16 as above
    _exact(_conv_calls(2, channels, size, channels, kernel, stride=stride, padding=kernel // 2, groups=channels,
                       channels_last=True, input_grad=stride == 1, dtype=torch.bfloat16))


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("channels, size, kernel", ((72, 8, 3), (24, 16, 7), (24, 16, 5), (20, 8, 7)))
@modelled_isa
def test_nchw_bf16_depthwise(channels, size, kernel, threads):
    # the float32 kernels' blocked copies and reorders in bfloat16, the bias converted through
    # float32, jit_dw's float32 sums for every batch-thread, and the 5×5/7×7 GEMM weight gradient
    # with a float32 accumulator beside its per-thread sums (timm's EfficientNet: under before)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (1, 3):
            _exact(_conv_calls(batch, channels, size, channels, kernel, padding=kernel // 2, groups=channels,
                               dtype=torch.bfloat16))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("channels, size, kernel, stride, batch", (
    (128, 8, 3, 2, 1), (192, 4, 3, 2, 4), (16, 32, 3, 2, 3), (128, 16, 5, 2, 1), (40, 12, 3, 3, 2),
    (24, 16, 7, 2, 2), (64, 8, 3, 2, 8)))
@modelled_isa
def test_nchw_bf16_strided_depthwise_input_gradient(channels, size, kernel, stride, batch, threads):
    # brgconv_strided on channels-last copies: the output's gradient, the weight VNNI-paired (each
    # channel 16 × 2 × taps), the input's gradient and its scratchpad, per thread the output's
    # gradient extended by the kernel's reach for every channel (rounded up to 4,096 elements);
    # then two more input-sized buffers (at batch 8 the larger moment). timm's EfficientNet
    # (128 on 8×8, 192 on 4×4): 99,120 B and 123,696 B under before, flagged
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, backward = _exact(_conv_calls(batch, channels, size, channels, kernel, stride=stride,
                                         padding=kernel // 2, groups=channels, dtype=torch.bfloat16))
    finally:
        torch.set_num_threads(before)
    if (channels, size, batch, threads) == (128, 8, 1, 2):
        # g' 4,096 + w' 73,728 + dx' 16,384 + scratchpad 16,384 + 2 × (8,216 + 64 × 4 + 2 × 4,096)
        # beside dx, less the gradients returned (dx 16,384, dw 2,304, db 256)
        assert backward == 4_096 + 73_728 + 16_384 + 49_712 - 16_384 - 2_304 - 256


@pytest.mark.parametrize("batch, channels, size, filters", ((1, 64, 16, 24), (1, 128, 4, 48), (2, 64, 16, 24),
                                                            (1, 16, 8, 64), (3, 64, 8, 48)))
@modelled_isa
def test_nchw_bf16_1x1_store_buffer_per_thread(batch, channels, size, filters):
    # oneDNN's bfloat16 1×1 kernel books a float32 store buffer for every thread, of its share of
    # the output channels (load groups): at batch 1 on 2 threads, 64 → 24 on 16×16 books two
    # 32-channel buffers (65,536 B), 128 → 48 on 4×4 two 32-channel halves (4,096 B)
    x = torch.randn(batch, channels, size, size, dtype=torch.bfloat16)
    w = torch.randn(filters, channels, 1, 1, dtype=torch.bfloat16)
    b = torch.randn(filters, dtype=torch.bfloat16)
    _exact([(aten.convolution.default, (x, w, b, [1, 1], [0, 0], [1, 1], False, [0, 0], 1))])


@modelled_isa
def test_timm_convnext_in_bfloat16_exact():
    timm = pytest.importorskip("timm")
    result = workflow.profile(resolve(lambda: timm.create_model("test_convnext", num_classes=10),
                                      input_shape=(3, 32, 32), name="test_convnext"),
                              batch=1, dtype="bfloat16", warmup=0, repeats=1, optimizers=("sgd",))
    assert not [w for w in result["warnings"] if w.startswith("NOT MODELLED")]
    for key in ("inference_peak_bytes", "train_peak_bytes_sgd"):
        assert result["predicted"][key] == result["measured"][key], key
