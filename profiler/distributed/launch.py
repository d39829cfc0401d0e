"""Each rank's training-step peak, measured on a real process group of N local processes.

``torch.multiprocessing`` spawns N ranks (gloo on the CPU, NCCL on CUDA with one GPU per rank:
:func:`rank_device`; fresh interpreters: autograd's threads do not survive a fork) that meet
through a file store in a fresh temporary directory, so several launches can run at once. One
launch can run several jobs of the same world size in turn (each rank measures them one after the
other), which pays the ranks' start-up once. Each rank measures its own peak with the single-device
runner's method (:mod:`profiler.measuring.memory_trace`): the bytes of the storages alive before
the first step (the rank's parameters or shards, buffers, inputs, targets, DDP's gradient buckets),
then the CPU allocator's events of both steps, recorded by the PyTorch profiler and replayed in
time order; the peak is the highest live total while the second (steady) step runs, everything
alive counted (the first step's, from the strategy built, is kept too). Allocations that gloo's
worker threads make inside a collective are recorded too (the profiler's state travels with the
work); a free the profiler missed (a worker thread dropping a work's tensors after it ended) is put
back before its address is handed out again
(:func:`profiler.measuring.peak_breakdown.allocations`). The same profile, its phases and module
calls annotated, names what is alive at that peak by category
(:mod:`profiler.measuring.peak_breakdown`, as the runner does on one device). On CUDA each step's
peak is the caching allocator's ``max_memory_allocated`` instead (reset when the step starts), as
the runner reads it on one GPU; that path has not been run on a GPU here.

The profile starts after the strategy is built, not before: the start-up collectives' buffers
(DDP's broadcast of the parameters, its shape check) are held by gloo's work objects, which a
worker thread may drop after the work ran, outside the profiler's reach, so their frees would
sometimes go unrecorded (measured: 144 B or 28,132 B left over on one rank in about one run in
three).
"""
from __future__ import annotations

import contextlib
import os
import queue
import time
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from profiler.distributed.job import STEPS, Job, build, make_data, make_model, train_step
from profiler.errors import ModelsizeError

_STEP = "modelsize.distributed.step"


@dataclass(frozen=True)
class RankMeasurement:
    rank: int
    peak_bytes: int          # highest live total during the steady step
    start_bytes: int         # alive when it starts
    param_bytes: int         # the rank's parameter storages (FSDP2: its padded shards)
    events: int              # allocator events replayed
    breakdown: dict[str, int] = field(default_factory=dict)   # category -> bytes alive at the peak
    first_peak_bytes: int = 0   # highest live total during the first step (from the strategy built)
    remeasured: bool = False    # the first try was unsure (a gloo worker awake past a wait, a free unseen)
    lost_frees: int = 0         # frees the profiler missed, put back before their address was reused

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "peak_bytes": self.peak_bytes, "start_bytes": self.start_bytes,
                "param_bytes": self.param_bytes, "events": self.events, "breakdown": dict(self.breakdown),
                "first_peak_bytes": self.first_peak_bytes, "remeasured": self.remeasured,
                "lost_frees": self.lost_frees}


def max_local_ranks(device_kind: str = "cpu") -> int:
    """How many ranks this machine runs at once: one per CPU this process may use, or one per
    CUDA device."""
    if device_kind == "cuda":
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank_device(device_kind: str, rank: int) -> tuple[str, torch.device]:
    """The backend and the device of local rank ``rank``: gloo on the CPU; NCCL on CUDA, one GPU
    per rank (``cuda:rank``, set as the rank's current device before the group starts)."""
    if device_kind == "cuda":
        return "nccl", torch.device("cuda", rank)
    return "gloo", torch.device("cpu")


def measure(job: Job, *, timeout_s: float = 300.0) -> list[RankMeasurement]:
    """Launch ``job.world`` local ranks (gloo) and gather each rank's measurement, in rank order."""
    return measure_all([job], timeout_s=timeout_s)[0]


def measure_all(jobs: list[Job], *, timeout_s: float = 300.0) -> list[list[RankMeasurement]]:
    """Several jobs of one world size in one launch: each job's ranks' measurements, in order."""
    world, kind = jobs[0].world, jobs[0].device_kind
    if any(job.world != world or job.device_kind != kind for job in jobs):
        raise ValueError("one launch runs jobs of one world size and one device kind")
    check_world(world, kind)
    import torch.multiprocessing as mp
    context = mp.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="modelsize-gloo-") as folder:
        store = os.path.join(folder, "store")
        ranks = [context.Process(target=_rank_main, args=(jobs, r, world, store, results), daemon=True)
                 for r in range(world)]
        for process in ranks:
            process.start()
        gathered: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(gathered) < world:
                try:
                    rank, answer = results.get(timeout=1.0)
                except queue.Empty:
                    dead = [r for r, p in enumerate(ranks) if p.exitcode is not None and r not in gathered]
                    if dead:
                        raise RuntimeError(f"rank {dead[0]} ended without an answer "
                                           f"(exit code {ranks[dead[0]].exitcode})") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the ranks did not answer within {timeout_s:.0f} s") from None
                    continue
                gathered[rank] = answer
        finally:
            for process in ranks:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
    failed = {r: a for r, a in gathered.items() if isinstance(a, str)}
    if failed:
        rank, text = min(failed.items())
        raise RuntimeError(f"rank {rank} failed:\n{text}")
    return [[gathered[r][j] for r in range(world)] for j in range(len(jobs))]


