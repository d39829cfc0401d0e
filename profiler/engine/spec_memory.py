"""A spec's memory, predicted by the module engine: the spec compiles to the torch module the
builder makes, which is replayed on fake tensors like any user's module."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from profiler.engine.memory_model import Peak
from profiler.frontends.spec import ModelSpec

if TYPE_CHECKING:
    from profiler.engine.layer_runs import Shortened
    from profiler.engine.op_cost import OpCost


def replay(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device_kind: str, optimizers: Iterable[str],
           amp: str | None, checkpoint: Iterable[str], threads: int | None, input_grad: bool,
           record_costs: bool = False, module: Any = None):
    """``module``: the meta module built from ``spec`` (else built here)."""
    import torch

    from profiler.engine.module_memory import predict_memory
    from profiler.engine.torch_module import _fake_run
    from profiler.frontends.build import build

    if module is None:
        module = build(spec, dtype=dtype, device="meta", checkpoint=tuple(checkpoint))
    shapes = [tuple(i.shape) for i in spec.inputs]
    in_dtypes = [torch.int64 if i.dtype == "int64" else getattr(torch, dtype) for i in spec.inputs]
    fake_mode, fake, inputs, names = _fake_run(module, shapes, in_dtypes, batch)
    return predict_memory(fake, inputs, None, loss=loss, fake_mode=fake_mode, names=names,
                          optimizers=tuple(optimizers), amp=amp, threads=threads, device_kind=device_kind,
                          input_grad=input_grad, record_costs=record_costs)


#: :func:`costs`'s ``short`` when the caller has not cut the spec (a 10,000-layer spec's cut: ~1 s)
FIND = object()


def costs(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device_kind: str, optimizers: Iterable[str],
          amp: str | None, checkpoint: Iterable[str], threads: int | None, input_grad: bool,
          updates: dict[str, list[OpCost]] | None = None, short: Any = FIND) -> dict[str, list[OpCost]]:
    """The operator calls of :func:`replay` (``MemoryPrediction.costs``), the time model's input:
    a spec with long runs of identical layers replayed with them cut short
    (:mod:`profiler.engine.layer_runs`: the same calls), else replayed whole. ``updates``: the
    optimizers' updates, priced already by :func:`update_costs` (they do not depend on the batch);
    ``short``: ``layer_runs.shorten(spec, checkpoint)`` where the caller has it (:data:`FIND`: found here)."""
    from profiler.engine.layer_runs import shorten
    from profiler.frontends.build import build

    options = dict(batch=batch, dtype=dtype, loss=loss, device_kind=device_kind, optimizers=tuple(optimizers),
                   amp=amp, checkpoint=tuple(checkpoint), threads=threads, input_grad=input_grad)
    if short is FIND:
        short = shorten(spec, frozenset(checkpoint))
    if short is not None:
        module = build(short.spec, dtype=dtype, device="meta")
        found = replay(short.spec, **options, record_costs=True, module=module).costs
        whole = {key: short.expand(found[key]) for key in ("inference", "training") if key in found}
        if all(calls is not None for calls in whole.values()):
            if "training" in whole:
                whole.update(updates if updates is not None else
                             _updates(short, module, tuple(optimizers), device_kind, amp, threads))
            return whole   # type: ignore[return-value]
    return replay(spec, **options, record_costs=True).costs


def update_costs(short: Shortened, *, dtype: str, device_kind: str, optimizers: Iterable[str], amp: str | None,
                 threads: int | None) -> dict[str, list[OpCost]]:
    """The calls of the optimizers' steady updates of the spec ``short`` was cut from (``shorten``'s),
    by "step_<optimizer>": what :func:`costs` takes as ``updates``."""
    from profiler.frontends.build import build
    return _updates(short, build(short.spec, dtype=dtype, device="meta"), tuple(optimizers), device_kind, amp, threads)


def _updates(short: Shortened, module: Any, optimizers: tuple[str, ...], device_kind: str, amp: str | None,
             threads: int | None) -> dict[str, list[OpCost]]:
    from profiler.engine.module_memory import update_costs

    params = short.parameters(module)
    return {f"step_{name}": update_costs(params, name, device_kind=device_kind, amp=amp, threads=threads)
            for name in optimizers}


def layer_of(module: str) -> str:
    """A built module's name as the spec's layer name: "layers.block.layers.dense" -> "block/dense"."""
    parts = [p for p in module.split(".") if p not in ("layers", "inner")]
    return "/".join(parts[:1] + parts[1:2]) if parts else ""


def layer_dtypes(output_dtypes: dict) -> dict[str, str]:
    """Layer -> the dtype of its output, from the outermost module each layer was built as (what
    the replay's forward returned: under autocast, the dtype autocast left it in)."""
    from profiler.dtypes import dtype_name
    found: dict[str, tuple[int, str]] = {}
    for module, dtype in output_dtypes.items():
        layer, depth = layer_of(module), module.count(".")
        if layer and (layer not in found or depth < found[layer][0]):
            found[layer] = (depth, dtype_name(dtype))
    return {layer: name for layer, (_, name) in found.items()}


def rounded(peak: Peak, timeline, footprint: Callable[[int], int] | None) -> Peak:
    if footprint is None:
        return peak
    return Peak(timeline.peak(footprint), peak.at, peak.breakdown)
