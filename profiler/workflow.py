"""The three jobs behind the CLI — predict, measure, profile — as functions returning result dicts."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from profiler.frontends import models
from profiler.errors import SpecError
from profiler.engine.optimizers import DEFAULT as DEFAULT_OPTIMIZERS
from profiler.engine.predict import predict
from profiler.report.results import breakdown_comparison, relative_errors
from profiler.frontends.spec import ModelSpec, load


def resolve_spec(spec: str | None) -> ModelSpec:
    """A spec file's path, or the name of a built-in model (default: the seed's digit classifier)."""
    if spec is None:
        return models.builtin(models.DEFAULT)
    if Path(spec).exists() or spec.endswith((".yaml", ".yml", ".json")) or "/" in spec:
        return load(spec)
    if spec in models.names():
        return models.builtin(spec)
    raise SpecError("no such file or built-in model", source=spec,
                    expected="a .yaml/.json spec or one of " + ", ".join(models.names()))


FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory(spec: str | None) -> bool:
    """``package.module:factory`` (a torch model to import and call) rather than a spec file."""
    return spec is not None and not Path(spec).exists() and bool(FACTORY.match(spec))


def summarize_factory(reference: str, *, input_shapes: list[tuple[int, ...]], input_dtypes: list[str],
                      batch: int, dtype: str, loss: str, depth: int | None,
                      optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
                      checkpoint: bool | tuple[str, ...] = ()) -> dict[str, Any]:
    """Predict a torch model made by ``reference``: imported, then called under the meta device.

    Checkpointing is predicted for specs only (it changes the model's code): asking for it here is
    an error. Mixed precision is replayed under ``torch.autocast`` like the rest of the module.
    """
    import sys

    if checkpoint:
        raise SpecError("checkpointing is predicted for model specs, not torch models", field="checkpoint",
                        source=reference, expected="a .yaml/.json spec or a built-in model")

    from profiler.engine.torch_module import load_factory, summary as module_summary

    if "" not in sys.path and str(Path.cwd()) not in sys.path:   # as `python -m` would: find local code
        sys.path.insert(0, str(Path.cwd()))
    if not input_shapes:
        raise SpecError("a torch model needs its input shape", field="input-shape",
                        expected="--input-shape 3,224,224 (batch excluded), once per input")
    dtypes = input_dtypes or ["float"]
    if len(dtypes) == 1:
        dtypes = dtypes * len(input_shapes)
    return module_summary(load_factory(reference), input_shapes if len(input_shapes) > 1 else input_shapes[0],
                          batch=batch, depth=depth, input_dtype=dtypes if len(dtypes) > 1 else dtypes[0],
                          dtype=dtype, loss=loss, name=reference, optimizers=optimizers, amp=amp)


def token_range(spec: ModelSpec, input_name: str) -> int | None:
    """Token ids are drawn below the smallest input_dim of the Embeddings that read them."""
    dims = [node.layer.args.input_dim for node in spec.nodes
            if node.layer.type == "Embedding" and (input_name, 0) in node.inputs]
    return min(dims) if dims else None


def summary(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device_kind: str = "cpu",
            optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: bool | tuple[str, ...] = (), threads: int | None = None,
            input_grad: bool = False) -> dict[str, Any]:
    """Predict. ``amp``: mixed precision to this dtype; ``checkpoint``: layers checkpointed (True: all);
    ``input_grad``: training computes the inputs' gradients too."""
    return predict(spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                   optimizers=optimizers, amp=amp, checkpoint=checkpoint, threads=threads,
                   input_grad=input_grad).as_dict()


def measure(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device: str | None,
            warmup: int, repeats: int, threads: int | None,
            optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: bool | tuple[str, ...] = (), input_grad: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the model on the device and measure it: (measured figures, options used).

    ``amp``: forward and loss under ``torch.autocast`` to this dtype, float32 weights;
    ``checkpoint``: the layers wrapped in activation checkpointing (True: every layer).
    The request is validated first, by predicting it (cheap), so what the prediction refuses
    fails with its SpecError rather than inside PyTorch.
    """
    from profiler.frontends.build import build
    from profiler.measuring.devices import get_device
    from profiler.engine.predict import checkpoint_layers
    from profiler.measuring.runner import measure as run

    target = get_device(device)
    predict(spec, batch=batch, dtype=dtype, loss=loss, device_kind=target.torch_device.type,
            optimizers=optimizers, amp=amp, checkpoint=checkpoint, threads=threads, input_grad=input_grad)
    module = build(spec, dtype=dtype, device=target.torch_device, checkpoint=checkpoint)
    measurement = run(module, input_shape=[(batch, *i.shape) for i in spec.inputs],
                      input_dtype=[i.dtype for i in spec.inputs],
                      int_high=[token_range(spec, i.name) for i in spec.inputs], dtype=dtype,
                      device=target, loss=loss, optimizers=optimizers,
                      warmup=warmup, repeats=repeats, threads=threads, amp_dtype=amp, input_grad=input_grad)
    measured = measurement.as_dict()
    measured["layer_kept_for_backward_bytes"] = by_layer(measured.get("saved_activation_bytes", {}))
    measured["layer_activations_at_peak"] = {peak: by_layer(modules) for peak, modules
                                             in measured.get("activations_at_peak", {}).items()}
    options = {"device": target.name, "batch": batch, "dtype": dtype, "loss": loss,
               "optimizers": list(optimizers), "warmup": warmup, "repeats": repeats,
               "threads": measured.get("threads", threads), "amp": amp,
               "checkpoint": sorted(checkpoint_layers(spec, checkpoint)), "input_grad": input_grad}
    return measured, options


def by_layer(module_bytes: dict[str, int]) -> dict[str, int]:
    """Bytes per spec layer from bytes per torch module ("conv2d.0.inner" belongs to "conv2d")."""
    totals: dict[str, int] = {}
    for module, nbytes in module_bytes.items():
        layer = module.removeprefix("layers.").split(".", 1)[0]   # GraphModel keeps layers in .layers
        totals[layer] = totals.get(layer, 0) + nbytes
    return totals


def profile(spec: ModelSpec, *, batch: int, dtype: str, loss: str, device: str | None,
            warmup: int, repeats: int, threads: int | None,
            optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS, amp: str | None = None,
            checkpoint: bool | tuple[str, ...] = (), input_grad: bool = False) -> dict[str, Any]:
    """Predict, measure and compare: the whole result, ready to save and render.

    The prediction comes first: it validates the spec and the options (mixed precision on layers
    it does not model, for one), so a bad request fails with its SpecError before anything is
    built. It is for the device and threads the measurement will run with (threads size kernels'
    scratch): ``threads``, else torch's current number, which the runner keeps.
    """
    import torch

    from profiler.measuring.devices import get_device
    from profiler.measuring.machine import machine_info

    target = get_device(device)
    device_kind = "cuda" if target.name.startswith("cuda") else "cpu"
    result = summary(spec, batch=batch, dtype=dtype, loss=loss, device_kind=device_kind,
                     optimizers=optimizers, amp=amp, checkpoint=checkpoint, input_grad=input_grad,
                     threads=threads if threads is not None else torch.get_num_threads())
    measured, options = measure(spec, batch=batch, dtype=dtype, loss=loss, device=target.name,
                                warmup=warmup, repeats=repeats, threads=threads, optimizers=optimizers,
                                amp=amp, checkpoint=checkpoint, input_grad=input_grad)
    result.update(options=options, spec=spec.as_dict(), machine_info=machine_info(), measured=measured,
                  relative_error=relative_errors(result["predicted"], measured),
                  breakdown_comparison=breakdown_comparison(result["peaks"], measured.get("breakdown", {})))
    return result
