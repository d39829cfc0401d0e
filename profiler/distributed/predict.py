"""Each rank's training-step peak at world size N, predicted in one process without N devices.

Rank ``r`` of ``N`` runs for real on fake tensors: a fake process group (backend "fake", torch's
``FakeProcessGroup``: every collective returns at once, nothing is sent) at rank ``r`` and size
``N``, the strategy wrapped by :func:`profiler.distributed.strategies.parallelize`, and the job's
two training steps, under the memory engine's :class:`~profiler.engine.module_memory.StorageLog`
(every storage an operator makes and frees, kernels' workspace booked per call). What the
single-device log does not meet there is added here:

- DTensor operations (FSDP2's sharded parameters, their gradients and optimizer state): the log
  lets DTensor's own dispatch run first and logs the local operators it runs.
- Library code that reads tensor values (transformers' masks) answers as the real run does
  (:mod:`profiler.engine.value_reads`), as in the single-device engine.
- Storages resized in place (``UntypedStorage.resize_``: FSDP2 frees an unsharded parameter by
  resizing its storage to 0 and allocates it again before the next all-gather), which no operator
  reports.
- DTensor's sharding propagation, which runs each operator once more on fake tensors to learn its
  output's shape, is not logged (in a real run those are fake too).
- What a backend allocates inside a collective (:mod:`profiler.distributed.collectives`), the
  workspace of kernels run inside a custom operator (FSDP2's ``fsdp.chunk_cat``), and the storages
  made inside FSDP2's all-gather and reduce-scatter (``foreach_all_gather``, ``foreach_reduce``)
  unless named gradients later: the category "communication".
- FSDP2's check whether a shard is still its padded storage compares storages, not data pointers
  (a fake storage's is 0): see :func:`_shards_compared_by_storage`.

The peak is the second step's, everything alive counted, as the measured ranks report it
(:mod:`profiler.distributed.launch`); the first step's (from the strategy built: no gradients, no
optimizer state, what the strategy makes once) is kept beside it, for the fit. Ranks whose shards have the same sizes (FSDP2 shards dim 0 in
chunks of ``ceil(d / N)``, the last ranks getting less or nothing) have the same peak: one rank of
each group is replayed. Data-parallel ranks are alike; ZeRO-1's ranks are grouped by the sizes in
the partition ``ZeroRedundancyOptimizer`` itself makes (on meta parameters).

``job.device_kind == "cuda"`` predicts CUDA ranks from the same replay, as far as it carries over
(as the single-device engine does): optimizers on their foreach path, no CPU kernel workspace, and
no backend buffers (NCCL's live outside PyTorch's caching allocator); the planner rounds blocks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from profiler.distributed.collectives import buffers, fsdp_collectives_seen, wrapped_kernels
from profiler.engine.kernels.aten_cpu import kernel_workspace
from profiler.distributed.job import STEPS, Job, build, fake_model, train_step
from profiler.engine.memory_model import Peak
from profiler.engine.value_reads import answered_as_real
from profiler.engine.module_memory import StorageLog, Timeline, make_target
from profiler.rules.registry import Context


@dataclass(frozen=True)
class RankPrediction:
    rank: int
    peak_bytes: int
    at: str                                  # what was running at the peak
    breakdown: dict[str, int]                # category -> bytes alive at the peak
    start_bytes: int                         # alive when the measured step starts
    param_bytes: int                         # this rank's parameter storages (shards, padded as stored)
    local_param_numel: int                   # elements of this rank's parameters, padding excluded
    shard_numel: dict[str, int] = field(default_factory=dict)   # parameter -> local elements (FSDP)
    timeline: Timeline | None = None         # the steady step's allocations and frees (not saved)
    first: Peak | None = None                # the first step's peak, from the strategy built
    first_timeline: Timeline | None = None   # its allocations and frees (not saved)

    def as_dict(self) -> dict[str, Any]:
        first = None if self.first is None else {"peak_bytes": self.first.bytes, "at": self.first.at,
                                                  "breakdown": dict(self.first.breakdown)}
        return {"rank": self.rank, "peak_bytes": self.peak_bytes, "at": self.at,
                "breakdown": dict(self.breakdown), "start_bytes": self.start_bytes,
                "param_bytes": self.param_bytes, "local_param_numel": self.local_param_numel,
                "shard_numel": dict(self.shard_numel), "first_step": first}


class _RankLog(StorageLog):
    """The engine's storage log, with DTensor dispatch let through and storage resizes seen."""

    def __init__(self, names: dict[int, str], run: Context | None, backend: str = "gloo"):
        super().__init__(names, run)
        self.backend = backend
        self._propagating = False
        self._wrapped = wrapped_kernels()
        self._in_fsdp_collective = 0   # depth of FSDP2's all-gather / reduce-scatter calls running

    # DTensor's sharding propagation runs each operator once more on fake tensors (under the fake
    # mode it finds active: the replay's) to learn its output's shape; in a real run those are fake
    # too and allocate nothing. It holds ``ShardingPropagator._fake_mode_lock`` (a context manager
    # meant to be replaced) meanwhile: the log replaces it with itself and stops logging inside.
    def _pause(self) -> Any:
        log = self

        class Paused:
            def __enter__(self) -> None:
                log._propagating = True

            def __exit__(self, *exc: object) -> None:
                log._propagating = False

        return Paused()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        from torch.distributed.tensor import DTensor
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented   # DTensor runs its local operators, which come back here
        if self._propagating:   # DTensor's sharding propagation: shapes only, nothing allocated
            return func(*args, **(kwargs or {}))
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for group in buffers(func, args, self.backend):
            self._transient([(nbytes, "communication") for nbytes in group])
        inner = self._wrapped.get(func)
        if inner is not None and self.run is not None:   # CPU kernels' workspace (none booked for CUDA)
            booked = kernel_workspace(inner, args, out, self.run, self.phase == "backward", kwargs)
            self._transient([(nbytes, "communication") for nbytes in booked])
        return out

    def __enter__(self) -> "_RankLog":
        original = torch.UntypedStorage.resize_

        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            result = original(storage, size)
            self._resized(storage)
            return result

        from torch.distributed.tensor._sharding_prop import ShardingPropagator
        self._original_resize = original
        self._original_lock = ShardingPropagator._fake_mode_lock
        torch.UntypedStorage.resize_ = resize_   # type: ignore[method-assign]
        ShardingPropagator._fake_mode_lock = self._pause()
        self._unpatch = fsdp_collectives_seen(self._fsdp_collective)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        from torch.distributed.tensor._sharding_prop import ShardingPropagator
        super().__exit__(*exc)
        torch.UntypedStorage.resize_ = self._original_resize   # type: ignore[method-assign]
        ShardingPropagator._fake_mode_lock = self._original_lock
        self._unpatch()

    @contextlib.contextmanager
    def _fsdp_collective(self) -> Iterator[None]:
        self._in_fsdp_collective += 1
        try:
            yield
        finally:
            self._in_fsdp_collective -= 1

    def _add(self, storage: torch.UntypedStorage | None, dtype: torch.dtype | None = None) -> int | None:
        """A new storage made inside FSDP2's all-gather or reduce-scatter is communication, as the
        measured side names what is made in their ranges (unless it is later named a gradient)."""
        known = storage is None or id(storage) in self._serial
        serial = super()._add(storage, dtype)
        if serial is not None and not known and self._in_fsdp_collective:
            self.category.setdefault(serial, "communication")
        return serial

    def name_start_up(self, category: str) -> None:
        """Give ``category`` to what the strategy's start-up made and keeps (DDP's gradient
        buckets, the reducer's own tensors, out of Python's reach)."""
        for serial in self._nbytes:
            if self.phase_of[serial] == "start" and serial not in self.category:
                self.category[serial] = category

    def _resized(self, storage: torch.UntypedStorage) -> None:
        serial = self._serial.get(id(storage))
        if serial is None:
            if storage.nbytes():
                self._add(storage)
        elif self._nbytes[serial] != storage.nbytes():
            if not self._nbytes[serial]:   # freed by a resize to 0, made again now (FSDP2's
                self.phase_of[serial] = self.phase   # unsharded parameters): named by when
                self.module_of.pop(serial, None)     # (a block the allocator hands out anew)
                if self.phase == "forward" and self._stack:
                    self.module_of[serial] = self._stack[-1]
            self._resize(serial, storage.nbytes())


