"""Memory peaks of a torch module, predicted by running it on fake tensors (nothing allocated).

The module runs for real (its own forward, autograd's backward, the optimizer's own ``step``) on
``FakeTensorMode`` tensors that claim to live on the CPU but have no data. The CPU device matters:
PyTorch picks kernels by device, and the CPU's choices decide what is allocated (scaled dot-product
attention uses the CPU flash kernel, which never builds the attention matrix; the meta device
would take the math path, which does; ``nn.MultiheadAttention`` in inference takes its fused CPU
fast path). A :class:`StorageLog` dispatch mode sits on top and writes down every tensor storage an
operator returns that did not exist before, and, through ``weakref.finalize``, when each storage
dies. Fake storages have no address, so they are told apart by the identity of the storage object
(PyTorch keeps one Python object per storage for as long as the storage lives).

The log is then replayed in program order to find the peak of live bytes and what was alive at
that moment. Definitions are the runner's (``profiler.measuring.runner``): a peak counts everything alive;
inference is ``model.eval()`` and ``out = model(*x)`` under ``no_grad``; a training step is
``zero_grad(set_to_none=True); out = model(*x); loss = loss_fn(out, y); loss.backward();
opt.step()`` with ``out`` and ``loss`` alive until it ends, steady state (a first step runs before,
so gradients and optimizer state exist when the measured one starts). ``SGD(lr=0.01)`` keeps no
state; ``Adam()`` keeps ``exp_avg``, ``exp_avg_sq`` and a float32 ``step`` per tensor, and its CPU
single-tensor update holds ``sqrt(v)`` and ``sqrt(v) / bc2`` of one parameter at once: both come out
of the replay, they are not assumed.

What a tensor-level log cannot see is what kernels allocate and free inside themselves (the CPU
allocator's workspace: oneDNN's weight reorders and scratchpads, im2col columns); the log books it
per operator call from the operator's arguments, through the functions the spec path's rules use
(:func:`kernel_workspace`), so the peaks are the allocator's, as ``profiler.measuring.runner`` measures them.
Mixed precision runs the forward pass (and the loss) under ``torch.autocast``, as the runner does.
"""
from __future__ import annotations

import contextlib
import os
import sys
import weakref
from dataclasses import astuple, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode_temporarily

from profiler import forked
from profiler.dtypes import dtype_name
from profiler.engine.memory_model import CATEGORIES, Peak
from profiler.engine.module_scope import OUTSIDE, ROOT, ModuleScope, backward_module
from profiler.step import loss_fn as step_loss, outputs, total_loss
from profiler.engine.optimizers import CATALOG as OPTIMIZERS
from profiler.rules.registry import Context
from profiler.timeline import compact
from profiler.engine.host_calls import HostCalls
from profiler.engine.kernels.aten_cpu import (bf16_lstm_modelled, kernel_autocast_casts, kernel_of, kernel_workspace,
                                             registrar, results_made_last, unmodelled)
from profiler.engine.kernels.onednn_rnn import bf16_lstm_workspace_bytes, onednn_lstm_workspace_bytes
from profiler.engine.op_cost import OpCost, op_cost
from profiler.engine.python_calls import PythonCalls
#: ``record_costs`` that also keeps each call's recipe (:mod:`profiler.engine.op_recipe`), so that
#: its signature can be timed alone (:mod:`profiler.measuring.calls_alone`)
KEEP_CALLS = "calls"
_LIFT = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift.default}
aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------
# CPU kernels whose real result differs, in storage, from what their fake (meta) implementation
# returns. Each fix takes one operator call on fake tensors and returns the result the CPU kernel
# would give, with the same shapes and values but the CPU kernel's storages. Only fake results are
# fixed (a real run already has the real storages); each fix is checked against real CPU runs in
# tests/test_torch_module.py.

_CPU_RESULT: dict[Any, Callable[[tuple, Any], Any]] = {}


_cpu_result = registrar(_CPU_RESULT, "CPU result fix")


@_cpu_result(aten.mkldnn_rnn_layer.default)
def _onednn_lstm(args: tuple, out: Any) -> Any:
    """In grad mode the kernel keeps a workspace for backward (ATen tests
    ``at::GradMode::is_enabled()``, not the ``train`` argument); the fake kernel returns an empty
    one. Fixed for float32 LSTMs (``mode`` 2) and bfloat16 ones on AVX512_CORE_BF16, the cases
    the size was checked on."""
    x, mode, hidden = args[0], args[9], args[10]
    if not torch.is_grad_enabled() or mode != 2 or x.dim() != 3:
        return out
    t, n, i = x.shape     # time-major whatever ``batch_first`` says: nn.LSTM transposes first
    if bf16_lstm_modelled(x):
        nbytes = bf16_lstm_workspace_bytes(t, n, i, hidden)
    elif x.dtype == torch.float32:
        nbytes = onednn_lstm_workspace_bytes(t, n, i, hidden)
    else:
        return out
    workspace = out[3].new_empty((nbytes,))
    return (*out[:3], workspace, *out[4:])


@_cpu_result(aten.mkldnn_rnn_layer_backward.default)
def _onednn_lstm_backward(args: tuple, out: Any) -> Any:
    """The two bias gradients are two tensors (``at::clone(diff_b_)``, made after the kernel's
    scratchpad is freed: ``aten_cpu`` books that workspace less the clone); the fake kernel
    returns one tensor twice."""
    if out[3] is out[4] or storage_of(out[3]) is storage_of(out[4]):
        return (*out[:4], out[4].clone(), *out[5:])
    return out


@_cpu_result(aten.mse_loss.default)
def _mse_loss_result(args: tuple, out: Any) -> Any:
    """The reduced loss (a 0-d tensor) keeps a storage as large as the input: the CPU kernel
    reduces into a tensor it first sized like the unreduced squares (measured: 160 B for a loss
    over 40 float32 elements)."""
    x = args[0]
    reduction = args[2] if len(args) > 2 else 1
    if reduction == 0 or out.dim() != 0:
        return out
    return out.new_empty((x.numel(),)).as_strided((), ())


@_cpu_result(aten.mse_loss_backward.default)
def _mse_loss_backward_contiguous(args: tuple, out: Any) -> Any:
    """The input's gradient is contiguous (the CPU kernel starts from ``zeros_like(input,
    LEGACY_CONTIGUOUS_MEMORY_FORMAT)``); the fake kernel keeps the input's strides. It matters
    downstream: ``nn.LSTM(batch_first=True)``'s output is a transposed view, and oneDNN's LSTM
    backward copies the transposed gradient it gets from a real run (10,240 B for a (4, 10, 64)
    output), where the fake gradient, transposed back, would be contiguous already."""
    if out.is_contiguous():
        return out
    return out.new_empty(out.shape)


#: backward nodes whose formula adds nothing (``select_backward``, ``slice_backward``: zeros and
#: a copy; ``embedding_dense_backward``: zeros and an index_add): an ``add`` while one runs is
#: autograd summing two gradients of one tensor (an embedding's weight tied to an output layer)
_GRADIENT_SUM_NODES = frozenset({"SelectBackward0", "SliceBackward0", "EmbeddingBackward0"})


