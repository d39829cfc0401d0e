"""oneDNN's CPU convolutions: weight copies and reorders, blocked copies and scratchpads, phase by
phase (forward; backward's data, weights and return phases), measured with the allocator's events
(torch 2.13, oneDNN 3.12, AVX-512 BF16)."""
from __future__ import annotations

from dataclasses import replace
from math import prod

from profiler.dtypes import itemsize
from profiler.engine.kernels import cpu_isa
from profiler.engine.kernels.conv_call import ConvCall, kept, weight_clone
from profiler.engine.kernels.onednn import ONEDNN_ENTRY_ALIGNMENT, booked, div_up, up, up16
from profiler.engine.kernels.onednn_brgemm_1x1 import filter_block
from profiler.engine.kernels.onednn_conv_weights import (bf16_1x1_weights_scratchpad, bf16_weights_scratchpad,
                                                         float32_1x1_weights_scratchpad,
                                                         float32_weights_scratchpad, gemm_weights_scratchpad,
                                                         best_divider, reducer, runs_gemm_weights)
from profiler.rules.registry import Saved


# --- oneDNN on channels-last tensors ------------------------------------------------------------
#
# Kernels (names from ONEDNN_VERBOSE): forward ``brg_conv_fwd`` (``brgconv_1x1`` for 1×1), the
# input gradient ``brg_conv_bwd`` (a forward convolution of the output's gradient), the weight
# gradient ``jit`` / ``jit_1x1`` in float32 and ``jit_bf16`` / ``jit_bf16_1x1`` in bfloat16
# (accumulating in float32); a kernel wider than 14 (24 for bfloat16 on fewer than 16 input
# channels: a vision transformer's 16×16/16 patch embedding) gets oneDNN's GEMM weight gradient,
# ``gemm:jit``, in either layout (``gemm_weights_scratchpad``). Around them, with a
# channels-last input (every layer here in Keras's default layout):
# forward: the weight copied to channels-last (``weight.contiguous(channels_last)``; not needed
#   when it already is: a 1×1 kernel or one input channel), the weight reordered to oneDNN's
#   layout (output channels padded to brgemm's block, ``forward_padded_filters``; bfloat16 also
#   pairs the input channels, VNNI packing two in each 32-bit lane), and brgemm's scratchpad
#   (``brgemm_forward_scratchpad``).
# backward (``convolution_backward``), in three phases that follow each other:
#   data: the weight copied again and reordered for the input gradient (input channels padded to
#     16, or with strides to blocks of 16, 32 or 64; bfloat16 pairs the output channels), with
#     brgemm's scratchpad (``data_scratchpad``);
#   weights: the weight gradient in the blocked layout (output channels padded to 16, input
#     channels too from 16 up and for a 1×1 kernel; fewer than 16 are one block of their own,
#     "first convolution"), the kernel's scratchpad (``float32_weights_scratchpad``,
#     ``bf16_weights_scratchpad`` and their 1×1 kinds), the bias gradient;
#   return: the gradients in the weight's channels-last layout, copied once more to the
#     parameter's own layout.
# A transposed convolution runs these the other way round: its forward pass is the data phase
# of the convolution it inverts, its input gradient that convolution's forward pass.
#
# Limits: bfloat16 forward reorders pad the filters to 16; float32 1×1 ones of stride 1 follow
# oneDNN's own estimate of its best block (``onednn_brgemm_1x1``) on an AVX-512 CPU whose caches
# sysfs gives, elsewhere the rule measured on the EPYC (32-filter blocks, or 48 on a multiple of
# 48: under where small problems take 48, e.g. 81,920 B in timm's convnext_atto at 64×64, batch
# 2, inference); bfloat16 strided data
# phases are estimates (``data_scratchpad``; float32's are exact, ``strided_data_buffer``); float32
# and bfloat16 grouped kernels beside depthwise and one-group ones (``grouped_workspace``) were
# measured at 2 threads; a depthwise 3×3 padded by more than 1 runs a weight-gradient kernel in
# 8×8 blocks (booked as 16×16: over, e.g. 296,192 B for 75,008 B); a strided 1×1 weight
# gradient's input copy (oneDNN's "rtus") is counted in bfloat16 only (float32's backward
# peaks measured exact without it: 8–128 → 16–256 channels, batch 3). Channels-first tensors: see
# ``channels_first_workspace`` (one group; its float32 weight gradient's batch split is off at
# batch 3 for some shapes: 24 → 16 channels at 32×32, 26,816 B under) and
# ``channels_first_depthwise``; other grouped ones still book one blocked copy of the
# larger of input and output per sample (an estimate: under in training, measured −13%).

# brgemm convolutions book, measured at 1, 2 and 4 threads in float32 and bfloat16: a fixed part
# and 4120 bytes per thread; the data phase runs a forward convolution nested in its own
# primitive, whose scratchpad is one entry of the outer one (128 bytes more)
BRGEMM_FORWARD_FIXED = 4096
BRGEMM_DATA_FIXED = BRGEMM_FORWARD_FIXED + ONEDNN_ENTRY_ALIGNMENT
BRGEMM_PER_THREAD = 4120


def brgemm_forward_scratchpad(threads: int) -> int:
    return BRGEMM_FORWARD_FIXED + BRGEMM_PER_THREAD * threads


def forward_scratchpad(conv: ConvCall, dtype: str, threads: int) -> int:
    """brgemm's forward scratchpad; a float32 kernel as wide as its stride (wider than 1) that
    leaves one output column books the strided data phase's buffers instead (measured: 2×2/2 on
    inputs 2 and 3 wide, 16–96 channels, 36,888 / 61,488 / 110,688 B at 1 / 2 / 4 threads;
    3×3/2 on a 3-wide input books the usual)."""
    kernel_w, stride_w, out_w = conv.kernel[-1], conv.strides[-1], conv.out_spatial[-1]
    if dtype == "float32" and conv.taps > 1 and stride_w > 1 and kernel_w == stride_w and out_w == 1:
        return STRIDED_DATA_FIXED[dtype] + threads * STRIDED_DATA_PER_THREAD[dtype]
    return brgemm_forward_scratchpad(threads)


def brgemm_data_scratchpad(threads: int) -> int:
    return BRGEMM_DATA_FIXED + BRGEMM_PER_THREAD * threads


