"""The jobs behind the CLI and the Python API — summary, measure, profile — for any model source.

A source is a spec (YAML/JSON, Keras JSON, built-in) or a torch module with its inputs
(``package.module:factory``, a Hugging Face ``config.json``, a factory or a module from Python):
see :mod:`profiler.frontends.source`. Each job returns the result dict that is saved and rendered.
"""
from __future__ import annotations

from typing import Any, Callable

from profiler.engine.kernels import cpu_isa
from profiler.engine.optimizers import DEFAULT as DEFAULT_OPTIMIZERS
from profiler.engine.predict import predict
from profiler.engine.spec_memory import FIND
from profiler.engine.step_time import DeviceModel, predict_times
from profiler.errors import ModelsizeError, SpecError
from profiler.frontends.source import ModuleSource, resolve
from profiler.frontends.spec import ModelSpec
from profiler.report.results import breakdown_comparison, relative_errors
from profiler.report.time_tables import time_errors

Source = ModelSpec | ModuleSource


def resolve_spec(reference: str | None) -> Source:
    """A spec file, a built-in model's name (default: the seed's digit classifier), a Hugging Face
    config.json or ``package.module:factory`` (that one needs its inputs: use :func:`resolve`)."""
    return resolve(reference)


def token_range(spec: ModelSpec, input_name: str) -> int | None:
    """Token ids are drawn below the smallest input_dim of the Embeddings that read them."""
    dims = [node.layer.args.input_dim for node in spec.nodes
            if node.layer.type == "Embedding" and (input_name, 0) in node.inputs]
    return min(dims) if dims else None


def _module_only_options(source: ModuleSource, *, checkpoint: Any, input_grad: bool) -> None:
    """Options the engine does not yet replay for torch modules: refused, not predicted wrong."""
    spec_only = {"checkpoint": bool(checkpoint), "input-grad": input_grad}
    for option, asked in spec_only.items():
        if asked:
            raise SpecError(f"--{option} is predicted for model specs, not yet for torch models", field=option,
                            source=source.name, expected="a .yaml/.json spec, a Keras JSON file or a built-in model")


def summary(source: Source, *, batch: int, dtype: str = "float32", loss: str = "cross_entropy",
            device_kind: str = "cpu", optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: bool | tuple[str, ...] = (), threads: int | None = None,
            input_grad: bool = False, depth: int | None = None, time_on: str | None = None,
            progress: Callable[[str], None] | None = None, timelines: bool = False,
            calls_alone: bool = False) -> dict[str, Any]:
    """Predict. ``amp``: mixed precision to this dtype; ``checkpoint``: layers checkpointed (True: all);
    ``input_grad``: training computes the inputs' gradients too; ``threads``: the CPU threads the run
    will use (kernels' scratch depends on them; default: torch's). ``time_on``: also predict the
    time, on "cpu" (this machine, calibrated once: ``progress`` hears about it) or a catalogued
    accelerator ("h100-80gb": a roofline at its datasheet figures). ``timelines``: keep each peak's
    timeline too, compact (the HTML report draws them). ``calls_alone``: a torch module's layers'
    split of the time on this CPU also from each operator call run alone (real tensors, one call
    at a time: ``profile``, which builds the model anyway)."""
    model = None if time_on is None else time_model(time_on, threads, progress)
    if isinstance(source, ModuleSource):
        from profiler.engine.torch_module import summary as module_summary
        _module_only_options(source, checkpoint=checkpoint, input_grad=input_grad)
        result = module_summary(source.for_prediction(), list(source.input_shapes), batch=batch, depth=depth,
                                input_dtype=list(source.input_dtypes), dtype=dtype, loss=loss, name=source.name,
                                optimizers=optimizers, amp=amp, threads=threads, device_kind=device_kind,
                                time_model=model, timelines=timelines, calls_alone=calls_alone)
        result["model_source"] = source.as_dict()
    else:
        result = predict(source, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                         optimizers=optimizers, amp=amp, checkpoint=checkpoint, threads=threads,
                         input_grad=input_grad, timelines=timelines).as_dict()
        if model is not None:
            result["predicted_time"] = spec_time(source, model, batch=batch, dtype=dtype, loss=loss,
                                                 device_kind=device_kind, optimizers=optimizers, amp=amp,
                                                 checkpoint=checkpoint, threads=threads, input_grad=input_grad)
    result["warnings"] = result.get("warnings", []) + cpu_isa.warnings(dtype=dtype, amp=amp, device_kind=device_kind)
    return result