def _python_caller() -> tuple[int, int, int] | None:
    """The Python instruction whose call into torch is running: (frame, code, instruction), by
    identity. The frames of this module and torch's dispatch wrappers (``torch/_dynamo``, which
    wraps ``__torch_dispatch__``) are skipped. Two operators dispatched from one instruction come
    from one C++ call (``F.linear``, ``_VF.gru``), not from two Python operators."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename == __file__
                                 or frame.f_code.co_filename.startswith(_DISPATCH_WRAPPERS)):
        frame = frame.f_back
    return None if frame is None else (id(frame), id(frame.f_code), frame.f_lasti)


_TORCH = os.path.dirname(torch.__file__)
#: torch's wrappers around ``__torch_dispatch__`` (``torch._disable_dynamo``)
_DISPATCH_WRAPPERS = (os.path.join(_TORCH, "_dynamo", ""), os.path.join(_TORCH, "_compile.py"))
#: the last ``mm`` result's storage (weakly) and the Python instruction that made it
_last_mm: tuple[Any, tuple[int, int, int] | None] = (None, None)


@_cpu_result(aten.mm.default)
def _remember_mm(args: tuple, out: Any) -> Any:
    """Not a fix: remembers the result for :func:`_bias_added_in_place` (below)."""
    global _last_mm
    _last_mm = (weakref.ref(out.untyped_storage()), _python_caller())
    return out


def _bias_added_in_place(args: tuple, out: Any) -> bool:
    """ATen's ``linear`` of an input it cannot flatten (not contiguous: ``nn.GRU(batch_first=
    True)``'s transposed input at batch > 1, ``nn.Linear`` on a transposed tensor) runs
    ``matmul`` and then adds the bias: ``output.add_(bias)`` for plain tensors, ``at::add`` out
    of place for tensor subclasses (fake tensors, ``isTensorSubclassLike``). Recognised as an
    ``add`` of a 1-D tensor to the result of an ``mm`` dispatched from the same Python
    instruction (a user's ``x @ w.t() + b`` is two instructions, and adds out of place for real).
    Measured: nn.GRU(32, 64, batch_first=True) inference at batch 4 over (4, 20, 32), 20,480 B
    under the prediction before (tests/test_realworld.py)."""
    mm_storage, made_by = _last_mm
    x, bias = args
    if mm_storage is None or made_by is None or not isinstance(bias, torch.Tensor) or bias.dim() != 1:
        return False
    if torch._C._current_autograd_node() is not None:   # backward is one Python instruction
        return False
    if mm_storage() is not x.untyped_storage() or x.shape != out.shape or x.dtype != out.dtype:
        return False
    return _python_caller() == made_by


@_cpu_result(aten.add.Tensor)
def _add_in_place(args: tuple, out: Any) -> Any:
    """Two ``add`` calls the CPU runs in place where fake tensors add out of place: a linear's
    bias (:func:`_bias_added_in_place`) and autograd's sum of two gradients
    (:func:`_gradient_sum_in_place`)."""
    if len(args) == 2 and isinstance(args[0], torch.Tensor) and _bias_added_in_place(args, out):
        args[0].add_(args[1])
        return args[0].view(args[0].shape)   # a new tensor on the same storage (autograd sets its history)
    return _gradient_sum_in_place(args, out)


def _gradient_sum_in_place(args: tuple, out: Any) -> Any:
    """Autograd sums two gradients of one tensor (``InputBuffer::accumulate``) in place into the
    first when it holds the only reference to it and to its storage (not a view: a view's base
    shares the storage) and it is a plain dense tensor; for a tensor
    subclass (fake tensors) it adds out of place. Here the first is a gradient the node just made
    (``select_backward``'s zeros): measured, the three ``q, k, v = proj[0], proj[1], proj[2]`` of
    ``nn.MultiheadAttention``'s training path sum into one (3, T, B, D) buffer, 15,360 B at
    (10, 4, 32), where the fake run made a third. A tied embedding's weight under autocast: the
    output layer's gradient (``ToCopyBackward0``'s, contiguous) takes the embedding's in place,
    256,000 B over the allocator's events before (HF BERT/GPT-2, vocabulary 1,000 × 64, SGD at
    batch 1); in float32 the first is ``TBackward0``'s view of the product, and the sum is out of
    place for real too."""
    node = torch._C._current_autograd_node()
    if node is None or node.name() not in _GRADIENT_SUM_NODES or len(args) != 2:
        return out
    old, new = args
    if not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor)) or old is new \
            or old.shape != out.shape or old.dtype != out.dtype or not old.is_contiguous() \
            or old._base is not None:
        return out
    return old.add_(new)


_REDUCED = (torch.bfloat16, torch.float16)


def _mixed_statistics(params: slice) -> Callable[[tuple, Any], Any]:
    """A bfloat16/float16 input with float32 parameters (as autocast leaves normalizations): the
    CPU kernel keeps the mean and 1/std in float32 (ATen's ``is_mixed_type``); the fake one, in
    the input's dtype. ``params``: where the weight, bias (and running statistics) are."""
    def fix(args: tuple, out: Any) -> Any:
        mixed = args[0].dtype in _REDUCED and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in args[params])
        if not mixed or out[1].dtype == torch.float32:
            return out
        return (out[0], *(t.new_empty(t.shape, dtype=torch.float32) for t in out[1:3]), *out[3:])
    return fix


_cpu_result(aten.native_batch_norm.default)(_mixed_statistics(slice(1, 5)))
_cpu_result(aten.native_layer_norm.default)(_mixed_statistics(slice(2, 4)))
_cpu_result(aten.native_group_norm.default)(_mixed_statistics(slice(1, 3)))


@_cpu_result(aten.native_group_norm_backward.default)
def _group_norm_input_gradient(args: tuple, out: Any) -> Any:
    """The input's gradient is in the input's dtype; the fake kernel gives it the statistics'."""
    grad_in, x = out[0], args[1]
    if grad_in is None or grad_in.dtype == x.dtype:
        return out
    return (grad_in.new_empty(grad_in.shape, dtype=x.dtype), *out[1:])

@_cpu_result(aten.native_batch_norm_backward.default)
def _batch_norm_no_input_gradient(args: tuple, out: Any) -> Any:
    """Without the input's gradient (``output_mask[0]`` false: the first layer's input needs none)
    the CPU kernel returns none; the fake kernel returns an input-sized one anyway (torch 2.14:
    ``aten.native_batch_norm_backward(..., [False, True, True])`` gives ``None`` for the input
    gradient on the CPU and a (4, 16, 8, 8) tensor on fake tensors; the allocator's events of
    the real call show only the two 64 B parameter gradients)."""
    if args[9][0] or out[0] is None:
        return out
    return (None, *out[1:])


#: operators whose inner calls autocast casts (they are on none of its lists, so their own
#: arguments are not): the result comes out in the autocast dtype, the fake kernel's in the
#: input's (measured: the fused encoder layer under bfloat16 autocast, post- and pre-norm)
_AUTOCAST_RESULT = frozenset({aten._transformer_encoder_layer_fwd.default})


@_cpu_result(aten._embedding_bag.default, aten._embedding_bag_forward_only.default)
def _offset2bag(args: tuple, out: Any) -> Any:
    """The CPU kernel sizes ``offset2bag`` for one index more than it returns (a resize down)."""
    n = out[1].numel()
    if not n:
        return out
    return (out[0], out[1].new_empty((n + 1,))[:n], *out[2:])


# ----------------------------------------------------------------------------------------------
# What CPU kernels allocate and free inside one operator call (their workspace) is booked per
# call from the table in ``profiler.engine.kernels.aten_cpu`` (:func:`kernel_workspace`).


#: the 0-d CPU tensor torch wraps a Python number in (``scalar_to_tensor``), by the number's type
_WRAPPED = ((bool, torch.bool), (int, torch.int64), (float, torch.float64), (complex, torch.complex128))


_NUMBER_TYPES = frozenset(kind for kind, _ in _WRAPPED)


#: binary arithmetic whose ``.Scalar`` overloads wrap ``other`` the same way, then call the Tensor
#: overload (autograd's formulas call them: a mean's backward divides by the count)
_SCALAR_OVERLOADS = {"add", "sub", "mul", "div", "rsub", "remainder"}


