"""torch's own CPU convolutions (``slow_conv2d`` and kin): the input unfolded into columns."""
from __future__ import annotations

from math import prod

from profiler.engine.kernels.conv_call import ConvCall, kept, weight_clone
from profiler.rules.registry import Saved


def im2col_workspace(ctx, call: ConvCall,
                     weight_copied: bool | None = None) -> tuple[tuple[Saved, ...], tuple[Saved, ...]]:
    """torch's own kernels unfold the input into columns (im2col) and run one GEMM per sample.

    ``slow_conv2d`` (and its dilated and transposed kinds) on a channels-last input: the weight
    copied to channels-last (unless 1×1, or already so: ``weight_copied``, :func:`weight_clone`;
    timm convnext_atto moved to channels-last, batch 1: its 2×2/2 downsampling layers' 51,200 to
    819,200 B weight copies were booked, none made), the columns — input channels × kernel ×
    output positions per sample (a transposed one: output channels × kernel × input positions) —
    beside the output.
    Backward: the weight copy again and one columns buffer, made after the input's and the
    weight's gradients (the dilated kernel also sums the bias gradient into a temporary).
    ``slow_conv3d`` and ``slow_conv_transpose3d`` have no channels-last kernel: they copy the
    input (and in backward the output's gradient) to channels-first, and their channels-first
    result is copied back once the columns are freed.
    """
    channels_last = ctx.data_format == "channels_last"
    if call.transposed:
        columns = call.out_channels * call.taps * prod(call.in_spatial)
    elif call.taps > 1 or call.strided or any(call.pads):
        columns = call.channels * call.taps * prod(call.out_spatial)
    else:
        columns = 0
    cols = Saved("new", elements=columns, what="im2col columns")
    if len(call.kernel) == 3 and not call.dilated:    # slow_conv3d, slow_conv_transpose3d
        # the transposed kernel adds its bias by a GEMM with a vector of ones, one per output position
        ones = prod(call.out_spatial) if call.transposed and call.bias else 0
        if not channels_last:
            return kept((cols, Saved("new", elements=ones, per_sample=False, what="ones for the bias"))), kept(cols)
        image, result = call.channels * prod(call.in_spatial), call.out_channels * prod(call.out_spatial)
        forward = Saved("new", elements=max(ctx.batch * (image + columns) + ones, ctx.batch * result), per_sample=False,
                        what="channels-first input and columns, then the result's channels-last copy")
        backward = (Saved("new", elements=result + image, what="channels-first output gradient and input"), cols)
        return (forward,), kept(backward)
    clone = weight_clone(call, call.per_group_in, weight_copied) if channels_last else 0
    weight_copy = Saved("new", elements=clone, per_sample=False, what="weight in channels-last")
    bias_sum = call.out_channels if call.dilated and call.bias else 0
    backward = (weight_copy, cols, Saved("new", elements=bias_sum, per_sample=False, what="bias gradient's sum"))
    return kept((weight_copy, cols)), kept(backward)
