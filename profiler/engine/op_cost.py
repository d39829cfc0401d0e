"""What one aten operator call costs in work: its floating-point operations and the bytes it moves.

The time model (:mod:`profiler.engine.step_time`) turns these into seconds on a device. FLOPs come
from PyTorch's own formulas (``torch.utils.flop_counter``'s registry, the one ``FlopCounterMode``
uses), with the CPU kernels it has no entry for mapped to the formula of the same computation.
Bytes are what the call reads (its tensor arguments) and writes (its results), each tensor counted
once, at the bytes its view spans (an expanded tensor is read once, not once per repeat). A view
moves nothing; an allocation (``empty``) writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Sequence

import torch
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

from profiler.engine.op_recipe import recipe

aten = torch.ops.aten

#: operator packets whose time is a matrix multiply's (FLOPs-bound when large)
MATMUL = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._scaled_mm}
#: convolutions, forward and backward
CONV = {aten.convolution, aten._convolution, aten.convolution_backward, aten._slow_conv2d_forward,
        aten.convolution_overrideable, aten.mkldnn_convolution}
#: fused attention kernels (FLOPs from the scaled dot-product formulas)
ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu,
             aten._scaled_dot_product_flash_attention_for_cpu_backward,
             aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
             aten._scaled_dot_product_efficient_attention,
             aten._scaled_dot_product_efficient_attention_backward}
#: operators that only make a tensor (no data written) or only change metadata
NO_DATA = {aten.empty, aten.empty_like, aten._unsafe_view, aten.empty_strided, aten.lift_fresh, aten.lift, aten.detach,
           aten.alias, aten.resize_, aten.set_, aten._local_scalar_dense, aten.sym_size, aten.sym_stride,
           aten.sym_numel, aten.is_same_size, aten._has_compatible_shallow_copy_type}

KINDS = ("matmul", "conv", "attention", "memory", "view")
#: kernel families whose time grows with the bytes a call moves, not with its FLOPs: oneDNN's
#: convolutions over few positions for their filters' size (``aten_cpu._short_reduction``), which
#: reorder and stream the weight: alone, their backward took 2.8-4.2 ns a weight (576 -> 144 on
#: 1 × 1 maps at batch 4: 236 µs; 288 -> 1024: 1,236 µs; 960 -> 1280: 4,026 µs; Intel Xeon, 2 threads)
#: while a 64 -> 64 3 × 3 of the FLOPs of the second took a fifth of it
BYTES_BOUND = ("onednn_wide",)


@dataclass(frozen=True)
class OpCost:
    """One operator call: what it is, where it ran, and its work."""
    op: str             # "aten.addmm.default"
    kind: str           # one of KINDS
    phase: str          # "forward", "loss", "backward", "optimizer"
    module: str         # the module running it ("" outside any)
    dtype: str          # of its first floating tensor ("" if none)
    kernel: str         # the kernel family where the backend tells (a convolution's "onednn", "im2col")
    flops: int
    bytes_read: int
    bytes_written: int
    python: bool = True   # the first call after the model's Python ran (:mod:`profiler.engine.python_calls`)
    modules: int = 0      # module calls begun since the previous call (a dropout in eval has no call of its own)
    host_calls: int = 0   # host calls made since the previous call (:mod:`profiler.engine.host_calls`)
    #: (storage, bytes) of each tensor it reads and writes, the storage an identity within one
    #: log: how long ago its inputs were last touched (:mod:`profiler.engine.reuse`). Not part of
    #: a call's identity: two copies of a layer make the same calls on other storages
    reads: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    writes: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    #: bytes of each buffer it allocated (a new result's storage, its kernel's workspace): a large
    #: one is memory new from the system, each page faulted in as the call first writes it
    #: (:meth:`~profiler.engine.step_time.DeviceModel.fresh_seconds`)
    allocated: tuple[int, ...] = field(default=(), compare=False)
    #: the call as plain data, to run it again alone (:mod:`profiler.engine.op_recipe`), where the
    #: replay was asked to keep it; None otherwise
    call: Any = field(default=None, compare=False)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "OpCost":
        """A call from ``dataclasses.astuple`` (what a forked child sends), its touches as tuples."""
        *head, reads, writes, allocated, call = row
        return cls(*head, tuple(tuple(t) for t in reads), tuple(tuple(t) for t in writes), tuple(allocated), call)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def bytes_bound(self) -> bool:
        """Whether its time grows with its bytes: it has no FLOPs, or its kernel family is
        :data:`BYTES_BOUND` (in either memory format)."""
        return not self.flops or self.kernel.removesuffix("_cl") in BYTES_BOUND

    @property
    def work(self) -> int:
        """What its time grows with: its FLOPs, or the bytes it moves where it is bytes-bound."""
        return self.bytes if self.bytes_bound else self.flops

    @property
    def packet(self) -> str:
        """The operator without its overload: "aten.addmm"."""
        return self.op.rsplit(".", 1)[0]


def tensors_in_tree(tree: Any) -> list[torch.Tensor]:
    """The tensors in nested lists, tuples and dicts, in ``tree_flatten``'s order. Iterative, holding
    nothing after it returns: a recursive closure (or torch's pytree) makes a reference cycle that
    keeps the tensors alive until the garbage collector runs, which the memory log would see as
    memory still held; and pytree's generic walk was ~30 % of the allocator tracker's Python time
    on a deep model."""
    found: list[torch.Tensor] = []
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            stack.extend(reversed(x))
        elif isinstance(x, dict):
            stack.extend(reversed(list(x.values())))
    return found


def _shapes(tree: Any) -> Any:
    """``tree`` with each tensor as its shape: what the FLOP formulas read, passed without tensors
    (their wrapper would flatten tensors with torch's pytree, a reference cycle: see :func:`tensors_in_tree`)."""
    if isinstance(tree, torch.Tensor):
        return tree.shape
    if isinstance(tree, (list, tuple)):
        return type(tree)(_shapes(x) for x in tree) if type(tree) in (list, tuple) else tree
    if isinstance(tree, dict):
        return {k: _shapes(v) for k, v in tree.items()}
    return tree


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches in ``t``: its elements, but an expanded (stride-0) axis once."""
    if t.numel() == 0:
        return 0
    distinct = prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)
    return distinct * t.element_size()


def _touched(tensors: list[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """(storage, bytes) of each distinct view in ``tensors``: a tensor passed twice is moved once."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    found = []
    for t in tensors:
        try:
            storage = id(t.untyped_storage())
            key = (storage, t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):   # sparse, or no storage
            continue
        if key not in seen:
            seen.add(key)
            found.append((storage, tensor_bytes(t)))
    return tuple(found)


def _rnn_layer_flops(args: tuple, kwargs: dict, out: Any) -> int:
    """oneDNN's LSTM layer (``mkldnn_rnn_layer``): per step and sample, the gates' two matrix
    products, 4 × hidden × (input + hidden) multiply-adds."""
    x, hidden = args[0], int(args[10])
    steps, batch, features = x.shape
    return 2 * steps * batch * 4 * hidden * (features + hidden)


def _rnn_layer_backward_flops(args: tuple, kwargs: dict, out: Any) -> int:
    # the weights' and the input's gradients: twice the forward's products
    x, hidden = args[0], int(args[15])
    steps, batch, features = x.shape
    return 2 * 2 * steps * batch * 4 * hidden * (features + hidden)


def _linear_product_flops(q: torch.Tensor, weight: torch.Tensor) -> int:
    return 2 * prod(q.shape[:-1]) * weight.shape[0] * weight.shape[1]


def _mha_flops(args: tuple, kwargs: dict, out: Any) -> int:
    """``_native_multi_head_attention(q, k, v, embed, heads, in_w, in_b, out_w, out_b, ...)``:
    the in-projection, the two attention products and the out-projection."""
    q, k, v, embed, in_w, out_w = args[0], args[1], args[2], args[3], args[5], args[7]
    batch, length = q.shape[0], q.shape[1]
    source = k.shape[1]
    projections = 2 * batch * (length + 2 * source) * embed * embed   # in_w is 3E × E, one E slice each
    attention = 2 * 2 * batch * length * source * embed
    return projections + attention + _linear_product_flops(q, out_w)


def _encoder_layer_flops(args: tuple, kwargs: dict, out: Any) -> int:
    """``_transformer_encoder_layer_fwd(src, embed, heads, qkv_w, qkv_b, proj_w, proj_b, ..., w1, b1,
    w2, b2, ...)``: attention (as :func:`_mha_flops`) and the two feed-forward products."""
    src, embed, w1, w2 = args[0], args[1], args[14], args[16]
    batch, length = src.shape[0], src.shape[1]
    attention = 2 * batch * 3 * length * embed * embed + 2 * 2 * batch * length * length * embed \
        + 2 * batch * length * embed * embed
    return attention + _linear_product_flops(src, w1) + 2 * batch * length * w2.shape[0] * w2.shape[1]


#: the wrapper ``register_flop_formula`` puts around a formula of shapes (it maps tensors to shapes
#: with torch's pytree, a third of a 10,000-layer replay's pricing: the shapes are passed here)
_SHAPE_WRAPPER = shape_wrapper(lambda: 0).__code__


def _registry(packet: Any) -> Callable[..., int]:
    formula = flop_registry[packet]
    if getattr(formula, "__code__", None) is _SHAPE_WRAPPER:
        of_shapes = formula.__wrapped__
        return lambda args, kwargs, out: of_shapes(*_shapes(args), **_shapes(kwargs), out_shape=_shapes(out))
    return lambda args, kwargs, out: formula(*_shapes(args), **_shapes(kwargs), out_val=_shapes(out))


_FLOPS: dict[Any, Callable[[tuple, dict, Any], int]] = {p: _registry(p) for p in flop_registry}
_FLOPS[aten._scaled_dot_product_flash_attention_for_cpu] = \
    lambda args, kwargs, out: sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)
_FLOPS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
    lambda args, kwargs, out: sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)
