"""A spec's memory, predicted by the module engine: the spec compiles to the torch module the
builder makes, which is replayed on fake tensors like any user's module."""
from __future__ import annotations

from typing import Callable, Iterable

from profiler.engine.memory_model import Peak
from profiler.frontends.spec import ModelSpec


def replay(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device_kind: str, optimizers: Iterable[str],
           amp: str | None, checkpoint: Iterable[str], threads: int | None, input_grad: bool,
           record_costs: bool = False):
    import torch

    from profiler.engine.module_memory import predict_memory
    from profiler.engine.torch_module import _fake_run
    from profiler.frontends.build import build

    module = build(spec, dtype=dtype, device="meta", checkpoint=tuple(checkpoint))
    shapes = [tuple(i.shape) for i in spec.inputs]
    in_dtypes = [torch.int64 if i.dtype == "int64" else getattr(torch, dtype) for i in spec.inputs]
    fake_mode, fake, inputs, names = _fake_run(module, shapes, in_dtypes, batch)
    return predict_memory(fake, inputs, None, loss=loss, fake_mode=fake_mode, names=names,
                          optimizers=tuple(optimizers), amp=amp, threads=threads, device_kind=device_kind,
                          input_grad=input_grad, record_costs=record_costs)


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
