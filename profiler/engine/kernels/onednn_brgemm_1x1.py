"""The block of filters oneDNN's brgemm 1 × 1 forward convolution pads its reordered weight to
(``brgconv_1x1:avx512_core``: float32 on any AVX-512 CPU, AMX included, channels-last, stride 1,
no padding): the block its own estimate scores highest, re-derived here from oneDNN v3.12, the
version torch 2.14 bundles (``src/cpu/x64/jit_brgemm_conv_utils.cpp``: ``init_1x1_conf`` tries
blocks of 64, 48, 32 and 16 filters, ``calc_blocks_1x1`` picks each one's block of positions,
``est_eff_1x1`` scores it; the register blocking from ``brgemm/brgemm_utils.cpp``).

The choice depends on the batch, the map, the input channels, the threads and the CPU's per-core
L1 and L2 sizes, not only on the filters: 688 filters pad to 720 on 2 × 2 maps at batch 2 but stay
unpadded multiples of 64 on 8 × 8 ones (measured with the allocator on an Intel Xeon with AMX,
48 KiB L1d and 2 MiB L2 a core, 2 threads: 22 of 22 shapes that reach oneDNN, 16-1,392 filters;
a Python port of oneDNN 3.8's code agreed with that library, built here, on 1,200 random shapes).
The arithmetic is oneDNN's in float64 where it uses float32: a near-tie could fall the other way.
"""
from __future__ import annotations

from functools import lru_cache

from profiler.engine.kernels.onednn import div_up, up

SIMD = 16          # float32 lanes of a zmm register
REGISTERS = 32     # zmm registers
ITEM = 4           # bytes of a float32
PAGE = 4096
#: oneDNN's cost weights of a read from L1, L2 and beyond (``init_jcp``, v3.7 on)
L1_COST, L2_COST, FAR_COST = 1.0, 2.3, 17.0


@lru_cache(maxsize=4096)
def filter_block(batch: int, channels: int, filters: int, positions: int, threads: int,
                 l1_bytes: int, l2_bytes: int) -> int:
    """Filters per block of the weight's reorder (64, 48, 32 or 16) of a 1 × 1 stride-1
    convolution of ``channels`` → ``filters`` over ``positions`` output positions a sample, as
    ``init_1x1_conf`` picks it with ``threads`` threads and these per-core cache sizes."""
    job = _Job(batch, channels, filters, positions, threads, l1_bytes, l2_bytes)
    best, best_score = SIMD, None
    for block in range(min(div_up(filters, SIMD), 4) * SIMD, 0, -SIMD):
        if not job.may_take(block):
            continue
        score = job.best_score(block)
        if best_score is None or score > best_score:   # strict: on a tie the larger block stays
            best, best_score = block, score
    return best