_FLOPS[aten.mkldnn_rnn_layer] = _rnn_layer_flops
_FLOPS[aten.mkldnn_rnn_layer_backward] = _rnn_layer_backward_flops
_FLOPS[aten._native_multi_head_attention] = _mha_flops
_FLOPS[aten._transformer_encoder_layer_fwd] = _encoder_layer_flops


def kind_of(func: Any) -> str:
    packet = func._overloadpacket
    if packet in MATMUL or packet in (aten.mkldnn_rnn_layer, aten.mkldnn_rnn_layer_backward):
        return "matmul"
    if packet in CONV:
        return "conv"
    if packet in ATTENTION or packet in (aten._native_multi_head_attention, aten._transformer_encoder_layer_fwd):
        return "attention"
    if func.is_view or packet in NO_DATA:
        return "view"
    return "memory"


def op_cost(func: Any, args: tuple, kwargs: dict | None, out: Any, *, phase: str, module: str,
            kernel: str = "", python: bool = True, modules: int = 0, host_calls: int = 0,
            allocated: tuple[int, ...] = (), keep_call: bool = False) -> OpCost | None:
    """The work of one call, ``out`` its result (fake tensors are fine: only metadata is read);
    None for what is no operator call in a real run (``prim.device``, which only a tensor subclass
    dispatches, and the profiler's markers). ``python``: whether Python issued it (see
    :mod:`profiler.engine.python_calls`); ``modules``: module calls begun since the previous call;
    ``host_calls``: host calls made since then (:mod:`profiler.engine.host_calls`); ``allocated``:
    the bytes of the buffers it allocated (the memory engine's); ``keep_call``: with its recipe
    (:func:`profiler.engine.op_recipe.recipe`), views excepted."""
    known = _OPERATORS.get(func)
    if known is None:
        known = _OPERATORS[func] = (func.namespace not in ("prim", "profiler"), str(func), kind_of(func),
                                    _FLOPS.get(func._overloadpacket), func._schema.is_mutable)
    priced, name, kind, formula, mutable = known
    if not priced:
        return None
    kwargs = kwargs or {}
    inputs, results = tensors_in_tree((args, kwargs)), tensors_in_tree(out)
    floating = [t for t in (*inputs, *results) if t.is_floating_point()]
    dtype = str(floating[0].dtype).removeprefix("torch.") if floating else ""
    if kind == "view":
        return OpCost(name, kind, phase, module, dtype, kernel, 0, 0, 0, python, modules, host_calls,
                      allocated=allocated)
    flops = 0
    if formula is not None:
        try:
            flops = int(formula(args, kwargs, out))
        except Exception:   # a formula that does not take this overload's arguments: work by bytes
            flops = 0
    reads = _touched(inputs)
    writes = _touched(results) if results or not mutable else reads
    return OpCost(name, kind, phase, module, dtype, kernel, flops, sum(b for _, b in reads), sum(b for _, b in writes),
                  python, modules, host_calls, reads, writes, allocated, recipe(args, kwargs) if keep_call else None)


#: operator -> (priced, name, kind, FLOP formula, mutable): what :func:`op_cost` reads of an
#: operator, looked up once (a 10,000-layer spec's replay prices ~300,000 calls of ~30 operators)
_OPERATORS: dict[Any, tuple[bool, str, str, Callable[[tuple, dict, Any], int] | None, bool]] = {}