def local(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The rank's own tensor behind a DTensor (FSDP2's shards), or the tensor itself."""
    from torch.distributed.tensor import DTensor
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def predict_rank(job: Job, rank: int) -> RankPrediction:
    """Rank ``rank``'s steady training step at the job's world size (see the module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with _fake_group(rank, job.world) as mesh, _unverified(), _shards_compared_by_storage(), answered_as_real():
        fake = FakeTensorMode()
        module = fake_model(job, fake)
        with fake:
            x = [torch.empty(s, dtype=torch.int64 if k == "int64" else getattr(torch, job.dtype))
                 for s, k in zip(job.shapes(), job.input_dtypes)]
            out_dtype = torch.float32 if job.amp else getattr(torch, job.dtype)
            y = [make_target(job.loss, s, out_dtype) for s in job.output_shapes]
        names = {id(m): n for n, m in module.named_modules()}
        cuda = job.device_kind == "cuda"
        run = None if cuda else Context(device_kind="cpu", amp=job.amp, threads=job.threads)
        log = _RankLog(names, run, backend="nccl" if cuda else "gloo")
        previous = torch.get_num_threads()
        torch.set_num_threads(job.threads)
        try:
            log.seed([*module.parameters(), *module.buffers()], "parameters")
            log.seed([*x, *y], "inputs")
            with fake, log:
                log.set_phase("start")
                model, opt = build(job, module, mesh, fake=True)
                if cuda:   # CUDA optimizers take their foreach (multi-tensor) path
                    for group in getattr(opt, "optim", opt).param_groups:
                        group["foreach"] = True
                params = [local(p) for p in model.parameters()]
                log.mark(params, "parameters")
                if getattr(model, "reducer", None) is not None:
                    log.name_start_up("gradients")
                built = log.cut()
                for step in range(STEPS):
                    if step == STEPS - 1:
                        log.mark([local(p.grad) for p in model.parameters()], "gradients")
                        log.mark(list(_state(opt)), "optimizer_state")
                        first_step = log.cut()
                    train_step(job, model, opt, x, y, log.set_phase)
            # this step's gradients, named after the fact as the measurement names them
            log.mark([local(p.grad) for p in model.parameters()], "gradients")
            measured = log.cut()
            before = built + first_step
            first = log.peak([built, first_step], start=len(built))
            first_timeline = log.timeline([built, first_step], start=len(built))
            peak: Peak = log.peak([before, measured], start=len(before))
            timeline = log.timeline([before, measured], start=len(before))
            start = log.peak([before], start=len(before)).bytes
            shards = _shard_numel(model)
            param_bytes = sum({id(p.untyped_storage()): p.untyped_storage().nbytes() for p in params}.values())
            numel = sum(shards.values()) if shards else sum(p.numel() for p in params)
        finally:
            log.close()
            torch.set_num_threads(previous)
    return RankPrediction(rank, peak.bytes, peak.at, dict(peak.breakdown), start, param_bytes, numel, shards,
                          timeline, first, first_timeline)


def _state(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    inner = getattr(opt, "optim", opt)   # ZeroRedundancyOptimizer keeps the rank's optimizer there
    for state in inner.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield local(value)


def _shard_numel(model: torch.nn.Module) -> dict[str, int]:
    """Parameter name -> elements this rank holds, for DTensor (FSDP2) parameters."""
    from torch.distributed.tensor import DTensor
    return {name: p.to_local().numel() for name, p in model.named_parameters() if isinstance(p, DTensor)}


def chunk_sizes(d: int, world: int) -> list[int]:
    """Rows of a dim-0 size ``d`` on each rank as FSDP2 shards it (``torch.chunk``: ``ceil(d / N)``
    rows each, the last ranks less or none)."""
    rows = -(-d // world)
    return [max(0, min(rows, d - r * rows)) for r in range(world)]


def rank_groups(job: Job) -> list[list[int]]:
    """Ranks with the same shards, which have the same peak (see the module docstring)."""
    if job.strategy.name == "ddp":
        return [list(range(job.world))]
    with torch.device("meta"):
        module = job.factory()
    if job.strategy.name == "zero1":
        per_rank = _zero1_partitions(module, job.world)
    else:
        dims = [p.shape[0] if p.dim() else 1 for p in module.parameters()]
        sizes = [chunk_sizes(d, job.world) for d in dims]
        per_rank = [tuple(s[r] for s in sizes) for r in range(job.world)]
    groups: dict[Any, list[int]] = {}
    for r, signature in enumerate(per_rank):
        groups.setdefault(signature, []).append(r)
    return list(groups.values())


def _zero1_partitions(module: torch.nn.Module, world: int) -> list[tuple[tuple[int, str], ...]]:
    """Each rank's ZeRO-1 partition as the sizes and dtypes of its parameters, from
    ``ZeroRedundancyOptimizer``'s own partitioning (meta parameters, a fake process group)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    with _fake_group(0, world):
        zero = ZeroRedundancyOptimizer(list(module.parameters()), optimizer_class=torch.optim.SGD, lr=0.01)
        parts = zero._partition_parameters()
        return [tuple(sorted((p.numel(), str(p.dtype)) for group in groups for p in group["params"]))
                for groups in parts]


def predict(job: Job) -> list[RankPrediction]:
    """Every rank's prediction, one replay per group of alike ranks, in rank order."""
    out: dict[int, RankPrediction] = {}
    for group in rank_groups(job):
        first = predict_rank(job, group[0])
        for r in group:
            out[r] = first if r == group[0] else _as_rank(first, r)
    return [out[r] for r in range(job.world)]


def _as_rank(pred: RankPrediction, rank: int) -> RankPrediction:
    from dataclasses import replace
    return replace(pred, rank=rank)


@contextlib.contextmanager
def _fake_group(rank: int, world: int) -> Iterator[Any]:
    """A fake process group (rank ``rank`` of ``world``) as the default group, and its device mesh
    (made before any fake tensor exists: a mesh reads its ranks' values)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    if dist.is_initialized():
        raise RuntimeError("a process group is initialized already: predict in a process without one")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _unverified() -> Iterator[None]:
    """DDP checks that every rank's parameters have the same shapes by reading them (data a fake
    tensor has not): a check, no memory, skipped in the prediction."""
    import torch.nn.parallel.distributed as ddp_module
    check = ddp_module._verify_param_shape_across_processes
    ddp_module._verify_param_shape_across_processes = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ddp_module._verify_param_shape_across_processes = check


@contextlib.contextmanager
def _shards_compared_by_storage() -> Iterator[None]:
    """FSDP2 pads a rank's uneven shard again at its first forward unless the shard is still the
    padded storage it made, which it checks by comparing data pointers (every fake storage's is 0,
    so the replay would pad a second copy that a real run never makes). The replay compares the
    storages themselves (its check also takes a fake tensor for a subclass, whose pointer it does not
    compare), and keeps the rest of ``reset_sharded_param`` as it is."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam
    original = FSDPParam.reset_sharded_param

    def reset_sharded_param(self: Any) -> None:
        info = self._module_info
        param = getattr(info.module, info.param_name)
        data = self._sharded_param_data
        if param is self.sharded_param and isinstance(data, torch.Tensor) \
                and data.untyped_storage() is param._local_tensor.untyped_storage():
            self._sharding_spec = param._spec   # all that a real run does when it is the same
            return
        original(self)

    FSDPParam.reset_sharded_param = reset_sharded_param   # type: ignore[method-assign]
    try:
        yield
    finally:
        FSDPParam.reset_sharded_param = original   # type: ignore[method-assign]
