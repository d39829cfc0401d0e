"""The Python API: ``profiler.summary / measure / profile / fit / distributed`` for any model,
``profiler.sweep`` over batches and dtypes, ``profiler.compare`` and ``profiler.html_report`` of
their results.

``model`` is a torch module (never moved or changed: predicted on a meta twin, measured on a deep
copy), a factory of no arguments (called under the meta device to predict, for real to measure),
``"package.module:factory"`` (IMPORTED and called: its code runs), a path (a YAML/JSON spec, a
Keras ``to_json()`` file, a Hugging Face ``config.json``), a built-in model's name, or a
:class:`~profiler.frontends.spec.ModelSpec`. Torch models need ``input_shape`` (one sample's,
batch excluded; a list of shapes for several inputs). Each call returns the result dict the CLI
renders and saves.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from profiler import workflow
from profiler.engine.optimizers import DEFAULT as DEFAULT_OPTIMIZERS
from profiler.frontends.source import resolve


def _source(model: Any, input_shape: Any, input_dtype: Any, int_high: Any, hf_task: str | None,
            seq_len: int | None, name: str | None):
    return resolve(model, input_shape=input_shape, input_dtype=input_dtype, int_high=int_high,
                   hf_task=hf_task, seq_len=seq_len, name=name)


def summary(model: Any = None, input_shape: Any = None, *, batch: int = 1, input_dtype: Any = None,
            int_high: Any = None, hf_task: str | None = None, seq_len: int | None = None,
            dtype: str = "float32", loss: str = "cross_entropy",
            optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: Any = (), threads: int | None = None, input_grad: bool = False,
            depth: int | None = None, device_kind: str = "cpu", name: str | None = None,
            time_on: str | None = None) -> dict[str, Any]:
    """Predict layer by layer and the memory peaks, allocating nothing. ``time_on``: also predict
    the time of inference and of each training step on "cpu" (this machine, calibrated once and
    cached) or a catalogued accelerator ("h100-80gb": a roofline at its datasheet figures)."""
    source = _source(model, input_shape, input_dtype, int_high, hf_task, seq_len, name)
    return workflow.summary(source, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                            optimizers=tuple(optimizers), amp=amp, checkpoint=checkpoint, threads=threads,
                            input_grad=input_grad, depth=depth, time_on=time_on)


def measure(model: Any = None, input_shape: Any = None, *, batch: int = 1, input_dtype: Any = None,
            int_high: Any = None, hf_task: str | None = None, seq_len: int | None = None,
            dtype: str = "float32", loss: str = "cross_entropy",
            optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, amp: str | None = None, checkpoint: Any = (),
            threads: int | None = None, input_grad: bool = False, device: str | None = None,
            warmup: int = 3, repeats: int = 20, name: str | None = None, force: bool = False,
            layer_repeats: int | None = None, time_budget_s: float | None = None) -> dict[str, Any]:
    """Build the model and measure it on the device: ``{"model", "options", "measured"}``.
    Raises :class:`~profiler.measuring.devices.DoesNotFit` when it runs out of memory, or, before
    building anything, when the predicted peak is more than the device has free (unless ``force``)."""
    source = _source(model, input_shape, input_dtype, int_high, hf_task, seq_len, name)
    measured, options = workflow.measure(source, batch=batch, dtype=dtype, loss=loss, device=device,
                                         warmup=warmup, repeats=repeats, threads=threads,
                                         optimizers=tuple(optimizers), amp=amp, checkpoint=checkpoint,
                                         input_grad=input_grad, force=force, layer_repeats=layer_repeats,
                                         time_budget_s=time_budget_s)
    return {"model": getattr(source, "name", None), "options": options, "measured": measured}


def profile(model: Any = None, input_shape: Any = None, *, batch: int = 1, input_dtype: Any = None,
            int_high: Any = None, hf_task: str | None = None, seq_len: int | None = None,
            dtype: str = "float32", loss: str = "cross_entropy",
            optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, amp: str | None = None, checkpoint: Any = (),
            threads: int | None = None, input_grad: bool = False, device: str | None = None,
            warmup: int = 3, repeats: int = 20, depth: int | None = None, name: str | None = None,
            force: bool = False, layer_repeats: int | None = None,
            time_budget_s: float | None = None) -> dict[str, Any]:
    """Predict, measure and compare, figure by figure (nothing saved: see ``report.results.save``)."""
    source = _source(model, input_shape, input_dtype, int_high, hf_task, seq_len, name)
    return workflow.profile(source, batch=batch, dtype=dtype, loss=loss, device=device, warmup=warmup,
                            repeats=repeats, threads=threads, optimizers=tuple(optimizers), amp=amp,
                            checkpoint=checkpoint, input_grad=input_grad, depth=depth, force=force,
                            layer_repeats=layer_repeats, time_budget_s=time_budget_s)


def fit(model: Any = None, input_shape: Any = None, *, memory: str | int | None = None,
        device: str | None = None, train: str | None = "adam", inference: bool = False,
        target: str | None = None, reserve: str | None = None, margin: str | None = None,
        input_dtype: Any = None, int_high: Any = None, hf_task: str | None = None, seq_len: int | None = None,
        dtype: str = "float32", loss: str = "cross_entropy", amp: str | None = None,
        threads: int | None = None, verify: bool = False, name: str | None = None,
        world_size: int | None = None, strategy: str = "ddp", fsdp_wrap: Sequence[str] = (),
        reshard_after_forward: bool = True, comm_reserve: str | None = None) -> dict[str, Any]:
    """The largest batch whose predicted peak fits ``memory`` (bytes or "24GiB") or a catalogued
    ``device`` ("h100-80gb", whose predicted step time at the answer comes too); ``verify`` measures it
    at that batch and the next. ``world_size``: the largest batch per rank training over that many
    ranks with ``strategy``; on a CUDA target each rank sets ``comm_reserve`` aside for NCCL's
    buffers (default 1GiB)."""
    from profiler.planning import fit as planning

    source = _source(model, input_shape, input_dtype, int_high, hf_task, seq_len, name)
    budget = planning.make_budget(memory=None if memory is None else str(memory), device=device, target=target,
                                  reserve=reserve, margin=margin, comm_reserve=comm_reserve, world=world_size or 1)
    if world_size is not None:
        from profiler.distributed.fit import solve
        from profiler.distributed.run import job_for
        from profiler.distributed.strategies import Strategy
        reference = {"model": model, "input_shape": input_shape, "input_dtype": input_dtype, "int_high": int_high,
                     "hf_task": hf_task, "seq_len": seq_len, "name": name}
        chosen = Strategy(strategy, fsdp_wrap=tuple(fsdp_wrap), reshard_after_forward=reshard_after_forward)
        job = job_for(source, reference, world=world_size, strategy=chosen, batch=2, optimizer=train or "adam",
                      loss=loss, dtype=dtype, amp=amp, threads=threads or 1)
        return solve(job, budget)
    answer, result = workflow.fit(source, budget, device=device, mode="inference" if inference else train,
                                  dtype=dtype, loss=loss, amp=amp, threads=threads)
    if verify:
        result["verification"] = planning.verify(source, answer).as_dict()
    return result


def compare(results: Sequence[Any], *, baseline: int = 1, devices: Sequence[str] = ()) -> dict[str, Any]:
    """Result files (paths, or folders of them) side by side: rows are models with their options,
    columns the machines and settings they ran on; speed-ups against column ``baseline`` (from 1);
    ``devices``: what-if columns predicted on catalogued accelerators ("a100-80gb"). Render it with
    ``profiler.report.compare.render_table`` or ``render_csv``."""
    from profiler.planning.accelerators import lookup
    from profiler.report import compare as comparing
    return comparing.compare(comparing.load_results([str(r) for r in results]), baseline=baseline,
                             devices=[lookup(d).name for d in devices], what_if=workflow.what_if)


def sweep(model: Any = None, input_shape: Any = None, *, batches: Sequence[int] = (1, 2, 4, 8),
          dtypes: Sequence[str] = ("float32",), results_dir: str = "results/sweeps", resume: bool = False,
          input_dtype: Any = None, int_high: Any = None, hf_task: str | None = None, seq_len: int | None = None,
          loss: str = "cross_entropy", optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, amp: str | None = None,
          checkpoint: Any = (), threads: int | None = None, input_grad: bool = False, device: str | None = None,
          warmup: int = 3, repeats: int = 20, layer_repeats: int | None = None) -> list[dict[str, Any]]:
    """Profile at every batch × dtype, one result file per cell in ``results_dir`` (``resume``:
    cells already saved there are skipped): each cell's status ("measured", "does not fit",
    "skipped") and file. A model named by a reference (a path, a built-in's name,
    "package.module:factory") is measured in a child process, so running out of memory ends a
    cell, not the sweep."""
    from profiler import sweeping
    reference = {"model": model, "input_shape": input_shape, "input_dtype": input_dtype, "int_high": int_high,
                 "hf_task": hf_task, "seq_len": seq_len}
    named = model is None or isinstance(model, str)
    source = _source(model, input_shape, input_dtype, int_high, hf_task, seq_len, None)
    events = sweeping.run(source, model=reference if named else getattr(source, "name", "model"), batches=batches,
                          dtypes=dtypes, results_dir=results_dir, resume=resume,
                          isolate_from=reference if named else None, loss=loss, optimizers=tuple(optimizers),
                          amp=amp, checkpoint=checkpoint, threads=threads, input_grad=input_grad, device=device,
                          warmup=warmup, repeats=repeats, layer_repeats=layer_repeats)
    return [{"cell": e.cell, "status": e.status, "file": str(e.path), "peak_bytes": e.peak_bytes}
            for e in events if e.status != "running"]


def html_report(results: Sequence[dict[str, Any] | str | Any], *, title: str | None = None,
                budget: str | int | None = None, fit_batch: int | None = None) -> str:
    """One self-contained HTML page (inline SVG charts, no JavaScript) of ``results``: result dicts
    (``profile``'s) or paths of saved result files. Several batches of a model draw its peak against
    batch, with ``budget`` (bytes or "24GiB") and ``fit_batch`` (fit's answer) marked; several runs
    at one batch are compared. Needs matplotlib (``pip install 'modelsize[report]'``)."""
    from profiler.planning.fit import parse_size
    from profiler.report.html import render_report
    from profiler.report.results import read

    loaded = [read(r) if isinstance(r, (str, os.PathLike)) else r for r in results]
    sources = [str(r) if isinstance(r, (str, os.PathLike)) else f"result {i + 1}" for i, r in enumerate(results)]
    budget_bytes = None if budget is None else parse_size(str(budget), field="budget")
    return render_report(loaded, title=title, budget_bytes=budget_bytes, fit_batch=fit_batch, sources=sources)


def distributed(model: Any = None, input_shape: Any = None, *, world_size: int, strategy: str = "ddp",
                batch: int = 1, input_dtype: Any = None, int_high: Any = None, hf_task: str | None = None,
                seq_len: int | None = None, dtype: str = "float32", loss: str = "cross_entropy",
                optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, amp: str | None = None, threads: int = 1,
                fsdp_wrap: Sequence[str] = (), reshard_after_forward: bool = True, bucket_cap_mb: float = 25.0,
                gradient_as_bucket_view: bool = False, checkpoint: Sequence[str] = (), measure: bool = False,
                name: str | None = None) -> dict[str, Any]:
    """Every rank's steady training-step peak when ``model`` is trained over ``world_size`` ranks
    with ``strategy`` ("ddp", "fsdp", "zero1"), ``batch`` samples per rank, predicted on a fake
    process group; ``measure``: also measured on ``world_size`` local gloo ranks (each rank
    rebuilds the model from its reference, so it must pickle: a path, a name,
    ``"package.module:factory"``, a module-level function or a module)."""
    from profiler.distributed.strategies import Strategy

    source = _source(model, input_shape, input_dtype, int_high, hf_task, seq_len, name)
    reference = {"model": model, "input_shape": input_shape, "input_dtype": input_dtype, "int_high": int_high,
                 "hf_task": hf_task, "seq_len": seq_len, "name": name}
    chosen = Strategy(strategy, fsdp_wrap=tuple(fsdp_wrap), reshard_after_forward=reshard_after_forward,
                      bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=gradient_as_bucket_view)
    return workflow.distributed(source, reference, world=world_size, strategy=chosen, batch=batch, dtype=dtype,
                                loss=loss, optimizers=tuple(optimizers), amp=amp, threads=threads,
                                checkpoint=tuple(checkpoint), measure=measure)