# strided data phases (``brgconv_strided``): a fixed part and per thread, growing with output
# channels beyond 32 (not for a 1×1 kernel), and more when the input's width is odd (measured
# on 3–128 input channels, 4–64 filters, inputs 8–17 wide, at 1, 2 and 4 threads; 1×1 kernels
# up to 256 filters, 2–16 wide). An estimate beyond: wider inputs book more (up to +65,536 B
# per thread measured at 33 wide with 64 filters)
STRIDED_DATA_FIXED = {"float32": 12_288, "bfloat16": 16_384}
STRIDED_DATA_PER_THREAD = {"float32": 24_600, "bfloat16": 16_920}
STRIDED_DATA_WIDE_OUTPUT = 32
STRIDED_DATA_ODD_FIXED = 4_096
STRIDED_DATA_ODD_PER_THREAD = {"float32": 16_384, "bfloat16": 8_256}
# the bfloat16 data phase of an unpadded convolution with a kernel 2 or 3 wide also copies input
# rows: a page and, per thread, two bfloat16 rows of the input's width × up to 64 channels
BF16_DATA_ROWS_FIXED = 4096
BF16_DATA_ROWS_CHANNELS = 64


#: brgemm's forward blocks of filters (``brg_blocking_t``): 16 up to 16 filters, else 32, or 48
#: when a multiple of 48 (padded to 16) — for kernels wider than 1×1 only up to 384 filters and
#: on a large input, more than 81 positions per stride step (``fast_check_oc_block``'s "big
#: spatial"); 1×1 kernels take 48 from 48 filters up
BRGEMM_BIG_SPATIAL = 81
BRGEMM_BLOCK48_MAX = 384
#: the ISAs whose float32 1×1 forward runs ``brgconv_1x1:avx512_core`` (AMX's float32 too, without
#: a bf32 math mode)
AVX512 = frozenset(cpu_isa.NAMES[cpu_isa.NAMES.index("AVX512_CORE"):])


def forward_padded_filters(conv: ConvCall, dtype: str, batch: int | None = None, threads: int = 1) -> int:
    """Filters of a float32 brgemm forward weight as oneDNN pads them to its block (measured on
    792 convolutions 2×2/2 to 7×7/2, 16 and 64 input channels, 20–520 filters, inputs 4–19
    wide: 40 filters pad to 64, or to 48 on a large input; and on 1×1 ones, 20–520 filters,
    strides 1 and 2: 40 → 64, 48 → 48, 80 → 96, 520 → 528). A 1×1 one of stride 1 at ``batch``
    on an AVX-512 CPU whose caches sysfs gives: the block oneDNN's own estimate picks
    (:mod:`~profiler.engine.kernels.onednn_brgemm_1x1`). bfloat16: padded to 16."""
    filters, padded = conv.out_channels, up16(conv.out_channels)
    if dtype != "float32" or filters <= 16:
        return padded
    if conv.taps == 1:
        block = _brgemm_1x1_block(conv, batch, threads)
        if block:
            return up(filters, block)
        return padded if padded % 48 == 0 and filters >= 48 else up(filters, 32)
    big = prod(conv.in_spatial) > BRGEMM_BIG_SPATIAL * prod(conv.strides)
    if padded % 48 == 0 and padded <= BRGEMM_BLOCK48_MAX and big:
        return padded
    return up(filters, 32)


def _brgemm_1x1_block(conv: ConvCall, batch: int | None, threads: int) -> int | None:
    """oneDNN's block of filters for a float32 1×1 convolution of stride 1 without padding where
    its estimate can be followed (a batch, an AVX-512 CPU, its per-core L1 and L2); else None."""
    isa, l1, l2 = cpu_isa.onednn_isa(), cpu_isa.per_core_cache(1), cpu_isa.per_core_cache(2)
    if (batch is None or conv.transposed or any(s != 1 for s in conv.strides) or any(conv.pads)
            or isa not in AVX512 or not l1 or not l2):
        return None
    return filter_block(batch, conv.channels, conv.out_channels, prod(conv.out_spatial), threads, l1, l2)


