"""Summaries of a ``torch.nn.Module``: parameters, shapes, MACs and memory, without real weights.

Users who arrive with a PyTorch model call :func:`summary` with the module, or with a factory that
builds it (a function of no arguments, or ``"package.module:factory"`` via :func:`load_factory`).
The result is a dict of the same shape as :meth:`profiler.engine.predict.Prediction.as_dict`, so
``profiler.report.tables.render`` prints it as it prints a spec's prediction.

Nothing real is allocated for the weights:

- a factory is called under ``torch.device("meta")``, so its parameters are meta tensors;
- a module that has real weights is never moved or changed (no ``.to``, no hooks left behind, its
  ``state_dict`` untouched): its tree is copied with ``copy.deepcopy`` while every parameter,
  buffer and tensor attribute is swapped for a meta tensor of the same shape, so no weight is
  copied and tied parameters stay tied.

Shapes and MACs come from one forward pass on the meta device (:mod:`profiler.engine.module_trace`;
under ``amp`` on fake CPU tensors, which autocast acts on), memory peaks from replaying inference
and training steps on fake CPU tensors, kernels' workspace included (:mod:`profiler.engine.module_memory`). Parameters are counted exactly from ``module.parameters()``
(shared parameters once): "params" are parameter elements, trainable by ``requires_grad``, as
``sum(p.numel() for p in module.parameters())`` counts them; buffers (BatchNorm's running
statistics, a rotary ``inv_freq``) are listed apart (``buffers``, ``buffer_bytes``) and counted in
every memory figure.

Rows form a tree, as torchinfo's ``depth``: the root is depth 0, its children depth 1, and so on.
Modules deeper than ``depth`` are folded into their ancestor at ``depth``, whose row then covers its
whole subtree; ``depth=None`` lists every leaf module (the flat per-leaf view). A module whose
children are listed gets a row of its own only when it owns something itself: parameters it holds
directly (``nn.MultiheadAttention.in_proj_weight``) or operators its own ``forward`` runs (a
``torch.matmul`` between child layers); that row counts only its own part. So the count columns
(parameters, parameter bytes, MACs, FLOPs, bytes kept for backward) sum to the totals at every
depth. Besides the keys of a prediction's rows, each row has ``depth``, ``shared`` (it holds a
tensor another module holds too; counted once, at the first), ``calls`` (0: never called, shapes
unknown), ``own_part_only`` and ``activation_bytes`` (= ``output_bytes``: the new storages the
module returns; in place and views return none).
"""
from __future__ import annotations

import copy
import gc
from dataclasses import astuple, dataclass, field
from math import prod
from typing import Any, Callable, Iterable, Sequence, Union

import torch
from torch import nn

from profiler.dtypes import ITEMSIZE, MODEL_DTYPES, dtype_name
from profiler.errors import ModelsizeError
from profiler.step import LOSSES
from profiler.engine.module_memory import (KEEP_CALLS, OPTIMIZERS, MemoryPrediction, autocast, make_target, outputs,
                                           predict_memory)
from profiler.engine.module_scope import ROOT   # the name rows give the root module
from profiler.engine.module_trace import Trace, trace
from profiler.engine.step_time import DeviceModel, predict_times
from profiler.engine.value_reads import answered_as_real
from profiler.frontends.source import call_factory, load_factory
from profiler.measuring.runner import AMP_DTYPES

InputShape = Union[Sequence[int], Sequence[Sequence[int]]]
INPUT_DTYPES = ("float", "int64", *MODEL_DTYPES)


