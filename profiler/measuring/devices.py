"""Where a model is measured: one small interface over the CPU and a CUDA GPU.

A :class:`Device` knows how to wait for its queued work (``synchronize``), how to read the
allocator-level peak of bytes allocated while a function runs (``peak``), how long a function takes
(``elapsed_ns``) and how to describe itself (``info``). The runner uses nothing else, so both paths
go through the same code.

Peaks count everything alive, not only what the function allocated:

- CUDA reads the caching allocator's statistics: ``reset_peak_memory_stats``, then
  ``memory_allocated`` before (the baseline) and ``max_memory_allocated`` after. These figures are
  in the allocator's blocks, rounded up to multiples of 512 bytes, and include whatever else is
  alive on the GPU (the cuBLAS workspace, for example). ``max_memory_reserved`` is reported beside
  them.
- The CPU has no allocator statistics, so the caller says how many bytes were alive before
  (``baseline_bytes``) and :func:`profiler.measuring.memory_trace.allocator_peak` replays every allocation and
  free of the c10 CPU allocator (requested sizes, not rounded) to find the highest point above it.

Running out of memory inside a measurement raises :class:`DoesNotFit`, so a caller can report
"does not fit" and keep what it measured before.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

from profiler.errors import DeviceError, ModelsizeError
from profiler.measuring.memory_trace import allocator_peak

# How allocation failures read when they come as a plain RuntimeError (the CPU allocator raises
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes").
_OOM_PHRASES = ("can't allocate memory", "cannot allocate memory", "not enough memory",
                "out of memory", "failed to allocate")


class DoesNotFit(ModelsizeError):
    """A measurement ran out of memory on its device: the model does not fit at this size."""

    def __init__(self, what: str, *, received: str | None = None, device: str | None = None,
                 phase: str | None = None):
        self.device = device
        self.phase = phase
        #: the part of a training step that ran out ("forward", "backward", "optimizer"), if known
        self.during: str | None = None
        #: what the runner had measured before the failure (filled in by ``profiler.measuring.runner``)
        self.partial: dict[str, Any] = {}
        super().__init__(what, received=received)

    def relabel(self, device: str, phase: str) -> None:
        self.device, self.phase = device, phase
        self.what = _does_not_fit(device, phase, self.during)
        self.args = (self.message(),)


def _does_not_fit(device: str, phase: str, during: str | None = None) -> str:
    where = f" (it ran out in the {during} pass)" if during in ("forward", "backward") else \
        " (it ran out in the optimizer's step)" if during == "optimizer" else ""
    return f"{phase} does not fit in the memory of {device}{where}"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA or CPU) rather than a bug."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(err, RuntimeError):
        text = str(err).lower()
        return any(phrase in text for phrase in _OOM_PHRASES)
    return False


@contextlib.contextmanager
def oom_guard(device: str, phase: str) -> Iterator[None]:
    """Turn an allocation failure inside the block into :class:`DoesNotFit`.

    The failed computation's frames are cleared so the tensors they hold are released now rather
    than when the caller drops the exception.
    """
    try:
        yield
    except DoesNotFit as err:   # raised further in (by Device.peak): name the caller's phase
        err.relabel(device, phase)
        raise
    except BaseException as err:  # noqa: BLE001 - re-raised unless it is an allocation failure
        if not is_out_of_memory(err):
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        traceback.clear_frames(err.__traceback__)
        raise DoesNotFit(_does_not_fit(device, phase), received=first_line,
                         device=device, phase=phase) from None


@dataclass(frozen=True)
class PeakReading:
    """Allocator-level bytes around one run of a function (everything alive is counted)."""
    peak_bytes: int                  # highest allocated bytes while the function ran
    baseline_bytes: int              # allocated bytes just before it ran
    end_bytes: int                   # allocated bytes just after it returned
    reserved_bytes: int | None = None  # CUDA: max_memory_reserved (caching allocator); CPU: None
    timeline: dict[str, Any] | None = None  # CPU: the allocator's running total, compact (profiler.timeline)

    @property
    def above_baseline(self) -> int:
        return self.peak_bytes - self.baseline_bytes

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


class Device:
    """What the runner needs from a device. Subclasses: :class:`CpuDevice`, :class:`CudaDevice`."""
    name: str

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.name)

    def synchronize(self) -> None:
        """Wait until all work queued on the device has finished."""

    def peak(self, fn: Callable[[], object], baseline_bytes: int) -> PeakReading:
        """Run ``fn`` once and return the allocator-level peak of bytes allocated while it ran."""
        raise NotImplementedError

    def elapsed_ns(self, fn: Callable[[], object]) -> float:
        """Run ``fn`` once between two ``synchronize`` and return its wall time in nanoseconds."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def free_bytes(self) -> int:
        """Memory a new measurement can still take on this device."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class CpuDevice(Device):
    name = "cpu"

    def peak(self, fn: Callable[[], object], baseline_bytes: int) -> PeakReading:
        with oom_guard(self.name, "measurement"):
            trace = allocator_peak(fn, baseline_bytes)
        return PeakReading(peak_bytes=baseline_bytes + trace.peak_bytes,
                           baseline_bytes=baseline_bytes,
                           end_bytes=baseline_bytes + trace.net_bytes, timeline=trace.timeline)

    def elapsed_ns(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter_ns()
        fn()
        return float(time.perf_counter_ns() - start)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "type": "cpu", "threads": torch.get_num_threads()}

    def free_bytes(self) -> int:
        """RAM the kernel can hand out without swapping (``psutil.virtual_memory().available``)."""
        import psutil
        return int(psutil.virtual_memory().available)


class CudaDevice(Device):
    def __init__(self, index: int = 0):
        self.index = index
        self.name = f"cuda:{index}"

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def peak(self, fn: Callable[[], object], baseline_bytes: int = 0) -> PeakReading:
        # baseline_bytes is not needed: the allocator knows what is alive.
        with oom_guard(self.name, "measurement"), torch.cuda.device(self.index):
            self.synchronize()
            torch.cuda.reset_peak_memory_stats(self.index)
            baseline = torch.cuda.memory_allocated(self.index)
            fn()
            self.synchronize()
        return PeakReading(peak_bytes=torch.cuda.max_memory_allocated(self.index),
                           baseline_bytes=baseline,
                           end_bytes=torch.cuda.memory_allocated(self.index),
                           reserved_bytes=torch.cuda.max_memory_reserved(self.index))

    def elapsed_ns(self, fn: Callable[[], object]) -> float:
        with torch.cuda.device(self.index):   # events record on this device's current stream
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            self.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
        return start.elapsed_time(end) * 1e6   # elapsed_time is in milliseconds

    def free_bytes(self) -> int:
        return int(torch.cuda.mem_get_info(self.index)[0])

    def info(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.index)
        return {"name": self.name, "type": "cuda", "model": props.name,
                "total_memory_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": int(props.multi_processor_count)}


def get_device(name: str | None = None) -> Device:
    """``None`` → the first GPU if CUDA is available, else the CPU; or "cpu", "cuda", "cuda:N"."""
    if name is None:
        return CudaDevice(0) if torch.cuda.is_available() else CpuDevice()
    text = name.strip().lower()
    if text == "cpu":
        return CpuDevice()
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no GPU or driver was found")
            raise DeviceError(f"CUDA is not available ({why})", field="device", expected='"cpu"',
                              received=repr(name))
        index_text = text.partition(":")[2] or "0"
        count = torch.cuda.device_count()
        if not index_text.isdigit() or int(index_text) >= count:
            raise DeviceError("no such CUDA device", field="device",
                              expected=f'"cuda:0" to "cuda:{count - 1}"', received=repr(name))
        return CudaDevice(int(index_text))
    raise DeviceError("unknown device", field="device", expected='"cpu", "cuda" or "cuda:N"',
                      received=repr(name))