def onednn_workspace(ctx, call: ConvCall, input_grad: bool = True,
                     weight_copied: bool | None = None) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a oneDNN convolution, in bytes (see above); without
    ``input_grad`` torch asks for no input gradient and the data phase does not run;
    ``weight_copied``: :func:`weight_clone`."""
    dtype = ctx.compute_dtype(True)
    if call.groups > 1 or dtype not in ("float32", "bfloat16"):
        return grouped_workspace(ctx, call, input_grad, weight_copied)
    threads, act = max(ctx.threads, 1), itemsize(dtype)
    wants_input = input_grad
    conv = _inverted(call) if call.transposed else call
    channels, out_channels, taps = conv.channels, conv.out_channels, conv.taps
    pairs = 2 if dtype == "bfloat16" else 1           # VNNI: bfloat16 channels in pairs
    clone = weight_clone(call, channels, weight_copied)   # a transposed one's weight: the same elements
    forward_reorder = forward_padded_filters(conv, dtype, None if call.transposed else ctx.batch,
                                             threads) * up(channels, pairs) * taps
    data_reorder = up(channels, _data_block(conv)) * up(out_channels, pairs) * taps
    first = channels < 16 and taps > 1
    blocked = up16(out_channels) * (channels if first else up16(channels)) * taps
    if runs_gemm_weights(conv, dtype):   # oneDNN's GEMM convolution: the weight gradient as it is
        blocked = conv.weight
    biases = call.out_channels if call.bias else 0
    # a deconvolution runs the convolution's primitives nested (their scratchpad one more entry
    # of the deconvolution's) and sums its bias gradient apart from the weight gradient
    nested = ONEDNN_ENTRY_ALIGNMENT if call.transposed else 0
    kernel = replace(conv, bias=False) if call.transposed else conv
    convolve = act * (clone + forward_reorder) + forward_scratchpad(conv, dtype, threads) + nested
    data = act * (clone + data_reorder) + data_scratchpad(conv, dtype, threads)
    weights = act * (clone + blocked + biases) + weights_scratchpad(kernel, dtype, ctx.batch, threads) + nested
    done = act * (clone + blocked + 2 * biases + 2 * conv.weight)
    forward, input_grad = (data, convolve) if call.transposed else (convolve, data)
    if call.transposed and call.strided and dtype == "float32":
        # the strided data phase nested in the deconvolution: one more scratchpad entry; a
        # deconvolution whose output width is not a multiple of its stride adds its bias on a
        # copy of its output, booked in the scratchpad (measured: 3×3/2 to 15 wide, batch 2 and 8)
        forward += nested
        if call.bias and conv.in_spatial[-1] % conv.strides[-1]:
            forward += booked(ctx.batch * act * call.out_channels * prod(call.out_spatial))
    backward = max(input_grad if wants_input else 0, weights, done) - act * (conv.weight + biases)
    return (_bytes(forward, "weight copies and oneDNN scratchpad"),
            _bytes(max(backward, 0), "weight copies, gradients in oneDNN's layouts and scratchpads"))


# --- oneDNN on channels-first tensors ------------------------------------------------------------
#
# With a contiguous NCHW input torch lets oneDNN pick the layouts (ideep's ``format_tag::any``),
# and oneDNN's blocked jit kernels take them (ONEDNN_VERBOSE, oneDNN 3.12): every operand is
# reordered into a copy with channels in blocks of 16 (padded), the result made blocked and then
# copied to torch's NCHW tensor. Measured with the allocator's events on 1-D, 2-D and 3-D
# convolutions, 1–64 channels, batch 1 and 3, float32 and bfloat16, 2 threads:
# forward (``jit`` / ``jit_bf16``, ``jit_1x1`` / ``jit_bf16_1x1`` for 1×1): the input copied to
#   16-channel blocks — not for fewer than 16 input channels and a kernel wider than 1×1 (a
#   "first convolution" reads NCHW as it is) —, the weight reordered (output channels padded to
#   16, input channels too unless a first convolution; bfloat16 in pairs), the blocked result, a
#   scratchpad (a padded bias; a 1×1 kernel's strided input gathered per thread, "rtus";
#   bfloat16 1×1 kernels sum in float32 per thread), all freed once the result is copied out;
# data phase, unstrided: the output's gradient and the input's gradient blocked, the weight
#   reordered with both channel counts padded to 16 (bfloat16 1×1: float32 sums per thread);
#   strided: ``brgconv_strided`` in channels-last (the nxc path's weight and scratchpad; the
#   output's gradient copied to channels-last unless 1×1), whose channels-last result is copied
#   twice on the way back to NCHW (3 images at once);
# weights phase: the output's gradient reordered again, the input to 16-channel blocks, the
#   weight gradient blocked (the nxc kernels' own scratchpads: same balance); float32 with 4–15
#   input channels runs ``jit:avx2`` on 8-channel blocks and sums per-thread copies with
#   ``cpu_reducer``; 1–3 input channels: a first convolution on the plain input; dilated ones
#   and kernels wider than 14 (patch embeddings) run oneDNN's GEMM convolution on the plain
#   tensors; the weight and bias gradients are copied
#   to torch's tensors while the blocked ones are alive.
# Transposed convolutions run the inverted convolution's phases the other way round.

#: ``jit_avx512_common`` weight gradients treat 1–3 input channels as a first convolution; more
#: channels, fewer than 16, go to ``jit_avx2`` (8-channel blocks) in float32
FIRST_CONV_WEIGHTS_MAX_CHANNELS = 3
AVX2_BLOCK = 8


#: a phase of a kernel call: bytes alive beyond all the call's results, and which results (by
#: position: ``convolution`` (output,), ``convolution_backward`` (input, weight, bias)) do not
#: exist yet then; the blocked buffers stand where they will be (``bytes`` can be negative)
Phase = tuple[int, tuple[int, ...]]


def worst(phases: list[Phase]) -> Phase:
    """The highest phase, the first of equals (the allocator's peak is the first moment that
    reaches it); none absent when no phase exceeds the results alone."""
    nbytes, absent = max(phases, key=lambda p: p[0]) if phases else (0, ())
    return (nbytes, absent) if nbytes > 0 else (max(nbytes, 0), ())


def channels_first_workspace(ctx, call: ConvCall, input_grad: bool = True) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a one-group oneDNN convolution on NCHW tensors (see above);
    without ``input_grad`` the data phase does not run and no input gradient is alive."""
    forward, backward = (worst(p)[0] for p in channels_first_phases(ctx, call, input_grad))
    return (_bytes(forward, "oneDNN blocked copies, weight reorder, scratchpad"),
            _bytes(backward, "oneDNN blocked copies, weight reorders, gradients and scratchpads"))


def channels_first_phases(ctx, call: ConvCall, input_grad: bool = True) -> tuple[list[Phase], list[Phase]]:
    """(forward, backward) phases of a one-group oneDNN convolution on NCHW tensors: the
    results are made blocked and copied out at the end, so at the worst moment the result
    (forward), or the weight and bias gradients (backward's data and weights phases), do not
    exist yet and their bytes are the kernel's buffers."""
    dtype = ctx.compute_dtype(True)
    threads, act, n = max(ctx.threads, 1), itemsize(dtype), ctx.batch
    conv = _inverted(call) if call.transposed else call
    ic, oc, taps = conv.channels, conv.out_channels, conv.taps
    image, result = prod(conv.in_spatial), prod(conv.out_spatial)
    x, y = n * ic * image * act, n * oc * result * act
    weight, bias = act * conv.weight, act * call.out_channels if call.bias else 0
    one_by_one = taps == 1
    first = ic < 16 and not one_by_one
    pairs = 2 if dtype == "bfloat16" else 1
    blocked = lambda channels, positions: n * up16(channels) * positions * act   # noqa: E731
    # forward: input and output blocked, the weight reordered; then the result copied out
    scratch = _padded_bias(call.out_channels, call.bias, act)
    if one_by_one and conv.strided:
        scratch += booked(threads * up16(ic) * result * act)
    if one_by_one and dtype == "bfloat16":   # float32 sums per thread
        scratch += bf16_1x1_store_buffer(n, threads, reduce=ic, load=oc, positions=result,
                                         rows=prod(conv.out_spatial[:-1]))
    src = 0 if first else blocked(ic, image)
    wei = act * up16(oc) * (up(ic, pairs) if first else up16(ic)) * taps
    convolve = [(scratch + src + wei + blocked(oc, result) - y, (0,)), (blocked(oc, result), ())]
    # data phase: the input's gradient from the output's
    if conv.strided:
        data_wei = act * up(ic, _data_block(conv)) * up(oc, pairs) * taps
        # the output's gradient copied to channels-last: nothing to copy when it is 1×1
        gy = y if result > 1 else 0
        data = [(gy + data_wei + data_scratchpad(conv, dtype, threads), ()), (2 * x, ())]
    else:
        store = (bf16_1x1_store_buffer(n, threads, reduce=oc, load=ic, positions=image,
                                       rows=prod(conv.in_spatial[:-1])) if one_by_one and dtype == "bfloat16" else 0)
        data = [(blocked(oc, result) + act * up16(oc) * up16(ic) * taps + blocked(ic, image) + store - x, (0,)),
                (blocked(ic, image), ())]
    # weights phase, beside the input's gradient; then the gradients copied out
    gy, src, grad, scratch = _blocked_weights(conv, dtype, n, threads)
    weights = gy + src + grad + bias + scratch
    done = grad + 2 * bias + weight
    # (every phase counted beyond the results, which the memory model counts itself)
    forward, data_in = (data, convolve) if call.transposed else (convolve, data)
    made = weight + bias
    backward = [(b - made, (*absent, 1, 2)) for b, absent in data_in] if input_grad else []
    backward += [(weights - made, (1, 2)), (done - made, ())]
    return forward, backward


