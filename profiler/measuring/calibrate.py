"""Calibrate the time model on this machine: a few seconds of benchmarks, run once and cached.

Two kinds of measurement, each at the thread count the runs will use:

- **Micro-benchmarks**: matrix multiplies (n × n, n = 8 … 1024, skinny ones and small linear
  layers) and convolutions of each kernel family down to its floor (a 1 × 1 map), and each
  family's strided ones (stride 2), and wide layers on small maps (oneDNN runs them as a family of
  its own, priced by its bytes), forward and backward, in float32 and bfloat16 — time against
  FLOPs, by size class; an out-of-place ``add`` from 16 to 4 M elements — time against bytes, and
  the bandwidth from the largest; 2 × 2 poolings in both memory layouts; operators far slower per
  byte than an add (a batch's ``var_mean``, dropout's ``bernoulli_``, a softmax over rows shorter
  than a vector) and LSTM layers. Each the median of five interleaved rounds, warm
  (:func:`typical_calls`); they price an operator the calibration models below never called. Each
  call's first run in a round, after all the others, against its run right after: what a kernel
  not run since its caches were flushed costs more (:func:`_cold_calls`). And what a read costs
  more when the tensor was last touched far back: a multiply cycled over 1 to 24 weights of 4 MB,
  the time over the warm one's per byte against the reuse distance (:mod:`profiler.engine.reuse`),
  and how much of it a call's own arithmetic hides (the same weights on 16 rows, warm and cold).
  And what a buffer too large for glibc's heap costs to map fresh at each allocation, per byte;
  and a host call a model's Python makes outside any operator (:mod:`profiler.engine.host_calls`),
  after a cache sweep. Everything else runs on a heap that keeps its pages (:func:`_steady_heap`),
  as a measured model's steady runs mostly do.
- **Calibration models**: small networks of PyTorch's own layers (a CNN with batch norm, pooling,
  depthwise and 1 × 1 convolutions; a transformer encoder, eager and fused; an MLP; an LSTM and a
  GRU), each at two batch sizes, run for real for inference and a training step with SGD and Adam.
  A dispatch mode times every aten operator call (the median of five rounds, each round the
  instrumented step and then each phase plain, so the machine's other work moves both sides
  alike; the plain phases' median too, the statistic a measurement reports); a run of its own,
  not timed, prices each call's work with the same :func:`~profiler.engine.op_cost.op_cost` the
  prediction uses (:class:`_CallLog`): each operator gets its own curve of time against work (bytes, or FLOPs for
  matrix multiplies and convolutions, by kernel family). What the runs take beyond their operator
  calls — Python, module calls, autograd's bookkeeping — is fitted per phase as seconds per
  operator call, apart for calls Python issued and calls C++ issued (the model's own sum, its
  floors included, missing the runs by the least: :func:`least_misses`), beyond what a call Python issues costs more than one C++ issues
  (:mod:`profiler.engine.python_calls`) and what a module call costs, which micro-benchmarks
  measure.

The result, a :class:`~profiler.engine.step_time.DeviceModel`, is cached as JSON under
``$MODELSIZE_CACHE_DIR`` (default ``~/.cache/modelsize``), written atomically, and used only for the
same machine, torch version, thread count and oneDNN ISA setting: any other gets its own file, and a
file whose recorded key differs is recomputed (``modelsize calibrate`` reruns it anyway).
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from profiler.engine.op_cost import OpCost, op_cost
from profiler.engine.step_time import CHANNELS_LAST, Curve, DeviceModel, cold_kind, curve_key

#: bump when what is measured changes: older cache files are then recomputed
VERSION = 30
_DTYPES = ("float32", "bfloat16")


# ----------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    base = os.environ.get("MODELSIZE_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "modelsize"


def machine_key(threads: int) -> dict[str, Any]:
    """What a calibration is valid for."""
    from profiler.measuring.machine import cpu_model
    return {"version": VERSION, "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
            "torch_version": torch.__version__, "threads": threads,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"calibration-cpu-{digest}.json"


def cpu_model_for(threads: int | None = None, *, recalibrate: bool = False,
                  progress: Callable[[str], None] | None = None) -> tuple[DeviceModel, bool]:
    """This machine's device model at ``threads`` (default: torch's): (model, whether it was just
    measured). Read from the cache when valid, else measured and cached."""
    threads = threads or torch.get_num_threads()
    key = machine_key(threads)
    path = cache_path(key)
    if not recalibrate:
        cached = read_cache(path, key)
        if cached is not None:
            return cached, False
    model = calibrate(threads, progress=progress)
    write_cache(path, {"key": key, "model": model.as_dict()})
    return model, True


def read_cache(path: Path, key: dict[str, Any]) -> DeviceModel | None:
    """The cached model, or None when there is none, it is unreadable or made for another key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        return DeviceModel.from_dict(data["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass   # an unwritable cache costs a recalibration next time, nothing else


# ----------------------------------------------------------------------------------------------
# Micro-benchmarks


def _seconds(fn: Callable[[], object], budget: float = 0.02, inner: int = 1) -> float:
    """Seconds of one call of ``fn`` (which makes ``inner`` calls): the fastest of the runs that fit
    in about ``budget`` s. The fastest, not the median: a micro-benchmark's slow runs are the
    machine's other work (a descheduled thread costs a whole time slice), not the kernel's."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    samples = []
    for _ in range(max(3, min(30, int(budget / once)))):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) / inner)
    return min(samples)


def _loop(fn: Callable[[], object], inner: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(inner):
            fn()
    return run


def _timed_calls(run: Any, calls: Sequence[Callable[[], object]], rounds: int = 5,
                 first_runs: list[tuple[OpCost, float]] | None = None) -> list[tuple[OpCost, float]]:
    """Each call's operators, priced (:func:`_priced`) and timed: :func:`typical_calls` of
    ``rounds`` rounds, each round every call in turn, run once and then again, the second run the
    call's time (warm: a 16-element add timed right after a convolution read 8.6 µs, warm 1.1 µs).
    Interleaved, not each call's runs back to back: a burst of the machine's other work
    (milliseconds) then slows one round of a call, not all of its runs. The first runs, a round of
    all the others since each call's last (its kernel's caches flushed), are timed too: each
    operator call's typical first run less its typical second is added to ``first_runs`` where
    given (:func:`_cold_calls`)."""
    def within(log: Any, call: Callable[[], object]) -> None:
        with log:
            call()

    priced = []
    for call in calls:
        call()
        priced.append(_priced(run, lambda log, call=call: within(log, call)))
    found: list[list[list[tuple[OpCost, float]]]] = [[] for _ in calls]
    first: list[list[list[tuple[OpCost, float]]]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, call in enumerate(calls):
            cold, timer = _bare_timer(), _bare_timer()
            with cold:
                call()
            with timer:
                call()
            _add_round(first[i], _with_times(priced[i], cold))
            _add_round(found[i], _with_times(priced[i], timer))
    timed = [typical_calls(rounds_of_call) for rounds_of_call in found]
    if first_runs is not None:
        for warm, cold in zip(timed, (typical_calls(rounds_of_call) for rounds_of_call in first)):
            if len(warm) == len(cold):
                first_runs += [(cost, once - again) for (cost, again), (_, once) in zip(warm, cold)]
    return [call for calls_of_one in timed for call in calls_of_one]


#: the most bytes a micro-benchmark call moves to count in :func:`_cold_calls`: a larger call's
#: first run is mostly its data's cold reads, whose price (the cold reads' farthest rate) misses by
#: more than a kernel's cold cost (the matrix multiplies' figure read 27-64 µs over calibrations
#: with every call counted)
COLD_CALL_BYTES = 2 ** 20


def _cold_calls(first_runs: Sequence[tuple[OpCost, float]],
                cold_read: tuple[tuple[float, float], ...]) -> dict[str, float]:
    """Seconds a call takes more when its kernel has not run since its caches were flushed, by
    :func:`~profiler.engine.step_time.cold_kind`: the median over the micro-benchmarks' calls of
    each kind of a call's first run in a round (all the other calls ran since its last) less its
    run right after (``first_runs``: :func:`_timed_calls`), less what reading its inputs from
    memory costs (``cold_read``, priced apart); never negative. Its code, its kernel's state and
    its small tensors' latency, which a network pays on every layer of its own: timm deit_tiny's
    patch embedding, its one convolution, replayed in order took 327 µs forward against 149
    repeated (Intel Xeon, 2 threads)."""
    reads = DeviceModel(name="cpu", method="measured", cold_read=cold_read)
    extra: dict[str, list[float]] = {}
    for cost, more in first_runs:
        if cost.kind != "view" and cost.bytes <= COLD_CALL_BYTES:
            far = reads.cold_seconds(cost, [(nbytes, math.inf) for _, nbytes in cost.reads])
            extra.setdefault(cold_kind(cost), []).append(more - far)
    return {kind: max(statistics.median(found), 0.0) for kind, found in extra.items()}


def _priced(run: Any, instrumented: Callable[[Any], object]) -> list[OpCost]:
    """The operator calls ``instrumented(log)`` makes, priced: a run of its own, whose times are
    not kept (see :class:`_CallLog`)."""
    log = _CallLog(run)
    instrumented(log)
    return [cost for cost, _ in log.calls]


def _bare_timer() -> Any:
    """The timer of the timed runs: each operator call timed and nothing else done between them
    (which calls Python issued, and each call's work, come from a run priced apart)."""
    from profiler.measuring.devices import get_device
    from profiler.measuring.timing import OpTimer
    return OpTimer(get_device("cpu"), {})


def _with_times(priced: list[OpCost], timer: Any) -> list[tuple[OpCost, float]]:
    """Each priced call with its time in ``timer``'s run of the same calls; none if that run made
    other calls (a first call's lazy set-up)."""
    names = [(op, ns) for _, _, op, ns in timer.calls if not op.startswith(("prim.", "profiler."))]
    if len(names) != len(priced) or any(cost.packet != op for cost, (op, _) in zip(priced, names)):
        return []
    return [(cost, ns / 1e9) for cost, (_, ns) in zip(priced, names)]


def _add_round(found: list[list[tuple[OpCost, float]]], calls: list[tuple[OpCost, float]]) -> None:
    """A round's calls kept beside the earlier rounds' (a round that made other calls than its
    priced run, :func:`_with_times`, is left out; one of another length starts them again)."""
    if not calls:
        return
    if found and len(found[0]) != len(calls):
        found.clear()
    found.append(calls)


def typical_calls(rounds: Sequence[Sequence[tuple[OpCost, float]]]) -> list[tuple[OpCost, float]]:
    """Each call of several rounds of the same calls at its median time over them: the statistic a
    measurement reports (:mod:`profiler.measuring.timing`), so a call's curves price what it
    typically takes on this machine, its neighbours' work included, not its fastest run. Three
    pairs of calibrations taken one after the other, each scored against the measurements of the
    real-world zoo next to it (four comparisons): the fastest priced the forward passes 7-14
    points lower (median signed error), each time further from them.

    >>> call = OpCost("aten.neg.default", "memory", "forward", "", "float32", "", 0, 4, 4)
    >>> typical_calls([[(call, 3.0)], [(call, 1.0)], [(call, 2.0)]])[0][1]
    2.0
    """
    if not rounds:
        return []
    return [(cost, statistics.median(found[k][1] for found in rounds)) for k, (cost, _) in enumerate(rounds[0])]


def _micro_benchmarks(dtype: torch.dtype) -> list[Callable[[], object]]:
    """Matrix multiplies, convolutions (forward and backward, both kernel families),
    element-wise adds, batch variances, dropout masks, softmaxes over short rows, LSTM layers and
    2 × 2 poolings (contiguous and channels-last) across sizes, in ``dtype``."""
    aten = torch.ops.aten
    calls: list[Callable[[], object]] = []
    for n in (8, 32, 128, 256, 512, 1024):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        calls.append(lambda a=a, b=b: torch.mm(a, b))
    for rows, inner, cols in ((4, 2048, 2048), (1, 4096, 1024), (16, 1024, 4096)):   # skinny: weight-bound
        a, b = torch.randn(rows, inner).to(dtype), torch.randn(inner, cols).to(dtype)
        calls.append(lambda a=a, b=b: torch.mm(a, b))
    # small linear layers (a recurrent cell's step, a narrow attention's projections), warm: in the
    # calibration models such a call is often the first after others and slower timed that way
    # (a GRU's 16 × 32 by 32 × 192 input projection: 42 µs there, 6 µs repeated from Python)
    for rows, inner, cols in ((1, 32, 96), (1, 64, 192), (8, 64, 192), (16, 32, 192), (32, 64, 256), (64, 128, 512)):
        a, b, bias = (torch.randn(rows, inner).to(dtype), torch.randn(cols, inner).to(dtype).t(),
                      torch.randn(cols).to(dtype))
        calls.append(lambda a=a, b=b, bias=bias: torch.addmm(bias, a, b))
    # (batch, channels, side, kernel, groups): each kernel family across sizes (batch 1 float32
    # runs torch's im2col kernels, larger batches oneDNN; groups = channels is depthwise)
    for batch, channels, size, kernel, groups in (
            (1, 8, 8, 3, 1), (1, 32, 32, 3, 1), (1, 64, 32, 3, 1), (1, 128, 16, 3, 1), (1, 256, 8, 3, 1),
            (1, 64, 32, 1, 1), (1, 256, 16, 1, 1), (2, 32, 16, 3, 1), (2, 64, 32, 3, 1), (4, 64, 56, 3, 1),
            (8, 128, 28, 3, 1), (4, 256, 14, 1, 1), (4, 64, 32, 3, 8), (8, 128, 16, 3, 16),
            (4, 64, 32, 3, 64), (8, 128, 16, 5, 128), (1, 32, 32, 3, 32),
            (1, 512, 2, 3, 1), (1, 256, 4, 3, 1), (4, 512, 2, 3, 1),   # small maps, large weights
            # tiny calls, each kernel family's floor (a mobile network's 1 × 1 squeeze-excite
            # convolutions on 1 × 1 maps): oneDNN's is tens of microseconds on two threads, ten
            # times torch's im2col kernel's, so no family's floor is read off another's curve
            (2, 8, 1, 1, 1), (4, 16, 1, 1, 1), (4, 72, 1, 1, 1), (2, 16, 4, 1, 1), (4, 24, 4, 1, 1),
            (4, 64, 8, 1, 1), (2, 8, 4, 3, 1), (4, 16, 8, 3, 1), (1, 16, 1, 1, 1), (1, 8, 4, 1, 1),
            (2, 16, 4, 3, 16), (4, 72, 4, 5, 72), (4, 144, 2, 5, 144), (1, 16, 4, 3, 16),
            # batch 1, 1 × 1: torch's kernel multiplies the input as it lies (no unfolding)
            (1, 32, 16, 1, 1), (1, 96, 8, 1, 1), (1, 48, 28, 1, 1), (1, 576, 4, 1, 1), (1, 128, 4, 1, 1)):
        calls += _convolution(dtype, batch, channels, channels, size, kernel, groups, stride=1)
    # (batch, in channels, out channels, side, kernel, groups) at stride 2: each kernel family's
    # strided convolutions, a family of their own (a network's downsampling: stems, each stage's
    # first convolution, its 1 × 1 shortcut)
    for batch, channels, out, size, kernel, groups in (
            (2, 16, 32, 16, 3, 1), (4, 32, 64, 16, 3, 1), (4, 64, 128, 16, 3, 1), (8, 128, 256, 8, 3, 1),
            (4, 192, 96, 4, 3, 1), (4, 64, 128, 32, 1, 1), (4, 128, 256, 8, 1, 1), (1, 3, 32, 64, 7, 1),
            (4, 3, 32, 64, 3, 1),
            (1, 16, 32, 32, 3, 1), (1, 64, 128, 16, 3, 1), (1, 128, 256, 8, 3, 1), (1, 64, 128, 16, 1, 1),
            (1, 3, 16, 64, 3, 1),
            (1, 16, 16, 32, 3, 16), (4, 64, 64, 16, 3, 64), (4, 96, 96, 16, 5, 96), (1, 72, 72, 16, 5, 72),
            (4, 32, 32, 8, 3, 32), (4, 64, 64, 16, 3, 8), (1, 48, 48, 16, 3, 6)):
        calls += _convolution(dtype, batch, channels, out, size, kernel, groups, stride=2)
    # (batch, in channels, out channels, side, kernel) of wide layers on small maps, over fewer
    # positions than a quarter of a filter's weights: oneDNN runs them, forward and backward, far
    # below its FLOP rate, a family of their own (``aten_cpu._short_reduction``: a densenet's last
    # transition, a resnet's last stage on a small input, a mobile network's head and
    # squeeze-excite convolutions on 1 × 1 maps)
    for batch, channels, out, size, kernel in ((4, 1024, 512, 4, 1), (4, 512, 512, 4, 1), (8, 512, 256, 2, 1),
                                               (4, 256, 256, 4, 3), (4, 512, 512, 4, 3), (2, 64, 64, 4, 3),
                                               (4, 288, 1024, 1, 1), (4, 960, 1280, 1, 1), (4, 576, 144, 1, 1)):
        calls += _convolution(dtype, batch, channels, out, size, kernel, 1, stride=1)
    # (batch, in channels, out channels, side, kernel, groups, stride) on channels-last tensors,
    # whose loop nests are families of their own (:data:`~profiler.engine.step_time.CHANNELS_LAST`):
    # depthwise ones (a ConvNeXt's 7 × 7 after its permutes, a mobile network's), oneDNN's and torch's
    # im2col ones, strided and not
    for batch, channels, out, size, kernel, groups, stride in (
            (1, 24, 24, 16, 7, 24, 1), (1, 64, 64, 2, 7, 64, 1), (4, 48, 48, 8, 7, 48, 1), (4, 64, 64, 32, 3, 64, 1),
            (1, 16, 16, 32, 3, 16, 2), (4, 64, 64, 16, 3, 64, 2),
            (2, 32, 32, 16, 3, 1, 1), (4, 64, 64, 32, 3, 1, 1), (4, 256, 256, 8, 1, 1, 1), (4, 32, 64, 16, 3, 1, 2),
            (1, 32, 32, 16, 3, 1, 1), (1, 8, 8, 8, 3, 1, 1), (1, 32, 32, 16, 1, 1, 1), (1, 96, 96, 8, 1, 1, 1),
            (1, 24, 32, 16, 2, 1, 2), (1, 48, 64, 4, 2, 1, 2), (1, 16, 32, 32, 3, 1, 2),
            # batch 1, 1 × 1, wide (a ConvNeXt's MLP as convolutions, timm convnext_atto's: with only
            # the narrow two above, its 160 → 640 on 4 × 4 was priced 224 µs at their bandwidth
            # and took 62-89; its forward pass +74 %)
            (1, 64, 256, 16, 1, 1, 1), (1, 160, 640, 4, 1, 1, 1), (1, 640, 160, 4, 1, 1, 1), (1, 320, 1280, 2, 1, 1, 1)):
        calls += _convolution(dtype, batch, channels, out, size, kernel, groups, stride=stride, channels_last=True)
    for n in (16, 4096, 65_536, 1_048_576, 4_194_304):
        a, b = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
        calls.append(lambda a=a, b=b: torch.add(a, b))
    # operators far slower per byte than an add, which no calibration model calls: a batch's
    # variance and mean (a Keras-style batch norm in training: 373 µs for 0.5 MiB, an add of it
    # 12 µs) and dropout's random mask
    for shape in ((2, 8, 8, 8), (8, 16, 32, 32), (4, 64, 28, 28)):
        x = torch.randn(shape).to(dtype)
        calls.append(lambda x=x: torch.var_mean(x, dim=(0, 2, 3), correction=0))
        calls.append(lambda x=x: x.bernoulli_(0.9))
    for rows in (64, 4096, 65_536):   # softmax over rows shorter than a vector (a class axis of 10)
        x = torch.randn(rows, 10).to(dtype)
        for forward, backward in ((aten._softmax, aten._softmax_backward_data),
                                  (aten._log_softmax, aten._log_softmax_backward_data)):
            out = forward(x, -1, False)
            calls.append(lambda x=x, forward=forward: forward(x, -1, False))
            calls.append(lambda out=out, backward=backward: backward(out, out, -1, out.dtype))
    # oneDNN's LSTM layer in inference, across sizes (float32: not every CPU runs a bfloat16 one)
    if dtype == torch.float32:
        for batch, steps, features, hidden in ((1, 16, 32, 64), (8, 16, 32, 64), (2, 24, 48, 96), (4, 12, 128, 128)):
            lstm, x = nn.LSTM(features, hidden, batch_first=True), torch.randn(batch, steps, features)
            calls.append(lambda lstm=lstm, x=x: lstm(x))
    pool, pool_backward = aten.max_pool2d_with_indices, aten.max_pool2d_with_indices_backward
    for shape in ((1, 16, 16, 16), (1, 64, 32, 32), (8, 16, 32, 32), (4, 64, 56, 56)):   # both layouts
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).to(dtype).contiguous(memory_format=layout)
            out, indices = pool(x, [2, 2], [2, 2])
            grad = torch.randn_like(out)
            calls.append(lambda x=x: pool(x, [2, 2], [2, 2]))
            calls.append(lambda x=x, grad=grad, indices=indices: pool_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                               False, indices))
            calls.append(lambda x=x: aten.avg_pool2d(x, [2, 2], [2, 2]))
    return calls