def summary(model: nn.Module | Callable[[], nn.Module] | str, input_shape: InputShape, *,
            batch: int = 1, depth: int | None = None, input_dtype: str | Sequence[str] = "float",
            dtype: str = "float32", loss: str = "cross_entropy", name: str | None = None,
            optimizers: Sequence[str] = ("sgd", "adam"), amp: str | None = None,
            threads: int | None = None, device_kind: str = "cpu",
            time_model: DeviceModel | None = None, timelines: bool = False,
            calls_alone: bool = False) -> dict[str, Any]:
    """Everything modelsize can say about a torch module, as a result dict (see the module doc).

    ``model`` is a module (left untouched), a factory of no arguments (called under the meta
    device) or ``"package.module:factory"`` (imported and called: see :func:`load_factory`).
    ``input_shape`` is one sample's shape, batch excluded, or a list of them for a module that
    takes several inputs (``model(*inputs)``). ``input_dtype`` is ``"float"`` (the model's dtype),
    ``"int64"`` (token ids) or a floating dtype name, or one of those per input. ``dtype`` is the
    dtype the floating parameters and buffers are counted and run in (as ``module.to(dtype)``).
    The loss is computed on the output; for a tuple output, on each of its tensors (summed).
    ``amp``: mixed precision as the runner measures it, float32 weights and the forward pass and
    loss under ``torch.autocast("cpu", dtype=amp)`` ("bfloat16" or "float16"); ``mse`` targets
    stay float32. ``time_model``: also predict the time of inference and of each training step on
    that device (``predicted_time``, see :func:`profiler.engine.step_time.predict_times`).
    ``timelines``: also each peak's timeline, compact (``timelines``, see :mod:`profiler.timeline`).
    ``calls_alone``: with a measured ``time_model`` (this CPU), each distinct operator call is also
    run alone on real tensors (:mod:`profiler.measuring.calls_alone`: allocates, one call at a
    time), and the layers' split of the predicted time takes it in.
    """
    shapes = _input_shapes(input_shape)
    in_dtypes = _input_dtypes(input_dtype, len(shapes), dtype)
    _check(batch, depth, dtype, loss, optimizers, amp)
    target_dtype = getattr(torch, dtype)

    timed_alone = calls_alone and time_model is not None and time_model.method == "measured"
    meta, name = _meta_model(model, target_dtype, name)
    names = {id(m): n for n, m in meta.named_modules()}
    tree = _tree(meta)
    fake_mode, fake, fake_inputs, fake_names = _fake_run(meta, shapes, in_dtypes, batch)

    def traced_json() -> dict[str, Any]:
        """Shapes and MACs (:mod:`profiler.engine.module_trace`), as plain data: it may run in the
        child that replays inference (see :func:`predict_memory`)."""
        if amp is None:
            meta_inputs = [torch.empty((batch, *s), dtype=d, device="meta")
                           for s, d in zip(shapes, in_dtypes)]
            traced = _run(lambda: trace(meta, meta_inputs, names), "the forward pass on the meta device", name)
        else:   # autocast acts on CPU tensors only: the outputs' dtypes need the fake CPU ones
            def autocast_trace() -> Trace:
                with fake_mode, autocast(amp):
                    return trace(fake, fake_inputs, fake_names)
            traced = _run(autocast_trace, "the forward pass under autocast on fake tensors", name)
        try:
            outs = [[list(o.shape), dtype_name(o.dtype)] for o in outputs(traced.output)]
        except TypeError as err:
            if optimizers:
                raise ModelsizeError(f"no loss can be computed: {err}", field="optimizers",
                                     expected="a module returning a tensor (or a tuple, list or dict of "
                                              "tensors), or optimizers=() for no training step") from None
            outs = []
        return {"modules": {n: astuple(calls) for n, calls in traced.modules.items()},
                "flops": traced.flops, "outputs": outs}

    memory = _run(lambda: predict_memory(fake, fake_inputs, None, loss=loss, fake_mode=fake_mode,
                                         names=fake_names, optimizers=optimizers, amp=amp,
                                         threads=threads, device_kind=device_kind,
                                         record_costs=KEEP_CALLS if timed_alone else time_model is not None,
                                         beside=traced_json),
                  f"replaying inference and training on fake tensors at batch {batch}", name)
    traced = Trace.from_json(memory.beside)
    outs = [(tuple(shape), getattr(torch, d)) for shape, d in memory.beside["outputs"]]
    with fake_mode:   # mse targets are data, float32 under mixed precision (as the runner's)
        targets = [make_target(loss, shape, target_dtype if amp else d) for shape, d in outs] \
            if optimizers else []

    rows = _rows(tree, traced, memory.saved_bytes, depth, batch)
    totals = _totals(tree, traced, batch, shapes, in_dtypes, targets)
    predicted = {"param_bytes": totals["param_bytes"] + totals["buffer_bytes"],   # all the model holds
                 "inference_peak_bytes": memory.inference.bytes}
    peaks = {"inference": memory.inference.as_dict()}
    for opt, peak in memory.training.items():
        predicted[f"train_peak_bytes_{opt}"] = peak.bytes
        peaks[f"train_{opt}"] = peak.as_dict()
    for opt, peak in memory.first_step.items():
        predicted[f"train_first_step_peak_bytes_{opt}"] = peak.bytes
        peaks[f"train_first_step_{opt}"] = peak.as_dict()
    alone = None
    if timed_alone:
        from profiler.measuring.calls_alone import time_alone
        alone = time_alone((c for calls in memory.costs.values() for c in calls), threads=time_model.threads)
    timed = {} if time_model is None else \
        {"predicted_time": predict_times(time_model, memory.costs, batch, alone)}
    return {
        **timed,
        "model": name, "source": "torch", "batch": batch, "dtype": dtype, "loss": loss,
        "device_kind": device_kind, "amp": amp, "depth": depth,
        "input_shape": [[None, *s] for s in shapes] if len(shapes) > 1 else [None, *shapes[0]],
        "input_dtype": [dtype_name(d) for d in in_dtypes],
        "output_shape": [_batchless(shape, batch) for shape, _ in outs],
        "layers": rows, "totals": totals, "predicted": predicted, "peaks": peaks,
        "warnings": memory.warnings(),
        **({"timelines": {key: run.compact() for key, run in memory.timelines.items()}} if timelines else {}),
    }