def time_model(device: str, threads: int | None = None,
               progress: Callable[[str], None] | None = None) -> DeviceModel:
    """The time model of ``device``: "cpu" is this machine, calibrated (cached after the first
    time); any other name a catalogued accelerator, priced by its datasheet."""
    if device == "cpu":
        from profiler.measuring.calibrate import cpu_model_for
        return cpu_model_for(threads, progress=progress)[0]
    from profiler.planning.accelerators import lookup, roofline_model
    return roofline_model(lookup(device))


def fit(source: Source, budget: Any, *, device: str | None, mode: str, dtype: str, loss: str, amp: str | None,
        threads: int | None) -> tuple[Any, dict[str, Any]]:
    """``fit``: the answer (``planning.fit.Fit``) and its result dict, with the predicted time on
    ``device`` (a catalogued card) at the answer's batch. A spec's optimizer update, which the time
    replay prices over every parameter whatever the batch, is priced in a child beside the solve
    (:func:`profiler.forked.beside`: on two CPUs the wall time of the two, not their CPU time)."""
    import contextlib

    from profiler import forked
    from profiler.engine.layer_runs import shorten
    from profiler.planning.fit import solve

    optimizers = () if mode == "inference" else (mode,)
    short: Any = FIND   # the spec cut (layer_runs.shorten), once: the time replay takes it too
    if device and optimizers and isinstance(source, ModelSpec) and budget.target == "cuda":
        try:
            short = shorten(source)
        except ModelsizeError:   # the solve says what is wrong with the spec, as without this
            short = FIND
    updates = forked.beside(lambda: _update_costs(short, dtype, budget.target, optimizers, amp, threads)) \
        if short not in (None, FIND) else contextlib.nullcontext(lambda: None)
    with updates as priced:
        answer = solve(source, budget, mode=mode, dtype=dtype, loss=loss, amp=amp, threads=threads)
        result = answer.as_dict()
        if device and answer.batch:
            result["predicted_time"] = time_at(source, answer, device, threads=threads, updates=_op_costs(priced()),
                                               short=short)
    return answer, result


def _update_costs(short: Any, dtype: str, device_kind: str, optimizers: tuple[str, ...], amp: str | None,
                  threads: int | None) -> dict[str, Any]:
    """:func:`spec_memory.update_costs` as plain data (what a forked child sends)."""
    from dataclasses import astuple

    from profiler.engine import spec_memory
    found = spec_memory.update_costs(short, dtype=dtype, device_kind=device_kind, optimizers=optimizers, amp=amp,
                                     threads=threads)
    return {key: [astuple(c) for c in calls] for key, calls in found.items()}


def _op_costs(sent: dict[str, Any] | None) -> dict[str, Any] | None:
    from profiler.engine.op_cost import OpCost
    return None if sent is None else {key: [OpCost.from_row(c) for c in calls] for key, calls in sent.items()}


def time_at(source: Source, answer: Any, device: str, *, threads: int | None = None,
            updates: dict[str, Any] | None = None, short: Any = FIND) -> dict[str, Any]:
    """The predicted time of ``fit``'s answer (``planning.fit.Fit``) on ``device``, at its batch
    (``updates``, ``short``: see :func:`spec_time`)."""
    optimizers = () if answer.mode == "inference" else (answer.mode,)
    if isinstance(source, ModelSpec):   # solved: valid, and its memory is known (a 10,000-layer spec: 3 s)
        return spec_time(source, time_model(device, threads), batch=answer.batch, dtype=answer.dtype,
                         loss=answer.loss, device_kind=answer.budget.target, optimizers=optimizers, amp=answer.amp,
                         checkpoint=(), threads=threads, input_grad=False, updates=updates, short=short)
    timed = summary(source, batch=answer.batch, dtype=answer.dtype, loss=answer.loss, device_kind=answer.budget.target,
                    optimizers=optimizers, amp=answer.amp, threads=threads, time_on=device)
    return timed["predicted_time"]