def made_as(phase: str) -> str:
    """What a tensor made in ``phase`` is, unless it becomes something else (a gradient, the
    optimizer's state): an activation in the forward pass and the loss, else a temporary; the
    measurement's rule (:mod:`profiler.measuring.peak_breakdown`)."""
    return "activations" if phase == "forward" or phase.startswith("loss") else "temporaries"


def wrapped_numbers(func: Any, args: tuple, given: str) -> list[tuple[int, str]]:
    """Bytes of the Python numbers a call takes where its schema wants a Tensor (or that its
    ``.Scalar`` overload wraps: ``_SCALAR_OVERLOADS``).

    Each is wrapped in a 0-d CPU tensor before the call (a double for a float), and TensorIterator
    casts that to the call's dtype: both are alive while the call runs and freed when it returns.
    Returned as (bytes, category): the wrapped number is a tensor made for the call, before it
    starts (``given``: what a tensor made then is, :func:`made_as`), its cast is made inside the
    kernel (workspace).
    (Adam's ``exp_avg_sq.sqrt() / bias_correction2_sqrt``: 8 + 4 bytes in float32, the bytes the
    optimizer catalog's ``scalar_bytes`` and its cast stand for.)
    """
    if not any(type(a) in _NUMBER_TYPES for a in args):   # most calls: nothing to wrap
        return []
    schema = getattr(func, "_schema", None)
    if schema is None:
        return []
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    wraps_other = (func.overloadpacket.__name__.rstrip("_") in _SCALAR_OVERLOADS
                   and func._overloadname.startswith("Scalar"))
    booked: list[tuple[int, str]] = []
    for value, argument in zip(args, schema.arguments):
        if isinstance(value, torch.Tensor) or not (
                isinstance(argument.type, torch.TensorType) or (wraps_other and argument.name == "other")):
            continue
        wrapped = next((dtype for kind, dtype in _WRAPPED if type(value) is kind), None)
        if wrapped is None:
            continue
        booked.append((wrapped.itemsize, given))
        if tensors and tensors[0].dtype != wrapped:
            booked.append((tensors[0].dtype.itemsize, "workspace"))
    return booked

@dataclass(frozen=True)
class _Event:
    serial: int     # one number per storage, never reused
    nbytes: int     # change of live bytes: positive when allocated or grown, negative when freed
    at: str         # what was running
    new: bool = False  # the storage's allocation (not a free or a resize)


#: out-of-place operators that a backward formula runs in place (derivatives.yaml) when no Python
#: dispatch mode is active: autograd's generated code takes the out-of-place variant for tensor
#: subclasses and under a mode, so the log sees a copy the real run never makes. By the nodes
#: whose formula it is.
_IN_PLACE_IN_BACKWARD: dict[Any, tuple[Any, frozenset[str]]] = {
    # maximum/minimum: ``at::where(self == other, grad / 2, grad).masked_fill_(self < other, 0)``;
    # measured (Maximum of two (16, 24) float32 tensors, allocator events of MaximumBackward0):
    # gt 384 B, div 1,536 B, eq 384 B, where 1,536 B and nothing for the fill, per input
    aten.masked_fill.Scalar: (aten.masked_fill_.Scalar, frozenset({"MaximumBackward0", "MinimumBackward0"})),
}


def _in_place_in_backward(func: Any) -> Any:
    """``func``'s in-place variant where the autograd node running calls it in place for real."""
    in_place, nodes = _IN_PLACE_IN_BACKWARD[func]
    node = torch._C._current_autograd_node()
    return in_place if node is not None and node.name() in nodes else func


#: operators whose autograd node keeps ``other`` when ``self`` needs a gradient (derivatives.yaml:
#: ``self: mul_tensor_backward(grad, other, ...)``, ``div_tensor_self_backward(grad, other, ...)``).
#: A Python number there is the 0-d double the call wrapped it in (8 B), alive until backward runs
#: the node: ``q * scale`` in attention, ``0.5 * x`` in a tanh GELU (measured: timm's Swin
#: ``WindowAttention`` 8 B more activations at an SGD step's peak; GPT-2 48 B at batch 2).
_SAVES_OTHER = frozenset({aten.mul.Tensor, aten.mul_.Tensor, aten.div.Tensor, aten.div_.Tensor})


#: where a node keeps the tokens of the wrapped numbers it saved (their death is the node's)
_KEPT_KEY = "modelsize.kept"


def _cost_phase(phase: str) -> str:
    """The log's phase as the time model names it: forward, loss, backward, optimizer."""
    return phase.split(" ", 1)[0]


class _Token:
    """Dies with the autograd node that holds it (weakly referenceable, unlike ``object()``)."""


#: calls that only read a tensor's metadata: no tensor comes out, no kernel runs, no number is
#: wrapped. Autograd asks every gradient's device (``prim.device``: 15,453 of the 28,034 calls a
#: training replay of the 7B decoder dispatches), so the log answers them before anything else.
_QUERIES = frozenset({torch.ops.prim.device.default})
_DEVICE = torch.ops.prim.device.default


def _fake_device(tensor: Any) -> torch.device:
    """``prim.device`` of a fake tensor, answered as its fake mode answers it (``FakeTensor``'s
    ``__torch_dispatch__``, torch 2.13 and 2.14: meta while the mode runs a kernel, else the device
    the tensor claims) without the second dispatch there."""
    return torch.device("meta") if tensor.fake_mode.in_kernel_invocation else tensor.fake_device