def memory(model: nn.Module | Callable[[], nn.Module], input_shape: InputShape, *, batch: int,
           input_dtype: str | Sequence[str] = "float", dtype: str = "float32", loss: str = "cross_entropy",
           optimizers: Sequence[str] = ("sgd", "adam"), amp: str | None = None, threads: int | None = None,
           device_kind: str = "cpu", name: str | None = None, record_costs: bool = False) -> MemoryPrediction:
    """Only the memory replay of :func:`summary` (no shape and MAC trace, no rows): what the
    planner calls at each batch size it tries (``record_costs``: with each call's work, for time)."""
    shapes = _input_shapes(input_shape)
    in_dtypes = _input_dtypes(input_dtype, len(shapes), dtype)
    _check(batch, None, dtype, loss, optimizers, amp)
    meta, name = _meta_model(model, getattr(torch, dtype), name)
    fake_mode, fake, fake_inputs, fake_names = _fake_run(meta, shapes, in_dtypes, batch)
    del meta
    return _run(lambda: predict_memory(fake, fake_inputs, None, loss=loss, fake_mode=fake_mode,
                                       names=fake_names, optimizers=optimizers, amp=amp, threads=threads,
                                       device_kind=device_kind, record_costs=record_costs),
                f"replaying inference and training on fake tensors at batch {batch}", name)


def _meta_model(model: Any, dtype: torch.dtype, name: str | None) -> tuple[nn.Module, str]:
    """The model on the meta device, floating tensors in ``dtype``: a twin of a module (left
    untouched), or what a factory builds under ``torch.device("meta")``."""
    if isinstance(model, str):
        name = name or model
        model = load_factory(model)   # imports the user's module: its code runs
    if isinstance(model, nn.Module):
        return _twin(model, _to_meta(dtype)), name or type(model).__name__
    if callable(model):
        name = name or getattr(model, "__qualname__", repr(model))
        with torch.device("meta"):
            built = call_factory(model, name)
        meta = built if _all_meta(built, dtype) else _twin(built, _to_meta(dtype))
        return meta, name
    raise ModelsizeError("cannot summarize this", field="model",
                         expected="a torch.nn.Module, a factory or 'package.module:factory'",
                         received=type(model).__name__)


