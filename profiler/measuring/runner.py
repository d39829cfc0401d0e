"""Measure a torch module: parameter bytes, memory peaks of inference and training, forward time.

The runner takes a plain ``torch.nn.Module`` and knows nothing of specs. Its definitions are the
ones ``profiler.engine.memory_model`` predicts:

Inference
    ``model.eval()``, then under ``torch.no_grad()`` one call ``out = model(x)``, with the model
    and the input alive. The peak counts everything alive: parameters, buffers, input, output and
    whatever the forward pass allocates on the way.

Training step
    ``model.train()``; with the model, input, target and the optimizer's state already alive, one
    call of ``opt.zero_grad(set_to_none=True); out = model(x); loss = loss_fn(out, y);
    loss.backward(); opt.step()``, where ``out`` and ``loss`` live until the step ends. The
    reported peak is the *steady* step, as in a training loop: one step runs first (its peak is
    reported separately as the first step's, with a fresh optimizer and no gradients yet) and the
    next one is measured, so gradients and optimizer state exist before it starts.

Mixed precision (``amp_dtype``: "bfloat16" or "float16"; the model's ``dtype`` stays float32,
the master weights): PyTorch's recipe. Inference runs ``out = model(x)`` under ``torch.no_grad()``
and ``torch.autocast(device_type, dtype=amp_dtype)``. A training step is
``opt.zero_grad(set_to_none=True)``; then, under ``torch.autocast``, ``out = model(x); loss =
loss_fn(out, y)`` (the forward pass *and the loss* inside the autocast region; the losses are on
autocast's float32 list, so ``loss`` is float32); then ``loss.backward()`` and ``opt.step()``
outside it, with no gradient scaler (bfloat16 needs none; a float16 scaler's scale and inf checks
are a few scalars). The region's cache of low-precision weight copies is cleared when the region
exits, after the loss. Inputs and ``mse`` targets are float32.

Optimizers: ``torch.optim.SGD(lr=0.01)`` and ``torch.optim.Adam()`` with defaults (whether Adam
used its ``foreach`` implementation is recorded). Losses: ``cross_entropy`` reshapes an output of
shape (N, ..., C) to (-1, C) against int64 targets of shape (N, ...), every position counted;
``mse`` compares with a float target of the output's shape.

Peaks are allocator-level and count everything alive. On the CPU the baseline is the bytes of the
unique storages alive before the measured call (parameters, buffers, gradients, optimizer state,
input, target), and :func:`profiler.measuring.memory_trace.allocator_peak` adds the highest point reached
above it. Each measured call is then repeated from the same state under the
:class:`~profiler.measuring.memory_trace.TensorTracker`, which gives the tensor-level peak and the bytes each
module and phase created; ``workspace = allocator peak − tensor peak`` of that tracked call is
what kernels allocate internally (on CUDA it also holds the allocator's rounding to 512-byte
blocks). The tracked call is separate because a dispatch mode slightly changes what PyTorch
allocates (see ``_tracked_run``); the reported allocator peaks come from the plain calls.

Each plain call is also split: what was alive at its allocator peak, by the categories the memory
model predicts (parameters, gradients, optimizer state, inputs, activations by module, weight casts,
temporaries, workspace), summing to the peak exactly. The call runs annotated (its phases and module
calls as profiler ranges, opened by global module hooks) and the profile's event tree is read back
by :mod:`profiler.measuring.peak_breakdown`, which explains how each block is named.

Time: the inference call and a training step with each optimizer, exactly as defined above
(``opt.zero_grad(set_to_none=True)``, forward and loss under autocast when asked, backward,
``opt.step()``, each optimizer fresh and warmed up by the untimed runs), each ``warmup`` times
untimed and then ``repeats`` times timed (:func:`profiler.measuring.timing.time_fn`: CPU
``perf_counter``, CUDA events after a synchronisation); the median, interquartile range, extremes
and samples per second at the median. Then ``layer_repeats`` instrumented runs of each
(:func:`~profiler.measuring.timing.time_ops`: every operator timed alone and booked to its
module, no per-module hooks); each operator call's median over the runs gives the per-module and
per-operator milliseconds, which add up to their total (``instrumented_ms``; a plain run also spends
time between operators, so compare it with the median). Per-module forward times are the
inference call's; backward ones (and ``train_forward``) the first optimizer's step's.
One instrumented run comes first untimed when ``warmup`` is not 0; ``layer_repeats=0`` skips
the instrumented runs. Timing runs after all memory measurements, so it
cannot disturb them, and it changes the parameters (the optimizers step).

Inputs and targets are random with a fixed seed (``seed`` also seeds torch's global generator, for
dropout). The module is moved to the device and dtype in place, and left without gradients.
"""
from __future__ import annotations