class _Job:
    """One convolution's figures, as ``init_jcp`` and ``init_1x1_conf`` set them."""

    def __init__(self, batch: int, channels: int, filters: int, positions: int, threads: int,
                 l1_bytes: int, l2_bytes: int) -> None:
        self.batch, self.channels, self.filters, self.positions = batch, channels, filters, positions
        self.threads = max(threads, 1)
        self.l1, self.l2, self.l1_full = l1_bytes * 7 // 8, l2_bytes * 3 // 4, l1_bytes
        # the loop order: filters innermost unless one sample's positions outweigh the weight's row
        self.filters_inner = not (positions * ITEM < filters * ITEM)

    def may_take(self, block: int) -> bool:
        """``fast_check_oc_block_1x1``: 64 only on a multiple of 64 (padded to 16) and at least 64
        positions; 48 only where it pads less than 5 %."""
        if block == 64:
            return up(self.filters, SIMD) % 64 == 0 and self.positions >= 64
        if block == 48:
            return self.filters / up(self.filters, 48) >= 0.95
        return True

    def best_score(self, block: int) -> float:
        """``calc_blocks_1x1``: the best score over the blocks of positions it tries."""
        start, best, previous, rows = self._start_positions(block), None, 0, 0
        columns = block if self.filters >= block else self.filters % block
        for pieces in range(1, self.positions + 1):
            positions = div_up(self.positions, pieces)
            if positions == previous or positions > start:
                continue
            previous = positions
            depth = self._channel_block(block, positions, rows)
            rows, lanes = _register_block(positions, columns, depth, self.l1_full)
            score = self._score(block, positions, depth, rows, lanes)
            if best is None or score > best or best == 0:
                best = score
        return best if best is not None else 0.0

    def _start_positions(self, block: int) -> int:
        positions, threads = self.positions, self.threads
        if 1024 <= ITEM * self.channels < 4096:
            most = max(min(16, positions), div_up(positions, div_up(threads, self.batch * div_up(self.filters, block))))
        else:
            most = max(div_up(2048, block), div_up(self.batch * positions, threads))
        alias = 1_000_000 // threads
        if (self.filters * positions * ITEM) % PAGE == 0:   # rows a page apart alias in the cache
            filters = self.filters
            while alias * ITEM > 400 and filters % 2 == 0 and filters * positions * ITEM >= PAGE:
                alias //= 2
                filters //= 2
            alias += 0 if alias % 2 else 1
        alias = min(div_up(1001, ITEM), alias)
        return max(1, min(positions, most, alias))

    def _channel_block(self, block: int, positions: int, rows: int) -> int:
        """``select_ic_block``: input channels a kernel call sums (all of them, up to 80 vectors
        and what L2 holds)."""
        vectors = div_up(self.channels, SIMD)
        rows_guess = min(positions, {64: 6, 48: 9, 32: 14}.get(block, 28))
        fit = (self.l2 - rows * block * ITEM) // ((block * ITEM + rows_guess * ITEM) * SIMD)
        most = max(1, min(5 * SIMD, vectors, fit))
        chosen = 1
        for count in range(min(most, vectors), 0, -1):
            if vectors / up(vectors, count) >= 0.5:
                chosen = count
                break
        return min(self.channels, chosen * SIMD)

    def _score(self, block: int, positions: int, depth: int, rows: int, lanes: int) -> float:
        """``est_eff_1x1``: padding, register use, spatial and thread balance, caches, kernel."""
        batch, filters, channels, threads, total = self.batch, self.filters, self.channels, self.threads, self.positions
        filter_blocks, position_blocks = div_up(filters, block), div_up(total, positions)
        microkernel = lanes * rows / ((rows + lanes) * REGISTERS)
        row_fill = positions / up(positions, rows)
        squeeze = rows * (2.0 - min(1.9, rows / positions)) / 64
        kernel = (1 + squeeze) / 2
        work = batch * filter_blocks * position_blocks
        spatial = total / up(total, positions)
        padding = filters / up(filters, block)
        per_thread = div_up(work, threads)
        # thread 0's share of whole blocks (v3.12's ``grid_coverage``) against an even split
        first = _balance211(work, threads, 0)
        share = (_grid_coverage(first, filters, block, total, positions) if self.filters_inner
                 else _grid_coverage(first, total, positions, filters, block))
        balance = 1.0 if share == 0 else batch * total * filters / (share * threads)
        cache = batch * total * channels * filters / (threads * self._traffic(block, positions, depth, rows, lanes,
                                                                             per_thread))
        return padding * microkernel * spatial * balance * row_fill * cache * kernel

    def _traffic(self, block: int, positions: int, depth: int, rows: int, lanes: int, per_thread: int) -> float:
        """The loop nest's weighted reads (each level's source, destination and weight: size per
        iteration, repeats), inner level first, and a fixed cost per job."""
        filters, channels, total = self.filters, self.channels, self.positions
        filter_blocks, position_blocks = div_up(filters, block), div_up(total, positions)
        inner = self.filters_inner
        vec = lambda n: up(n, SIMD)  # noqa: E731
        per_filter = 1 if inner else position_blocks
        filter_blocks_thr = min(filter_blocks, div_up(per_thread, per_filter))
        filters_thr = min(filters, filter_blocks_thr * block)
        vectors_thr = div_up(filters_thr, SIMD)
        position_blocks_thr = min(position_blocks, div_up(per_thread, filter_blocks if inner else 1))
        positions_thr = min(total, position_blocks_thr * positions)
        weight_block = block * depth
        levels = [((rows * SIMD, 1, SIMD), (0, 1, 1), (block, 1, 1)),
                  ((rows * vec(depth), 1, 1), (rows * block, 1, 1), (weight_block, div_up(positions, rows), 1)),
                  ((positions * depth, 1, 1), (positions * block, div_up(channels, depth), 1), (weight_block, 1, 1))]
        weight_reads = lanes * channels
        if inner:
            levels.append(((positions * vec(channels), filter_blocks_thr, 1), (positions * block, 1, 1),
                           (block * channels, 1, 1)))
            weight_reads = vectors_thr * channels
        lanes_for_positions = SIMD * (vectors_thr if inner else lanes)
        levels.append(((positions * depth, 1, 1), (positions * lanes_for_positions, 1, 1),
                       (weight_reads * SIMD, position_blocks_thr, 1)))
        if not inner:
            levels.append(((vec(positions_thr * depth), filter_blocks_thr, 1), (block * positions_thr, 1, 1),
                           (block * channels, 1, 1)))
        samples_thr = min(self.batch, div_up(per_thread, position_blocks * filter_blocks))
        levels.append(((positions_thr * vec(depth), 1, 1), (vectors_thr * SIMD * positions_thr, 1, 1),
                       (vectors_thr * channels * SIMD, samples_thr, 1)))
        sources = samples_thr * positions_thr * depth
        results = samples_thr * vectors_thr * positions_thr
        weights = vectors_thr * channels
        levels.append(((sources, 1, 1), (results * SIMD, 1, 1), (weights * SIMD, 1, 1)))
        costs, repeats = [FAR_COST] * 3, [1.0] * 3
        for level in reversed(levels):
            for k, (size, repeat, overlap) in enumerate(level):
                costs[k] = self._read_cost(level, repeat * overlap, costs[k], broadcast=k == 0)
                repeats[k] *= repeat
        return (costs[0] * sources * repeats[0] + costs[1] * results * repeats[1] + costs[2] * weights * repeats[2]
                + 1000.0 * per_thread * div_up(channels, depth))

    def _read_cost(self, level: tuple, count: int, outer: float, broadcast: bool) -> float:
        """``io_k``: a read repeated ``count`` times costs the outer level's once, then what the
        level's footprint (L1 for a broadcast source, else L2) says."""
        if count < 1:
            return 0.0
        if count == 1:
            return outer
        source, results, weights = (part[0] for part in level)
        amount = (source + weights + results) * ITEM
        if broadcast and source * ITEM < self.l1:
            k = L1_COST
        else:
            k = L2_COST if amount < self.l2 else FAR_COST
        return (outer + k * (count - 1)) / count