def spec_time(spec: ModelSpec, model: DeviceModel, *, batch: int, dtype: str, loss: str, device_kind: str,
              optimizers: tuple[str, ...], amp: str | None, checkpoint: bool | tuple[str, ...],
              threads: int | None, input_grad: bool, updates: dict[str, Any] | None = None,
              short: Any = FIND) -> dict[str, Any]:
    """A spec's predicted time: its torch module replayed by the engine (the spec path's fast
    replay counts bytes, not operator calls), per spec layer. The replay runs in a forked child
    (:mod:`profiler.forked`), which ends without freeing its ~190 KiB of objects per layer.
    ``updates``: the optimizers' updates priced already (``spec_memory.update_costs``); ``short``:
    the spec cut already (``spec_memory.costs``)."""
    from profiler import forked
    from profiler.engine import spec_memory
    from profiler.engine.predict import checkpoint_layers

    def timed() -> dict[str, Any]:
        costs = spec_memory.costs(spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                                  optimizers=optimizers, amp=amp, checkpoint=checkpoint_layers(spec, checkpoint),
                                  threads=threads, input_grad=input_grad, updates=updates, short=short)
        found = predict_times(model, costs, batch)
        found["layers"] = {phase: _summed_by(spec_memory.layer_of, per_module)
                           for phase, per_module in found["layers"].items()}
        return found
    return forked.call(timed)


