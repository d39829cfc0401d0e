"""oneDNN's bfloat16 matmul scratchpad at 1 to 16 threads: predicted against the CPU allocator, to
the byte, and one blocking worked by hand.

``torch.set_num_threads(t)`` makes oneDNN run t threads whatever the cores, and its scratchpad
books per thread, with a blocking its heuristic picks for that many threads
(``onednn_matmul._blocking``). Each case runs one ``addmm``/``mm``/``bmm`` in bfloat16 and reads
the allocator's peak above the output: the scratchpad, allocated and freed inside the call. The
shapes are small enough for the whole file to run in seconds.
"""
import pytest
import torch

from profiler.engine.kernels.onednn_matmul import _blocking, onednn_bf16_gemm_scratch
from profiler.measuring.memory_trace import allocator_peak
from isa import modelled_isa

pytestmark = modelled_isa   # kernel workspace measured on oneDNN's AVX512_CORE_BF16

BF16 = torch.bfloat16


def _product(kind: str, m: int, k: int, n: int, batch: int):
    """The call (m × k)·(k × n) as ``nn.Linear`` makes it for ``kind``, and the bytes of its output."""
    if kind == "forward":        # x·Wᵀ + b: A plain, B a transposed view
        x, w, b = torch.randn(m, k, dtype=BF16), torch.randn(n, k, dtype=BF16), torch.randn(n, dtype=BF16)
        return (lambda: torch.addmm(b, x, w.t())), m * n * 2
    if kind == "grad_input":     # g·W: both plain
        g, w = torch.randn(m, k, dtype=BF16), torch.randn(k, n, dtype=BF16)
        return (lambda: torch.mm(g, w)), m * n * 2
    if kind == "grad_weight":    # gᵀ·x: A a transposed view, which oneDNN copies
        g, x = torch.randn(k, m, dtype=BF16), torch.randn(k, n, dtype=BF16)
        return (lambda: torch.mm(g.t(), x)), m * n * 2
    a, c = torch.randn(batch, m, k, dtype=BF16), torch.randn(batch, k, n, dtype=BF16)
    if kind == "bmm":
        return (lambda: torch.bmm(a, c)), batch * m * n * 2
    at = torch.randn(batch, k, m, dtype=BF16)                  # "bmm_t": Aᵀ·B, as attention's backward
    return (lambda: torch.bmm(at.transpose(1, 2), c)), batch * m * n * 2


def measured_scratch(kind: str, m: int, k: int, n: int, batch: int, threads: int) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        call, out = _product(kind, m, k, n, batch)
        call()                   # oneDNN builds (and caches) the primitive outside the measurement
        return allocator_peak(call).peak_bytes - out
    finally:
        torch.set_num_threads(before)


# (kind, m, k, n, batch), each for a path of the heuristic
SHAPES = [
    ("forward", 16, 8, 48, 1),          # a GRU's projection (tests/test_low_precision_layers.py)
    ("forward", 40, 12, 72, 1),         # fewer 64-column panels than threads: M_blk down to 16
    ("forward", 333, 50, 512, 1),
    ("forward", 1, 300, 300, 1),        # one row: A read as plain, K_blk kept at 512
    ("forward", 512, 768, 1, 1),        # n = 1: cpublas swaps, oneDNN sees (1 × 768)·(768 × 512)
    ("forward", 64, 1500, 100, 1),      # K > 1,024: K_blk 1,024
    ("forward", 1024, 4096, 16, 1),     # K a power of 2 ≥ 4,096, M ≥ 1,024: oneDNN copies A
    ("grad_input", 40, 72, 12, 1),
    ("grad_input", 640, 300, 100, 1),
    ("grad_input", 9, 1, 768, 1),       # k = 1
    ("grad_weight", 72, 40, 12, 1),
    ("grad_weight", 200, 333, 640, 1),  # K in blocks: the accumulator spans the N chunk
    ("grad_weight", 64, 4096, 256, 1),  # K a power of 2 ≥ 2,048: threads split K (4, 8, 16 threads)
    ("grad_weight", 1, 2048, 2048, 1),  # one row of gᵀ: not copied
    ("bmm", 20, 30, 40, 4),
    ("bmm", 64, 100, 257, 3),
    ("bmm_t", 100, 64, 100, 6),         # transposed A, copied
    ("bmm_t", 16, 1, 100, 8),           # transposed A with k = 1 is contiguous: plain
]
THREADS = (1, 2, 4, 8, 16)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("kind, m, k, n, batch", SHAPES)
def test_predicted_scratchpad_equals_the_allocators(kind, m, k, n, batch, threads):
    predicted = onednn_bf16_gemm_scratch("grad_weight" if kind == "bmm_t" else kind, m, k, n, threads=threads,
                                         batch=batch, bmm=kind.startswith("bmm"))
    assert predicted == measured_scratch(kind, m, k, n, batch, threads)


def test_blocking_by_hand_at_four_threads():
    # x·Wᵀ, (40 × 12)·(12 × 72) at 4 threads. N in 64-column panels: N_blk 64, 2 panels, fewer
    # than the threads, so M_blk may go down to 16. oneDNN scores M_blk = 40, 39, ..., 16 by
    # the mean of five imbalances and keeps the first least: 40 is skipped (2 work items for 4
    # threads); 39 ... 21 leave a ragged last row block (2·M_blk - 40 rows); 20 makes 2 × 2 = 4
    # items for 4 threads, no tail anywhere: score 0.
    assert _blocking(40, 12, 72, 1, 4, False).m_blk == 20
    # Per thread: 16 batch elements of 40 B, B packed 64 × up(12, 32) bf16 = 4,096 B and a
    # float32 accumulator 20 × 64 × 4 = 5,120 B; three entries, 128 B of alignment room each.
    assert onednn_bf16_gemm_scratch("forward", 40, 12, 72, threads=4) \
        == 4 * 640 + 4 * 4_096 + 4 * 5_120 + 3 * 128 == 39_808
    # At 2 threads the two panels already share evenly: M_blk 40, one block.
    assert onednn_bf16_gemm_scratch("forward", 40, 12, 72, threads=2) \
        == 2 * 640 + 2 * 4_096 + 2 * 40 * 64 * 4 + 3 * 128 == 30_336


def test_threads_split_k_for_a_long_weight_gradient():
    # gᵀ·x with 4,096 rows of g, (64 × 4,096)·(4,096 × 256): at 8 threads 4 panels of 64 columns
    # are too few, K is a power of 2 ≥ 2,048, so oneDNN tries 4 threads on K first, and 4 × 512
    # of 4,096 leaves no K tail: 2 threads on M·N, 4 on K. A being copied, the 4 panels make one
    # N chunk, and M_blk 32 gives the 2 threads one block each (64 rows would leave one idle).
    # Each thread accumulates the whole C in float32.
    b = _blocking(64, 4096, 256, 1, 8, True)
    assert (b.threads_k, b.n_chunk, b.m_blk) == (4, 4, 32)
    # batch elements, A copied (M_blk × (512 + 32) bf16: a 512-element row gets a cache line
    # more), B packed (64 × 512 bf16), C whole (64 × 256 float32), per thread; 4 entries.
    assert onednn_bf16_gemm_scratch("grad_weight", 64, 4096, 256, threads=8) \
        == 8 * (640 + 32 * 544 * 2 + 64 * 512 * 2 + 64 * 256 * 4) + 4 * 128