def _register_block(rows: int, columns: int, depth: int, l1_bytes: int) -> tuple[int, int]:
    """``brgemm_blocking`` (AVX-512, float32): (rows a kernel call broadcasts, vectors of
    filters it holds), the rows chosen for register use and fill within L1."""
    vectors = columns // SIMD
    lanes = 4 if vectors // 4 else max(1, vectors % 4)
    most = min((REGISTERS - lanes - 1) // lanes, REGISTERS // lanes)
    best, chosen = 0.0, most
    for count in range(most, 0, -1):
        score = rows / up(rows, count) * (lanes * count) / ((lanes + count) * most)
        if ITEM * count * depth <= l1_bytes and score > best:
            chosen, best = count, score
    return chosen, lanes


def _balance211(work: int, threads: int, thread: int) -> int:
    """Jobs of ``thread`` when ``work`` jobs are split as oneDNN's ``balance211`` splits them."""
    if threads <= 1 or work == 0:
        return work
    more = div_up(work, threads)
    fewer_from = work - (more - 1) * threads
    return more if thread < fewer_from else more - 1


def _grid_coverage(blocks: int, x: int, x_block: int, y: int, y_block: int) -> int:
    """Elements the first ``blocks`` blocks of an ``x`` × ``y`` grid cover, ``x`` fastest, each
    block counted whole but the last row of ``y`` (oneDNN's ``grid_coverage``, one group)."""
    x_blocks, y_blocks = div_up(x, x_block), div_up(y, y_block)
    y_last, x_last = blocks // x_blocks, blocks % x_blocks
    y_start = (y_last % y_blocks) * y_block
    y_end = min(y, y_start + y_block)
    whole = (y_last // y_blocks) * x * y
    return whole + x * y_start + (x * (x_last // x_blocks) + (x_last % x_blocks) * x_block) * (y_end - y_start)