def check_world(world: int, device_kind: str = "cpu") -> None:
    """One line when this machine cannot run ``world`` local ranks of ``device_kind``."""
    most = max_local_ranks(device_kind)
    if not isinstance(world, int) or world < 1 or world > most:
        per = "one per CUDA device" if device_kind == "cuda" else "one per CPU"
        raise ModelsizeError("world size larger than this machine can run", field="world-size",
                             expected=f"1 to {most} local ranks ({per})" if most
                             else "a CUDA device per rank (none here)",
                             received=str(world))


def _rank_main(jobs: list[Job], rank: int, world: int, store: str, results: Any) -> None:
    import torch.distributed as dist
    try:
        backend, device = rank_device(jobs[0].device_kind, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                                **({"device_id": device} if device.type == "cuda" else {}))
        try:
            results.put((rank, [_measure_settled(job, rank) for job in jobs]))
        finally:
            dist.destroy_process_group()
    except BaseException:   # the parent reports it; a rank must not hang the others' gather
        results.put((rank, traceback.format_exc()))


def _measure_settled(job: Job, rank: int) -> RankMeasurement:
    """The job measured on this rank, once more on every rank when a rank's try was unsure: a wait
    gave up on its gloo workers (:func:`_workers_let_go`), or the trace shows a free the profiler
    missed (an address handed out again while its block was still counted: a buffer gloo's worker
    freed after a wait inside C++, such as DDP's broadcast of the buffers); ``remeasured`` says so.
    A missed free whose address is never reused is not seen."""
    import torch.distributed as dist
    from dataclasses import replace
    UNSETTLED.clear()
    measured = _measure_rank(job, rank)
    unsure = len(UNSETTLED) + measured.lost_frees
    flag = torch.tensor([unsure], dtype=torch.int64, device=rank_device(job.device_kind, rank)[1])
    dist.all_reduce(flag)
    if not flag.item():
        return measured
    return replace(_measure_rank(job, rank), remeasured=True)


def _measure_rank(job: Job, rank: int) -> RankMeasurement:
    import gc
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.profiler import record_function
    from profiler.distributed.predict import local
    from profiler.measuring.memory_trace import _event_tree, _raw_events, capture, profiled
    from profiler.measuring.peak_breakdown import Annotator, Known, allocations, analyse, storages
    from profiler.measuring.runner import _cuda_block, storage_bytes
    torch.set_num_threads(job.threads)
    device = rank_device(job.device_kind, rank)[1]
    mesh = init_device_mesh(device.type, (job.world,))
    module = make_model(job).to(device)
    x, y = make_data(job, rank, device)
    model, opt = build(job, module, mesh, fake=False)
    del module
    param_bytes = storage_bytes([local(p) for p in model.parameters()])
    before_run = storages(_alive(model, opt, x, y))
    start = sum(nbytes for _, nbytes in before_run.values())

    cuda = _CudaPeaks(device) if device.type == "cuda" else None
    if cuda is not None:
        start = torch.cuda.memory_allocated(device)

    def steps() -> None:
        with Annotator(model) as notes:
            def mark(phase: str) -> None:   # the runner's phases: the loss is computed in forward's
                notes.mark("forward" if phase.startswith("loss") else phase)
            for step in range(STEPS):
                if cuda is not None:
                    cuda.start()
                with record_function(f"{_STEP} {step}"):
                    train_step(job, model, opt, x, y, mark)
                if cuda is not None:
                    cuda.stop()

    gc.disable()   # only reference counting frees, as in the runner's measured calls
    try:
        with _workers_let_go():
            with capture(record_shapes=job.amp is not None):   # operators' inputs: autocast's weight casts
                prof = profiled(steps)
    finally:
        gc.enable()
    dist.barrier()
    last = next(e for e in _raw_events(prof) if e.name() == f"{_STEP} {STEPS - 1}")
    tree = _event_tree(prof)
    memory = allocations(tree, device)   # in time order, frees the profiler missed put back
    current = first_peak = start
    before = None
    peak = 0
    for event in memory:
        if event.time > last.end_ns():
            break
        if before is None and event.time >= last.start_ns():
            before = peak = current
        current += event.nbytes
        if before is not None:
            peak = max(peak, current)
        else:
            first_peak = max(first_peak, current)
    if before is None:
        before = peak = current
    if cuda is not None:   # the caching allocator's own figures, as the runner reads them on CUDA
        (first_peak, peak), before = cuda.peaks, cuda.starts[-1]
    weights = storages(("parameters", t) for t in (*(local(p) for p in model.parameters()), *model.buffers()))
    known = Known(before=before_run, after=storages(_alive(model, opt, x, y)), weights=frozenset(weights))
    split = analyse(tree, device=device, known=known, baseline_bytes=start, peak_bytes=peak,
                    block=(lambda n: n) if cuda is None else _cuda_block, within=(last.start_ns(), last.end_ns()))
    return RankMeasurement(rank, peak, before, param_bytes, len(memory), split.categories, first_peak,
                           lost_frees=sum(e.put_back for e in memory))


