"""oneDNN's CPU matmuls (``mm``/``addmm``/``bmm``/``baddbmm`` in bfloat16): the scratchpad each call
books, and what a batched call copies or wraps beside it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from profiler.engine.kernels.onednn import booked, div_up, up
from profiler.rules.registry import Context

#: ``baddbmm``'s alpha handed to oneDNN: a float32 scalar tensor.
FLOAT_SCALAR = 4


def gemm_workspace(ctx: Context, kind: str, m: int, k: int, n: int, *, batch: int = 1, lowered: bool = True,
                   bmm: bool | None = None) -> int:
    """Bytes oneDNN's scratchpad takes for one of a layer's matmuls (``kind``, m, k, n as in
    ``onednn_bf16_gemm_scratch``): bfloat16 matmuls on the CPU only. ``lowered``:
    the matmul is one autocast lowers (it computes in autocast's dtype)."""
    if ctx.device_kind != "cpu" or ctx.compute_dtype(lowered) != "bfloat16":
        return 0
    return onednn_bf16_gemm_scratch(kind, m, k, n, threads=ctx.threads, batch=batch, bmm=bmm)


def matmul_workspace(ctx: Context, kind: str, m: int, k: int, n: int, *, batch: int = 1,
                     copies: tuple[int, ...] = (), alpha: bool = False, bmm: bool | None = None) -> list[int]:
    """Bytes one matmul (``batch`` of them for ``bmm``) allocates together while it runs, when it
    goes to oneDNN (a scratchpad, ``gemm_workspace``): the operands oneDNN does not take, copied
    first (``copies``, bytes), ``baddbmm``'s alpha unless 1 (``alpha``), then the scratchpad.
    Elsewhere ATen's kernel takes strided operands as they are: nothing."""
    scratch = gemm_workspace(ctx, kind, m, k, n, batch=batch, bmm=bmm)
    if not scratch:
        return []
    return [*copies, FLOAT_SCALAR if alpha else 0, scratch]


def onednn_bf16_gemm_scratch(kind: str, m: int, k: int, n: int, *, threads: int = 2, batch: int = 1,
                             bmm: bool | None = None) -> int:
    """Scratchpad oneDNN's bfloat16 matmul allocates per call on the CPU (oneDNN 3.12's
    ``brg_matmul:avx512_core_bf16``, as torch 2.14 bundles it): (m × k)·(k × n), ``batch`` times
    for ``bmm``, run by ``threads`` threads (``torch.set_num_threads``; oneDNN runs that many
    whatever the cores). ``kind``: "forward" (x·Wᵀ) and "grad_input" (g·W) have A plain,
    "grad_weight" (gᵀ·x, and ``bmm`` of a transposed A) has A transposed, which oneDNN copies.

    ``bmm``: whether the operands are 3-D (``bmm``/``baddbmm``; by default, when batch > 1).

    PyTorch hands bfloat16 ``addmm``/``mm``/``bmm`` to oneDNN when batch·m·k·n > 16³
    (``mkldnn_gemm_min_size``). An ``mm`` with n = 1 it computes as Cᵀ = Bᵀ·Aᵀ: oneDNN sees
    (1 × k)·(k × m). A ``bmm``'s transposed A with k = 1 is contiguous, and oneDNN reads it plain.
    The primitive books, per thread, (``init_scratchpad`` in ``brgemm_matmul_utils.cpp``):
    16 brgemm batch elements of 40 B; B packed in 64-column panels, 64 × up(K_blk, 32) bf16; a
    float32 accumulator, M_blk × N_blk (× the N chunk when K takes several blocks; M × N when
    threads split K); and A copied, M_blk × LDA bf16, when A is transposed or K is a power of 2 of
    at least 4,096 with M ≥ 1,024. Each entry takes 128 B of alignment room (``booked``). The
    blocking (M_blk, N chunk, threads on K) is oneDNN's own search (``_blocking``).

    Checked against the CPU allocator (a representative set in ``tests/test_gemm_threads.py``) for
    threads 1 to 8, 12 and 16: exact on 613 shapes, 6,130 calls: 421 random (m, k, n from 1 to
    2,048 and a few to 49,284, all three kinds, ``bmm`` with batches to 32), 152 edge ones (m, k
    or n of 1, K powers of 2 to 32,768) and 40 ``bmm`` with A transposed. One case depends on
    the process's history: oneDNN's primitive cache takes an (m × 1) A transposed and plain for
    one primitive, so an ``mm`` with k = 1 runs with the layout its shape first ran with; this
    assumes its own (20 of those calls measured after the other layout, exact in a fresh process).
    """
    if batch * m * k * n <= 16 ** 3:
        return 0
    bmm = batch > 1 if bmm is None else bmm
    a_transposed = kind == "grad_weight" and not (bmm and k == 1)
    if n == 1 and not bmm:      # cpublas swaps the operands: (1 × k)·(k × m), A read as transposed
        m, n, a_transposed = 1, m, True
    b = _blocking(m, k, n, batch, threads, a_transposed)
    lda = up(b.k_blk, 32)
    lda += 32 if lda >= 512 and lda & (lda - 1) == 0 else 0   # a big power of 2: a cache line more
    if b.threads_k > 1:         # threads split K: each accumulates all of C
        accumulator = 4 * n * m
    else:
        accumulator = 4 * b.n_blk * b.m_blk * (b.n_chunk if k > b.k_blk else 1)
    return booked(threads * 16 * BATCH_ELEMENT,
                  threads * 2 * b.m_blk * lda if b.copies_a else 0,
                  threads * 2 * 64 * up(b.k_blk, 32),
                  threads * accumulator)


#: ``sizeof(brgemm_batch_element_t)``: one A/B pointer pair of the brgemm batch.
BATCH_ELEMENT = 40


@dataclass(frozen=True)
class Blocking:
    """oneDNN's blocking of one matmul (``brgemm_matmul_conf_t``)."""
    m_blk: int       # M_blk: rows of C a thread computes at once
    n_blk: int       # N_blk: min(N, 64) columns
    n_chunk: int     # N_chunk_size: panels of N_blk columns per chunk (several only when A is copied)
    k_blk: int       # K_blk: min(K, 512), 1,024 for a plain A with K > 1,024
    threads_k: int   # nthr_k: threads splitting K
    copies_a: bool   # use_buffer_a


@lru_cache(maxsize=4096)
def _blocking(m: int, k: int, n: int, batch: int, threads: int, a_transposed: bool) -> Blocking:
    """``compute_blocking_heuristic_avx512`` in oneDNN 3.12's ``brgemm_matmul_utils.cpp``, bfloat16
    on AVX-512 without AMX: among M_blk from min(256, M) down to min(32, M) (16 when threads
    outnumber the batch × N panels) and N chunks from min(16, panels) down to 1 (16 only when A
    is copied), the first with the least imbalance, scored in float32 as oneDNN scores it
    (``_imbalance``); candidates with fewer than 3 work items per thread that do not share evenly
    are skipped, and if every one is, M_blk = its minimum. An A of one row is read as plain
    (``treat_A_as_plain``): never copied, but its tag still counts as transposed."""
    tag_transposed = a_transposed or m == 1      # check_is_transposed(src_tag)
    a_transposed = a_transposed and m != 1       # bgmmc.transposed_A
    copies_a = a_transposed or (k >= 4096 and k & (k - 1) == 0 and m >= 1024)   # prefer_copy_a
    n_blk = min(n, 64)
    panels = div_up(n, n_blk)
    max_m_blk, min_m_blk = min(256, m), min(32, m)
    k_blk = min(k, 1024 if k > 1024 and not tag_transposed else 512)
    first_threads_k = 1
    if threads > batch * panels:                 # low parallel work
        min_m_blk = min(m, 16)
        if batch == 1 and tag_transposed and k >= 2048 and k & (k - 1) == 0:   # bwd_w_par_k_blk
            first_threads_k = min(threads, 4)
    m_blks = np.arange(max_m_blk, min_m_blk - 1, -1, dtype=np.int64)
    best, chosen = np.float32(1), None
    for threads_k in range(first_threads_k, 0, -1):
        found = False
        for n_chunk in range(min(16 if copies_a else 1, panels), 0, -1):
            score = _imbalance(m, n, k, batch, threads, m_blks, n_chunk, n_blk, k_blk, threads_k)
            work = batch * _div_up(m, m_blks) * div_up(n, n_blk * n_chunk)
            per = threads // threads_k
            keep = ~((work < per * 3) & (work % per != 0)) if first_threads_k == 1 else np.ones_like(work, bool)
            score = np.where(keep, score, np.float32(np.inf))
            i = int(np.argmin(score))   # the first of the least
            if score[i] < best:
                best, chosen, found = score[i], (int(m_blks[i]), n_chunk, threads_k), True
        if not found:
            fallback = _imbalance(m, n, k, batch, threads, np.array([min_m_blk]), 1, n_blk, k_blk, threads_k)[0]
            if fallback < best:
                best, chosen = fallback, (min_m_blk, 1, threads_k)
    if chosen is None:
        raise ValueError(f"oneDNN finds no blocking for ({m} × {k})·({k} × {n}), batch {batch}, {threads} threads")
    m_blk, n_chunk, threads_k = chosen
    return Blocking(m_blk, n_blk, n_chunk, k_blk, threads_k, copies_a)


def _imbalance(m: int, n: int, k: int, batch: int, threads: int, m_blks: np.ndarray, n_chunk: int,
               n_blk: int, k_blk: int, threads_k: int) -> np.ndarray:
    """``matmul_avx512_blocking_params_t::get_imbalance`` for each M_blk: the mean of five
    imbalances (work items over threads, M's last block, N's last chunk, threads left over, K over
    its threads), in float32 and in oneDNN's order, since ties decide the blocking."""
    f = np.float32
    per = threads // threads_k
    items = _div_up(m, m_blks) * div_up(n, n_blk * n_chunk) * batch
    work = _spread(items, per)
    m_tail = ((m_blks * _div_up(m, m_blks)) % m).astype(f) / f(m)
    n_blocks = div_up(n, n_blk)
    n_tail = (f(div_up(n_blocks, n_chunk)) * f(n_chunk) - f(n_blocks)) / f(n_blocks)
    left = (f(threads) - f(per * threads_k)) / f(threads) if per * threads_k != threads else f(0)
    k_split = _spread(np.array([k]), threads_k * k_blk)[0]
    return ((((work + m_tail) + n_tail) + left) + k_split) / f(5)


def _spread(work: np.ndarray, block: int) -> np.ndarray:
    """``calculate_spatial_disbalance``: how far ``work`` is from filling whole blocks, in float32."""
    mod = work % block
    scalar = np.where(work < block, block - mod, np.minimum(block - mod, mod))
    return scalar.astype(np.float32) / np.float32(block)


def _div_up(a: int, b: np.ndarray) -> np.ndarray:
    return -(-a // b)