def _fake_run(meta: nn.Module, shapes: list[tuple[int, ...]], in_dtypes: list[torch.dtype], batch: int
              ) -> tuple[Any, nn.Module, list[torch.Tensor], dict[int, str]]:
    """A fake-CPU twin of ``meta`` (eval mode) with fake inputs, in a fresh fake mode."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    meta.eval()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        fake = _twin(meta, _to_fake)
        fake_inputs = [torch.empty((batch, *s), dtype=d, device="cpu") for s, d in zip(shapes, in_dtypes)]
    return fake_mode, fake, fake_inputs, {id(m): n for n, m in fake.named_modules()}


# ----------------------------------------------------------------------------------------------
# Arguments


def _input_shapes(input_shape: InputShape) -> list[tuple[int, ...]]:
    """One shape (a sequence of ints) or several (a sequence of sequences), batch excluded."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ModelsizeError("bad input shape", field="input_shape",
                             expected="a tuple of sizes (batch excluded) or a list of them",
                             received=repr(input_shape))
    several = len(input_shape) > 0 and all(isinstance(s, Sequence) for s in input_shape)
    shapes = ([tuple(s) for s in input_shape] if several  # type: ignore[union-attr]
              else [tuple(input_shape)])  # type: ignore[arg-type]
    for shape in shapes:
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ModelsizeError("bad input shape", field="input_shape",
                                 expected="positive integer sizes, batch excluded",
                                 received=repr(input_shape))
    return shapes


def _input_dtypes(input_dtype: str | Sequence[str], count: int, dtype: str) -> list[torch.dtype]:
    names = [input_dtype] * count if isinstance(input_dtype, str) else list(input_dtype)
    if len(names) != count:
        raise ModelsizeError("one input dtype per input", field="input_dtype",
                             expected=f"{count} dtype names", received=repr(input_dtype))
    for n in names:
        if n not in INPUT_DTYPES:
            raise ModelsizeError("unknown input dtype", field="input_dtype",
                                 expected=" or ".join(map(repr, INPUT_DTYPES)), received=repr(n))
    return [getattr(torch, dtype if n == "float" else n) for n in names]


def _check(batch: int, depth: int | None, dtype: str, loss: str, optimizers: Sequence[str],
           amp: str | None) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ModelsizeError("must be a positive integer", field="batch", received=repr(batch))
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ModelsizeError("must be an integer >= 0 or None (every leaf)", field="depth",
                             received=repr(depth))
    if dtype not in MODEL_DTYPES:
        raise ModelsizeError("unknown dtype", field="dtype", expected=" or ".join(MODEL_DTYPES),
                             received=repr(dtype))
    if loss not in LOSSES:
        raise ModelsizeError("unknown loss", field="loss", expected=" or ".join(LOSSES),
                             received=repr(loss))
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ModelsizeError("unknown optimizer", field="optimizers",
                             expected=" or ".join(OPTIMIZERS), received=repr(unknown[0]))
    if amp is not None and amp not in AMP_DTYPES:
        raise ModelsizeError("unknown mixed-precision dtype", field="amp",
                             expected=" or ".join(map(repr, AMP_DTYPES)), received=repr(amp))
    if amp is not None and dtype != "float32":
        raise ModelsizeError("mixed precision keeps float32 master weights", field="dtype",
                             expected="'float32' with amp", received=repr(dtype))


