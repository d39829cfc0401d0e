"""Grouped convolutions, one aten call at a time: the workspace the kernel table books against
what the CPU allocator measures, over group widths, layouts, kernels and dtypes.

``tests/test_realworld_conv.py`` holds the cases the table models exactly (float32, 8-48
channels per group on channels-last tensors, ...); this sweep shows where it does not.
``python benchmarks/grouped_conv_sweep.py`` writes ``results/grouped_conv_sweep.md``; figures
depend on the oneDNN ISA and on torch's thread count (say which in the file).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_realworld_conv import _workspace  # noqa: E402  (measured vs booked, one call)

aten = torch.ops.aten
PER_GROUP = (2, 4, 8, 12, 16, 20, 24, 32, 48, 64, 96)
GROUPS = (2, 4)
KERNELS = ((3, 1), (1, 1), (3, 2))    # (kernel, stride), padding kernel // 2
BATCH, SIDE = 2, 8


def calls(dtype, channels: int, groups: int, kernel: int, stride: int, channels_last: bool):
    """The forward and backward calls of one grouped convolution (channels in = out), real tensors."""
    x = torch.randn(BATCH, channels, SIDE, SIDE, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels // groups, kernel, kernel, dtype=dtype)
    b = torch.randn(channels, dtype=dtype)
    conv = ([stride] * 2, [kernel // 2] * 2, [1, 1], False, [0, 0], groups)
    g = torch.randn_like(aten.convolution.default(x, w, b, *conv))
    return (("forward", aten.convolution.default, (x, w, b, *conv)),
            ("backward", aten.convolution_backward.default, (g, x, w, [channels], *conv, [True, True, True])))


def sweep(dtype) -> list[tuple]:
    rows = []
    for per_group in PER_GROUP:
        for groups in GROUPS:
            for channels_last in (True, False):
                for kernel, stride in KERNELS:
                    for phase, func, args in calls(dtype, per_group * groups, groups, kernel, stride, channels_last):
                        measured, booked = _workspace(func, args)
                        rows.append((per_group, groups, "NHWC" if channels_last else "NCHW", kernel, stride, phase,
                                     measured, booked))
    return rows


def main() -> None:
    from profiler.engine.kernels.cpu_isa import onednn_isa
    lines = ["# Grouped convolutions: booked workspace vs measured, per aten call", "",
             f"torch {torch.__version__}, oneDNN ISA {onednn_isa()}, {torch.get_num_threads()} threads; batch "
             f"{BATCH}, {SIDE}×{SIDE} input, channels in = out = per group × groups (groups {GROUPS}), kernels "
             f"(kernel, stride) {KERNELS}, forward and backward (all three gradients). Written by "
             "`benchmarks/grouped_conv_sweep.py`.", ""]
    for dtype in (torch.float32, torch.bfloat16):
        rows = sweep(dtype)
        exact = sum(r[6] == r[7] for r in rows)
        lines += [f"## {str(dtype).split('.')[-1]}: {exact} of {len(rows)} calls exact", "",
                  "| per group | layout | exact calls | worst miss (booked − measured) |", "| --- | --- | --- | --- |"]
        cells: dict[tuple, list] = defaultdict(list)
        for r in rows:
            cells[(r[0], r[2])].append(r)
        for (per_group, layout), group in sorted(cells.items()):
            worst = max(group, key=lambda r: abs(r[7] - r[6]))
            miss = worst[7] - worst[6]
            where = f"{miss:+,} B (groups {worst[1]}, k{worst[3]} s{worst[4]} {worst[5]})" if miss else "—"
            lines.append(f"| {per_group} | {layout} | {sum(r[6] == r[7] for r in group)} of {len(group)} | {where} |")
        lines.append("")
    out = ROOT / "results" / "grouped_conv_sweep.md"
    out.write_text("\n".join(lines))
    print(out)


if __name__ == "__main__":
    main()