class _CudaPeaks:
    """Each step's peak on a CUDA rank: the caching allocator's statistics reset when the step
    starts (``memory_allocated`` then) and ``max_memory_allocated`` when it ends, as the runner
    measures on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.starts: list[int] = []
        self.peaks: list[int] = []

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.starts.append(torch.cuda.memory_allocated(self.device))

    def stop(self) -> None:
        torch.cuda.synchronize(self.device)
        self.peaks.append(torch.cuda.max_memory_allocated(self.device))


def _alive(model: torch.nn.Module, opt: torch.optim.Optimizer, x: list[torch.Tensor],
           y: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The rank's storages by category (the runner's ``_alive``, with local shards and DDP's
    gradient buckets, which are gradients: the reducer's own tensors, which no parameter or
    gradient refers to before the first backward; listed by size, the ones given are copies)."""
    from profiler.distributed.predict import _state, local
    alive = [("parameters", local(t)) for t in (*model.parameters(), *model.buffers())]
    alive += [("gradients", local(p.grad)) for p in model.parameters() if p.grad is not None]
    reducer = getattr(model, "reducer", None)
    if reducer is not None:
        alive += [("gradients", b.buffer()) for b in reducer._get_zeros_like_grad_buckets()]
    alive += [("optimizer_state", t) for t in _state(opt)]
    return alive + [("inputs", t) for t in (*x, *y)]


@contextlib.contextmanager
def _workers_let_go(limit_s: float = 5.0) -> Iterator[None]:
    """Each ``Work.wait()`` returns once gloo's worker threads have let go of the work.

    A work holds its collective's tensors (FSDP2's all-gather output, gloo's copy of a
    reduce-scatter input); whichever thread drops the work last frees them. The caller's free is
    recorded; the worker's is not (the profiler's state is the worker's only while the work runs),
    and which one comes last is a race: a pause of 2 ms after ``wait`` lost it under heavy load
    (resnet18 FSDP2 rank 1 measured 12.8% over). A worker drops the work it ran before it looks at
    its queue again and sleeps there, so ``wait`` returns once every gloo worker thread of the rank
    sleeps (:func:`gloo_workers_asleep`); the caller's drop then comes last. Nothing is allocated.
    ``limit_s``: the longest it waits for them (a worker busy in another work sleeps too, waiting
    for its peers); past it, ``wait`` returns and the step is marked (:data:`UNSETTLED`).
    """
    from torch._C._distributed_c10d import Work
    wait = Work.wait

    def settled_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        done = wait(self, *args, **kwargs)
        if not gloo_workers_asleep(limit_s):
            UNSETTLED.append(time.monotonic_ns())
        return done

    Work.wait = settled_wait   # type: ignore[method-assign]
    try:
        yield
    finally:
        Work.wait = wait   # type: ignore[method-assign]


#: waits after which a gloo worker was still awake at the limit (its free may be unrecorded)
UNSETTLED: list[int] = []
_GLOO_WORKER = "pt_gloo_runloop"   # the name gloo's worker threads give themselves


def gloo_workers_asleep(limit_s: float, *, tasks: str = "/proc/self/task") -> bool:
    """Whether every gloo worker thread of this process was seen asleep (state S) twice in a row
    within ``limit_s`` seconds; True where threads cannot be read (no /proc)."""
    deadline = time.monotonic() + limit_s
    calm = 0
    while True:
        try:
            states = [_state(tasks, tid) for tid in gloo_workers(tasks)]
        except OSError:
            return True
        calm = calm + 1 if all(state == "S" for state in states) else 0
        if calm == 2:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.00005)


def gloo_workers(tasks: str = "/proc/self/task") -> list[str]:
    """The thread ids of this process's gloo worker threads."""
    return [tid for tid in os.listdir(tasks) if _name(tasks, tid) == _GLOO_WORKER]


def _name(tasks: str, tid: str) -> str:
    try:
        with open(f"{tasks}/{tid}/comm") as handle:
            return handle.read().strip()
    except OSError:   # the thread ended meanwhile
        return ""


def _state(tasks: str, tid: str) -> str:
    try:
        with open(f"{tasks}/{tid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "S"