def _convolution(dtype: torch.dtype, batch: int, channels: int, out: int, size: int, kernel: int, groups: int,
                 *, stride: int, channels_last: bool = False) -> list[Callable[[], object]]:
    """A square convolution (padding ``kernel // 2``, none for an even kernel: a patchify stem or
    downsampling) forward, and its backward for input and weight, as the calibration times them;
    ``channels_last``: its tensors in that memory format."""
    aten = torch.ops.aten
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size).to(dtype).contiguous(memory_format=layout)
    w = torch.randn(out, channels // groups, kernel, kernel).to(dtype).contiguous(memory_format=layout)
    pad = kernel // 2 if kernel % 2 else 0
    grad = torch.conv2d(x, w, stride=stride, padding=pad, groups=groups).normal_()
    return [lambda: torch.conv2d(x, w, stride=stride, padding=pad, groups=groups),
            lambda: aten.convolution_backward(grad, x, w, [0], [stride, stride], [pad, pad], [1, 1], False, [0, 0],
                                              groups, [True, True, False])]


def _cold_reads(inner: int = 2048, cols: int = 512, rounds: int = 5,
                counts: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24)
                ) -> tuple[tuple[tuple[float, float], ...], float]:
    """(reuse distance, seconds per byte a read costs more than a warm one), ascending and
    non-decreasing, and the share of a call's own time its cold reads do not hide. A 1 ×
    ``inner`` by ``inner`` × ``cols`` float32 multiply (a layer's 4 MB weight applied to one
    sample: bound by reading it) is cycled over k weights, each read after the k - 1 others (its
    distance: their bytes, with the row and a product): in each of ``rounds`` rounds, every k in
    turn, one cycle brings its weights in, then cycles of at least 8 calls are timed; a k's time per
    call is its rounds' median.

    Far back, a read costs its bytes at the farthest k's rate per byte: this read-bound call's
    whole time, the memory's. Nearer, that rate times the fraction of the farthest k's extra time
    that k's measured. A call with arithmetic of its own overlaps part of its reads with it: the
    same weights applied to 16 rows, warm (k = 1) and cold (the farthest k), take the longer of their
    warm time and the 1-row call's cold time plus a share of the shorter, which is kept
    (:meth:`~profiler.engine.step_time.DeviceModel.cold_seconds`; clipped to 0-1). On an AMD
    EPYC, standalone, the 16-row multiply took 545 µs cycled over 24 weights, 338 warm, and the
    1-row one 408 cycled, 91 warm: a share of 0.4 (three calibrations there read 0.50-0.67). On
    an Intel Xeon, torchvision resnet18's last 3 × 3 convolutions on 1 × 1 maps, 9.4 MB weights,
    took 1,100 µs in the network against 622 warm and 410 for the weight at 23 GB/s: nearer the
    sum."""
    weights = [torch.randn(inner, cols) for _ in range(max(counts))]
    weight_bytes = inner * cols * 4
    one, many = torch.randn(1, inner), torch.randn(16, inner)
    times = _cycled_seconds(one, weights, counts, rounds)
    cold, extra = times[-1] / weight_bytes, max(times[-1] - times[0], 1e-9)
    points, most = [], 0.0
    for k, seconds in zip(counts, times):
        most = min(max(most, (seconds - times[0]) / extra), 1.0)
        points.append(((k - 1) * weight_bytes + (inner + cols) * 4, most * cold))
    warm_many, cold_many = _cycled_seconds(many, weights, (1, counts[-1]), rounds)
    shorter = min(warm_many, times[-1])
    exposed = (cold_many - max(warm_many, times[-1])) / shorter if shorter > 0 else 1.0
    return tuple(points), min(max(exposed, 0.0), 1.0)