def bf16_1x1_store_buffer(batch: int, threads: int, *, reduce: int, load: int, positions: int, rows: int) -> int:
    """The float32 store buffer of oneDNN's bfloat16 1×1 kernel on blocked (NCHW) tensors, forward
    and data phase (``jit_avx512_core_bf16_1x1_conv_kernel``: ``init_conf``, ``init_scratchpad``):
    every thread gets the positions (rounded up to the register block ``ur``) × its share of the
    ``load`` channels, padded to 16; the threads split the channels into ``load_grp_count``
    groups, chosen by a cost heuristic when there are fewer samples than threads. Measured (2
    threads, batch 1): 64 → 24 channels on 16×16, 65,536 B (one group: a buffer per thread, not
    per sample); 128 → 48 on 4×4, 4,096 B (two groups of 32 channels). Not followed: the
    explicit-broadcast rule for weights larger than half the L2 cache (4 groups at least)."""
    nthr = threads
    explicit = (reduce % 16) % 2 == 0 and (8 * batch) // nthr >= 1
    if explicit:
        max_regs, min_regs = 9, 6
        if 128 < load < 256 and 10 < rows < 28:
            max_regs, min_regs = 6, 5
    else:
        max_regs, min_regs = 30, 9
    span = rows if rows >= 14 else positions      # oneDNN's register block: a divisor of the rows, or positions
    ur = next((u for u in range(max_regs, min_regs - 1, -1) if span % u == 0), 1)
    if ur == 1:
        ur, tail = min(max_regs, positions), positions % max_regs
        for u in range(max_regs, min_regs - 1, -1):
            if positions % u > tail or positions % u == 0:
                ur, tail = u, positions % u
                if tail == 0:
                    break
    nb_bcast, nb_load = div_up(positions, ur), div_up(load, 16)
    if nthr <= 28 and batch < nthr and nb_load * nb_bcast > nthr:
        ratio = (load * reduce) / (batch * positions * reduce)

        def job(lb: int, tg: int, mem_k: float) -> float:
            bb = batch * div_up(nb_bcast, tg)
            return 0.01 * (bb * ur) * (lb * 16) * reduce + mem_k * (bb * ur + lb * 16) * reduce
        groups, best = (nthr if ratio > 1 else 1), float("inf")
        for i in range(nthr):
            lgc = nthr - i if ratio > 1 else i + 1
            mem_k = 1.0 if div_up(nthr, lgc) == 1 else 1.3
            if nthr % lgc < nb_load % lgc:
                cost = job(div_up(nb_load, lgc), nthr // lgc, mem_k)
            else:
                cost = max(job(div_up(nb_load, lgc), div_up(nthr, lgc), mem_k), job(nb_load // lgc, nthr // lgc, mem_k))
            if cost < best:
                groups, best = lgc, cost
    else:
        least = div_up(nthr, batch * nb_bcast)
        groups = best_divider(nthr, least, 2 * least, False)
    if positions <= 49 and batch <= nthr and load > 512 and load // reduce >= 4:
        groups = max(groups, 2)
    shared = div_up(nthr, div_up(nthr, groups))
    return booked(4 * nthr * up(positions, ur) * up16(div_up(load, shared)))


def _padded_bias(channels: int, bias: bool, act: int) -> int:
    """A bias of a channel count not a multiple of 16 is copied padded into the scratchpad."""
    return booked(act * up16(channels)) if bias and channels % 16 else 0


def _blocked_weights(conv: ConvCall, dtype: str, n: int, threads: int) -> tuple[int, int, int, int]:
    """The weight gradient's blocked operands on NCHW tensors, in bytes: (output's gradient,
    input, weight gradient, scratchpad)."""
    ic, oc, taps = conv.channels, conv.out_channels, conv.taps
    image, result = prod(conv.in_spatial), prod(conv.out_spatial)
    act = itemsize(dtype)
    if taps > 1 and (conv.dilated or dtype == "bfloat16" and ic < 16 and oc % 16 or runs_gemm_weights(conv, dtype)):
        # oneDNN's GEMM convolution on the plain tensors (``gemm_weights_scratchpad``): dilated
        # kernels, kernels wider than its jit kernels take (a 16×16 patch embedding), and
        # bfloat16 ones on few input channels
        return 0, 0, act * conv.weight, gemm_weights_scratchpad(conv, dtype, n, threads)
    if taps == 1:
        # a strided kernel runs unstrided on the input gathered per thread ("rtus"), output-sized
        gathered = replace(conv, strides=(1,) * len(conv.strides), in_spatial=conv.out_spatial)
        scratch = weights_scratchpad(gathered, dtype, n, threads)
        if conv.strided:   # the gathered input's buffers; float32 books only those
            rtus = booked(threads * up16(ic) * result * act)
            scratch = rtus + (scratch if dtype == "bfloat16" else 0)
        return (n * up16(oc) * result * act, n * up16(ic) * image * act, act * up16(oc) * up16(ic),
                scratch + _padded_bias(oc, conv.bias, act))
    if dtype == "float32" and FIRST_CONV_WEIGHTS_MAX_CHANNELS < ic < 16:
        block = AVX2_BLOCK
        nb_oc, nb_ic = div_up(oc, block), div_up(ic, block)
        scratch = reducer(threads, nb_oc * nb_ic, taps * block * block, n)
        if conv.bias:
            scratch += reducer(threads, nb_oc, block, n)
        return (n * up(oc, block) * result * act, n * up(ic, block) * image * act,
                act * up(oc, block) * up(ic, block) * taps, scratch)
    first = ic < 16
    if dtype == "bfloat16":
        scratch = bf16_weights_scratchpad(conv, n, threads, plain_src=True)
    else:
        scratch = float32_weights_scratchpad(conv, n, threads)
    return (n * up16(oc) * result * act, 0 if first else n * up16(ic) * image * act,
            act * up16(oc) * (ic if first else up16(ic)) * taps, scratch)


def _bytes(nbytes: int, what: str) -> tuple[Saved, ...]:
    return kept(Saved("new", elements=nbytes, dtype="uint8", per_sample=False, what=what))


def _inverted(call: ConvCall) -> ConvCall:
    """The convolution a transposed one is the gradient of: input and output swapped."""
    return replace(call, channels=call.out_channels, out_channels=call.channels, in_spatial=call.out_spatial,
                   out_spatial=call.in_spatial, transposed=False)


def _data_block(call: ConvCall) -> int:
    """Input channels' block in the data phase's weight: 16, or with strides 16, 32 or 64."""
    if not call.strided or call.channels <= 16:
        return 16
    return 32 if call.channels <= 48 else 64


def data_scratchpad(call: ConvCall, dtype: str, threads: int) -> int:
    """brgemm's input-gradient scratchpad (see the notes above)."""
    if call.strided:
        per_thread = STRIDED_DATA_PER_THREAD[dtype]
        if dtype == "float32":
            per_thread += strided_data_buffer(call)
        elif call.kernel[-1] > call.strides[-1]:   # bfloat16: the estimate
            per_thread += itemsize(dtype) * 128 * max(up16(call.out_channels) - STRIDED_DATA_WIDE_OUTPUT, 0)
            if dtype == "bfloat16":
                per_thread += 32 * (_data_block(call) - 16)
        fixed = STRIDED_DATA_FIXED[dtype]
        if call.in_spatial[-1] % call.strides[-1]:
            fixed, per_thread = fixed + STRIDED_DATA_ODD_FIXED, per_thread + STRIDED_DATA_ODD_PER_THREAD[dtype]
        return fixed + threads * per_thread
    scratch = brgemm_data_scratchpad(threads)
    width, pad = call.in_spatial[-1], call.pads[-1]
    if dtype == "bfloat16" and pad == 0 and 2 <= call.kernel[-1] <= 3:   # input rows copied, two per thread
        scratch += BF16_DATA_ROWS_FIXED + threads * 2 * 2 * width * min(up16(call.channels), BF16_DATA_ROWS_CHANNELS)
    return scratch


#: the float32 strided data phase's per-thread buffer of the output's gradient grows in steps
STRIDED_DATA_BUFFER_STEP = 16_384


def strided_data_buffer(call: ConvCall) -> int:
    """Per-thread bytes the float32 strided data phase (``brgconv_strided``) books beyond its
    fixed part: the output's gradient (filters × its positions, each axis
    extended by the kernel's reach beyond the padding, (k − 1 − pad) // stride on either side)
    in float32, rounded up to 16 KiB steps, the first step included in the fixed part. Measured
    exact on 270 convolutions (2×2/2 to 5×5/3, padding 0–2, 64–256 filters, inputs 7–33 wide,
    2 threads, some at 1 and 4; 1×1/2 with 64–1,024 filters on inputs 8–32 wide): 64 filters on
    a 33-wide 3×3/2 input book 16,384 × 6 more a thread."""
    extended = 4 * call.out_channels * extended_positions(call)
    return STRIDED_DATA_BUFFER_STEP * max(div_up(extended, STRIDED_DATA_BUFFER_STEP) - 1, 0)


def extended_positions(call: ConvCall) -> int:
    """The output's positions extended on each side by the kernel's reach beyond the padding,
    (k − 1 − pad) // stride (oneDNN's ``ohp``, ``owp`` of its strided data phase)."""
    extended = 1
    for size, out, k, s, p in zip(call.in_spatial, call.out_spatial, call.kernel, call.strides, call.pads):
        end = (out - 1) * s + k - size - p
        extended *= out + max(0, k - 1 - p) // s + max(0, k - 1 - end) // s
    return extended


def weights_scratchpad(call: ConvCall, dtype: str, batch: int, threads: int) -> int:
    """The weight-gradient kernel's scratchpad: 1×1 unstrided kernels have their own, and so do
    strided 1×1 ones in bfloat16 (``jit_bf16_1x1`` on the input gathered per thread, "rtus")."""
    one_by_one = call.taps == 1 and not call.strided
    if runs_gemm_weights(call, dtype):
        return gemm_weights_scratchpad(call, dtype, batch, threads, channels_last=True)
    if dtype == "bfloat16" and call.taps == 1 and call.strided:
        gathered = replace(call, strides=(1,) * len(call.strides), in_spatial=call.out_spatial)
        rtus = booked(threads * call.channels * prod(call.out_spatial) * itemsize(dtype))
        return bf16_1x1_weights_scratchpad(gathered, batch, threads) + rtus
    if dtype == "bfloat16":
        return (bf16_1x1_weights_scratchpad(call, batch, threads) if one_by_one
                else bf16_weights_scratchpad(call, batch, threads))
    return (float32_1x1_weights_scratchpad(call, batch, threads) if one_by_one
            else float32_weights_scratchpad(call, batch, threads))


# grouped and depthwise convolutions (float32, 2 threads): the weight reordered (depthwise:
# channels padded to 16; depth_multiplier > 1 runs as a GEMM over one image's columns, output
# positions × kernel × input channels), no brgemm scratchpads. A channels-last depthwise weight
# gradient runs oneDNN's depthwise kernel (``jit_dw``, ``dw_weights_kernel_fits``) or, when the
# kernel is too wide for it (a 5×5 or 7×7 one), the generic grouped kernel (``jit``), which treats
# every channel as a group of 16 input by 16 output channels (weights ``aBCde16c16b``): its blocked
# weight gradient is channels × 16 × 16 × kernel floats, whatever the batch (measured: 7×7 on 24
# channels, 1,204,224 B at batch 1, 2 and 4 and at 1, 2 and 4 threads). In bfloat16 the same
# kernels in their bf16 kinds (2 threads, batch 1–4): the 3×3 ``jit_dw`` sums in float32 on every
# working thread (``dw_weights_scratchpad``); 5×5 and 7×7 run ``jit_bf16``, whose blocked gradient
# is bfloat16 beside a float32 sum and transposed operands per group (``bf16_weights_scratchpad``).
# A strided bfloat16 depthwise input gradient runs ``brgconv_strided`` (flagged, not modelled).
def grouped_workspace(ctx, call: ConvCall, input_grad: bool = True,
                      weight_copied: bool | None = None) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a grouped or depthwise oneDNN convolution (``weight_copied``:
    :func:`weight_clone`)."""
    channels, out_channels, groups, taps, weight = (call.channels, call.out_channels, call.groups, call.taps,
                                                    call.weight)
    per_group_in, per_group_out = channels // groups, out_channels // groups
    if channels_first_depthwise_fits(ctx, call):
        return channels_first_depthwise(ctx, call, input_grad)
    if channels_first_grouped_fits(ctx, call):
        return channels_first_grouped(ctx, call, input_grad)
    if call.transposed:
        channels, out_channels = out_channels, channels
        per_group_in, per_group_out = per_group_out, per_group_in
    depthwise = per_group_in == 1
    clone = weight_clone(call, per_group_in, weight_copied)
    if depthwise and per_group_out == 1:
        reorder = up16(channels) * taps
    elif depthwise:
        reorder = prod(call.out_spatial) * taps * channels
    else:
        reorder = up16(out_channels) * per_group_in * taps
    data_reorder = reorder if depthwise else up16(per_group_in) * out_channels * taps
    if call.transposed:
        reorder, data_reorder = data_reorder, reorder
    blocked = reorder if depthwise else up16(out_channels) * (up16(per_group_in) if taps == 1 else per_group_in) * taps
    biases = out_channels if call.bias else 0
    act = itemsize(ctx.compute_dtype(True))
    scratch = 0   # bytes: the weight-gradient kernel's scratchpad
    forward_scratch = data_scratch = 0   # bytes: brgemm's, when it runs the groups
    if ctx.data_format == "channels_last" and not call.transposed and len(call.kernel) <= 2:
        threads = max(ctx.threads, 1)
        if min(per_group_in, per_group_out) > GROUPED_BRGEMM_MIN_CHANNELS:
            # brgemm runs each group as a one-group convolution: weights in blocks of 32 channels
            # (64 when a group's channels are a multiple of 64), and its scratchpads
            reorder = groups * up(per_group_out, _group_block(per_group_out)) * per_group_in * taps
            data_reorder = groups * up(per_group_in, _group_block(per_group_in)) * per_group_out * taps
            one_group = replace(call, channels=per_group_in, out_channels=per_group_out, groups=1)
            forward_scratch = brgemm_forward_scratchpad(threads)
            data_scratch = data_scratchpad(one_group, "float32", threads)
        bf16 = act == 2
        if depthwise and per_group_out == 1 and dw_weights_kernel_fits(call):
            scratch = dw_weights_scratchpad(call, ctx.batch, threads, bf16)
        elif not depthwise or per_group_out == 1:
            blocked, scratch = generic_grouped_weights(groups, per_group_in, per_group_out, taps, call.bias)
            if bf16:   # ``jit_bf16``: float32 sums, transposed input and output gradient per group
                scratch = bf16_weights_scratchpad(call, ctx.batch, threads)
    layout: tuple[Saved, ...] = ()
    if ctx.data_format == "channels_first":
        larger = max(call.channels * prod(call.in_spatial), call.out_channels * prod(call.out_spatial))
        layout = (Saved("new", elements=larger, what="oneDNN blocked copy of the input or output"),)
    phases = (act * (clone + data_reorder) + data_scratch, act * (clone + blocked + biases) + scratch,
              act * (clone + blocked + 2 * biases + 2 * weight))
    forward = _bytes(act * (clone + reorder) + forward_scratch, "weight in channels-last and oneDNN's layout")
    backward = _bytes(max(max(phases) - act * (weight + biases), 0),
                      "weight copies, gradients in oneDNN's layouts and the weight gradient's scratchpad")
    return forward + layout, backward + layout


#: grouped convolutions with more channels than this per group (in and out) run on brgemm, as
#: one-group ones do (ONEDNN_VERBOSE: ``brg_conv_fwd`` for 20, 24, 32, 40 and 64 per group;
#: ``jit`` in 8×8 or 16×16 blocks for 8 and 16); their weight gradient stays ``jit``
GROUPED_BRGEMM_MIN_CHANNELS = 16


def _group_block(channels: int) -> int:
    """brgemm's block of a group's channels in its weights: 32, or 64 for a multiple of 64
    (measured on 20–64 channels per group; ``aBdec32b``, ``aBdec64b``)."""
    return 64 if channels % 64 == 0 else 32


def generic_grouped_weights(groups: int, per_group_in: int, per_group_out: int, taps: int,
                            bias: bool) -> tuple[int, int]:
    """(elements, scratchpad bytes) of the weight gradient of oneDNN's generic grouped kernel on
    channels-last tensors (``jit:avx512_core``, weights ``aBCde16c16b``): each group's input and
    output channels padded to blocks of 16, and a float32 bias padded so per group when its
    channels are not a multiple of 16 (the threads split the groups: none sum apart with at least
    as many groups as threads). Measured: 32 channels in 4 groups, 3×3, 36,864 B (not the 9,216 B
    of its 8 × 8 blocked forward weight); depthwise 7×7 on 24 channels, 1,204,224 B."""
    elements = groups * up16(per_group_out) * up16(per_group_in) * taps
    scratch = booked(4 * groups * up16(per_group_out)) if bias and per_group_out % 16 else 0
    return elements, scratch


def dw_weights_kernel_fits(call: ConvCall) -> bool:
    """Whether oneDNN's depthwise weight-gradient kernel takes a channels-last depthwise
    convolution (``jit_uni_dw_conv_bwd_weights_kernel::init_conf``): 2-D, undilated, at most 3
    wide, no stride wider than the kernel, padding at most half the kernel (a multiple of the
    stride beyond 1), and an input at least as high as the kernel."""
    (ih, iw), (oh, ow) = (1,) * (2 - len(call.in_spatial)) + call.in_spatial, (1,) * (2 - len(call.out_spatial)) + call.out_spatial
    kh, kw = (1,) * (2 - len(call.kernel)) + call.kernel
    sh, sw = (1,) * (2 - len(call.strides)) + call.strides
    t_pad, l_pad = (0,) * (2 - len(call.pads)) + call.pads
    if call.dilated or kw > 3 or sw > kw:
        return False
    b_pad = max(0, (oh - 1) * sh + kh - ih - t_pad)
    r_pad = max(0, (ow - 1) * sw + kw - iw - l_pad)
    if oh != (ih + t_pad + b_pad - kh) // sh + 1 or ow != (iw + l_pad + r_pad - kw) // sw + 1:
        return False
    return (max(t_pad, b_pad) <= kh // 2 and max(l_pad, r_pad) <= kw // 2 and ih >= kh + (-t_pad) % sh
            and (t_pad <= 1 or t_pad % sh == 0) and (b_pad <= 1 or b_pad % sh == 0))


def dw_weights_scratchpad(call: ConvCall, batch: int, threads: int, bf16: bool = False) -> int:
    """Scratchpad of oneDNN's channels-last depthwise weight-gradient kernel (its nxc harness):
    every working thread but the first sums into its own float32 weight gradient (channels padded
    to 16) and bias gradient. Threads split channel blocks, batch and output rows
    (``partition_nthr_nxc``): as many as can work. In bfloat16 (``jit_uni_dw_conv_bwd_weights``
    with bfloat16 weights) every working thread, the first too, sums in float32, one channel block
    per step, and a bfloat16 bias gradient is converted through a float32 one (measured: 24
    channels, 3×3, 8×8, batch 2: 2,976 B where float32 books 1,504 B)."""
    oh = call.out_spatial[-2] if len(call.out_spatial) > 1 else 1
    nb_ch = div_up(call.channels, 16)
    unroll = 1 if bf16 else min(4, 32 // (2 * call.kernel[-1]))     # channel blocks per step
    outer = div_up(nb_ch, min(nb_ch, unroll))
    working = max(g * mb * min(oh, threads // g // mb) for g in range(1, min(outer, threads) + 1)
                  for mb in range(1, min(batch, threads // g) + 1))
    sums = working if bf16 else working - 1
    if sums < 1:
        return 0
    return booked(4 * sums * up16(call.channels) * call.taps, 4 * sums * call.channels if call.bias else 0,
                  4 * call.channels if call.bias and bf16 else 0)


# Depthwise convolutions on NCHW tensors (float32, and bfloat16 at 1 and 2 threads; ONEDNN_VERBOSE,
# allocator events at 1, 2 and 4 threads): oneDNN's depthwise kernels (``jit_dw``) run forward and the data phase on copies
# blocked by 16 channels (padded: 72 channels are 80 in the blocked copies), the weight
# reordered likewise; the weight gradient runs ``jit_dw`` on the blocked input and output's
# gradient when its kernel takes the convolution (``dw_weights_kernel_fits``), else oneDNN's
# GEMM convolution on the plain tensors, whose scratchpad is, per thread, a column buffer
# (kernel × output positions) and 4 floats per weight (measured: 24 channels, 7×7, 16×16,
# 69,248 / 138,240 / 276,224 B at 1 / 2 / 4 threads, whatever the batch). bfloat16: the copies in
# bfloat16, the bias converted through a float32 one, jit_dw's float32 sums on every batch-thread
# (the first too), the GEMM's columns in bfloat16 beside a float32 accumulator and bias.
def channels_first_depthwise_fits(ctx, call: ConvCall) -> bool:
    """Whether a grouped call runs oneDNN's depthwise kernels on NCHW tensors (see above)."""
    return (ctx.data_format == "channels_first" and call.channels == call.groups == call.out_channels
            and not call.transposed and len(call.kernel) <= 2)


def channels_first_depthwise(ctx, call: ConvCall, input_grad: bool = True) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a depthwise convolution on NCHW tensors (see above), in
    bytes beyond the output and the gradients the memory model counts itself."""
    forward, backward = (worst(p)[0] for p in channels_first_depthwise_phases(ctx, call, input_grad))
    return (_bytes(forward, "oneDNN blocked copies and weight reorder"),
            _bytes(backward, "oneDNN blocked copies, weight reorders, gradients and scratchpads"))


def channels_first_depthwise_phases(ctx, call: ConvCall, input_grad: bool = True) -> tuple[list[Phase], list[Phase]]:
    """(forward, backward) phases of a depthwise convolution on NCHW tensors, each beyond the
    results with those not made yet: forward convolves blocked copies and lays the output out last
    (a MobileNetV3's 40-channel 3 × 3 stride-2 layer at batch 1: 49,152 + 1,728 + 12,288 B alive,
    then the 10,240 B output made, measured); backward's data phase makes the input's gradient
    last, and the weights phase (jit_dw's or the GEMM's) the weight and bias gradients: at the
    SGD step's peak of a MobileNetV3 (timm's at 50 % width, batch 1) its 144-channel 5 × 5 layer's
    14,400 B weight gradient was not there yet, its bytes the kernel's."""
    threads, n, act = max(ctx.threads, 1), ctx.batch, itemsize(ctx.compute_dtype(True))
    bf16 = act == 2
    c, taps = call.channels, call.taps
    image, result = prod(call.in_spatial), prod(call.out_spatial)
    src, dst = n * up16(c) * image * act, n * up16(c) * result * act      # blocked copies
    x, y = n * c * image * act, n * c * result * act
    weight, reordered = c * taps * act, up16(c) * taps * act
    bias = c * act if call.bias else 0
    made = weight + bias   # the gradients, which the memory model counts itself
    # a bfloat16 bias is converted through a float32 one, a float32 one padded to 16
    padded_bias = (booked(4 * up16(c)) if call.bias else 0) if bf16 else _padded_bias(c, call.bias, act)
    forward = [(src + reordered + dst + padded_bias - y, (0,)), (dst, ())]
    backward: list[Phase] = []
    if input_grad and ctx.compute_dtype(True) == "bfloat16" and bf16_strided_dw_data_modelled(call):
        # brgconv_strided on channels-last copies: the output's gradient, the weight VNNI-paired
        # (each channel's one output padded to 16, its input to 2), the input's gradient and the
        # scratchpad; then two input-sized buffers beside it while torch lays the result out
        backward += [(n * c * result * act + c * 32 * taps * act + bf16_strided_dw_data_scratchpad(call, threads)
                      - made, ()), (2 * x - made, ())]
    elif input_grad:
        backward += [(dst + reordered + src - x - made, (0, 1, 2)), (src - made, (1, 2))]
    if dw_weights_kernel_fits(call):
        nb_ch = div_up(c, 16)
        by_batch = min(max(1, threads // min(nb_ch, threads)), n)   # threads summing apart
        sums = by_batch if bf16 else by_batch - 1                   # bfloat16: the first sums in float32 too
        scratch = booked(4 * sums * up16(c) * taps, 4 * (by_batch - 1) * up16(c) if call.bias else 0,
                         4 * up16(c) if call.bias and bf16 else 0)
        backward += [(dst + src + reordered + bias + scratch - made, (1, 2)), (reordered + bias, ())]
    else:
        scratch = booked(threads * act * taps * result, threads * 4 * weight,
                         4 * weight if bf16 else 0, 4 * c if bf16 and call.bias else 0)
        backward += [(scratch, (1, 2)), (made, ())]
    return forward, backward


# The input gradient of a strided bfloat16 depthwise convolution on NCHW tensors, on
# AVX512_CORE_BF16, is oneDNN's ``brgconv_strided`` (ONEDNN_VERBOSE), whose scratchpad is
# (``jit_brgemm_conv_bwd_utils``' ``init_scratchpad``) a fixed part and, per thread, the batch
# elements and the input-buffer mask (a page each), a float32 accumulator of 16 channels × the
# input's width over the stride, and the output's gradient copied with the kernel's reach beyond
# the padding (``ohp × owp`` as ``strided_data_buffer`` extends it) for every channel, in
# bfloat16, rounded up to 4,096 elements. Measured exact (allocator events, 1 and 2 threads,
# batch 1 and 2) on 3×3 and 5×5 at stride 2, 16 and 128 channels, inputs 4, 8, 16 and 32 wide.
# An input not a multiple of the stride (oneDNN's "uneven" width: a transposed copy and an
# output buffer more) is booked differently and stays flagged.
BF16_DW_DATA_PER_THREAD = 8_216
BF16_DW_DATA_ELEMENTS_STEP = 4_096


def bf16_strided_dw_data_modelled(call: ConvCall) -> bool:
    """Whether :func:`bf16_strided_dw_data_scratchpad` covers the call: a 2-D strided depthwise
    convolution, every input side a multiple of its stride, undilated, on the modelled ISA."""
    return (call.strided and len(call.kernel) == 2 and not call.dilated and not call.transposed
            and call.groups == call.channels == call.out_channels
            and all(size % s == 0 for size, s in zip(call.in_spatial, call.strides))
            and cpu_isa.onednn_isa() == cpu_isa.MODELLED)


def bf16_strided_dw_data_scratchpad(call: ConvCall, threads: int) -> int:
    """Scratchpad bytes of ``brgconv_strided``'s bfloat16 depthwise input gradient (see above)."""
    copied = 2 * up(extended_positions(call) * call.channels, BF16_DW_DATA_ELEMENTS_STEP)
    accumulator = 4 * 16 * div_up(call.in_spatial[-1], call.strides[-1])
    return STRIDED_DATA_FIXED["bfloat16"] + threads * (BF16_DW_DATA_PER_THREAD + accumulator + copied)


# Grouped convolutions on NCHW tensors (float32, 2-D, 8 to 48 channels per group, and multiples of
# 8 up to 256: ``benchmarks/grouped_conv_sweep.py``; ONEDNN_VERBOSE and allocator events, 2
# threads, batch 1 to 4): oneDNN's direct ``jit`` kernels run forward and
# the data phase on copies blocked by 8 channels (``aBcd8b``: as large as the plain tensors), the
# weight reordered (``aBCde8c8b``), the result made blocked and copied back; in order
#   forward     x', w', y' | free w', x' | y | free y'
#   data phase  g', w', dx' | free w', g' | dx | free dx'
#   weights     x', g', dw' (, db') | free x', g' | (db,) dw | free dw' (, db')
# The weight gradient runs ``jit`` (``jit:avx2``) when a group's channels are a multiple of 8 and
# the input is at least as large as the kernel; otherwise (12 per group; 3×3 on a 2×2 input, as
# RegNetX's last stage) oneDNN's GEMM convolution on the plain tensors: dw', its scratchpad (every
# thread a weight-sized float32 sum booked per byte of weight, and one group's im2col columns,
# even at batch 1: the threads split the groups) (, db') | free the scratchpad | (db,) dw | free.
# Measured: 152 channels in 19 groups, 3×3 on 4×4, batch 1: forward 53,504 B, backward 43,776 B
# beyond the gradients; on 2×2, backward 352,768 B (8 × 43,776 weight bytes + 2,304 of columns
# and two 128-byte alignments). Before: RegNetX-200MF's SGD step over by 33,024 B at batch 1.
def channels_first_grouped_fits(ctx, call: ConvCall) -> bool:
    """Whether the NCHW grouped model above covers the call (as measured: beyond 48 channels per
    group only multiples of 8, whose weight gradient runs ``jit``; 52, 60 and 100 per group run
    the GEMM one, whose scratchpad there is not the one above)."""
    per_in, per_out = call.per_group_in, call.out_channels // call.groups
    return (ctx.data_format == "channels_first" and call.groups > 1 and not call.transposed
            and len(call.kernel) == 2 and not call.dilated and ctx.compute_dtype(True) == "float32"
            and per_in == per_out and per_in % 4 == 0
            and (8 <= per_in <= 48 or (per_in % 8 == 0 and per_in <= 256)))


def channels_first_grouped(ctx, call: ConvCall, input_grad: bool = True) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """(forward, backward) scratch of a grouped convolution on NCHW tensors (see above), in bytes
    beyond the output and the gradients the memory model counts itself."""
    threads, n, act = max(ctx.threads, 1), ctx.batch, 4
    x = n * act * call.channels * prod(call.in_spatial)
    y = n * act * call.out_channels * prod(call.out_spatial)
    weight, bias = act * call.weight, act * call.out_channels if call.bias else 0
    convolve = max(x + weight + y, 2 * y) - y
    data = max(y + weight + x, 2 * x) if input_grad else 0
    dx = x if input_grad else 0
    jit = call.per_group_in % 8 == 0 and all(i >= k for i, k in zip(call.in_spatial, call.kernel))
    if jit:
        weights = dx + max(x + y + weight + bias, 2 * (weight + bias))
    else:
        columns = call.per_group_in * call.taps * prod(call.out_spatial)
        scratch = booked(act * threads * columns, 4 * threads * weight)
        weights = dx + max(weight + scratch + bias, 2 * (weight + bias))
    backward = max(data, weights) - (dx + weight + bias)
    return (_bytes(convolve, "oneDNN blocked copies and weight reorder"),
            _bytes(backward, "oneDNN blocked copies, weight reorders, gradients and the GEMM scratchpad"))
