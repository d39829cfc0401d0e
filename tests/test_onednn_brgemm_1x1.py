"""oneDNN's brgemm 1×1 forward block of filters (:mod:`profiler.engine.kernels.onednn_brgemm_1x1`):
its estimate against the blocks measured with the allocator, and the caches it reads."""
import pytest

from profiler.engine.kernels import cpu_isa
from profiler.engine.kernels.onednn_brgemm_1x1 import filter_block

#: (batch, map side, filters, filters padded as measured): 64 input channels, 2 threads, an Intel
#: Xeon with 48 KiB L1d and 2 MiB L2 a core (torch 2.14, oneDNN 3.12), every shape that reaches
#: oneDNN (batch 1 on 16 × 16 runs torch's own kernel: at most 20,480 input elements)
MEASURED = ((2, 2, 320, 336), (2, 2, 352, 352), (2, 2, 416, 432), (2, 2, 448, 448), (2, 2, 512, 528),
            (2, 2, 592, 608), (2, 2, 608, 624), (2, 2, 640, 672), (2, 2, 688, 720), (2, 2, 1280, 1296),
            (2, 8, 320, 320), (2, 8, 512, 512), (2, 8, 640, 640), (2, 8, 416, 432), (2, 8, 688, 720),
            (4, 16, 416, 432), (4, 16, 688, 720), (1, 32, 512, 528), (1, 32, 1024, 1056), (1, 32, 1280, 1280),
            (1, 32, 1264, 1296), (1, 16, 1024, 1024))


@pytest.mark.parametrize("batch, side, filters, padded", MEASURED)
def test_the_estimate_picks_the_measured_block(batch, side, filters, padded):
    block = filter_block(batch, 64, filters, side * side, 2, 48 * 1024, 2 * 1024 * 1024)
    assert -(-filters // block) * block == padded


def test_blocks_of_64_need_64_positions_and_48_a_padding_under_5_percent():
    # 640 filters on 2 × 2 maps: 64 is not tried (4 positions), 48 pads 4.8 % and wins; 592 would
    # pad 5.1 % to 624: 32
    assert filter_block(2, 64, 640, 4, 2, 48 * 1024, 2 * 1024 * 1024) == 48
    assert filter_block(2, 64, 592, 4, 2, 48 * 1024, 2 * 1024 * 1024) == 32
    assert filter_block(2, 64, 640, 64, 2, 48 * 1024, 2 * 1024 * 1024) == 64
    assert filter_block(2, 64, 16, 64, 2, 48 * 1024, 2 * 1024 * 1024) == 16


def test_the_caches_are_read_per_cpu_that_shares_them(tmp_path):
    def cache(index, level, kind, size, shared):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (folder / name).write_text(f"{value}\n")
    cache(0, 1, "Data", "48K", "0")
    cache(1, 1, "Instruction", "64K", "0")
    cache(2, 2, "Unified", "2048K", "0,64")
    cache(3, 3, "Unified", "32M", "0-7,64-71")
    root = str(tmp_path)
    assert cpu_isa.per_core_cache(1, root) == 48 * 1024
    assert cpu_isa.per_core_cache(2, root) == 1024 * 1024
    assert cpu_isa.per_core_cache(3, root) == 2 * 1024 * 1024
    assert cpu_isa.per_core_cache(4, root) is None
    assert cpu_isa.per_core_cache(1, str(tmp_path / "absent")) is None