def _run(fn: Callable[[], Any], what: str, source: str | None = None) -> Any:
    """Run a pass; a failure names the model and the pass (data-dependent code cannot run
    without data, and PyTorch refuses some batch sizes: BatchNorm over one value per channel).

    The garbage collector is paused, as the runner pauses it while measuring: a tensor in a
    reference cycle then lives to the end of the pass in both, and no collection interrupts.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with answered_as_real():
            return fn()
    except ModelsizeError:
        raise
    except Exception as err:
        raise ModelsizeError(f"{what} failed: {type(err).__name__}: {err}".split("\n")[0],
                             source=source) from err
    finally:
        if was_enabled:
            gc.enable()


# ----------------------------------------------------------------------------------------------
# Twins: the same module tree with other tensors


def _twin(module: nn.Module, make: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """A deep copy of ``module`` whose tensors are ``make(tensor)``, made once per tensor.

    ``copy.deepcopy`` reuses what its memo already holds, so the weights themselves are never
    copied, a tensor reachable twice (tied weights, ``nn.LSTM._flat_weights``) maps to one new
    tensor, and the original is only read.
    """
    memo: dict[int, Any] = {}
    for m in module.modules():
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in m._parameters.values()):
            raise ModelsizeError(f"{type(m).__name__} has uninitialized (lazy) parameters",
                                 expected="a module whose parameters have shapes (run it once)")
        for t in (*m._parameters.values(), *m._buffers.values(), *_tensor_attributes(m)):
            if t is not None and id(t) not in memo:
                memo[id(t)] = make(t)
    return copy.deepcopy(module, memo)


def _tensor_attributes(m: nn.Module) -> Iterable[torch.Tensor]:
    """Tensors kept as plain attributes (or in lists, tuples and dicts of them)."""
    stack = [v for k, v in vars(m).items() if k not in ("_parameters", "_buffers", "_modules")]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def _to_meta(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """Meta tensor of the same shape; floating parameters and buffers in ``dtype``."""
    def make(t: torch.Tensor) -> torch.Tensor:
        d = dtype if t.is_floating_point() else t.dtype
        new = torch.empty_strided(t.size(), t.stride(), dtype=d, device="meta")
        if isinstance(t, nn.Parameter):
            return nn.Parameter(new, requires_grad=t.requires_grad)
        return new
    return make


def _to_fake(t: torch.Tensor) -> torch.Tensor:
    """Fake CPU tensor of the same shape and dtype (call it inside the fake mode)."""
    new = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu")
    if isinstance(t, nn.Parameter):
        return nn.Parameter(new, requires_grad=t.requires_grad)
    return new


def _all_meta(module: nn.Module, dtype: torch.dtype) -> bool:
    """Whether every tensor of ``module`` is on the meta device, floating ones in ``dtype``."""
    for m in module.modules():
        for t in (*m._parameters.values(), *m._buffers.values(), *_tensor_attributes(m)):
            if t is not None and (not t.is_meta or (t.is_floating_point() and t.dtype != dtype)):
                return False
    return True


# ----------------------------------------------------------------------------------------------
# The module tree and its rows


@dataclass
class _Part:
    """Counts of a module's own tensors, or of a whole subtree."""
    trainable: int = 0
    frozen: int = 0
    buffers: int = 0
    nbytes: int = 0            # the parameters' bytes
    buffer_nbytes: int = 0
    flops: int = 0
    saved_bytes: int = 0
    shared: bool = False
    modules: int = 1
    terms: list[str] = field(default_factory=list)

    @property
    def elements(self) -> int:
        """Parameter elements (buffers are not parameters)."""
        return self.trainable + self.frozen

    def add(self, other: "_Part") -> None:
        self.trainable += other.trainable
        self.frozen += other.frozen
        self.buffers += other.buffers
        self.nbytes += other.nbytes
        self.buffer_nbytes += other.buffer_nbytes
        self.flops += other.flops
        self.saved_bytes += other.saved_bytes
        self.shared = self.shared or other.shared
        self.modules += other.modules


@dataclass
class _Node:
    name: str
    type: str
    depth: int
    own: _Part
    children: list["_Node"] = field(default_factory=list)
    total: _Part = field(default_factory=_Part)


def _tree(model: nn.Module) -> dict[str, _Node]:
    """Every module once (pre-order), each tensor credited to the first module that holds it."""
    nodes: dict[str, _Node] = {}
    owner: dict[int, tuple[str, str]] = {}        # id(tensor) -> (module, attribute) counting it
    for qualified, module in model.named_modules():
        own = _Part()
        for kind, tensors in (("param", module._parameters), ("buffer", module._buffers)):
            for attr, t in tensors.items():
                if t is None:
                    continue
                shape = "×".join(map(str, t.shape)) or "1"
                first = owner.get(id(t))
                if first is not None:
                    own.shared = True
                    nodes[first[0]].own.shared = True
                    where = ".".join(p for p in first if p)
                    own.terms.append(f"{attr} {shape} shared with {where}, counted there")
                    continue
                owner[id(t)] = (qualified, attr)
                n = t.numel()
                if kind == "buffer":
                    own.buffers += n
                    own.buffer_nbytes += n * t.element_size()
                    continue
                elif t.requires_grad:
                    own.trainable += n
                    own.terms.append(f"{attr} {shape}")
                else:
                    own.frozen += n
                    own.terms.append(f"{attr} {shape} (frozen)")
                own.nbytes += n * t.element_size()
        depth = qualified.count(".") + 1 if qualified else 0
        node = _Node(qualified, type(module).__name__, depth, own)
        nodes[qualified] = node
        if qualified:
            nodes[qualified.rpartition(".")[0]].children.append(node)
    return nodes