class StorageLog(TorchDispatchMode):
    """Tensor storages created and freed while active, in order, labelled by phase and module.

    ``seed`` registers what exists before (parameters, inputs, gradients, optimizer state) with
    its category. A storage an operator returns is new unless it is known already or is the
    storage of one of the operator's inputs (a view, an in-place result); ``lift_fresh`` (how
    ``torch.tensor(...)`` enters dispatch) returns a storage made just before, which is new when
    unknown. The module running is followed with the *global* module hooks, removed on exit.

    With ``run`` (the run's autocast dtype and threads), each call also books its kernel's
    workspace (:func:`kernel_workspace`): allocated once the call's results exist, freed at once.
    A parameter's cast (``_to_copy``: autocast's weight cache) is a weight cast, not an activation.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No: torch then leaves ``__torch_dispatch__`` unwrapped by ``torch._disable_dynamo``
        (which keeps torch.compile out of it, at a few µs a call; nothing here is compiled, and
        the 7B decoder's training replay makes ~24,000 calls)."""
        return False

    def __init__(self, names: dict[int, str], run: Context | None = None, costs: bool | str = False,
                 cost_phase: str | None = None):
        """``costs``: log every call's work; ``cost_phase``: the phase it is booked in (default: the
        log's, :func:`_cost_phase`)."""
        super().__init__()
        self._cost_phase = cost_phase
        self.names = names
        self.run = run
        self.events: list[_Event] = []
        self.category: dict[int, str] = {}      # serial -> category fixed by the caller
        self.phase_of: dict[int, str] = {}      # serial -> phase that created it
        self.module_of: dict[int, str] = {}     # serial -> module that created it (forward only)
        self.dtype_of: dict[int, str] = {}      # serial -> dtype of the tensor that made it
        self.phase = "start"
        self._serial: dict[int, int] = {}       # id(storage) -> serial, while the storage lives
        self._nbytes: dict[int, int] = {}       # serial -> bytes, while alive
        self._finalizers: list[weakref.finalize] = []
        self._scope = ModuleScope(names, on_leave=self._leave_module)
        self._stack = self._scope.stack              # running modules' names, innermost last
        self.output_dtype: dict[str, torch.dtype] = {}   # module -> dtype of its (first) output, forward only
        self._cut = 0
        self.unmodelled: dict[str, tuple[int, int]] = {}   # what -> (calls, most bytes at stake in one)
        self._unsettled: list[tuple[Any, int]] = []   # (weakref to a result, serial of its kept number)
        self._kept_alive: set[int] = set()
        self._until_autocast_ends: list[_Event] = []   # frees of casts a fused kernel left in autocast's cache
        self.costs: list[OpCost] = []           # every operator call's work, in order (the time model's input)
        self._record_costs = costs
        self._python = PythonCalls() if costs else None   # which calls Python issued (the time model's)
        self._modules_booked = 0                # module calls begun before the last call booked
        self._host = HostCalls() if costs else None   # host calls the model's Python makes (the time model's)
        self._host_booked = 0

    # -- what exists, and what is what --------------------------------------------------------
    def seed(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        for tensor in tensors:
            if tensor is not None:
                serial = self._add(tensor.untyped_storage(), tensor.dtype)
                if serial is not None:
                    self.category.setdefault(serial, category)

    def seed_into(self, piece: list[_Event], tensors: Iterable[torch.Tensor | None], category: str) -> None:
        """Seed ``tensors`` into ``piece``, cut already: as if they had existed before it was cut."""
        since = len(self.events)
        self.seed(tensors, category)
        piece.extend(self.events[since:])
        del self.events[since:]

    def mark(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        """Give live storages a category (gradients and optimizer state, once they exist)."""
        for tensor in tensors:
            if tensor is not None:
                serial = self._serial.get(id(tensor.untyped_storage()))
                if serial is not None:
                    self.category[serial] = category

    def set_phase(self, phase: str) -> None:
        if self._unsettled:
            self._settle(final=True)
        self.phase = phase

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "StorageLog":
        self._scope.__enter__()
        self._get_rng_state, torch.get_rng_state = torch.get_rng_state, self._logged_rng_state
        if self._python is not None:
            self._python.__enter__()
        if self._host is not None:
            self._host.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        self.events.extend(self._until_autocast_ends)   # the region (inside the log's) has ended
        self._until_autocast_ends.clear()
        super().__exit__(*exc)
        if self._host is not None:
            self._host.__exit__(*exc)
        if self._python is not None:
            self._python.__exit__(*exc)
        torch.get_rng_state = self._get_rng_state
        self._scope.__exit__(*exc)

    def _logged_rng_state(self) -> torch.Tensor:
        """``torch.get_rng_state()``, whose real tensor no operator returns: activation
        checkpointing keeps the CPU generator's state (5,056 B) for the recomputation."""
        state = self._get_rng_state()
        self._add(state.untyped_storage(), state.dtype)
        return state

    def close(self) -> None:
        """Stop following frees: the storages may outlive the log."""
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers = []

    def _leave_module(self, name: str, output: object) -> None:
        """A module's forward returns (the scope then names the autograd nodes it created)."""
        if self.phase == "forward":
            found = tensors_in(output)
            if found:
                self.output_dtype.setdefault(name, found[0].dtype)

    def _module(self) -> str:
        """The module running, as the measured per-module times name it: forward, its hook's;
        backward, the one whose forward made the node; the root's own "(root)", none "(outside modules)"."""
        name = backward_module()[0] if self.phase == "backward" else (self._stack[-1] if self._stack else None)
        return OUTSIDE if name is None else (name or ROOT)

    def _where(self) -> str:
        if self.phase == "forward":
            return f"forward {self._stack[-1] or '(root)'}" if self._stack else "forward"
        if self.phase == "backward":
            module, node = backward_module()
            if node is None:
                return "backward"
            return f"backward {module or '(root)'} ({node})" if module is not None else f"backward ({node})"
        return self.phase

    # -- storages ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if self._python is None:
            return self._dispatch(func, args, kwargs)
        python = self._python.began()
        self._python.enter_handler()
        try:
            return self._dispatch(func, args, kwargs, python)
        finally:
            self._python.leave_handler()

    def _dispatch(self, func, args, kwargs, python=(True, 0)):  # type: ignore[no-untyped-def]
        """``python``: (whether Python issued this call, the mark to book it with)."""
        if self._unsettled:
            self._settle()
        if func in _QUERIES:   # no tensor out, no kernel: nothing below would log a thing
            if func is _DEVICE and not kwargs and len(args) == 1 and _is_fake(args[0]):
                return _fake_device(args[0])
            return func(*args, **(kwargs or {}))
        if self.phase == "backward" and func in _IN_PLACE_IN_BACKWARD:
            func = _in_place_in_backward(func)
        if _void_on_meta(func, args):
            out = None
        elif _in_place_on_meta(func, args):
            out = args[0]
        else:
            out = func(*args, **(kwargs or {}))
        fix = _CPU_RESULT.get(func)
        if fix is not None and _is_fake(tensors_in(out)[0]):
            out = fix(args, out)
        if func in _AUTOCAST_RESULT and self.run is not None and self.run.amp and _is_fake(out):
            out = out.new_empty(out.shape, dtype=getattr(torch, self.run.amp))
        outputs = tensors_in(out)
        allocated: list[int] = []
        if outputs:
            lifted = func in _LIFT
            inputs = set() if lifted else {id(storage_of(t)) for t in tensors_in((args, kwargs))}
            for tensor in outputs:
                storage = storage_of(tensor)
                if storage is None or id(storage) in inputs:
                    continue
                serial = self._serial.get(id(storage))
                if serial is None:
                    serial = self._add(storage, tensor.dtype)
                    allocated.append(storage.nbytes())
                    if func is aten._to_copy.default and self._of_parameter(args[0]):
                        self.category[serial] = "weight_casts"
                elif self._nbytes[serial] != storage.nbytes():   # resized in place (out=)
                    self._resize(serial, storage.nbytes())
        backward = self.phase == "backward"
        booked = kernel_workspace(func, args, out, self.run, backward, kwargs) if self.run is not None else []
        if self._record_costs:
            cost = op_cost(func, args, kwargs, out, phase=self._cost_phase or _cost_phase(self.phase), module=self._module(),
                           kernel=kernel_of(func, args, self.run) if self.run is not None else "", python=python[0],
                           modules=self._scope.calls - self._modules_booked,
                           host_calls=self._host.count - self._host_booked if self._host is not None else 0,
                           allocated=(*allocated, *booked), keep_call=self._record_costs == KEEP_CALLS)
            if cost is not None:
                self.costs.append(cost)
                self._modules_booked = self._scope.calls
                if self._host is not None:
                    self._host_booked = self._host.count
                if self._python is not None:
                    self._python.book(python[1])
        results = outputs or tensors_in(args)
        dtype = results[0].dtype if results else None   # what a kernel's own buffers are counted in
        wrapped = wrapped_numbers(func, args, made_as(self.phase))
        if wrapped and func in _SAVES_OTHER and torch.is_grad_enabled() and getattr(args[0], "requires_grad", False):
            self._keep_until_backward(wrapped[0][0], outputs[0] if outputs else args[0], dtype)
            wrapped = wrapped[1:]
        self._transient(wrapped, dtype)
        if self.run is not None:
            unknown = unmodelled(func, args, self.run)
            if unknown is not None:
                calls, most = self.unmodelled.get(unknown[0], (0, 0))
                self.unmodelled[unknown[0]] = (calls + 1, max(most, unknown[1]))
            cached = kernel_autocast_casts(func, args, kwargs, self.run)
            if cached:
                alloc, free = self.synthetic(cached, "weight_casts", self._where(), "autocast exit", self.run.amp)
                self.events.append(alloc)
                self._until_autocast_ends.append(free)
            later = results_made_last(func, args, out, self.run, backward, kwargs) if booked else ()
            self._transient([(nbytes, "workspace") for nbytes in booked], dtype, self._results(out, later))
        return out

    def _results(self, out: Any, positions: Sequence[int]) -> list[int]:
        """Serials of the storages of the call's results at ``positions`` (None ones skipped)."""
        results = out if isinstance(out, (tuple, list)) else (out,)
        found = (self._serial.get(id(storage_of(results[i]))) for i in positions
                 if i < len(results) and isinstance(results[i], torch.Tensor))
        return [serial for serial in found if serial is not None and self._nbytes.get(serial)]

    def _of_parameter(self, tensor: object) -> bool:
        if not isinstance(tensor, torch.Tensor):
            return False
        serial = self._serial.get(id(storage_of(tensor)))
        return serial is not None and self.category.get(serial) == "parameters"

    def _transient(self, sizes: Sequence[tuple[int, str]], dtype: torch.dtype | None = None,
                   later: Sequence[int] = ()) -> None:
        """Storages a kernel allocates together and frees before it returns: (bytes, category),
        counted in the call's dtype. ``later``: serials of results the kernel makes only after
        them (:func:`results_made_last`): absent meanwhile, their bytes the kernel's own
        buffers (workspace) then, so the total is the same and each byte named as measured."""
        if not sizes:
            return
        at = self._where()
        stand_in = sum(self._nbytes[serial] for serial in later)
        sizes = [*sizes, (stand_in, "workspace")] if stand_in else sizes
        pairs = [self.synthetic(nbytes, category, at, at, dtype) for nbytes, category in sizes]
        self.events.extend(_Event(serial, -self._nbytes[serial], at) for serial in later)
        self.events.extend(alloc for alloc, _ in pairs)
        self.events.extend(free for _, free in pairs)
        self.events.extend(_Event(serial, self._nbytes[serial], at) for serial in later)

    def _keep_until_backward(self, nbytes: int, result: torch.Tensor, dtype: torch.dtype | None) -> None:
        """A wrapped number the call's autograd node saves: allocated now (an activation of the
        module running), freed when backward has run the node, or when the node dies unrun. The
        node exists once the call has returned: it is found at the next call (:meth:`_settle`)."""
        alloc, _ = self.synthetic(nbytes, made_as(self.phase), self._where(), dtype=torch.float64)
        self.phase_of[alloc.serial] = self.phase
        if self.phase == "forward" and self._stack:
            self.module_of[alloc.serial] = self._stack[-1]
        self.events.append(alloc)
        self._kept_alive.add(alloc.serial)
        self._nbytes[alloc.serial] = nbytes
        self._unsettled.append((weakref.ref(result), alloc.serial))

    def _settle(self, final: bool = False) -> None:
        """Tie each kept number to its node; a result without one yet (autograd sets it after
        the call's own bookkeeping calls) waits for a later call, unless ``final``."""
        pending, self._unsettled = self._unsettled, []
        for ref, serial in pending:
            result = ref()
            node = result.grad_fn if result is not None else None
            if node is None and result is not None and not final:
                self._unsettled.append((ref, serial))
                continue
            if node is None:
                self._release(serial)
                continue
            node.register_hook(lambda *_, serial=serial: self._release(serial))
            token = _Token()
            node.metadata.setdefault(_KEPT_KEY, []).append(token)
            self._finalizers.append(weakref.finalize(token, self._release, serial))

    def _release(self, serial: int) -> None:
        if serial in self._kept_alive:
            self._kept_alive.discard(serial)
            self.events.append(_Event(serial, -self._nbytes.pop(serial, 0), self._where()))

    def _add(self, storage: torch.UntypedStorage | None, dtype: torch.dtype | None = None) -> int | None:
        if storage is None or id(storage) in self._serial:
            return self._serial.get(id(storage)) if storage is not None else None
        serial = len(self.phase_of)
        if dtype is not None:
            self.dtype_of[serial] = dtype_name(dtype)
        nbytes = storage.nbytes()
        self._serial[id(storage)] = serial
        self._nbytes[serial] = nbytes
        self.phase_of[serial] = self.phase
        if self.phase == "forward" and self._stack:
            self.module_of[serial] = self._stack[-1]
        self.events.append(_Event(serial, nbytes, self._where(), new=True))
        self._finalizers.append(weakref.finalize(storage, self._free, id(storage), serial))
        return serial

    def _resize(self, serial: int, nbytes: int) -> None:
        self.events.append(_Event(serial, nbytes - self._nbytes[serial], self._where()))
        self._nbytes[serial] = nbytes

    def _free(self, key: int, serial: int) -> None:
        if self._serial.get(key) == serial:
            del self._serial[key]
        nbytes = self._nbytes.pop(serial, 0)
        if nbytes:
            self.events.append(_Event(serial, -nbytes, self._where()))

    # -- reading the log -----------------------------------------------------------------------
    def category_of(self, serial: int) -> str:
        if serial in self.category:
            return self.category[serial]
        return made_as(self.phase_of[serial])

    def cut(self) -> list[_Event]:
        """The events since the last cut: a piece of the log to replay with :meth:`peak`."""
        piece = self.events[self._cut:]
        self._cut = len(self.events)
        return piece

    def serials(self, tensors: Iterable[torch.Tensor]) -> set[int]:
        """Serials of the live storages of ``tensors``."""
        found = (self._serial.get(id(t.untyped_storage())) for t in tensors)
        return {serial for serial in found if serial is not None}

    def alive_before(self, tensors: Iterable[torch.Tensor | None], category: str,
                     freed_at: str) -> tuple[list[_Event], list[_Event]]:
        """Events allocating storages like those of ``tensors``, and freeing them: what a step
        starts with when the step before left it (gradients, optimizer state)."""
        sizes: dict[int, tuple[int, torch.dtype]] = {}
        for tensor in tensors:
            if tensor is not None:
                storage = tensor.untyped_storage()
                sizes[id(storage)] = (storage.nbytes(), tensor.dtype)
        allocs, frees = [], []
        for nbytes, dtype in sizes.values():
            alloc, free = self.synthetic(nbytes, category, "start", freed_at, dtype)
            allocs.append(alloc)
            frees.append(free)
        return allocs, frees

    def synthetic(self, nbytes: int, category: str, at: str, freed_at: str = "",
                  dtype: torch.dtype | str | None = None) -> tuple[_Event, _Event]:
        """The allocation and the free of a storage that was not run, only counted."""
        serial = -1 - len(self.category)
        self.category[serial] = category
        if dtype is not None:
            self.dtype_of[serial] = dtype if isinstance(dtype, str) else dtype_name(dtype)
        return _Event(serial, nbytes, at, new=True), _Event(serial, -nbytes, freed_at)

    def timeline(self, pieces: Sequence[Sequence[_Event]], *, start: int) -> Timeline:
        """The events :meth:`peak` reads, as a :class:`Timeline` (frees of storages allocated in
        another timeline left out, as there)."""
        live: set[int] = set()
        kept: list[tuple[int, int]] = []
        first = start
        for i, event in enumerate(e for piece in pieces for e in piece):
            if event.new:
                live.add(event.serial)
            elif event.serial not in live:
                first -= i < start
                continue
            kept.append((event.serial, event.nbytes))
        return Timeline(tuple(kept), first)

    def peak(self, pieces: Sequence[Sequence[_Event]], *, start: int) -> Peak:
        """The highest live total over ``pieces`` played in order, and what made it up then.

        The first ``start`` events build what is alive before the measured call; that state is
        the first candidate (labelled "start"). A free or resize of a storage whose allocation is
        not among the pieces belongs to another timeline and is skipped.
        """
        events = [e for piece in pieces for e in piece]
        current = 0
        best, at = -1, -1
        for i, event in self._played(events):
            current += event.nbytes
            if i + 1 >= start and current > best:
                best, at = current, i
        if at < 0:
            return Peak(-1, "start", {})
        by_category = dict.fromkeys(CATEGORIES, 0)   # what was alive then, played again up to it
        by_dtype: dict[str, int] = {}
        for _, event in self._played(events[:at + 1]):
            by_category[self.category_of(event.serial)] += event.nbytes
            dtype = self.dtype_of.get(event.serial, "uint8")
            by_dtype[dtype] = by_dtype.get(dtype, 0) + event.nbytes
        return Peak(best, events[at].at if at >= start else "start", by_category,
                    {d: n for d, n in by_dtype.items() if n})

    @staticmethod
    def _played(events: Sequence[_Event]) -> Iterator[tuple[int, _Event]]:
        """(position, event) of the events of storages allocated among ``events``."""
        live: set[int] = set()
        for i, event in enumerate(events):
            if event.new:
                live.add(event.serial)
            elif event.serial not in live:
                continue
            yield i, event

    def saved_by_module(self) -> dict[str, int]:
        """Module -> bytes its forward created that are alive now (call when backward starts)."""
        out: dict[str, int] = {}
        for serial, nbytes in self._nbytes.items():
            module = self.module_of.get(serial)
            if module is not None:
                out[module] = out.get(module, 0) + nbytes
        return out


def tensors_in(tree: object) -> list[torch.Tensor]:
    """The tensors in nested tuples, lists and dicts, in order (operator arguments and results)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    found: list[torch.Tensor] = []
    if isinstance(tree, (tuple, list)):
        for item in tree:
            found.extend(tensors_in(item))
    elif isinstance(tree, dict):
        for item in tree.values():
            found.extend(tensors_in(item))
    return found


def _void_on_meta(func: Any, args: tuple) -> bool:
    """A foreach update that returns nothing, on meta tensors only: the optimizers' steps over
    the parameters' meta twins on the CUDA path. Its meta kernel allocates nothing and changes
    nothing a later call reads (a meta tensor has no values; its shape and strides stay), so the
    log books it without running it: per tensor in Python, it was ~12 % of a 2,000-layer spec's
    time replay (Adam's two steps over 4,000 twins)."""
    if not func.__name__.startswith("_foreach_") or func._schema.returns:
        return False
    found = tensors_in(args)
    return bool(found) and all(t.is_meta for t in found)


def _in_place_on_meta(func: Any, args: tuple) -> bool:
    """An elementwise operator updating its first argument in place, on meta tensors only (the
    single-tensor optimizers' updates of the meta twins: ``lerp_``, ``mul_``, ``addcmul_``,
    ``addcdiv_``, ``add_``). It returns that argument, whose shape and strides an elementwise
    update keeps, and allocates nothing: the log books it without running its meta kernel (5 of
    Adam's 9 calls per parameter; the step over the 7B decoder's 291 twins, 0.19 s before)."""
    in_place = _IN_PLACE_POINTWISE.get(func)
    if in_place is None:
        first = func._schema.arguments[0].alias_info if func._schema.arguments else None
        in_place = _IN_PLACE_POINTWISE[func] = (torch.Tag.pointwise in func.tags and first is not None
                                                and first.is_write and len(func._schema.returns) == 1)
    if not in_place:
        return False
    found = tensors_in(args)
    return all(t.is_meta for t in found)


_IN_PLACE_POINTWISE: dict[Any, bool] = {}   # operator -> whether it is one (read from its schema once)


def _is_fake(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(tensor, FakeTensor)


def storage_of(tensor: torch.Tensor) -> torch.UntypedStorage | None:
    if tensor.is_sparse or tensor.is_nested:
        return None
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------
# The runs


@dataclass(frozen=True)
class Timeline:
    """The allocations and frees one peak is read from, in order, as (block, bytes) pairs: bytes
    > 0 allocate (or grow) a block, < 0 free (or shrink) it. The first ``start`` events build
    what is alive before the measured call. Kept so that a peak can be re-read under another
    allocator's rounding, or compared event by event with the same run at another batch size."""
    events: tuple[tuple[int, int], ...]
    start: int

    def peak(self, footprint: Callable[[int], int] | None = None) -> int:
        """The highest live total, each block counted as ``footprint(its bytes)`` (default: exact)."""
        size: dict[int, int] = {}
        current = best = 0
        for i, (block, delta) in enumerate(self.events):
            old = size.get(block, 0)
            new = old + delta
            size[block] = new
            current += (footprint(new) - footprint(old)) if footprint else delta
            if i + 1 >= self.start and current > best:
                best = current
        return best

    def compact(self) -> dict[str, Any]:
        """The live total after each event as a compact timeline (:mod:`profiler.timeline`), from
        the baseline the first ``start`` events build (exact bytes)."""
        deltas = [delta for _, delta in self.events]
        return compact(deltas[self.start:], baseline=sum(deltas[:self.start]))


@dataclass(frozen=True)
class MemoryPrediction:
    inference: Peak
    training: dict[str, Peak]        # optimizer -> steady-state step
    first_step: dict[str, Peak]      # optimizer -> first step (fresh optimizer, no gradients)
    saved_bytes: dict[str, int]      # module -> bytes its training forward leaves for backward
    timelines: dict[str, Timeline] = field(default_factory=dict)   # "inference", "train_adam", ...
    output_dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # module -> its inference output's dtype
    unmodelled: dict[str, tuple[int, int]] = field(default_factory=dict)  # what -> (calls, bytes at stake in one)
    # the operator calls of each run, for the time model: "inference"; "training" (forward, loss and
    # backward, the same for every optimizer); "step_<optimizer>" (its update)
    costs: dict[str, list[OpCost]] = field(default_factory=dict)
    beside: Any = None   # what ``predict_memory``'s ``beside`` returned

    def warnings(self) -> list[str]:
        """One line per kernel whose workspace the replay could not book."""
        return [f"NOT MODELLED: {what}, {calls} call{'s' * (calls != 1)}; up to about {most:,} B per call "
                f"may be missing from the peaks" for what, (calls, most) in self.unmodelled.items()]


def predict_memory(model: torch.nn.Module, inputs: Sequence[torch.Tensor],
                   targets: Sequence[torch.Tensor] | None, *, loss: str, fake_mode: Any,
                   names: dict[int, str], optimizers: Sequence[str] = ("sgd", "adam"),
                   amp: str | None = None, threads: int | None = None,
                   device_kind: str = "cpu", input_grad: bool = False, record_costs: bool | str = False,
                   beside: Callable[[], Any] | None = None) -> MemoryPrediction:
    """Replay inference and training steps of ``model`` (fake tensors, see the module docstring).

    ``model``, ``inputs`` and ``targets`` (see :func:`make_target`, one per output) live in
    ``fake_mode``. ``model`` is put in eval and train mode and its parameters get (fake)
    gradients: pass a copy that nobody else uses. A model without trainable parameters has no
    training step (nothing to differentiate).

    Training runs one forward and backward pass, then each optimizer's first ``step`` on the
    gradients it left, and puts each step's timeline together from these pieces. The forward and
    backward pass allocate and free the same storages whatever the optimizer and whichever the
    step (gradients are ``None`` when it starts, after ``zero_grad(set_to_none=True)``), and a
    later ``step`` makes the same allocations as the first except the state the first creates
    (SGD: none; Adam: ``exp_avg``, ``exp_avg_sq`` and ``step`` per tensor), so

    - first step = start (parameters, inputs, target), forward and backward, the first ``step``;
    - steady step = start with the gradients and state the step before left, the gradients freed
      by ``zero_grad``, forward and backward, the first ``step`` without creating the state.

    These are the runner's two real steps, replayed once. The optimizer steps meta twins of the
    parameters (see :func:`_meta_twins`); an optimizer that makes its state when constructed
    (Adagrad) has it before either step starts.

    ``amp``: mixed precision as the runner runs it, the forward pass (and in training the loss)
    under ``torch.autocast`` to that dtype; the region's cache of weight casts dies when it exits.
    ``threads`` (default: torch's) size kernels' workspace, booked per call (see
    :func:`kernel_workspace`). ``targets`` None: made from the inference pass's outputs
    (:func:`make_target`; float32 ``mse`` targets under mixed precision); training makes them from
    its own forward pass's outputs, as if made before it, and runs again with the inference ones
    where they differ (a module whose outputs change with ``train()``).

    ``beside``: a pass computed with inference, before it, whose result (plain data) is returned
    as ``beside`` (the summary's shape and MAC trace). With two CPUs, on fake tensors, inference
    and ``beside`` run in a forked child while this process replays training
    (:func:`profiler.forked.beside`); where training fails, their errors come first, as in process.

    ``record_costs``: also log every call's work (``costs``, the time model's input: see
    :mod:`profiler.engine.step_time`); :data:`KEEP_CALLS`: with each call's recipe.

    ``input_grad``: the floating inputs require gradients in training, as the runner's
    ``input_grad``: backward makes each ``x.grad`` (a temporary, as the runner names it), kept
    through the optimizer step and set to None after ``zero_grad`` in the next step.

    ``device_kind="cuda"`` predicts a CUDA run from the same replay, as far as it carries over:
    the optimizers take their foreach (multi-tensor) path, as on CUDA, and the CPU kernels'
    workspace (oneDNN, im2col) is not booked; cuBLAS/cuDNN workspaces and the allocator's
    rounding are the planner's (``profiler.planning.fit``). Kernel choices follow the CPU's
    (scaled dot-product attention's flash kernel on both).
    """
    tensors = [*model.parameters(), *model.buffers()]
    on_cpu = device_kind == "cpu"
    run = _kernel_context(device_kind, amp, threads)
    params = [p for p in model.parameters() if p.requires_grad]
    train = bool(optimizers and params)

    def replay_inference() -> dict[str, Any]:
        done = {"beside": beside()} if beside is not None else {}   # first: its errors came first
        return {**done, **_replay_inference(model, inputs, tensors, names, run, fake_mode, amp, record_costs)}

    # training needs nothing from inference (it makes the targets from its own forward pass when
    # none are given): on fake tensors (no kernel runs) inference is replayed on a second CPU
    # meanwhile (7B decoder: 0.26 s of 1.25 s, the summary's trace 0.2 s more)
    fork = train and all(_is_fake(t) for t in [*inputs, *tensors])
    with forked.beside(replay_inference, fork=fork) as inferred:
        trained = None
        if train:
            try:
                trained, used = _replay_training(model, inputs, targets, params, tensors, names, run, fake_mode,
                                                 loss, optimizers, amp, on_cpu, input_grad, record_costs)
            except Exception:
                inferred()   # the inference replay's error (or beside's), where there is one, comes first
                raise
        sent = inferred()
        if targets is None and optimizers:
            if isinstance(sent["outputs"], str):   # the module returned no tensor
                raise TypeError(sent["outputs"])
            with fake_mode:   # what targets are (see make_target): those of the inference outputs
                targets = [make_target(loss, shape, torch.float32 if amp else getattr(torch, dtype))
                           for shape, dtype in sent["outputs"]]
            if trained is not None and [(t.shape, t.dtype) for t in used] != [(t.shape, t.dtype) for t in targets]:
                trained, _ = _replay_training(model, inputs, targets, params, tensors, names, run, fake_mode,
                                              loss, optimizers, amp, on_cpu, input_grad, record_costs)
    inference = _inference_from_json(sent)
    if trained is None:
        return inference
    unknown = dict(inference.unmodelled)
    for what, (calls, most) in trained.unmodelled.items():
        before = unknown.get(what, (0, 0))
        unknown[what] = (before[0] + calls, max(before[1], most))
    return MemoryPrediction(inference.inference, trained.training, trained.first_step, trained.saved_bytes,
                            {**inference.timelines, **trained.timelines}, inference.output_dtypes, unknown,
                            {**inference.costs, **trained.costs}, inference.beside)


def _replay_inference(model: torch.nn.Module, inputs: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor],
                      names: dict[int, str], run: Context | None, fake_mode: Any, amp: str | None,
                      record: bool | str) -> dict[str, Any]:
    """Inference replayed, as plain data (:func:`_inference_from_json` reads it), so that a forked
    child can send it: its peak, timeline, modules' output dtypes, unmodelled calls, costs, and the
    outputs' shapes and dtypes (the training targets' when none are given)."""
    model.eval()
    log = StorageLog(names, run, costs=record, cost_phase="inference")
    try:
        log.seed(tensors, "parameters")
        log.seed(inputs, "inputs")
        start = log.cut()
        with fake_mode, log, torch.no_grad(), autocast(amp):
            log.set_phase("forward")
            out = model(*inputs)
        try:
            made = [[list(o.shape), dtype_name(o.dtype)] for o in outputs(out)]
        except TypeError as err:   # no loss on this output: raised if training needs targets
            made = str(err)
        del out
        piece = log.cut()
        timeline = log.timeline([start, piece], start=len(start))
        return {"peak": log.peak([start, piece], start=len(start)).as_dict(),
                "timeline": [timeline.events, timeline.start],
                "output_dtypes": {name: dtype_name(d) for name, d in log.output_dtype.items()},
                "unmodelled": dict(log.unmodelled),
                "costs": [astuple(c) for c in log.costs] if record else None,
                "outputs": made}
    finally:
        log.close()


def _inference_from_json(sent: dict[str, Any]) -> MemoryPrediction:
    """What :func:`_replay_inference` sent (tuples come back from JSON as lists), with no training."""
    peak = sent["peak"]
    events, start = sent["timeline"]
    return MemoryPrediction(
        Peak(peak["bytes"], peak["at"], peak["breakdown"], peak.get("by_dtype", {})), {}, {}, {},
        {"inference": Timeline(tuple((block, nbytes) for block, nbytes in events), start)},
        {name: getattr(torch, d) for name, d in sent["output_dtypes"].items()},
        {what: (calls, most) for what, (calls, most) in sent["unmodelled"].items()},
        {"inference": [OpCost.from_row(c) for c in sent["costs"]]} if sent["costs"] is not None else {},
        sent.get("beside"))


@dataclass(frozen=True)
class _Trained:
    """What :func:`_replay_training` found (the training part of a :class:`MemoryPrediction`)."""
    training: dict[str, Peak]
    first_step: dict[str, Peak]
    saved_bytes: dict[str, int]
    timelines: dict[str, Timeline]
    unmodelled: dict[str, tuple[int, int]]
    costs: dict[str, list[OpCost]]


def _replay_training(model: torch.nn.Module, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor] | None,
                     params: list[torch.nn.Parameter], tensors: Sequence[torch.Tensor], names: dict[int, str],
                     run: Context | None, fake_mode: Any, loss: str, optimizers: Sequence[str], amp: str | None,
                     on_cpu: bool, input_grad: bool, record: bool | str) -> tuple[_Trained, Sequence[torch.Tensor]]:
    """One forward and backward pass, then each optimizer's first step (see :func:`predict_memory`),
    and the targets (``targets``, or made from the forward pass's outputs)."""
    training: dict[str, Peak] = {}
    first_step: dict[str, Peak] = {}
    timelines: dict[str, Timeline] = {}
    costs: dict[str, list[OpCost]] = {}
    model.train()
    loss_fn = step_loss(loss)
    for p in params:
        p.grad = None
    differentiated = [x for x in inputs if input_grad and x.is_floating_point()]
    for x in differentiated:
        x.requires_grad_(True)
    log = StorageLog(names, run, costs=record)
    alive: list[Any] = []   # the step's output and loss, and the optimizers: alive to the end
    try:
        log.seed(tensors, "parameters")
        log.seed(inputs, "inputs")
        log.seed(targets or (), "inputs")
        start = log.cut()
        with fake_mode, log:
            with autocast(amp):
                log.set_phase("forward")
                # the step keeps the output's tensors, as the runner does (a ModelOutput's cache
                # or other non-tensor parts are dropped with it)
                alive.append(out := outputs(model(*inputs)))
                if targets is None:   # made from this pass's outputs, as if before it (data)
                    with _pop_mode_temporarily():
                        targets = [make_target(loss, o.shape, torch.float32 if amp else o.dtype) for o in out]
                    log.seed_into(start, targets, "inputs")
                log.set_phase(f"loss ({loss_fn.__name__})")
                alive.append(loss_value := total_loss(loss_fn, out, targets))
            saved = log.saved_by_module()
            log.set_phase("backward")
            loss_value.backward()
        del out, loss_value
        grads = [p.grad for p in params]
        log.mark(grads, "gradients")
        input_grads = [x.grad for x in differentiated]
        log.mark(input_grads, "temporaries")
        forward_backward = log.cut()
        if record:
            costs["training"] = list(log.costs)
            log._record_costs = False   # the first step's calls are not priced (the steady one's are, below)
        for name in optimizers:
            init, step, created, opt = _optimizer_step(log, name, params, foreach=not on_cpu)
            alive.append(opt)
            first = [*start, *init]
            first_step[name] = log.peak([first, forward_backward, step], start=len(first))
            timelines[f"train_first_step_{name}"] = log.timeline([first, forward_backward, step],
                                                                 start=len(first))
            update = [e for e in step if e.serial not in created]
            old_grads, zero_grad = log.alive_before(grads, "gradients", "zero_grad")
            old_input_grads, drop_input_grads = log.alive_before(input_grads, "temporaries", "zero_grad")
            zero_grad += drop_input_grads
            old_state = [log.synthetic(e.nbytes, "optimizer_state", "start", "", log.dtype_of.get(e.serial))[0]
                         for e in step if e.serial in created and e.new]
            before = [*start, *init, *old_grads, *old_state, *old_input_grads]
            training[name] = log.peak([before, zero_grad, forward_backward, update],
                                      start=len(before))
            timelines[f"train_{name}"] = log.timeline([before, zero_grad, forward_backward, update],
                                                      start=len(before))
        # every peak is read: a second step may now free what the log would have counted
        for name, opt in zip(optimizers, [o for o in alive if isinstance(o, torch.optim.Optimizer)]):
            if record:
                costs[f"step_{name}"] = _as_stepped(_steady_update_costs(names, run, opt), params, opt)
    finally:
        log.close()
        alive.clear()
        for p in params:
            p.grad = None
        for x in differentiated:
            x.grad = None
            x.requires_grad_(False)
    return _Trained(training, first_step, saved, timelines, dict(log.unmodelled), costs), targets


def _optimizer_step(log: StorageLog, name: str, params: Sequence[torch.nn.Parameter], *,
                    foreach: bool = False
                    ) -> tuple[list[_Event], list[_Event], set[int], torch.optim.Optimizer]:
    """The optimizer ``name`` made over meta twins of ``params`` (gradients set), then its first
    ``step``: the events of each (the state a constructor makes, Adagrad's), the serials of the
    state the step created, and the optimizer (keep it alive while the log is read)."""
    twins = _meta_twins(params)
    with log:
        log.set_phase("start")
        opt = OPTIMIZERS[name].make(twins)
        for group in opt.param_groups:
            if "foreach" in group:
                group["foreach"] = foreach or group["foreach"]
    log.mark(_state_tensors(opt), "optimizer_state")
    init = log.cut()
    with log:
        log.set_phase(f"optimizer step ({name})")
        opt.step()
    state = list(_state_tensors(opt))
    log.mark(state, "optimizer_state")
    return init, log.cut(), log.serials(state) - {e.serial for e in init}, opt


def update_costs(params: Sequence[torch.nn.Parameter], name: str, *, device_kind: str, amp: str | None,
                 threads: int | None) -> list[OpCost]:
    """The operator calls of optimizer ``name``'s steady-state update of ``params`` (their gradients
    as the parameters, or as set), as :func:`predict_memory` logs them: its first step (which makes
    the state) as there, then the second logged."""
    run = _kernel_context(device_kind, amp, threads)
    log = StorageLog({}, run)
    try:
        *_, opt = _optimizer_step(log, name, params, foreach=device_kind != "cpu")
        return _steady_update_costs({}, run, opt)
    finally:
        log.close()


def _kernel_context(device_kind: str, amp: str | None, threads: int | None) -> Context | None:
    """What the CPU kernels' workspace depends on (none booked on CUDA)."""
    if device_kind != "cpu":
        return None
    return Context(device_kind="cpu", amp=amp, threads=threads or torch.get_num_threads())


def _steady_update_costs(names: dict[int, str], run: Context | None, opt: torch.optim.Optimizer) -> list[OpCost]:
    """The operator calls of a steady-state update: a second ``step`` of an optimizer whose first
    made its state (the first's calls include making it), logged apart from the memory log."""
    log = StorageLog(names, run, costs=True)
    try:
        with log:
            log.set_phase("optimizer step")
            opt.step()
    finally:
        log.close()
    return log.costs


def _as_stepped(costs: list[OpCost], params: Sequence[torch.nn.Parameter],
                opt: torch.optim.Optimizer) -> list[OpCost]:
    """The update's calls touching the parameters and gradients the training step touched: the
    optimizer stepped their meta twins (:func:`_meta_twins`), other storages, which the time
    model would take for tensors the step never touched (:mod:`profiler.engine.reuse`)."""
    twins = [t for group in opt.param_groups for t in group["params"]]
    real: dict[int, int] = {}
    for twin, p in zip(twins, params):
        for a, b in ((twin, p), (twin.grad, p.grad)):
            if a is not None and b is not None:
                real[id(a.untyped_storage())] = id(b.untyped_storage())
    if not real:
        return costs
    return [replace(c, reads=tuple((real.get(k, k), n) for k, n in c.reads),
                                writes=tuple((real.get(k, k), n) for k, n in c.writes)) for c in costs]


def autocast(amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on the CPU to ``amp``, as the runner's; nothing without mixed precision."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=getattr(torch, amp))


def _meta_twins(params: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Meta parameters of the same shapes, with meta gradients, for the optimizer to step.

    The optimizer's update is the same on the meta device as on the CPU (one tensor at a time:
    neither device has foreach kernels) and much cheaper to run than on fake tensors.
    """
    twins = []
    for p in params:
        twin = torch.nn.Parameter(torch.empty_strided(p.shape, p.stride(), dtype=p.dtype,
                                                      device="meta"))
        g = p.grad if p.grad is not None else p
        twin.grad = torch.empty_strided(g.shape, g.stride(), dtype=g.dtype, device="meta")
        twins.append(twin)
    return twins


def _state_tensors(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


def make_target(loss: str, out_shape: Sequence[int], out_dtype: torch.dtype) -> torch.Tensor:
    """cross_entropy: one int64 class per position (every axis but the last); mse: like the output.

    Made with ``torch.empty`` on the default device: call it inside the fake mode.
    """
    if loss == "cross_entropy":
        return torch.empty(tuple(out_shape[:-1]), dtype=torch.int64, device="cpu")
    return torch.empty(tuple(out_shape), dtype=out_dtype, device="cpu")
