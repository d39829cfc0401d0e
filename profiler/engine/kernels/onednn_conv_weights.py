"""oneDNN's CPU weight-gradient convolution kernels: their scratchpads, from the thread balance
each kernel picks (its ``init_conf``, ``balance`` and ``init_scratchpad`` reproduced)."""
from __future__ import annotations

import struct
from math import prod

from profiler.dtypes import itemsize
from profiler.engine.kernels.conv_call import ConvCall
from profiler.engine.kernels.onednn import ONEDNN_PAGE, booked, div_up, up, up16


def float32_weights_scratchpad(call: ConvCall, batch: int, threads: int) -> int:
    """Scratchpad of oneDNN's float32 ``jit`` weight-gradient kernel
    (``jit_avx512_common_conv_bwd_weights_kernel_f32``: ``init_conf``, ``balance``,
    ``init_scratchpad``; nxc layouts, one group) and of its bias gradient's ``cpu_reducer``.

    Threads split the batch (``nthr_mb``) and the 16-channel blocks by the least memory traffic,
    then by the least compute within 10% of that traffic. Every batch-thread but the first sums
    into its own float32 weight and bias gradient; the bias gradient is reduced separately
    (``_bias_reducer``); a bias of a channel count not a multiple of 16 is padded.
    """
    d = 3 - len(call.in_spatial)
    (i_d, ih, iw), (od, oh, ow) = (1,) * d + call.in_spatial, (1,) * d + call.out_spatial
    kd, kh, kw = (1,) * d + call.kernel
    sd, sh, sw = (1,) * d + call.strides
    ic, oc = call.channels, call.out_channels
    ic_block = ic if ic < 16 else 16          # a "first convolution": one block of its own
    nb_ic, nb_oc = div_up(ic, ic_block), div_up(oc, 16)

    def traffic(mb: int, ocb: int, icb: int) -> int:
        src = div_up(batch, mb) * div_up(nb_ic, icb) * ic_block * ih * iw * i_d // sd // sh // sw
        dst = div_up(batch, mb) * div_up(nb_oc, ocb) * 16 * oh * ow * od
        return src + dst + 8 * div_up(nb_oc, ocb) * div_up(nb_ic, icb) * kh * kw * kd * ic_block * 16

    def compute(mb: int, ocb: int, icb: int) -> int:
        return div_up(batch, mb) * div_up(nb_oc, ocb) * div_up(nb_ic, icb)

    work = batch * od
    choice = _cheapest(traffic, threads, work, nb_oc, nb_ic)
    least_traffic, best = traffic(*choice), compute(*choice)
    for mb in range(1, min(threads, work) + 1):          # step 2: less compute, little more traffic
        for ocb in range(1, min(threads // mb, nb_oc) + 1):
            icb = min(threads // mb // ocb, nb_ic)
            cost = compute(mb, ocb, icb)
            if (cost <= best and traffic(mb, ocb, icb) < 1.1 * least_traffic) or 4 * cost <= 3 * best:
                best, choice = cost, (mb, ocb, icb)
    mb, ocb, icb = choice
    if threads // 2 < mb < threads:
        mb = min(work, threads)
    partial = 4 * (mb - 1) * (up16(oc) * up(ic, ic_block) * kh * kw * kd + up16(oc))
    padded_bias = 4 * up16(oc) if call.bias and oc % 16 else 0
    reducer = _bias_reducer(mb * ocb * icb, nb_oc, batch) if call.bias else 0
    return booked(partial, padded_bias, barriers=(1 if mb > 1 else 0,)) + reducer


def float32_1x1_weights_scratchpad(call: ConvCall, batch: int, threads: int) -> int:
    """Scratchpad of oneDNN's float32 ``jit_1x1`` weight-gradient kernel
    (``jit_avx512_common_1x1_conv_kernel``: ``init_conf``, ``balance``, ``init_scratchpad``;
    unstrided) and of its bias gradient's ``cpu_reducer``: threads split batch × blocks of 7–16
    input positions and the 16-channel blocks by the least memory traffic; every batch-thread
    but the first sums into its own float32 weight gradient (channels padded to 16)."""
    positions = prod(call.in_spatial)
    block = best_divider(positions, 7, 16, True)
    if positions % block:
        block = best_divider(call.in_spatial[-1], 4, call.in_spatial[-1], False)
    block = 1 if block > 256 else block
    nb_reduce = div_up(positions, block)
    nb_bcast, nb_load = div_up(call.channels, 16), div_up(call.out_channels, 16)

    def traffic(mb: int, ocb: int, icb: int) -> int:
        steps = div_up(batch * nb_reduce, mb)
        return (steps * div_up(nb_bcast, icb) * 16 * block + steps * div_up(nb_load, ocb) * 16 * block
                + 12 * div_up(nb_load, ocb) * div_up(nb_bcast, icb) * 16 * 16)

    mb, ocb, icb = _cheapest(traffic, threads, batch * nb_reduce, nb_load, nb_bcast)
    if threads // 2 < mb < threads:
        mb = min(batch, threads)
    partial = 4 * (mb - 1) * up16(call.out_channels) * up16(call.channels)
    padded_bias = 4 * up16(call.out_channels) if call.bias and call.out_channels % 16 else 0
    reducer = _bias_reducer(mb * ocb * icb, nb_load, batch) if call.bias else 0
    return booked(padded_bias, partial, barriers=(1 if mb > 1 else 0,)) + reducer


#: ``cpu_reducer`` (oneDNN's ``reduce_balancer_t``): a bias gradient is reduced in jobs of 16
#: channels; each thread may buffer up to 3·5·5·16·16 floats
REDUCER_JOB = 16
REDUCER_BUFFER_PER_THREAD = 3 * 5 * 5 * 16 * 16


def _bias_reducer(threads: int, jobs: int, batch: int) -> int:
    """Bytes ``cpu_reducer`` books for the float32 bias gradient (jobs of 16 channels)."""
    return reducer(threads, jobs, REDUCER_JOB, batch)


def reducer(threads: int, jobs: int, job: int, batch: int) -> int:
    """Bytes ``cpu_reducer`` books to sum ``jobs`` float32 jobs of ``job`` elements over the
    batch: groups of threads share a job when there are fewer jobs than threads; the extra
    threads of a group each sum into float32 space (page-aligned), with one barrier per group."""
    most = max(1, REDUCER_BUFFER_PER_THREAD // job)
    least = max(1, jobs // threads)
    groups = min(jobs // least, threads)
    per_group = min(threads // groups, batch)
    per_group_jobs = div_up(jobs, groups)
    complexity = jobs * job * batch
    for n in range(least, jobs):
        c_groups = min(jobs // n, threads)
        c_per_group = min(threads // c_groups, batch)
        c_jobs = div_up(jobs, c_groups)
        if c_per_group > 1 and c_jobs > most:
            continue
        c_complexity = job * c_jobs * (div_up(batch, c_per_group) + (c_per_group != 1))
        if c_complexity < complexity:
            groups, per_group, per_group_jobs, complexity = c_groups, c_per_group, c_jobs, c_complexity
    if per_group == 1:
        return 0
    space = 4 * groups * (per_group - 1) * per_group_jobs * job
    return space + ONEDNN_PAGE + ONEDNN_PAGE * (groups + 1)


def _f32(x: float) -> float:
    """x rounded to single precision, as oneDNN's float cost arithmetic rounds it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _product(factors: tuple[float, ...], divisors: tuple[int, ...] = ()) -> float:
    """Products, then quotients, left to right in single precision (a C++ float expression)."""
    value = _f32(factors[0])
    for f in factors[1:]:
        value = _f32(value * f)
    for d in divisors:
        value = _f32(value / d)
    return value


def bf16_weights_scratchpad(call: ConvCall, batch: int, threads: int, plain_src: bool = False) -> int:
    """Scratchpad of oneDNN's ``jit_bf16`` weight-gradient kernel
    (``jit_avx512_core_bf16_conv_bwd_weights_kernel_f32``: ``init_conf``, ``balance``,
    ``init_scratchpad``), nxc layouts.

    It splits the work between ``nthr_mb`` threads over batch × rows and ``nthr_oc_b`` ×
    ``nthr_ic_b`` over channel blocks of 16 (fewer than 16 input channels: one block), by
    the least memory traffic; then books the input transposed into rows of ``tr_iw`` (its width
    over the stride plus shared padding, in pairs) per batch-thread and input block, the output's
    gradient transposed likewise, float32 partial weight and bias gradients per batch-thread,
    and barriers. Grouped (a 5×5 or 7×7 depthwise convolution, too wide for ``jit_dw``): each
    group's channels in blocks of 16 (no "first" block), every buffer once per group; with
    fewer threads than groups the threads split the groups only (``nthr_mb`` = 1). Measured:
    depthwise 7×7 on 24 channels, 16×16, 1,656,712 B at batch 1, 2 and 4 (2 threads).
    """
    d = 3 - len(call.in_spatial)
    (i_d, ih, iw), (od, oh, ow) = (1,) * d + call.in_spatial, (1,) * d + call.out_spatial
    kd, kh, kw = (1,) * d + call.kernel
    sd, sh, sw = (1,) * d + call.strides
    _, ph, pw = (0,) * d + call.pads
    _, dh, dw = (1,) * d + call.dilation
    groups = call.groups
    ic, oc = call.channels // groups, call.out_channels // groups
    first = ic < 16 and groups == 1
    ic_block, oc_block = (ic if first else 16), 16
    nb_ic, nb_oc = div_up(ic, ic_block), div_up(oc, oc_block)
    transpose_src = not (first and (ic == 1 or plain_src))   # a channels-first "first" input is read as it is
    r_pad = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (iw + pw))
    b_pad = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (ih + ph))
    tr_pad = up(max(pw, r_pad + 1), 2)
    tr_iw = up(div_up(iw, sw) + tr_pad, 2) * sw if transpose_src else iw
    tr_ow = up(ow, 2)
    full_spatial = (d > 0 and ih == oh and iw == ow and 1 not in (kh, kw) and sh == sw == 1 and dh == dw == 1
                    and pw == kw // 2 and ph == kh // 2 and not first and ic >= 128
                    and (ic_block * tr_iw + oc_block * tr_ow) * 2 * max(1, b_pad, ph) <= 48 * 1024)
    work = batch * od if d == 0 else batch if full_spatial else batch * oh

    def cost(mb: int, ocb: int, icb: int) -> float:
        src = batch * ic * i_d * ih * tr_iw * 2
        dst = batch * oc * od * oh * tr_ow * 2
        wei = oc * ic * kd * kh * kw * 4
        scale = _f32(_f32(0.5 * (dst + src)) / wei)
        ratio = _f32(nb_oc / nb_ic)
        src_coef = _f32(max(_f32(1.0 / ratio), 1.0) * (4.0 if scale < 1.0 else 1.0))
        dst_coef, wei_coef = max(ratio, 1.0), max(scale, 1.0)
        src_v = _product((src_coef, div_up(work, mb), div_up(nb_ic, icb), batch, ic_block, i_d, ih, tr_iw),
                         (work, sd, sh, sw))
        wei_v = _product((wei_coef, div_up(nb_oc, ocb), div_up(nb_ic, icb), kh, kw, kd, ic_block, oc_block))
        dst_v = _product((dst_coef, div_up(work, mb), div_up(nb_oc, ocb), batch, oc_block, od, oh, tr_ow), (work,))
        return _f32(_f32(src_v + dst_v) + wei_v)

    if threads < groups:
        mb = ocb = icb = 1
        nthr = threads
    else:
        per_group = threads // groups
        mb, ocb, icb = _cheapest(cost, per_group, work, nb_oc, nb_ic)
        if per_group // 2 < mb < per_group:
            mb = min(work, per_group)
        nthr = mb * groups * ocb * icb
    # the transposed input keeps room for its shared padding even when it is not transposed
    tr_src = ((mb * nb_ic * groups * tr_iw * ic_block * ih * i_d if transpose_src else 0) + tr_pad) * 2
    tr_ddst = mb * nb_oc * groups * tr_ow * oc_block * oh * od * 2
    partial = 4 * mb * groups * (nb_oc * oc_block * nb_ic * ic_block * kd * kh * kw
                                 + (nb_oc * oc_block if call.bias else 0))
    barriers = (nthr // ocb if ocb > 1 else 0, nthr // icb if icb > 1 else 0, 1)
    return booked(tr_src, tr_ddst, partial, barriers=barriers)


def _cheapest(cost, threads: int, work: int, nb_oc: int, nb_ic: int) -> tuple[int, int, int]:
    """oneDNN's ``balance``: (batch, output-block, input-block) threads of least cost (ties: the
    last tried)."""
    best, choice = cost(1, 1, 1), (1, 1, 1)
    for mb in range(1, min(threads, work) + 1):
        for ocb in range(1, min(threads // mb, nb_oc) + 1):
            icb = min(threads // mb // ocb, nb_ic)
            c = cost(mb, ocb, icb)
            if c <= best:
                best, choice = c, (mb, ocb, icb)
    return choice


def best_divider(value: int, low: int, high: int, find_max: bool, step: int = 1) -> int:
    """oneDNN's ``best_divider``: the block in [low, high] that pads ``value`` least."""
    high = max(1, min(high, value))
    low = max(1, min(low, high))
    best, least = high, float("inf")
    for divider in range(high, low - 1, -step):
        loss = (up(value, divider) - value) / up(value, divider)
        if loss < least or (not find_max and loss == least):
            best, least = divider, loss
    return best


def bf16_1x1_weights_scratchpad(call: ConvCall, batch: int, threads: int) -> int:
    """Scratchpad of oneDNN's ``jit_bf16_1x1`` weight-gradient kernel
    (``jit_avx512_core_bf16_1x1_conv_kernel``: ``init_conf``, ``balance``, ``init_scratchpad``),
    nxc layouts, unstrided.

    The reduction runs over the input positions in blocks of 8–16; threads split batch ×
    reduction blocks and the 16-channel blocks by the least memory traffic. Booked: float32
    partial weight and bias gradients per batch-thread, a barrier when there are several,
    per thread the output's gradient and the input transposed (their channel blocks over all
    positions, in pairs), and the bias padded to 16 when it is not.
    """
    positions = prod(call.in_spatial)
    block = best_divider(positions, 8, 16, True, 2)
    if positions % block:
        block = best_divider(call.in_spatial[-1], 4, call.in_spatial[-1], False, 2)
    block = up(1 if block > 256 else block, 2)
    nb_reduce = div_up(positions, block)
    nb_bcast, nb_load = div_up(call.channels, 16), div_up(call.out_channels, 16)
    output_koeff = 4 * max(1, call.out_channels // call.channels)

    def cost(mb: int, ocb: int, icb: int) -> int:
        steps = div_up(batch * nb_reduce, mb)
        return (steps * div_up(nb_bcast, icb) * 16 * block + steps * div_up(nb_load, ocb) * 16 * block
                + output_koeff * div_up(nb_load, ocb) * div_up(nb_bcast, icb) * 16 * 16)

    mb, ocb, icb = _cheapest(cost, threads, batch * nb_reduce, nb_load, nb_bcast)
    if threads // 2 < mb < threads:
        mb = min(batch, threads)
    nthr = mb * ocb * icb
    load_blocks = best_divider(nb_load, 16, nb_load, False)
    bcast_blocks = best_divider(nb_bcast, 5, nb_bcast, False)
    rows = up(positions, 2)
    biases = up16(call.out_channels) if call.bias else 0
    partial = 4 * mb * (up16(call.out_channels) * up16(call.channels) + biases)
    padded_bias = 2 * call.out_channels if call.bias and call.out_channels % 16 else 0
    return booked(partial, 2 * nthr * rows * 16 * load_blocks, 2 * nthr * rows * 16 * bcast_blocks, padded_bias,
                   barriers=(1 if mb > 1 else 0,))


# --- oneDNN's GEMM convolution (``gemm_convolution_bwd_weights_t``, ONEDNN_VERBOSE ``gemm:jit``) ---
#
# oneDNN's jit weight-gradient kernels refuse a kernel wider than 14 (``jit_avx512_common``'s
# ``init_conf``: "kw > 14", unless its transposed kernel for one output column takes it): a
# vision transformer's 16×16/16 patch embedding runs the GEMM convolution on the plain tensors.

#: the widest kernel oneDNN's jit weight-gradient kernels take
JIT_WEIGHTS_MAX_KW = 14
#: ``jit_bf16``'s weight gradient of a "first convolution" (fewer than 16 input channels)
BF16_FIRST_CONV_MAX_KW = 24
#: ... and the transposed kernel (``is_hw_transp``) for one output column: kernels 14–19 wide
HW_TRANSP_KW = (14, 20)
#: ``jit_gemm_convolution_utils::init_conf``: a scratchpad of at most 1 GiB and of at most
#: 15 × threads × (input + weight + output) bytes; outer threading below 256 output positions a
#: thread; the column buffer shrunk to 5% of what fits (``_coef``) when it would not fit
GEMM_SCRATCHPAD_MAX = 1 << 30
GEMM_SCRATCHPAD_TENSORS = 15
GEMM_OUTER_MAX_POSITIONS = 256
GEMM_SHRINK = 0.05


def runs_gemm_weights(call: ConvCall, dtype: str) -> bool:
    """Whether oneDNN's jit weight-gradient kernel refuses the convolution for its kernel width
    (``kw > 14``; bfloat16's ``jit_bf16`` takes up to 24 on fewer than 16 input channels) and
    the GEMM convolution runs it."""
    kw = call.kernel[-1]
    if dtype == "bfloat16" and call.channels < 16:
        return kw > BF16_FIRST_CONV_MAX_KW
    if kw <= JIT_WEIGHTS_MAX_KW:
        return False
    iw, ow = call.in_spatial[-1], call.out_spatial[-1]
    transposed = (len(call.kernel) == 2 and HW_TRANSP_KW[0] <= kw < HW_TRANSP_KW[1] and ow == 1 and kw == iw
                  and max(call.strides) == 1 and not call.dilated and not any(call.pads))
    return not transposed


def gemm_weights_scratchpad(call: ConvCall, dtype: str, batch: int, threads: int,
                            channels_last: bool = False) -> int:
    """Scratchpad of oneDNN's GEMM weight-gradient convolution, one group
    (``jit_gemm_convolution_utils::init_conf``, backward weights), on plain NCHW tensors or
    (``channels_last``) on NHWC ones, which also book a transposed input per thread
    (``key_conv_gemm_imtr``) and never shrink the columns.

    With outer threading (batch over 1, fewer than 256 output positions a thread, and its memory
    estimate under the limit) every thread books a weight-sized float32 sum
    (``key_conv_wei_reduction``) and im2col columns (input channels × kernel × output
    positions); otherwise one. The sums are booked as ``book<float>(nthr * weights_d.size())``,
    the weight's size in bytes counted as elements: 4 bytes per byte of weight, 16 per float32
    weight. bfloat16 adds a float32 accumulator likewise (``weights_d.size()`` floats) and a
    float32 bias. Measured: 3 → 192 channels, 16×16/16 on 64×64, batch 2, 2 threads: 8 weights
    (4,718,592 B), columns 98,304 B and 256 B of alignment, 4,817,152 B.
    """
    act = itemsize(dtype)
    ic, oc, taps = call.channels, call.out_channels, call.taps
    positions = prod(call.out_spatial[-2:])                  # oneDNN's os: one depth slice
    weight = act * call.weight
    src = act * batch * ic * prod(call.in_spatial)
    dst = act * batch * oc * prod(call.out_spatial)
    limit = min(GEMM_SCRATCHPAD_MAX, GEMM_SCRATCHPAD_TENSORS * threads * (src + weight + dst))
    simd_w = 64 // act
    bf16 = dtype == "bfloat16"
    unchanged = (call.in_spatial == call.out_spatial and not call.strided and taps == 1)
    column = 0 if unchanged else ic * taps * positions
    transposed = prod(call.in_spatial) * ic                 # imtr: id × is × ic
    if channels_last:
        estimate = threads * (act * column + act * transposed + 4 * weight)
    else:
        estimate = 4 * threads * weight + act * threads * ic * taps * simd_w
    if bf16:
        estimate += 4 * weight + (4 * oc if call.bias else 0)
    outer = estimate < limit and positions // threads < GEMM_OUTER_MAX_POSITIONS and batch != 1
    nthr = threads if outer else 1
    entries = [4 * nthr * weight]
    if bf16:
        entries += [4 * weight, 4 * oc if call.bias else 0]
    if channels_last:
        return booked(act * nthr * column, *entries, act * nthr * transposed)
    available = limit - booked(*entries)
    if available < act * nthr * column:
        most = available // (act * nthr * ic * taps)
        column = ic * taps * max(simd_w, int(_f32(_f32(most) * _f32(GEMM_SHRINK))))
    return booked(act * nthr * column, *entries)