def _cycled_seconds(x: torch.Tensor, weights: Sequence[torch.Tensor], counts: Sequence[int],
                    rounds: int) -> list[float]:
    """Seconds per call of ``x`` multiplied by each of the first k ``weights`` in turn, for each k
    of ``counts``: rounds interleaved over the ks, each a cycle to bring its weights in, then cycles
    of at least 8 calls timed; each k's median over the rounds."""
    per_call: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(rounds):
        for k in counts:
            cycles = -(-8 // k)
            for w in weights[:k]:
                torch.mm(x, w)
            start = time.perf_counter()
            for _ in range(cycles):
                for w in weights[:k]:
                    torch.mm(x, w)
            per_call[k].append((time.perf_counter() - start) / (cycles * k))
    return [statistics.median(per_call[k]) for k in counts]


#: the largest buffer glibc's malloc serves from its heap once its threshold has adapted
#: (``DEFAULT_MMAP_THRESHOLD_MAX``, 4 Mi × ``sizeof(long)`` on 64-bit: mallopt(3)): a larger one is
#: mapped from the system at each allocation and unmapped when freed
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20


def _steady_heap() -> None:
    """Set glibc's malloc as a process that has run a while has it: a buffer just under
    :data:`GLIBC_MMAP_THRESHOLD_MAX`, mapped and freed, raises its mmap threshold to that size and
    its trim threshold to twice it, so from then on every smaller buffer comes from the heap, whose
    pages stay mapped. Without it, whether a micro-benchmark's larger result (the 16 MiB add's, a
    convolution's) was new pages faulted in at each call depended on what the process had freed
    before: the largest add moved 10.9 and 26.3 GB/s in two fresh processes minutes apart
    (session 13's calibrations 8.8-28.5 GB/s); 26.9, 27.6 and 27.3 GB/s in three with this (Intel
    Xeon, 2 threads). The curves are then fault-free, as the runner's steady steps mostly are (22
    zoo cases counted with ``ru_minflt``: no inference or SGD step faulted in its median run, 6 Adam
    steps did, 4,825 to 18,337 pages); a buffer of 32 MiB or more, mapped at each allocation
    whatever the thresholds, is priced by :func:`_fresh_memory`. This changes the calibrating
    process only: measurements run in children of the forkserver (:mod:`profiler.measuring.isolated`)."""
    torch.empty(GLIBC_MMAP_THRESHOLD_MAX - 2 * 4096, dtype=torch.uint8)


def _fresh_memory(nbytes: int = 64 * 2**20, rounds: int = 5) -> float:
    """Seconds per byte a buffer mapped fresh costs more than one reused: a ``neg`` of ``nbytes``
    into a new result (mapped, its pages faulted in as written, unmapped when dropped) against the
    same into a kept one, interleaved, the rounds' medians; never negative. A 48 MiB ReLU took
    12.3 ms into a new result and 4.6 ms into a kept one (Intel Xeon, 2 threads): the size of
    conv-224's largest activations at batch 2."""
    x = torch.ones(nbytes // 4)
    kept = torch.empty_like(x)
    fresh, reused = [], []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        torch.neg(x)
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.neg(x, out=kept)
        reused.append(time.perf_counter() - start)
    return max(statistics.median(fresh[1:]) - statistics.median(reused[1:]), 0.0) / nbytes


def _timer_inflation() -> float:
    """Seconds the timer adds to a call it times (the call from inside a dispatch mode is slower
    than the same call from Python): a tiny in-place add timed both ways, the difference."""
    x = torch.zeros(1)
    plain = _seconds(_loop(lambda: x.add_(1.0), 200), inner=200)
    best = float("inf")
    for _ in range(5):
        timer = _bare_timer()
        with timer:
            for _ in range(200):
                x.add_(1.0)
        best = min(best, sum(ns for *_, ns in timer.calls) / 1e9 / 200)
    return max(best - plain, 0.0) if best < float("inf") else 0.0


def _view_seconds() -> float:
    x = torch.randn(4, 4)
    return _seconds(_loop(lambda: x.view(16), 1000), inner=1000)


# ----------------------------------------------------------------------------------------------
# Calibration models, timed per operator call


class _CallLog:
    """Each aten call of a run, priced (:func:`~profiler.engine.op_cost.op_cost`) once the run is
    over, from a snapshot of its tensors' metadata (:class:`_Shadow`), and which calls Python
    issued. The calibration prices a run apart from the runs it times (:func:`_bare_timer`):
    pricing is Python (37 µs an ``addmm``, 184 µs a convolution), and so is watching Python's
    events; either, between two timed calls, leaves the second's caches cold. The calibration
    transformer's inference at batch 1, 51 calls: 668 µs timed and priced as they ran, 658 µs
    priced afterwards, 547 µs timed alone; its plain run 447 µs."""

    def __init__(self, run: Any) -> None:
        from profiler.measuring.devices import get_device
        from profiler.measuring.timing import OpTimer
        from profiler.engine.python_calls import PythonCalls
        self.run = run
        self.phase = "forward"
        self._priced: list[tuple[OpCost, float]] = []
        #: (operator, shadowed args, kwargs and result, ns, phase, Python issued, module calls, grad mode)
        self._pending: list[tuple[Any, Any, Any, Any, float, str, bool, int, bool]] = []
        self.python = PythonCalls()
        self.timer = OpTimer(get_device("cpu"), {}, on_call=self._book, python=self.python)
        self._modules_booked = 0

    def _book(self, func: Any, args: tuple, kwargs: dict, out: Any, ns: float) -> None:
        if func.namespace in ("prim", "profiler"):   # no call in a real run: op_cost prices none
            return
        self._pending.append((func, _shadow(args), _shadow(kwargs), _shadow(out), ns, self.phase, self.timer.began,
                              self.timer.module_calls - self._modules_booked, torch.is_grad_enabled()))
        self.python.book(self.timer.python_mark)
        self._modules_booked = self.timer.module_calls

    @property
    def calls(self) -> list[tuple[OpCost, float]]:
        """(priced call, seconds) of each call timed so far."""
        from profiler.engine.kernels.aten_cpu import kernel_of
        for func, args, kwargs, out, ns, phase, python, modules, grad in self._pending:
            storages: dict[int, Any] = {}
            args, kwargs, out = (_unshadow(tree, storages) for tree in (args, kwargs, out))
            with torch.set_grad_enabled(grad):   # a kernel family may depend on it (oneDNN's LSTM)
                cost = op_cost(func, args, kwargs, out, phase=phase, module="", kernel=kernel_of(func, args, self.run),
                               python=python, modules=modules)
            if cost is not None:
                self._priced.append((cost, ns / 1e9))
        self._pending.clear()
        return self._priced

    def __enter__(self) -> "_CallLog":
        self.python.__enter__()
        self.timer.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.__exit__(*exc)
        self.python.__exit__(*exc)


class _Shadow(NamedTuple):
    """What pricing reads of a tensor, kept past the call without keeping its memory: its storage
    by address (a tensor read twice, or written in place, is one storage)."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    storage: int
    nbytes: int


def _map_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """``tree`` (nested lists, tuples and dicts, as an operator's arguments are) with ``fn`` of each leaf."""
    if type(tree) in (list, tuple):
        return type(tree)(_map_leaves(x, fn) for x in tree)
    if isinstance(tree, dict):
        return {k: _map_leaves(v, fn) for k, v in tree.items()}
    return fn(tree)


def _shadow(tree: Any) -> Any:
    """``tree`` with each tensor as its :class:`_Shadow`."""
    def one(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        try:
            storage = leaf.untyped_storage()
            key, nbytes = storage.data_ptr() or id(storage), storage.nbytes()
        except (RuntimeError, NotImplementedError):   # sparse, or no storage
            key, nbytes = id(leaf), leaf.numel() * leaf.element_size()
        return _Shadow(tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.storage_offset(), key, nbytes)
    return _map_leaves(tree, one)


def _unshadow(tree: Any, storages: dict[int, Any]) -> Any:
    """``tree`` with each shadow a meta tensor of its metadata, shadows of one storage sharing one."""
    def one(leaf: Any) -> Any:
        if not isinstance(leaf, _Shadow):
            return leaf
        if leaf.storage not in storages:
            storages[leaf.storage] = torch.empty(leaf.nbytes, dtype=torch.uint8, device="meta").untyped_storage()
        return torch.empty(0, dtype=leaf.dtype, device="meta").set_(storages[leaf.storage], leaf.offset, leaf.shape,
                                                                     leaf.stride)
    return _map_leaves(tree, one)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.GELU(),
                                   nn.Conv2d(32, 64, 1), nn.SiLU(), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class _Attention(nn.Module):
    """A pre-norm block as Hugging Face writes them: LayerNorm, scaled dot-product attention, GELU MLP."""
    def __init__(self, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        eager = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads), dim=-1) @ v
        fused = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj((eager + fused).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(500, 64)
        self.block = _Attention()
        self.encoder = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 500)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.block(self.embed(x)))))


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 64, batch_first=True)
        self.gru = nn.GRU(64, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(x)[0])[0])


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.Tanh(),
                         nn.LayerNorm(256), nn.Linear(256, 10))


