"""oneDNN's CPU matmuls (``mm``/``addmm``/``bmm``/``baddbmm`` in bfloat16): the scratchpad each call
books, and what a batched call copies or wraps beside it."""
from __future__ import annotations

from math import ceil

from profiler.engine.kernels.onednn import up
from profiler.rules.registry import Context

#: ``baddbmm``'s alpha handed to oneDNN: a float32 scalar tensor.
FLOAT_SCALAR = 4


def gemm_workspace(ctx: Context, kind: str, m: int, k: int, n: int, *, batch: int = 1, lowered: bool = True) -> int:
    """Bytes oneDNN's scratchpad takes for one of a layer's matmuls (``kind``, m, k, n as in
    ``onednn_bf16_gemm_scratch``): bfloat16 matmuls on the CPU only. ``lowered``:
    the matmul is one autocast lowers (it computes in autocast's dtype)."""
    if ctx.device_kind != "cpu" or ctx.compute_dtype(lowered) != "bfloat16":
        return 0
    return onednn_bf16_gemm_scratch(kind, m, k, n, threads=ctx.threads, batch=batch)


def matmul_workspace(ctx: Context, kind: str, m: int, k: int, n: int, *, batch: int = 1,
                     copies: tuple[int, ...] = (), alpha: bool = False) -> list[int]:
    """Bytes one matmul (``batch`` of them for ``bmm``) allocates together while it runs, when it
    goes to oneDNN (a scratchpad, ``gemm_workspace``): the operands oneDNN does not take, copied
    first (``copies``, bytes), ``baddbmm``'s alpha unless 1 (``alpha``), then the scratchpad.
    Elsewhere ATen's kernel takes strided operands as they are: nothing."""
    scratch = gemm_workspace(ctx, kind, m, k, n, batch=batch)
    if not scratch:
        return []
    return [*copies, FLOAT_SCALAR if alpha else 0, scratch]


def onednn_bf16_gemm_scratch(kind: str, m: int, k: int, n: int, *, threads: int = 2, batch: int = 1) -> int:
    """Scratchpad oneDNN's bfloat16 matmul allocates per call on the CPU (torch 2.13, oneDNN 3.12,
    brgemm kernels for AVX-512 with bfloat16): (m × k)·(k × n), ``batch`` times for ``bmm``.

    PyTorch hands bfloat16 ``addmm``/``mm``/``bmm`` to oneDNN when batch·m·k·n > 16³
    (``mkldnn_gemm_min_size``) and gives the primitive a scratchpad from the CPU allocator. Per
    thread it holds B packed in 64-column panels (``64 × K_blk`` bf16), a float32 accumulator for
    the thread's rows (``M_chunk × min(n, 64)``; the whole row width when A is transposed and K
    takes several blocks) and, when A is transposed (the weight gradient gᵀ·x), A copied row-major
    (``M_chunk × LDA`` bf16); plus a fixed part (``384 + 640 × threads`` bytes, or 128 more with
    the A copy). ``kind``: "forward" (x·Wᵀ) and "grad_input" (g·W) pack B; "grad_weight" (gᵀ·x)
    copies A too. The blocking (K_blk, M_chunk) is oneDNN's heuristic, fitted here to
    measurements on a 2-thread AVX-512 BF16 machine (``_rows_per_thread``): exact there on a grid
    of m ≤ 1,024, k ≤ 2,048, n ≤ 1,000 save a few shapes with m just above 32; an estimate beyond
    (within 6% of the forward's and 16% of the input gradient's for a 49,284-row Dense).
    """
    if batch * m * k * n <= 16 ** 3:
        return 0
    fixed = 384 + 640 * threads
    n_blk = min(n, 64)
    n_blocks = ceil(n / 64)
    if kind == "grad_weight":   # A = gᵀ, transposed: copied as well
        k_blk = up(k, 32) if k <= 512 else 512
        lda = k_blk + (32 if k_blk >= 512 and k_blk & (k_blk - 1) == 0 else 0)
        chunk = _rows_per_thread(m, n_blocks, batch, threads, copies_a=True)
        width = n_blk * n_blocks if k > k_blk and chunk < m else n_blk   # K in blocks: whole rows accumulate
        return fixed + 128 + threads * (64 * k_blk * 2 + chunk * (4 * width + 2 * lda))
    k_blk = min(up(k, 32), 1024 if k > 1024 and m >= 2 else 512)
    chunk = _rows_per_thread(m, n_blocks, batch, threads)
    return fixed + threads * (64 * k_blk * 2 + chunk * n_blk * 4)


def _rows_per_thread(m: int, n_blocks: int, batch: int, threads: int, *, copies_a: bool = False) -> int:
    """oneDNN's M_chunk: m in blocks of at most 256 rows, split further until the blocks (× the
    64-column panels × the batch) share evenly among the threads, and, when A is copied and m is
    even, until the row blocks alone do while they keep 32 rows; at least 16 rows (32 with several
    panels), at most m. Fitted on 2 threads: exact on a grid of m ≤ 1,024 but for an odd m above
    256 with A copied (oneDNN then takes a divisor of m) and m = 33 with 7 or more panels (33 rows
    where this gives 32)."""
    chunks = ceil(m / 256)
    while (batch * chunks * n_blocks) % threads and chunks < m:
        chunks += 1
    while copies_a and m % 2 == 0 and (batch * chunks) % threads and ceil(m / (chunks + 1)) >= 32:
        chunks += 1
    return min(m, max(ceil(m / chunks), 16 if n_blocks == 1 else 32))