import contextlib
import gc
import traceback
from functools import partial
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from profiler.measuring.devices import (Device, DoesNotFit, PeakReading, get_device, is_out_of_memory,
                                       oom_guard)
from profiler.errors import ModelsizeError
from profiler.measuring.memory_trace import PartMarks, TensorTracker, capture, profiled
from profiler.measuring.peak_breakdown import Annotator, Breakdown, Known, analyse_parts, gather, storages
from profiler.engine.optimizers import CATALOG as OPTIMIZERS
from profiler.measuring.memory_trace import OUTSIDE, ROOT
from profiler.measuring.timing import OpTimes, Timing, time_fn, time_ops
from profiler.step import LOSSES, loss_fn as step_loss, outputs, total_loss

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AMP_DTYPES = ("bfloat16", "float16")
INPUT_DTYPES = ("float", "int64")
OPTIMIZER_FIGURES = ("train_first_step_tensor_peak_bytes", "train_first_step_workspace_bytes",
                     "train_first_step_peak_bytes", "train_tensor_peak_bytes", "train_workspace_bytes",
                     "train_baseline_bytes", "train_peak_bytes")   # longest first: prefixes overlap
PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class Measurement:
    """What one model measured on one device at one batch size. Bytes are exact integers.

    Each measured optimizer's figures are in ``optimizer_peaks``; they read as attributes and
    keys ``train_peak_bytes_<name>``, ``train_tensor_peak_bytes_<name>``,
    ``train_workspace_bytes_<name>``, ``train_first_step_…`` and ``train_baseline_bytes_<name>``
    (``None`` as attributes for an optimizer that was not measured). ``breakdown`` splits each
    allocator peak ("inference", "train_<name>", "train_first_step_<name>") by category.
    """
    device: str
    dtype: str
    batch: int
    input_shape: tuple[int, ...]
    param_bytes: int                      # parameters + buffers, unique storages
    inference_peak_bytes: int             # allocator level, everything alive counted
    inference_tensor_peak_bytes: int      # tensor level (TensorTracker)
    inference_workspace_bytes: int        # allocator − tensor, both of the tracked run
    adam_foreach: bool | None             # whether Adam ran its foreach (multi-tensor) kernels
    activation_bytes: dict[str, int]      # module → bytes created in the training forward pass
    saved_activation_bytes: dict[str, int]  # module → of those, bytes alive when backward starts
    phase_bytes: dict[str, dict[str, int]]  # optimizer → phase → bytes created in a steady step
    max_memory_reserved_bytes: int | None  # CUDA caching allocator; None on the CPU
    forward_ms: float                     # median of the timed inference forward passes
    forward_ms_iqr: float
    forward_ms_min: float
    forward_ms_max: float
    repeats: int
    warmup: int
    threads: int                          # torch.get_num_threads() during the measurement
    # every optimizer measured: name -> {steady/first allocator peak, tensor peak, workspace}
    optimizer_peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    amp_dtype: str | None = None          # autocast's dtype (mixed precision), None without
    input_grad: bool = False              # training computed the floating inputs' gradients too
    # peak ("inference", "train_<optimizer>", "train_first_step_<optimizer>") -> category -> bytes
    # alive at the allocator peak (profiler.measuring.peak_breakdown); the categories sum to the peak
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)
    # peak -> module -> bytes of its activations alive at the allocator peak
    activations_at_peak: dict[str, dict[str, int]] = field(default_factory=dict)
    # forward pass and training steps timed, per module and per operator (see _time_steps)
    time: dict[str, Any] = field(default_factory=dict)
    # peak -> the allocator's running total through that call, compact (profiler.timeline; CPU only)
    timelines: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """``train_peak_bytes_sgd`` and the like, from ``optimizer_peaks``."""
        for key in OPTIMIZER_FIGURES:
            if name.startswith(key + "_"):
                peaks = self.__dict__.get("optimizer_peaks", {}).get(name[len(key) + 1:])
                return None if peaks is None else peaks[key]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        """Raw figures; each measured optimizer's as ``train_peak_bytes_<name>`` and so on."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        for name, peaks in out.pop("optimizer_peaks").items():
            for key, value in peaks.items():
                out[f"{key}_{name}"] = value
        return out


def measure(module: torch.nn.Module, *, input_shape: tuple[int, ...], input_dtype: str = "float",
            int_high: int | None = None, dtype: str = "float32",
            device: Device | str | None = None, loss: str = "cross_entropy",
            optimizers: Iterable[str] = ("sgd", "adam"), warmup: int = 3, repeats: int = 20,
            threads: int | None = None, seed: int = 0, amp_dtype: str | None = None,
            input_grad: bool = False, layer_repeats: int | None = None,
            time_budget_s: float | None = None) -> Measurement:
    """Measure ``module`` on ``device`` (see the module docstring for the definitions).

    ``amp_dtype``: run the forward pass and the loss under ``torch.autocast`` to this dtype
    ("bfloat16" or "float16"), with float32 weights (``dtype`` must be float32). ``input_grad``:
    the floating inputs require gradients in training; each step sets their ``.grad`` to None
    with the parameters' (``zero_grad``), so a step's input gradients are its own.
    ``layer_repeats``: instrumented runs for the per-module and per-operator times (default
    ``min(3, repeats)``; 0: none). ``time_budget_s``: each timed function's warm-up runs, timed
    runs and instrumented runs stop early once they took that long (at least one warm-up, 5 timed
    runs and one instrumented run; :func:`~profiler.measuring.timing.time_fn`); the time figures
    say how many ran and how many were asked for. None: every run asked for.

    Raises :class:`~profiler.measuring.devices.DoesNotFit` when a phase runs out of memory; its ``phase``
    names the phase and ``partial`` holds what was measured before.
    """
    shapes, dtypes, highs = _input_lists(input_shape, input_dtype, int_high)
    optimizers = tuple(optimizers)
    for shape, kind, high in zip(shapes, dtypes, highs):
        _check_arguments(shape, kind, high, dtype, loss, optimizers, warmup, repeats, threads)
    _check_amp(amp_dtype, dtype)
    if layer_repeats is None:
        layer_repeats = min(3, repeats)
    if isinstance(layer_repeats, bool) or not isinstance(layer_repeats, int) or layer_repeats < 0:
        raise ModelsizeError("bad number of layer_repeats", field="layer_repeats",
                             expected="an integer >= 0", received=repr(layer_repeats))
    dev = device if isinstance(device, Device) else get_device(device)
    so_far: dict[str, Any] = {}
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _measure(module, dev, shapes, dtypes, highs, dtype, loss, optimizers,
                        warmup, repeats, seed, so_far, amp_dtype, input_grad, layer_repeats, time_budget_s)
    except DoesNotFit as err:
        err.partial = dict(so_far)
        raise
    finally:
        torch.set_num_threads(previous_threads)
        for p in module.parameters():   # a failed step may leave gradients behind
            p.grad = None


def _measure(module: torch.nn.Module, dev: Device, shapes: list[tuple[int, ...]],
             dtypes: list[str], highs: list[int | None], dtype: str, loss: str,
             optimizers: tuple[str, ...], warmup: int, repeats: int, seed: int,
             so_far: dict[str, Any], amp_dtype: str | None = None, input_grad: bool = False,
             layer_repeats: int = 0, time_budget_s: float | None = None) -> Measurement:
    threads = torch.get_num_threads()
    amp = partial(_autocast, dev.torch_device.type, amp_dtype)
    torch.manual_seed(seed)
    gc.collect()
    with oom_guard(dev.name, "loading the model"):
        module.to(device=dev.torch_device, dtype=DTYPES[dtype])
        x = tuple(_make_input(shape, kind, high, DTYPES[dtype], dev.torch_device, seed + 7 * k)
                  for k, (shape, kind, high) in enumerate(zip(shapes, dtypes, highs)))
    so_far["param_bytes"] = param_bytes = storage_bytes(_model_tensors(module))
    reserved: list[int] = []

    # Inference. One untimed pass first: it gives the output's shape for the target, and on CUDA
    # it creates the cuBLAS/cuDNN handles and workspaces outside the measurement.
    module.eval()
    with oom_guard(dev.name, "inference"):
        with torch.no_grad(), amp():
            probe = outputs(module(*x))
        # mse targets are data, in the model's dtype (float32 under mixed precision)
        out_shapes = [(tuple(o.shape), DTYPES[dtype] if amp_dtype else o.dtype) for o in probe]
        del probe

        def infer(mark: Callable[[str | None], None]) -> None:
            mark("forward")
            with torch.no_grad(), amp():
                out = module(*x)  # noqa: F841 - alive until the call returns, as in real use

        reading, split = _allocator_run(dev, module, infer, _model_and_inputs(module, x),
                                        partial(_model_and_inputs, module, x), casts=amp_dtype is not None)
        tracked = _tracked_run(dev, module, infer, [*_model_tensors(module), *x])
    inference = _peaks(reading, *tracked)
    breakdowns = {"inference": split}
    readings = {"inference": reading}
    if reading.reserved_bytes is not None:
        reserved.append(reading.reserved_bytes)
    so_far.update(inference_peak_bytes=inference[0], inference_tensor_peak_bytes=inference[1],
                   inference_workspace_bytes=inference[2])

    # Training.
    y = tuple(_make_target(loss, shape, kind, dev.torch_device, seed + 1 + 7 * k)
              for k, (shape, kind) in enumerate(out_shapes))
    loss_fn = step_loss(loss)
    params = [p for p in module.parameters() if p.requires_grad]
    train: dict[str, dict[str, Any]] = {}
    activations: dict[str, int] = {}
    saved: dict[str, int] = {}
    adam_foreach = None
    module.train()
    for tensor in x:
        if tensor.is_floating_point():
            tensor.requires_grad_(input_grad)
    for name in optimizers:
        with oom_guard(dev.name, f"training step with {name}"):
            opt = _fresh_optimizer(name, params)
            if name == "adam":
                adam_foreach = _uses_foreach(opt, params)
            step = partial(_train_step, module, opt, x, y, loss_fn, amp=amp)
            alive = partial(_alive, module, opt, x, y)
            first, breakdowns[f"train_first_step_{name}"] = _allocator_run(
                dev, module, step, alive(), alive, casts=amp_dtype is not None)
            steady, breakdowns[f"train_{name}"] = _allocator_run(
                dev, module, step, alive(), alive, casts=amp_dtype is not None)
            readings.update({f"train_first_step_{name}": first, f"train_{name}": steady})
            del alive
            # The same two steps again, from the same start, tracked (see _tracked_run).
            opt = _fresh_optimizer(name, params)
            step = partial(_train_step, module, opt, x, y, loss_fn, amp=amp)
            first_tracked = _tracked_run(dev, module, step, _tensors(_alive(module, opt, x, y)))
            steady_tracked = _tracked_run(dev, module, step, _tensors(_alive(module, opt, x, y)))
        tracker = steady_tracked[1]
        reserved += [r.reserved_bytes for r in (first, steady) if r.reserved_bytes is not None]
        train[name] = {"first": _peaks(first, *first_tracked),
                       "steady": _peaks(steady, *steady_tracked),
                       "baseline": steady.baseline_bytes,
                       "phases": {phase: sum(tracker.created_in(phase).values())
                                  for phase in PHASES}}
        if not activations:
            activations = tracker.created_in("forward")
            saved = tracker.retained.get("forward", {})
        so_far[f"train_peak_bytes_{name}"] = train[name]["steady"][0]
        so_far[f"train_first_step_peak_bytes_{name}"] = train[name]["first"][0]
        del opt, step, first_tracked, steady_tracked, tracker

    # Timing, after every memory measurement.
    with oom_guard(dev.name, "timing"):
        timing, times = _time_steps(module, dev, x, y, loss_fn, params, optimizers, amp,
                                    warmup=warmup, repeats=repeats, layer_repeats=layer_repeats,
                                    budget_s=time_budget_s)
    del y
    module.eval()

    return Measurement(
        device=dev.name, dtype=dtype, batch=shapes[0][0], input_shape=shapes[0],
        param_bytes=param_bytes,
        inference_peak_bytes=inference[0], inference_tensor_peak_bytes=inference[1],
        inference_workspace_bytes=inference[2],
        adam_foreach=adam_foreach,
        activation_bytes=activations, saved_activation_bytes=saved,
        phase_bytes={name: result["phases"] for name, result in train.items()},
        max_memory_reserved_bytes=max(reserved) if reserved else None,
        forward_ms=timing.median_ms, forward_ms_iqr=timing.iqr_ms, forward_ms_min=timing.min_ms,
        forward_ms_max=timing.max_ms, repeats=timing.repeats, warmup=timing.warmup,
        threads=threads,
        optimizer_peaks={name: {
            "train_peak_bytes": result["steady"][0], "train_tensor_peak_bytes": result["steady"][1],
            "train_workspace_bytes": result["steady"][2], "train_first_step_peak_bytes": result["first"][0],
            "train_first_step_tensor_peak_bytes": result["first"][1],
            "train_first_step_workspace_bytes": result["first"][2], "train_baseline_bytes": result["baseline"]}
            for name, result in train.items()},
        amp_dtype=amp_dtype, input_grad=input_grad,
        breakdown={peak: split.categories for peak, split in breakdowns.items()},
        activations_at_peak={peak: split.activations for peak, split in breakdowns.items()},
        time=times,
        timelines={peak: r.timeline for peak, r in readings.items() if r.timeline is not None},
    )


def _no_mark(phase: str | None) -> None:
    """A phase starts: nothing to do in a plain run."""


def _time_steps(module: torch.nn.Module, dev: Device, x: tuple[torch.Tensor, ...],
                y: tuple[torch.Tensor, ...], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                params: list[torch.nn.Parameter], optimizers: tuple[str, ...], amp: Callable[[], Any], *,
                warmup: int, repeats: int, layer_repeats: int,
                budget_s: float | None = None) -> tuple[Timing, dict[str, Any]]:
    """The inference call and each optimizer's training step timed (see the module docstring):
    (the forward pass's timing, ``Measurement.time``)."""
    batch = int(x[0].shape[0])
    names = {id(m): name for name, m in module.named_modules()}
    timings: dict[str, Timing] = {}
    instrumented: dict[str, OpTimes] = {}

    def forward(mark: Callable[[str | None], None] = _no_mark) -> None:
        mark("forward")
        with torch.no_grad(), amp():
            module(*x)

    skipped: dict[str, str] = {}

    def instrument(key: str, fn: Callable[[Callable[[str | None], None]], None]) -> None:
        """Per-operator times of ``fn``; a dispatch mode can allocate a little more than the plain
        run (see ``_tracked_run``), so running out of memory here skips them and says so."""
        if not layer_repeats:
            return
        try:
            # the warm-up stays under a budget: the first instrumented training run of a deep
            # model is many times slower than the next (dense-10000: 98 s against ~1 s)
            instrumented[key] = time_ops(fn, dev, names, runs=layer_repeats, warmup=min(warmup, 1),
                                         collect=False, budget_s=budget_s)
        except BaseException as err:  # noqa: BLE001 - re-raised unless it is an allocation failure
            if not is_out_of_memory(err):
                raise
            traceback.clear_frames(err.__traceback__)
            skipped[key] = "out of memory with each operator timed"

    gc.collect()   # once (about 0.2 s with torch loaded); the timed runs keep garbage collection off
    module.eval()
    timings["forward"] = time_fn(forward, dev, warmup=warmup, repeats=repeats, collect=False, budget_s=budget_s)
    instrument("forward", forward)
    module.train()
    for name in optimizers:
        opt = _fresh_optimizer(name, params)
        step = partial(_train_step, module, opt, x, y, loss_fn, amp=amp)
        timings[f"train_{name}"] = time_fn(partial(step, _no_mark), dev, warmup=warmup, repeats=repeats,
                                           collect=False, budget_s=budget_s)
        instrument(f"train_{name}", step)
        del opt, step
        for p in params:
            p.grad = None
    times: dict[str, Any] = {"threads": timings["forward"].threads, "device": dev.name}
    for key, timing in timings.items():
        times[key] = {"median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "min_ms": timing.min_ms,
                      "max_ms": timing.max_ms, "repeats": timing.repeats, "warmup": timing.warmup,
                      "samples_per_s": timing.samples_per_s(batch), "samples_ms": list(timing.samples_ms)}
        if timing.requested is not None:   # a time budget ran fewer than asked for
            times[key].update(requested=timing.requested, budget_s=timing.budget_s)
    train = [instrumented[f"train_{name}"] for name in optimizers if f"train_{name}" in instrumented]
    layers = {"forward": instrumented["forward"].by_module("forward") if "forward" in instrumented else {},
              "backward": train[0].by_module("backward") if train else {},
              "train_forward": train[0].by_module("forward") if train else {}}
    times.update(
        layer_repeats=layer_repeats,
        layers=layers,
        top_layers={phase: _top_level(by_module) for phase, by_module in layers.items()},
        ops={key: run.ops for key, run in instrumented.items()},
        instrumented_ms={key: run.total_ms for key, run in instrumented.items()},
        layer_runs={key: run.runs for key, run in instrumented.items()},
        phases_ms={key: run.phases for key, run in instrumented.items() if key != "forward"})
    if skipped:
        times["instrumented_skipped"] = skipped
    return timings["forward"], times


def _top_level(by_module: dict[str, float]) -> dict[str, float]:
    """Milliseconds per direct child of the root ("encoder.layer.0.attention" counts in "encoder");
    the root's own operators and those outside every module stay apart."""
    out: dict[str, float] = {}
    for name, ms in by_module.items():
        top = name if name in (ROOT, OUTSIDE) else name.split(".", 1)[0]
        out[top] = out.get(top, 0.0) + ms
    return out


def _train_step(module: torch.nn.Module, opt: torch.optim.Optimizer, x: tuple[torch.Tensor, ...],
                y: tuple[torch.Tensor, ...], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                mark: Callable[[str | None], None], *,
                amp: Callable[[], Any] = contextlib.nullcontext) -> None:
    """One training step; ``mark`` names the phase that starts (the tracker's ``set_phase``).

    ``amp`` gives the autocast region of mixed precision: forward and loss inside, backward and
    the optimizer step outside (PyTorch's recipe).
    """
    mark("optimizer")
    opt.zero_grad(set_to_none=True)
    for tensor in x:   # an input that requires a gradient: this step's own (see measure's input_grad)
        tensor.grad = None
    mark("forward")
    with amp():
        out = outputs(module(*x))
        loss = total_loss(loss_fn, out, y)
    mark("backward")
    loss.backward()
    mark("optimizer")
    opt.step()


def _autocast(device_type: str, amp_dtype: str | None):
    """``torch.autocast`` to ``amp_dtype`` on the device, or nothing without mixed precision."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[amp_dtype])


def _check_amp(amp_dtype: str | None, dtype: str) -> None:
    if amp_dtype is None:
        return
    if amp_dtype not in AMP_DTYPES:
        raise ModelsizeError("unknown mixed-precision dtype", field="amp_dtype",
                             expected=" or ".join(map(repr, AMP_DTYPES)), received=repr(amp_dtype))
    if dtype != "float32":
        raise ModelsizeError("mixed precision keeps float32 master weights", field="dtype",
                             expected="'float32' with amp_dtype", received=repr(dtype))


def _fresh_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """A new optimizer without state, and no gradients: the start of training."""
    for p in params:
        p.grad = None
    return OPTIMIZERS[name].make(params)


def _allocator_run(dev: Device, module: torch.nn.Module, fn: Callable[[Callable[[str | None], None]], None],
                   alive: Iterable[tuple[str, torch.Tensor]],
                   after: Callable[[], Iterable[tuple[str, torch.Tensor]]], *,
                   casts: bool = False) -> tuple[PeakReading, Breakdown]:
    """One plain call of ``fn``: the device's allocator-level peak, everything alive counted, and
    what was alive at that peak by category (:mod:`profiler.measuring.peak_breakdown`).

    ``alive`` gives (category, tensor) for everything alive before the call; it is consumed here
    and no reference is kept, so the call can free what it frees in real use
    (``zero_grad(set_to_none=True)`` frees the gradients). ``after`` lists the same afterwards.
    The call is annotated (phases and module calls as profiler ranges, with global module hooks),
    which changes nothing it allocates. ``casts``: record operators' inputs, to tell autocast's
    casts of weights apart.
    """
    before = storages(alive)
    del alive
    baseline = sum(nbytes for _, nbytes in before.values())

    marked: list[str | None] = [None]   # the phase that runs: named when the call runs out of memory

    def annotated() -> None:
        with Annotator(module) as notes:
            def mark(phase: str | None) -> None:
                marked[0] = phase
                notes.mark(phase)
            fn(mark)

    # the CPU device replays the profiler's events itself; another device is profiled around its own reading
    run = annotated if dev.torch_device.type == "cpu" else partial(profiled, annotated)
    # profiled phase by phase, each part's tree read as it ends: a deep model's whole-step tree
    # would be the measurement's peak RSS (~2.3 KiB per event, ~150 events per Dense layer)
    with capture(record_shapes=casts, reduce=partial(gather, device=dev.torch_device)) as taken, _gc_paused():
        try:
            reading = dev.peak(run, baseline)
        except DoesNotFit as err:
            err.during = err.during or marked[0]
            raise
    weights = storages(("parameters", t) for t in _model_tensors(module))
    known = Known(before=before, after=storages(after()), weights=frozenset(weights))
    block = (lambda n: n) if dev.torch_device.type == "cpu" else _cuda_block
    split = analyse_parts(taken.parts, known=known,
                    baseline_bytes=reading.baseline_bytes, peak_bytes=reading.peak_bytes, block=block)
    return reading, split


def _cuda_block(nbytes: int) -> int:
    """The CUDA caching allocator's block for a request: a multiple of 512 bytes, at least 512."""
    return max(512, -(-nbytes // 512) * 512) if nbytes else 0


def _tracked_run(dev: Device, module: torch.nn.Module,
                 fn: Callable[[Callable[[str | None], None]], None],
                 alive: Iterable[torch.Tensor]) -> tuple[PeakReading, TensorTracker]:
    """One call of ``fn`` under the :class:`TensorTracker`, and the allocator peak of that call.

    Workspace is taken within this one run (allocator peak − tensor peak, never negative): the
    dispatch mode changes what it observes a little. It wraps scalar arguments in small tensors,
    and composite operators and autograd take their out-of-place ("composite compliant") branches
    when a dispatch mode is on (``linear`` adds its bias out of place, gradients for one input are
    summed out of place), so a tracked run can allocate more than the plain one.
    """
    tracker = TensorTracker(module, alive, phase=None)
    del alive
    parts = PartMarks()   # the allocator's events are recorded in parts too (~2 KiB per event)

    def mark(phase: str | None) -> None:
        tracker.set_phase(phase)
        parts.mark(phase)

    def tracked() -> None:
        try:
            with tracker:
                fn(mark)
        finally:
            parts.close()

    try:
        with _gc_paused():
            reading = dev.peak(tracked, tracker.baseline_bytes)
    finally:
        tracker.close()
    return reading, tracker


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection during a measured call, so no unrelated tensor is freed in its middle.

    Only reference counting frees objects then, as in a plain training loop between collections.
    (Collecting first is not needed for correctness and costs ~0.2 s with torch loaded; ``measure``
    collects once at its start.)
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _peaks(plain: PeakReading, tracked: PeakReading,
           tracker: TensorTracker) -> tuple[int, int, int]:
    """(allocator peak of the plain run, tensor peak, workspace of the tracked run)."""
    return plain.peak_bytes, tracker.peak_bytes, tracked.peak_bytes - tracker.peak_bytes


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the unique storages behind ``tensors`` (shared storages and views counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _model_tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def _model_and_inputs(module: torch.nn.Module, x: tuple[torch.Tensor, ...]
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """Everything alive before inference, by category: the model, the input."""
    yield from (("parameters", t) for t in _model_tensors(module))
    yield from (("inputs", t) for t in x)


def _alive(module: torch.nn.Module, opt: torch.optim.Optimizer, x: tuple[torch.Tensor, ...],
           y: tuple[torch.Tensor, ...]) -> Iterator[tuple[str, torch.Tensor]]:
    """Everything alive before a training step, by category: model, gradients, optimizer state,
    input, target."""
    yield from (("parameters", t) for t in _model_tensors(module))
    for p in module.parameters():
        if p.grad is not None:
            yield "gradients", p.grad
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield "optimizer_state", value
    yield from (("inputs", t) for t in (*x, *y))
    # an input's gradient (input_grad): made by backward like any other temporary, kept as .grad
    yield from (("temporaries", t.grad) for t in x if t.grad is not None)


def _tensors(pairs: Iterable[tuple[str, torch.Tensor]]) -> Iterator[torch.Tensor]:
    return (tensor for _, tensor in pairs)


def _input_lists(input_shape: Any, input_dtype: Any, int_high: Any
                 ) -> tuple[list[tuple[int, ...]], list[str], list[int | None]]:
    """One input (a shape of ints) or several (a list of shapes, with a dtype and bound each)."""
    several = bool(input_shape) and isinstance(input_shape[0], (tuple, list))
    shapes = [tuple(int(n) for n in s) for s in input_shape] if several else [tuple(int(n) for n in input_shape)]
    dtypes = list(input_dtype) if isinstance(input_dtype, (tuple, list)) else [input_dtype] * len(shapes)
    highs = list(int_high) if isinstance(int_high, (tuple, list)) else [int_high] * len(shapes)
    return shapes, dtypes, highs


def _make_input(shape: tuple[int, ...], input_dtype: str, int_high: int | None,
                dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if input_dtype == "int64":
        assert int_high is not None
        x = torch.randint(0, int_high, shape, dtype=torch.int64, generator=generator)
    else:
        x = torch.randn(shape, generator=generator).to(dtype)
    return x.to(device)


def _make_target(loss: str, out_shape: tuple[int, ...], out_dtype: torch.dtype,
                 device: torch.device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    if loss == "cross_entropy":
        y = torch.randint(0, out_shape[-1], out_shape[:-1], dtype=torch.int64, generator=generator)
    else:
        y = torch.randn(out_shape, generator=generator).to(out_dtype)
    return y.to(device)


def _uses_foreach(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> bool | None:
    """Adam's ``foreach=None`` means "let torch choose"; ask torch what it chooses here."""
    chosen = opt.defaults.get("foreach")
    if chosen is not None:
        return bool(chosen)
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        return bool(foreach)
    except (ImportError, TypeError):   # private helper: its place or signature may change
        return None


def _check_arguments(input_shape: tuple[int, ...], input_dtype: str, int_high: int | None,
                     dtype: str, loss: str, optimizers: tuple[str, ...], warmup: int,
                     repeats: int, threads: int | None) -> None:
    if not input_shape or any(n < 1 for n in input_shape):
        raise ModelsizeError("bad input shape", field="input_shape",
                             expected="a tuple of positive sizes, batch first",
                             received=repr(input_shape))
    if input_dtype not in INPUT_DTYPES:
        raise ModelsizeError("unknown input dtype", field="input_dtype",
                             expected=" or ".join(map(repr, INPUT_DTYPES)),
                             received=repr(input_dtype))
    if input_dtype == "int64" and (int_high is None or int_high < 1):
        raise ModelsizeError("integer inputs need an exclusive upper bound", field="int_high",
                             expected="an integer >= 1", received=repr(int_high))
    if dtype not in DTYPES:
        raise ModelsizeError("unknown dtype", field="dtype",
                             expected=" or ".join(map(repr, DTYPES)), received=repr(dtype))
    if loss not in LOSSES:
        raise ModelsizeError("unknown loss", field="loss", expected=" or ".join(map(repr, LOSSES)),
                             received=repr(loss))
    unknown = [name for name in optimizers if name not in OPTIMIZERS]
    if unknown:
        raise ModelsizeError("unknown optimizer", field="optimizers",
                             expected=" or ".join(map(repr, OPTIMIZERS)), received=repr(unknown[0]))
    for name, value, least in (("warmup", warmup, 0), ("repeats", repeats, 1),
                               ("threads", threads, 1)):
        if value is None and name == "threads":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ModelsizeError(f"bad number of {name}", field=name,
                                 expected=f"an integer >= {least}", received=repr(value))