class _ThinBlock(nn.Module):
    def __init__(self, width: int = 512) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


def _thin_mlp() -> nn.Module:
    """Residual MLP blocks with 2.25 and 4 MiB weights applied to 16 rows a sample: thin matrix
    multiplies (``aten_cpu.matmul_family``: a mixer's channel MLP at batch 1, a late
    vision-transformer stage's few tokens), forward and backward, as a network of them runs them
    (two such layers alone ran their backward's 1.7 x faster than four blocks did: 183 µs a call
    against 308, and timm mixer_s16's took 270-407)."""
    return nn.Sequential(_ThinBlock(384), _ThinBlock(384), nn.Linear(384, 512), _ThinBlock(512), _ThinBlock(512),
                         nn.Linear(512, 10))


#: (factory, one sample's input maker, batch sizes)
_MODELS: tuple[tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], tuple[int, ...]], ...] = (
    (_ConvNet, lambda b: torch.randn(b, 3, 32, 32), (1, 8)),
    (_Transformer, lambda b: torch.randint(0, 500, (b, 32)), (1, 8)),
    (_mlp, lambda b: torch.randn(b, 256), (4, 64)),
    (_Recurrent, lambda b: torch.randn(b, 16, 32), (1, 8)),
)
#: models that time one kernel family's calls in a network's context (the family, factory, input
#: maker, batch sizes): only those calls are kept, and the runs are not fitted for the per-call
#: figures (a few long calls, whose runs' spread is their kernels', not Python's: with the thin
#: model in the fit, the training forward's figure rose from 4.8-9.4 to 9.3-11.8 µs a call over
#: three calibrations each)
_KERNEL_MODELS: tuple[tuple[tuple[str, ...], Callable[[], nn.Module], Callable[[int], torch.Tensor],
                            tuple[int, ...]], ...] = (
    (("thin", "outer"), _thin_mlp, lambda b: torch.randn(b, 16, 384), (1, 2)),
)


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: what a calibration model's plain phase times are summed to: the median of its runs, the figure
#: a measurement reports (:mod:`profiler.measuring.timing`), not the fastest, as the operators' own
#: (:func:`typical_calls`); what a whole run loses beyond its operators is in the per-call figure
#: fitted on top of them
PLAIN_STATISTIC: Callable[[Sequence[float]], float] = statistics.median