def _rows(tree: dict[str, _Node], traced: Trace, saved: dict[str, int], depth: int | None,
          batch: int) -> list[dict[str, Any]]:
    for node in tree.values():
        calls = traced.modules.get(node.name)
        node.own.flops = calls.flops if calls else 0
        node.own.saved_bytes = saved.get(node.name or "", 0)
    for node in reversed(list(tree.values())):    # children come after their parent
        node.total = _Part()
        node.total.add(node.own)
        node.total.modules = 1
        for child in node.children:
            node.total.add(child.total)

    rows: list[dict[str, Any]] = []

    def visit(node: _Node) -> None:
        leaf = not node.children or (depth is not None and node.depth >= depth)
        if leaf:
            rows.append(_row(len(rows), node, node.total, traced, batch, folded=node.total.modules > 1))
            return
        if node.own.elements or node.own.buffers or node.own.flops or node.own.shared:
            rows.append(_row(len(rows), node, node.own, traced, batch, folded=False, own=True))
        for child in node.children:
            visit(child)

    visit(tree[""])
    return rows


def _row(index: int, node: _Node, part: _Part, traced: Trace, batch: int, *, folded: bool,
         own: bool = False) -> dict[str, Any]:
    calls = traced.modules.get(node.name)
    output_bytes = calls.output_bytes if calls else 0
    if folded:
        formula = f"{part.elements:,} over {part.modules} modules"
    else:
        formula = " + ".join(node.own.terms)
    return {
        "index": index, "name": node.name or ROOT, "type": node.type, "depth": node.depth,
        "input_shape": _batchless(calls.input_shape if calls else None, batch),
        "output_shape": _batchless(calls.output_shape if calls else None, batch),
        "params": part.elements, "trainable_params": part.trainable,
        "non_trainable_params": part.frozen, "buffers": part.buffers, "buffer_bytes": part.buffer_nbytes,
        "formula": formula,
        "macs": part.flops // 2, "flops": part.flops, "param_bytes": part.nbytes,
        "output_bytes": output_bytes, "activation_bytes": output_bytes,
        "kept_for_backward_bytes": part.saved_bytes,
        "shared": part.shared, "calls": calls.calls if calls else 0, "own_part_only": own,
    }


def _batchless(shape: tuple[int, ...] | None, batch: int) -> list[int | None]:
    """A shape with its leading batch axis as ``None``; ``[]`` when the module never ran."""
    if shape is None:
        return []
    if shape and shape[0] == batch:
        return [None, *shape[1:]]
    return list(shape)


def _totals(tree: dict[str, _Node], traced: Trace, batch: int, shapes: list[tuple[int, ...]],
            in_dtypes: list[torch.dtype], targets: list[torch.Tensor]) -> dict[str, Any]:
    total = tree[""].total
    params = total.elements
    return {
        "params": params, "trainable_params": total.trainable,
        "non_trainable_params": total.frozen, "convention": "torch",
        "buffers": total.buffers, "buffer_bytes": total.buffer_nbytes,
        "parameter_elements": params, "buffer_elements": total.buffers,
        "param_bytes": total.nbytes,
        "param_bytes_by_dtype": {d: params * ITEMSIZE[d] for d in MODEL_DTYPES},
        "macs": traced.flops // 2, "flops": traced.flops,
        "input_bytes": sum(batch * prod(s) * d.itemsize for s, d in zip(shapes, in_dtypes)),
        "target_bytes": sum(t.numel() * t.element_size() for t in targets),
    }