def _summed_by(key: Callable[[str], str], values: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in values.items():
        out[key(name)] = out.get(key(name), 0.0) + value
    return out


def measure(source: Source, *, batch: int, dtype: str = "float32", loss: str = "cross_entropy",
            device: str | None = None, warmup: int = 3, repeats: int = 20, threads: int | None = None,
            optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: bool | tuple[str, ...] = (), input_grad: bool = False,
            validate: bool = True, force: bool = False, predicted_peak: int | None = None,
            isolate_from: dict[str, Any] | None = None,
            layer_repeats: int | None = None,
            time_budget_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the model on the device and measure it: (measured figures, options used).

    ``amp``: forward and loss under ``torch.autocast`` to this dtype, float32 weights;
    ``checkpoint``: the layers wrapped in activation checkpointing (True: every layer);
    ``layer_repeats``: instrumented runs for per-module times (default ``min(3, repeats)``; 0: none).
    ``time_budget_s``: the runs of each timed function stop early past it (``runner.measure``).
    A spec's request is validated first by predicting it (cheap), so what the prediction refuses
    fails with its SpecError rather than inside PyTorch; ``validate=False`` when the caller has
    just predicted it. A torch model is built by its factory (or copied): the original is untouched.

    Nothing is built when the predicted peak (``predicted_peak``, else predicted here) is more than
    the device has free: :class:`~profiler.measuring.devices.DoesNotFit` names both figures, unless
    ``force`` (then the measurement may run out of memory, and says so the same way).

    ``isolate_from``: the reference the source was resolved from (``frontends.source.resolve``'s
    arguments); the measurement then runs in a child process (:mod:`profiler.measuring.isolated`).
    """
    from profiler.measuring.devices import get_device, oom_guard
    from profiler.measuring.runner import measure as run

    target = get_device(device)
    if not force:
        if predicted_peak is None:
            predicted = summary(source, batch=batch, dtype=dtype, loss=loss,
                                device_kind=target.torch_device.type, optimizers=optimizers, amp=amp,
                                checkpoint=checkpoint, threads=threads, input_grad=input_grad)["predicted"]
            predicted_peak = peak_of(predicted)
            validate = False
        _check_room(predicted_peak, target, batch)
    if isolate_from is not None:
        from profiler.measuring import isolated
        return isolated.measure(dict(isolate_from), {
            "batch": batch, "dtype": dtype, "loss": loss, "device": target.name, "warmup": warmup,
            "repeats": repeats, "threads": threads, "optimizers": optimizers, "amp": amp,
            "checkpoint": checkpoint, "input_grad": input_grad, "validate": False, "force": True,
            "layer_repeats": layer_repeats, "time_budget_s": time_budget_s})
    if isinstance(source, ModuleSource):
        _module_only_options(source, checkpoint=checkpoint, input_grad=input_grad)
        bounds = source.bounds()
        with oom_guard(target.name, "building the model"):
            module = source.build()
        shapes = [(batch, *s) for s in source.input_shapes]
        measurement = run(module, input_shape=shapes, input_dtype=list(source.input_dtypes), int_high=list(bounds),
                          dtype=dtype, device=target, loss=loss, optimizers=optimizers, warmup=warmup,
                          repeats=repeats, threads=threads, amp_dtype=amp, layer_repeats=layer_repeats,
                          time_budget_s=time_budget_s)
        measured = measurement.as_dict()
        measured["layer_kept_for_backward_bytes"] = dict(measured.get("saved_activation_bytes", {}))
        measured["layer_activations_at_peak"] = dict(measured.get("activations_at_peak", {}))
        chosen: list[str] = []
    else:
        from profiler.engine.predict import checkpoint_layers
        from profiler.frontends.build import build
        if validate:
            predict(source, batch=batch, dtype=dtype, loss=loss, device_kind=target.torch_device.type,
                    optimizers=optimizers, amp=amp, checkpoint=checkpoint, threads=threads, input_grad=input_grad)
        with oom_guard(target.name, "building the model"):
            module = build(source, dtype=dtype, device=target.torch_device, checkpoint=checkpoint)
        measurement = run(module, input_shape=[(batch, *i.shape) for i in source.inputs],
                          input_dtype=[i.dtype for i in source.inputs],
                          int_high=[token_range(source, i.name) for i in source.inputs], dtype=dtype,
                          device=target, loss=loss, optimizers=optimizers, warmup=warmup, repeats=repeats,
                          threads=threads, amp_dtype=amp, input_grad=input_grad, layer_repeats=layer_repeats,
                          time_budget_s=time_budget_s)
        measured = measurement.as_dict()
        measured["layer_kept_for_backward_bytes"] = by_layer(measured.get("saved_activation_bytes", {}))
        measured["layer_activations_at_peak"] = {peak: by_layer(modules) for peak, modules
                                                 in measured.get("activations_at_peak", {}).items()}
        chosen = sorted(checkpoint_layers(source, checkpoint))
    options = {"device": target.name, "batch": batch, "dtype": dtype, "loss": loss,
               "optimizers": list(optimizers), "warmup": warmup, "repeats": repeats,
               "layer_repeats": (measured.get("time") or {}).get("layer_repeats", layer_repeats),
               "threads": measured.get("threads", threads), "amp": amp,
               "checkpoint": chosen, "input_grad": input_grad, "time_budget_s": time_budget_s}
    return measured, options


def distributed(source: Source, reference: dict[str, Any], *, world: int, strategy: Any, batch: int,
                dtype: str = "float32", loss: str = "cross_entropy",
                optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None, threads: int = 1,
                checkpoint: tuple[str, ...] = (), device_kind: str = "cpu",
                measure: bool = False) -> dict[str, Any]:
    """Every rank's steady training-step peak at world size ``world`` under ``strategy``
    (a :class:`profiler.distributed.strategies.Strategy`), predicted; with ``measure``, also
    measured on ``world`` local ranks (gloo on CPUs; NCCL on GPUs, one each, with ``device_kind``
    "cuda"). ``reference``: what ``source`` was resolved from (each
    measured rank resolves it again). Ranks run ``threads`` intra-op threads each (default 1);
    ``checkpoint``: module classes run under activation checkpointing; ``device_kind`` "cuda":
    predicted for CUDA ranks (no CPU workspace, no gloo buffers, foreach optimizers)."""
    from profiler.distributed.run import job_for, run
    jobs = [job_for(source, reference, world=world, strategy=strategy, batch=batch, optimizer=o, loss=loss,
                    dtype=dtype, amp=amp, threads=threads, checkpoint=checkpoint, device_kind=device_kind)
            for o in optimizers]
    return run(jobs, name=getattr(source, "name", "the model"), measure=measure)


def peak_of(predicted: dict[str, int]) -> int:
    """The highest predicted peak of a run (inference and every training step asked for)."""
    return max(v for k, v in predicted.items() if "peak_bytes" in k)


def _check_room(predicted_peak: int, target: Any, batch: int) -> None:
    from profiler.measuring.devices import DoesNotFit
    from profiler.report import units
    free = target.free_bytes()
    if predicted_peak > free:
        raise DoesNotFit(f"the predicted peak, {units.nbytes(predicted_peak)} ({predicted_peak:,} B), is more than "
                         f"the {units.nbytes(free)} ({free:,} B) free on {target.name}: nothing was built "
                         f"(--force measures anyway)", device=target.name, phase="prediction")


def by_layer(module_bytes: dict[str, int]) -> dict[str, int]:
    """Bytes per spec layer from bytes per torch module ("conv2d.0.inner" belongs to "conv2d")."""
    totals: dict[str, int] = {}
    for module, nbytes in module_bytes.items():
        layer = module.removeprefix("layers.").split(".", 1)[0]   # GraphModel keeps layers in .layers
        totals[layer] = totals.get(layer, 0) + nbytes
    return totals


def profile(source: Source, *, batch: int, dtype: str = "float32", loss: str = "cross_entropy",
            device: str | None = None, warmup: int = 3, repeats: int = 20, threads: int | None = None,
            optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: bool | tuple[str, ...] = (), input_grad: bool = False,
            depth: int | None = None, force: bool = False,
            isolate_from: dict[str, Any] | None = None, layer_repeats: int | None = None,
            time_budget_s: float | None = None, predict_time: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict, measure and compare: the whole result, ready to save and render.

    The prediction comes first: it validates the model and the options (mixed precision on layers
    it does not model, for one), so a bad request fails with its SpecError before anything is
    built. It is for the device and threads the measurement will run with (threads size kernels'
    scratch): ``threads``, else torch's current number, which the runner keeps.
    """
    import torch

    from profiler.measuring.devices import get_device
    from profiler.measuring.machine import machine_info

    target = get_device(device)
    device_kind = "cuda" if target.name.startswith("cuda") else "cpu"
    result = summary(source, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                     optimizers=optimizers, amp=amp, checkpoint=checkpoint, input_grad=input_grad,
                     threads=threads if threads is not None else torch.get_num_threads(), depth=depth,
                     time_on=timed_device(target) if predict_time else None, progress=progress,
                     timelines=True, calls_alone=device_kind == "cpu")
    measured, options = measure(source, batch=batch, dtype=dtype, loss=loss, device=target.name,
                                warmup=warmup, repeats=repeats, threads=threads, optimizers=optimizers,
                                amp=amp, checkpoint=checkpoint, input_grad=input_grad, validate=False,
                                force=force, predicted_peak=peak_of(result["predicted"]),
                                isolate_from=isolate_from, layer_repeats=layer_repeats,
                                time_budget_s=time_budget_s)
    described = {"spec": source.as_dict()} if isinstance(source, ModelSpec) else {"model_source": source.as_dict()}
    result.update(options=options, **described, machine_info=machine_info(), measured=measured,
                  relative_error=relative_errors(result["predicted"], measured),
                  breakdown_comparison=breakdown_comparison(result["peaks"], measured.get("breakdown", {})))
    if "predicted_time" in result:
        result["time_error"] = time_errors(result["predicted_time"], measured)
    return result


def timed_device(target: Any) -> str | None:
    """Which time model a measurement on ``target`` is compared with: this machine's calibration on
    the CPU; on CUDA, the catalogued card of the same name (a roofline), if there is one."""
    if target.torch_device.type == "cpu":
        return "cpu"
    import torch
    from profiler.planning.accelerators import CATALOG
    name = torch.cuda.get_device_name(target.torch_device)
    return next((a.name for a in CATALOG.values() if a.model == name), None)


def what_if(result: dict[str, Any], device: str) -> dict[str, Any] | None:
    """What a saved result's run would take on a catalogued ``device`` (peaks and time, predicted),
    for ``compare``'s what-if columns. A spec's result carries its model as data; a torch model's
    names its factory ("package.module:factory", imported again: its code runs, as in every
    command given that name) and its inputs. None for a model that cannot be rebuilt from the
    file (a module passed from Python, a Hugging Face config)."""
    from profiler.frontends.source import FACTORY
    opts = result["options"]
    described = result.get("model_source") or {}
    if "spec" in result:
        from profiler.frontends.spec import from_dict
        source: Source = from_dict(result["spec"], source=result.get("_file", "<result>"))
        extra: dict[str, Any] = {"checkpoint": tuple(opts.get("checkpoint") or ()),
                                 "input_grad": bool(opts.get("input_grad"))}
    elif FACTORY.match(str(described.get("name", ""))) and described.get("input_shapes"):
        source = resolve(described["name"], input_shape=described["input_shapes"],
                         input_dtype=described.get("input_dtypes"), int_high=described.get("int_high"))
        extra = {}
    else:
        return None
    return summary(source, batch=opts["batch"], dtype=opts["dtype"], loss=opts.get("loss", "cross_entropy"),
                   device_kind="cuda", optimizers=tuple(opts["optimizers"]), amp=opts.get("amp"),
                   time_on=device, **extra)