class _ModelRuns:
    """One calibration model at one batch and optimizer, measured a round at a time
    (:func:`_run_models` interleaves the models' rounds): the median time of each operator call
    per phase, the whole phases' times un-instrumented (:data:`PLAIN_STATISTIC`), and how many
    modules a forward pass calls. Each round runs one plain training step untimed (the model's
    own traffic back in the caches after the other models' rounds), the instrumented step and
    then each phase plain, so that both sides of the overheads' fit (:func:`_fit_overheads`) see
    the machine in the same state; each phase twice back to back, as a measurement's repeats run.
    A measurement's inference passes follow one another after its warm-up, so the inference pass
    runs once more first, not kept: the first after the instrumented step's Python has evicted
    the caches took 1.2-2.4 x a warm one on the 8 calibration models, and kept, it priced every
    model's small calls high. A training step's phases follow each other's traffic, as here (the
    first forward after the inference passes, the first backward after a forward)."""

    def __init__(self, make: Callable[[], nn.Module], x: torch.Tensor, optimizer: str, run: Any) -> None:
        from profiler.engine.optimizers import CATALOG
        torch.manual_seed(0)
        self.model, self.x = make(), x
        self.opt = CATALOG[optimizer].make([p for p in self.model.parameters() if p.requires_grad])
        self.modules = sum(1 for _ in self.model.modules())
        self.model.eval()
        self._infer()
        self.model.train()
        self._step()
        self.priced = _priced(run, self._instrumented)
        self.timed: list[list[tuple[OpCost, float]]] = []
        self.samples: dict[str, list[float]] = {"inference": [], "forward": [], "forward_backward": [], "optimizer": []}

    def _loss(self) -> torch.Tensor:
        out = self.model(self.x)
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                           torch.zeros(out.shape[:-1].numel(), dtype=torch.long))

    def _infer(self) -> None:
        with torch.no_grad():
            self.model(self.x)

    def _forward_backward(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._loss().backward()

    def _step(self) -> None:
        self._forward_backward()
        self.opt.step()

    def _instrumented(self, timer: Any) -> None:
        self.model.eval()
        self._infer()   # warm, as the plain inference passes below are
        timer.phase = "inference"
        with timer:
            self._infer()
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with timer:
            timer.phase = "forward"
            value = self._loss()
            timer.phase = "backward"
            value.backward()
            timer.phase = "optimizer"
            self.opt.step()

    def round(self) -> None:
        self.model.train()
        self._step()
        timer = _bare_timer()
        self._instrumented(timer)
        _add_round(self.timed, _with_times(self.priced, timer))
        for phase, fn, mode in ((("inference", self._infer, False), ("forward", self._loss, True),
                                 ("forward_backward", self._forward_backward, True), ("optimizer", self.opt.step, True))):
            self.model.train(mode)
            if phase == "inference":
                _once(fn)   # the first after the instrumented step's Python runs cold: not kept
            for _ in range(2):   # back to back, as a measurement's repeats run
                self.samples[phase].append(_once(fn))

    def result(self) -> dict[str, Any]:
        typical = {phase: PLAIN_STATISTIC(found) for phase, found in self.samples.items()}
        plain = {"inference": typical["inference"], "forward": typical["forward"],
                 "backward": max(typical["forward_backward"] - typical["forward"], 0.0),
                 "optimizer": typical["optimizer"]}
        return {"calls": typical_calls(self.timed), "plain": plain, "modules": self.modules}


def _run_models(models: Sequence[_ModelRuns], rounds: int = 5) -> list[dict[str, Any]]:
    """Each model's rounds interleaved with the others' (round 1 of every model, then round 2, ...):
    a burst of the machine's other work (this 2-core machine's neighbours slowed a whole second of
    runs 1.3-2 x: one model's five back-to-back rounds, and with them its per-call figure) then
    slows one round of several models, which their medians leave out, instead of all the rounds
    of one, whose own figure it moves; :meth:`_ModelRuns.result` of each."""
    for _ in range(rounds):
        for model in models:
            model.round()
    return [model.result() for model in models]


def _deflated(calls: list[tuple[OpCost, float]], inflation: float, python_s: float) -> list[tuple[OpCost, float]]:
    """Each timed call less what the timer added (never below a tenth of what was timed). The timer
    calls each operator from Python, inside its handler: ``inflation`` (:func:`_timer_inflation`)
    is that call against the same call issued from Python; a call C++ issued (a node of backward,
    one of ``gru``'s 300) never paid Python's issuing either, so it also sheds ``python_s``
    (:func:`_python_issue_seconds`). Timed, torch's GRU's forward operators summed to 0.46 ms
    against 0.19 ms for the plain call."""
    return [(cost, max(seconds - inflation - (0.0 if cost.python else python_s), seconds / 10))
            for cost, seconds in calls]


def _kind_curves(calls: list[tuple[OpCost, float]]) -> dict[str, Curve]:
    """Curves by kind and dtype ("matmul/float32", "conv/bfloat16", "conv_backward/float32") and
    "memory" (float32 adds): what an operator without a curve of its own is priced by (of
    contiguous tensors: a channels-last family without a curve is priced as its contiguous one)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for cost, seconds in calls:
        if cost.kind in ("matmul", "conv") and not cost.kernel.endswith(CHANNELS_LAST) and not cost.bytes_bound:
            points.setdefault(f"{cold_kind(cost)}/{cost.dtype}", []).append((cost.work, seconds))
        elif cost.packet == "aten.add" and cost.dtype == "float32":
            points.setdefault("memory", []).append((cost.bytes, seconds))
    return {key: _isotonic(found) for key, found in points.items()}


def _streams(calls: list[tuple[OpCost, float]]) -> dict[str, float]:
    """The fastest each matrix multiply or convolution family moved its bytes (by curve key): no
    call of it is predicted faster (:meth:`~profiler.engine.step_time.DeviceModel.base_seconds`)."""
    streams: dict[str, float] = {}
    for cost, seconds in calls:
        if cost.kind in ("matmul", "conv") and seconds > 0:
            key = curve_key(cost)
            streams[key] = max(streams.get(key, 0.0), cost.bytes / seconds)
    return streams


def _isotonic(points: Sequence[tuple[float, float]]) -> Curve:
    """A curve through noisy (work, seconds) points: lower medians of factor-of-two bins of work,
    made non-decreasing by pooling adjacent violators (a bigger call is never predicted faster).
    A pool is flat from its smallest call's work to its largest's: its calls took the same time
    whatever their size (a fixed cost), so a call between them, or at the smallest, takes that
    time. Pooled at their mean work instead, oneDNN's depthwise backward of timm test_convnext's
    2 × 2 maps (1.6 MFLOP, measured about as slow as its 16 × 16 one) sat below the pool's point
    and was priced down the kind's curve: 230 µs against 360-540 in the network."""
    bins: dict[int, list[tuple[float, float]]] = {}
    for work, seconds in points:
        bins.setdefault(int(math.floor(math.log2(max(work, 1.0)))), []).append((work, seconds))
    blocks: list[list[float]] = []   # [log seconds sum, count, smallest work, largest work]
    for key in sorted(bins):
        members = sorted(bins[key], key=lambda p: p[1])
        # of two, the faster: a call bound by its bytes says nothing of the FLOP rate (a 4 × 2048
        # by 2048 × 2048 multiply, 1.3 ms on its 16 MB weight, shares a bin with a 256 × 256 × 256
        # one of the same FLOPs, 0.16 ms); its bytes price it through its family's stream
        work, seconds = members[(len(members) - 1) // 2]
        work = max(work, 1.0)
        blocks.append([math.log(max(seconds, 1e-9)), 1.0, work, work])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1][0] += last[0]
            blocks[-1][1] += last[1]
            blocks[-1][3] = last[3]
    work_points: list[float] = []
    second_points: list[float] = []
    for log_seconds, count, smallest, largest in blocks:
        ends = (smallest,) if smallest == largest else (smallest, largest)
        work_points += ends
        second_points += [math.exp(log_seconds / count)] * len(ends)
    return Curve(tuple(work_points), tuple(second_points))


def _fit_overheads(runs: list[dict[str, Any]], model: DeviceModel, python_s: float,
                   module_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """(per call Python issued, per call C++ issued): seconds per operator call in each phase of
    the pass (the optimizers' updates: :func:`_fit_optimizer_steps`) that the un-instrumented runs
    take beyond their calls' predicted times (:func:`_in_loop`: with their cold reads and cold
    kernels, as a prediction prices them; Python and autograd's bookkeeping), less what timing
    each call inside a dispatch mode added (its Python between calls evicts the caches: small calls
    run slower timed one by one, so a figure may be negative), the calls Python issued counted at
    ``python_s`` more (:func:`_python_issue_seconds`) and each module call at ``module_s``
    (:func:`_module_call_seconds`). The two kinds of call are fitted apart: timed one by one, a
    chain of small calls that C++ issues (a recurrent layer's 300, a linear's ``addmm`` after its
    ``t``) loses far more than one Python issued, which ran after Python anyway (in inference, the
    calibration models' C++-issued calls took 4.6-7.4 µs a call less than timed, the Python-issued
    about their time). The pair is the one whose predicted runs — as
    :meth:`~profiler.engine.step_time.DeviceModel.op_seconds` sums them, floors at a view's time
    included — miss the runs' plain times by the fewest seconds in all (:func:`least_misses`):
    with one figure, that is the median of the runs' own figures weighted by their calls, so a run
    of few large calls (a convolution's backward, where one disturbed kernel moves the figure by
    hundreds of microseconds a call) counts for its few calls. Backward has one figure: autograd's
    engine issues every node, Python only the first."""
    per_op: dict[str, float] = {}
    per_cpp: dict[str, float] = {}
    priced_runs = [(run, _in_loop(model, [cost for cost, _ in run["calls"]])) for run in runs]
    for phase in ("inference", "forward", "backward"):
        members = (phase, "loss") if phase == "forward" else (phase,)
        split = phase != "backward"   # backward: every call of the second kind, one figure for both
        fits = []
        for run, priced in priced_runs:
            calls = [(cost, seconds) for cost, seconds in priced if cost.phase in members]
            if calls and run["plain"][phase] > 0:
                issue = sum(python_s * cost.python + module_s * cost.modules for cost, _ in calls)
                fits.append(([seconds for c, seconds in calls if c.python and split],
                             [seconds for c, seconds in calls if not (c.python and split)],
                             run["plain"][phase] - issue))
        per_op[phase], per_cpp[phase] = least_misses(fits, model.view_s)
    per_op["loss"], per_cpp["loss"] = per_op["forward"], per_cpp["forward"]
    return per_op, per_cpp


def _in_loop(model: DeviceModel, calls: list[OpCost]) -> list[tuple[OpCost, float]]:
    """Each call of a calibration model's instrumented run with its time as a run of its phase
    prices it before the per-call figures: its base time, its cold reads and cold kernel in its
    loop (the inference pass's calls one loop, the training step's another), its fresh pages."""
    from profiler.engine.reuse import call_distances
    priced = []
    for loop in ([c for c in calls if c.phase == "inference"], [c for c in calls if c.phase != "inference"]):
        for cost, (reads, since) in zip(loop, call_distances(loop)):
            priced.append((cost, model.base_seconds(cost) + model.cold_seconds(cost, reads)
                           + model.cold_call_seconds(cost, since) + model.fresh_seconds(cost)))
    return priced


#: the per-call figures :func:`least_misses` tries, seconds: 0.05 µs apart, ±30 µs
_FIGURES = [k * 5e-8 for k in range(-600, 601)]


def least_misses(fits: Sequence[tuple[Sequence[float], Sequence[float], float]],
                 floor: float) -> tuple[float, float]:
    """The (a, c) for which the runs ``fits`` ((calls of one kind, calls of the other, plain
    seconds) each) summed as ``max(call + a, floor)`` over the first kind and ``max(call + c,
    floor)`` over the second miss their plain seconds by the least in all: searched 0.05 µs apart,
    then settled exactly where two runs pin it (each figure in turn the weighted median of the
    runs' own, the other held). A kind no run has keeps the other's figure; no runs, 0.

    Calls of 1 µs, one of the first kind and three of the second in 4 µs, three and one in 8 µs:
    1 + a + 3 (1 + c) = 4 and 3 (1 + a) + 1 + c = 8 give a = 1.5 µs, c = -0.5 µs.

    >>> [round(x * 1e6, 9) for x in least_misses([([1e-6], [1e-6] * 3, 4e-6), ([1e-6] * 3, [1e-6], 8e-6)], 1e-7)]
    [1.5, -0.5]
    """
    import numpy as np
    if not fits:
        return 0.0, 0.0
    figures = np.array(_FIGURES)
    misses = np.zeros((len(figures), len(figures)))
    for first, second, total in fits:
        misses += np.abs(_floored_sums(first, figures, floor)[:, None]
                         + _floored_sums(second, figures, floor)[None, :] - total)
    i, j = np.unravel_index(int(np.argmin(misses)), misses.shape)
    shifts = {0: float(figures[i]), 1: float(figures[j])}
    for _ in range(100):
        before = dict(shifts)
        for kind in (0, 1):
            rates = []
            for run in fits:
                own, other, total = run[kind], run[1 - kind], run[2]
                if own:
                    held = sum(max(v + shifts[1 - kind], floor) for v in other)
                    rates.append((shift_to_total(own, floor, total - held), len(own)))
            if rates:
                shifts[kind] = weighted_median(rates)
        if all(abs(shifts[k] - before[k]) < 1e-13 for k in shifts):
            break
    has = [any(run[kind] for run in fits) for kind in (0, 1)]
    if has[0] != has[1]:
        shifts[0 if has[1] else 1] = shifts[1 if has[1] else 0]
    return shifts[0], shifts[1]


def _floored_sums(values: Sequence[float], shifts: Any, floor: float) -> Any:
    """``sum(max(v + s, floor) for v in values)`` for each ``s`` of the array ``shifts``."""
    import numpy as np
    ordered = np.sort(np.asarray(values, dtype=float))
    if not len(ordered):
        return np.zeros(len(shifts))
    above = np.concatenate([[0.0], np.cumsum(ordered[::-1])])   # the k largest's sum
    count = len(ordered) - np.searchsorted(ordered, floor - shifts, side="right")   # above the floor
    return above[count] + count * shifts + (len(ordered) - count) * floor


def _fit_optimizer_steps(runs: list[dict[str, Any]], model: DeviceModel, python_s: float) -> tuple[float, float]:
    """(seconds per update call, seconds per step) of the optimizers' updates beyond their calls'
    predicted times (:func:`_in_loop`, cold reads and kernels included, as a prediction prices
    them: fitted on base times, the figures carried the calibration models' own, which a
    prediction added again; the benchmark's Adam steps read +14.8 % signed, its SGD steps +4.7):
    each calibration model at each batch steps with SGD (a call per parameter) and
    Adam (nine or ten), so the two runs' excesses over their calls give both — the call's from
    their difference, the step's what is left of SGD's — and each is the median over the pairs.
    Fitted per call alone, a step's own time was spread over the few calls of the calibration
    models' updates and multiplied by a larger model's: an SGD step of 13 parameters took 164 µs
    after a backward pass, 26 µs of it its calls' own time, and Adam over transformers' BERT was
    priced 2.9 ms where it took 1.95."""
    excess: dict[Any, dict[int, float]] = {}
    for run in runs:
        calls = [(cost, seconds) for cost, seconds in _in_loop(model, [cost for cost, _ in run["calls"]])
                 if cost.phase == "optimizer"]
        if calls and run["plain"]["optimizer"] > 0:
            left = run["plain"]["optimizer"] - sum(seconds + python_s * c.python for c, seconds in calls)
            excess.setdefault(run["pair"], {})[len(calls)] = left
    per_call, per_step = [], []
    for found in excess.values():
        if len(found) == 2:
            (few, small), (many, large) = sorted(found.items())
            per_call.append((large - small) / (many - few))
            per_step.append(small - few * per_call[-1])
    if not per_call:
        return 0.0, 0.0
    return statistics.median(per_call), max(statistics.median(per_step), 0.0)


def shift_to_total(values: Sequence[float], floor: float, total: float) -> float:
    """The ``r`` with ``sum(max(v + r, floor) for v in values) == total`` (the sum grows with ``r``
    wherever a value is above the floor); when ``total`` is at most every value at the floor, the
    ``r`` at which the largest value reaches it.

    >>> shift_to_total([1.0, 2.0, 6.0], 0.5, 12.0)   # every value shifted by 1: 2 + 3 + 7
    1.0
    >>> shift_to_total([1.0, 2.0, 6.0], 0.5, 7.0)    # 0.5 + 1.25 + 5.25: the smallest at the floor
    -0.75
    >>> shift_to_total([1.0, 2.0, 6.0], 0.5, 1.0)    # below 3 floors: 6 reaches the floor
    -5.5
    """
    ordered = sorted(values, reverse=True)
    if not ordered or total <= floor * len(ordered):
        return floor - ordered[0] if ordered else 0.0
    above = 0.0
    for k, value in enumerate(ordered, start=1):
        above += value   # the k largest above the floor, the rest at it
        shift = (total - above - floor * (len(ordered) - k)) / k
        if k == len(ordered) or ordered[k] + shift <= floor:
            return shift
    return 0.0


def weighted_median(values: Sequence[tuple[float, float]]) -> float:
    """The value below and above which at most half the weight lies (the lower one on a tie); 0
    for none.

    >>> weighted_median([(-2.0, 10), (300.0, 1), (-1.0, 10), (5.0, 1)])
    -1.0
    >>> weighted_median([(1.0, 1), (2.0, 1), (3.0, 1)])
    2.0
    """
    ordered = sorted(values)
    total = sum(weight for _, weight in ordered)
    seen = 0.0
    for value, weight in ordered:
        seen += weight
        if seen >= total / 2:
            return value
    return 0.0


def _module_call_seconds(calls: int = 500) -> float:
    """What calling a module costs (``nn.Module.__call__``, its hooks' checks, its ``forward``):
    an ``nn.Identity`` called from a loop, less the loop's own call of a function that returns
    its argument, per call; never negative."""
    module, x = nn.Identity(), torch.zeros(1)
    return max(_seconds(_loop(lambda: module(x), calls), inner=calls)
               - _seconds(_loop(lambda: x, calls), inner=calls), 0.0)


def _host_call_seconds(rounds: int = 21, sweep_bytes: int = 16 * 2**20) -> float:
    """What a host call costs as a model's Python makes it (:mod:`profiler.engine.host_calls`):
    after a write over ``sweep_bytes`` (a forward pass's other calls leave the caches cold), the
    median of ``rounds``. In a loop a CUDA build without a driver answers in 12 µs; after the
    sweep a median of 60-66 µs, and a Hugging Face decoder's forward pass lost 45-124 µs a call."""
    from profiler.engine.host_calls import WATCHED, call_watched
    sweep = torch.zeros(sweep_bytes // 4)
    samples = []
    for _ in range(rounds):
        sweep.add_(1.0)
        samples.append(_once(call_watched))
    return statistics.median(samples) / len(WATCHED)


def _python_issue_seconds(tensors: int = 200) -> float:
    """What a call Python issues costs more than the same call issued from C++: a tiny in-place
    add on each of ``tensors`` tensors from a Python loop, against ``torch._foreach_add_`` on them
    (whose CPU kernel issues the same adds one by one from C++), per add; never negative."""
    xs = [torch.zeros(4) for _ in range(tensors)]

    def from_python() -> None:
        for x in xs:
            x.add_(1.0)
    return max(_seconds(from_python, inner=tensors) - _seconds(lambda: torch._foreach_add_(xs, 1.0), inner=tensors),
               0.0)


def calibrate(threads: int | None = None, progress: Callable[[str], None] | None = None) -> DeviceModel:
    """Measure this machine's device model (see the module docstring)."""
    from profiler.measuring.machine import cpu_model
    from profiler.rules.registry import Context
    say = progress or (lambda message: None)
    busy = _busy()
    if busy:
        say(busy + ": the figures will be slow; run 'modelsize calibrate' again on an idle machine")
    previous = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    try:
        if threads:
            torch.set_num_threads(threads)
        used = torch.get_num_threads()
        gc.collect()
        gc.disable()
        _steady_heap()
        run = Context(device_kind="cpu", data_format="channels_first", threads=used)
        micro: list[tuple[OpCost, float]] = []
        first_runs: list[tuple[OpCost, float]] = []
        with torch.no_grad():
            for dtype in _DTYPES:
                say(f"matrix multiplies, convolutions and element-wise calls, {dtype}")
                micro += _timed_calls(run, _micro_benchmarks(getattr(torch, dtype)), first_runs=first_runs)
            view_s = _view_seconds()
            inflation = _timer_inflation()
            python_s, module_s = _python_issue_seconds(), _module_call_seconds()
            host_call_s = _host_call_seconds()
            say("reads of tensors last touched far back, and memory mapped fresh")
            cold_read, cold_exposed = _cold_reads()
            fresh_byte_s = _fresh_memory()
        cold_call_s = _cold_calls(first_runs, cold_read)
        micro = _deflated(micro, inflation, python_s)
        say("calibration models, their rounds interleaved")
        specs = [(families, make, inputs(batch), batch, optimizer)
                 for families, make, inputs, batches in [((), *model) for model in _MODELS] + list(_KERNEL_MODELS)
                 for batch in batches for optimizer in (("sgd",) if families else ("sgd", "adam"))]
        found = _run_models([_ModelRuns(make, x, optimizer, run) for _, make, x, _, optimizer in specs])
        runs, family_calls = [], []
        for (families, make, _, batch, _), measured in zip(specs, found):
            measured["calls"] = _deflated(measured["calls"], inflation, python_s)
            measured["pair"] = (make, batch)
            if families:
                family_calls += [call for call in measured["calls"] if call[0].kernel in families]
            else:
                runs.append(measured)
        timed = [*micro, *(call for measured in runs for call in measured["calls"]), *family_calls]
        streams = _streams(timed)
        curves = _kind_curves(micro)
        points: dict[str, list[tuple[float, float]]] = {}
        for cost, seconds in timed:
            if cost.kind != "view":
                points.setdefault(curve_key(cost), []).append((cost.work, seconds))
        op_curves = {key: _isotonic(found) for key, found in points.items()}
        largest = max((c for c in micro if c[0].packet == "aten.add" and c[0].dtype == "float32"),
                      key=lambda c: c[0].bytes)
        fitted = DeviceModel(name="cpu", method="measured", curves=curves, op_curves=op_curves, view_s=view_s,
                             bandwidth=largest[0].bytes / largest[1], op_bandwidth=streams, threads=used,
                             cold_read=cold_read, cold_exposed=cold_exposed, cold_call_s=cold_call_s,
                             fresh_from=GLIBC_MMAP_THRESHOLD_MAX,
                             fresh_byte_s=fresh_byte_s)
        say("Python and autograd per call")
        per_op, per_cpp = _fit_overheads(runs, fitted, python_s, module_s)
        per_op["optimizer"], step_s = _fit_optimizer_steps(runs, fitted, python_s)
        per_python = {phase: python_s for phase in per_op}
    finally:
        torch.set_num_threads(previous)
        if gc_was_enabled:
            gc.enable()
    return DeviceModel(name="cpu", method="measured", curves=curves, op_curves=op_curves, view_s=view_s,
                       bandwidth=fitted.bandwidth, op_bandwidth=streams, per_op_s=per_op, per_cpp_s=per_cpp,
                       per_python_s=per_python,
                       module_s=module_s, host_call_s=host_call_s, optimizer_step_s=step_s,
                       threads=used, timer_inflation_s=inflation, cold_read=cold_read, cold_exposed=cold_exposed,
                       cold_call_s=cold_call_s,
                       fresh_from=GLIBC_MMAP_THRESHOLD_MAX, fresh_byte_s=fresh_byte_s,
                       source=f"calibrated on {cpu_model()}, {used} thread{'s' * (used != 1)}, "
                              f"torch {torch.__version__}" + (f" ({busy})" if busy else ""))


def _busy() -> str:
    """Why this machine is too busy to calibrate on ("" when it is not): other programs' threads
    take the cores a timed kernel waits for (a descheduled thread costs a whole time slice)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cpus = os.cpu_count() or 1
    return f"calibrated while busy: load average {load:.1f} on {cpus} CPUs" if load > cpus else ""
