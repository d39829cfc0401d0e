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
that moment. Definitions are the runner's (``profiler.runner``): a peak counts everything alive;
inference is ``model.eval()`` and ``out = model(*x)`` under ``no_grad``; a training step is
``zero_grad(set_to_none=True); out = model(*x); loss = loss_fn(out, y); loss.backward();
opt.step()`` with ``out`` and ``loss`` alive until it ends, steady state (a first step runs before,
so gradients and optimizer state exist when the measured one starts). ``SGD(lr=0.01)`` keeps no
state; ``Adam()`` keeps ``exp_avg``, ``exp_avg_sq`` and a float32 ``step`` per tensor, and its CPU
single-tensor update holds ``sqrt(v)`` and ``sqrt(v) / bc2`` of one parameter at once: both come out
of the replay, they are not assumed.

What a tensor-level log cannot see is what kernels allocate and free inside themselves (the CPU
allocator's workspace); ``profiler.runner`` measures both levels, and the allocator level is the
larger by that workspace.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .memory_model import CATEGORIES, LOSSES, Peak  # noqa: F401  (LOSSES: re-exported for torch_module)
from .optimizers import CATALOG as OPTIMIZERS
_LIFT = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift.default}
aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------
# CPU kernels whose real result differs, in storage, from what their fake (meta) implementation
# returns. Each fix takes one operator call on fake tensors and returns the result the CPU kernel
# would give, with the same shapes and values but the CPU kernel's storages. Only fake results are
# fixed (a real run already has the real storages); each fix is checked against real CPU runs in
# tests/test_torch_module.py.

_CPU_RESULT: dict[Any, Callable[[tuple, Any], Any]] = {}


def _cpu_result(*ops: Any) -> Callable:
    def register(fix: Callable) -> Callable:
        for op in ops:
            if op in _CPU_RESULT:
                raise ValueError(f"a CPU result fix for {op} is registered already")
            _CPU_RESULT[op] = fix
        return fix
    return register


def _rnd(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _good_ld(dim: int, itemsize: int) -> int:
    """oneDNN's leading dimension: a multiple of 64 bytes, not of 256 elements (4K aliasing)."""
    ld = _rnd(dim, 64 // itemsize)
    return ld + 64 // itemsize if ld % 256 == 0 else ld


def onednn_lstm_workspace_bytes(t: int, n: int, i: int, h: int) -> int:
    """Bytes of the workspace oneDNN's float32 LSTM keeps for backward (one layer, one direction).

    Page-aligned (4 KiB) regions, as ``cpu/rnn/rnn_utils`` lays them out, for T steps of a batch
    of N, input I, hidden H: the gates (T·N·ld(4H)), the hidden states (T·N·ld(H)), three state
    buffers of 2·(T+1)·N·ld(max(H, I)) and two of 2·(T+1)·N·H, all float32. Fitted to and checked
    against the real kernel (torch 2.13, oneDNN 3.12) on 312 shapes.

    >>> onednn_lstm_workspace_bytes(t=9, n=3, i=8, h=10)
    32768
    """
    page, states = 4096, 2 * (t + 1) * n * 4
    regions = [t * n * _good_ld(4 * h, 4) * 4, t * n * _good_ld(h, 4) * 4,
               *[states * _good_ld(max(h, i), 4)] * 3, *[states * h] * 2]
    return sum(_rnd(r, page) for r in regions)


@_cpu_result(aten.mkldnn_rnn_layer.default)
def _onednn_lstm(args: tuple, out: Any) -> Any:
    """Training keeps a workspace for backward; the fake kernel returns an empty one.

    Fixed for float32 LSTMs (``mode`` 2), the case the size was checked on.
    """
    x, mode, hidden, train = args[0], args[9], args[10], args[15]
    if not train or mode != 2 or x.dtype != torch.float32 or x.dim() != 3:
        return out
    t, n, i = x.shape     # time-major whatever ``batch_first`` says: nn.LSTM transposes first
    workspace = out[3].new_empty((onednn_lstm_workspace_bytes(t, n, i, hidden),))
    return (*out[:3], workspace, *out[4:])


@_cpu_result(aten.mkldnn_rnn_layer_backward.default)
def _onednn_lstm_backward(args: tuple, out: Any) -> Any:
    """The two bias gradients are two tensors; the fake kernel returns one tensor twice."""
    if out[3] is out[4] or storage_of(out[3]) is storage_of(out[4]):
        return (*out[:4], out[4].clone(), *out[5:])
    return out


@_cpu_result(aten._embedding_bag.default, aten._embedding_bag_forward_only.default)
def _offset2bag(args: tuple, out: Any) -> Any:
    """The CPU kernel sizes ``offset2bag`` for one index more than it returns (a resize down)."""
    n = out[1].numel()
    if not n:
        return out
    return (out[0], out[1].new_empty((n + 1,))[:n], *out[2:])


@dataclass(frozen=True)
class _Event:
    serial: int     # one number per storage, never reused
    nbytes: int     # change of live bytes: positive when allocated or grown, negative when freed
    at: str         # what was running
    new: bool = False  # the storage's allocation (not a free or a resize)


class StorageLog(TorchDispatchMode):
    """Tensor storages created and freed while active, in order, labelled by phase and module.

    ``seed`` registers what exists before (parameters, inputs, gradients, optimizer state) with
    its category. A storage an operator returns is new unless it is known already or is the
    storage of one of the operator's inputs (a view, an in-place result); ``lift_fresh`` (how
    ``torch.tensor(...)`` enters dispatch) returns a storage made just before, which is new when
    unknown. The module running is followed with the *global* module hooks, removed on exit.
    """

    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names = names
        self.events: list[_Event] = []
        self.category: dict[int, str] = {}      # serial -> category fixed by the caller
        self.phase_of: dict[int, str] = {}      # serial -> phase that created it
        self.module_of: dict[int, str] = {}     # serial -> module that created it (forward only)
        self.phase = "start"
        self._serial: dict[int, int] = {}       # id(storage) -> serial, while the storage lives
        self._nbytes: dict[int, int] = {}       # serial -> bytes, while alive
        self._finalizers: list[weakref.finalize] = []
        self._stack: list[str] = []
        self._hooks: list[Any] = []
        self._node_module: dict[Any, str] = {}  # autograd node -> module whose output it made
        self._cut = 0

    # -- what exists, and what is what --------------------------------------------------------
    def seed(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        for tensor in tensors:
            if tensor is not None:
                serial = self._add(tensor.untyped_storage())
                if serial is not None:
                    self.category.setdefault(serial, category)

    def mark(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        """Give live storages a category (gradients and optimizer state, once they exist)."""
        for tensor in tensors:
            if tensor is not None:
                serial = self._serial.get(id(tensor.untyped_storage()))
                if serial is not None:
                    self.category[serial] = category

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "StorageLog":
        self._hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._enter_module),
            torch.nn.modules.module.register_module_forward_hook(self._leave_module,
                                                                 always_call=True),
        ]
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def close(self) -> None:
        """Stop following frees: the storages may outlive the log."""
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers = []
        self._node_module.clear()

    def _enter_module(self, module: torch.nn.Module, args: object) -> None:
        parent = self._stack[-1] if self._stack else ""
        self._stack.append(self.names.get(id(module), parent))

    def _leave_module(self, module: torch.nn.Module, args: object, output: object) -> None:
        if self._stack:
            name = self._stack.pop()
            for tensor in tensors_in(output):
                if tensor.grad_fn is not None:
                    self._node_module.setdefault(tensor.grad_fn, name)

    def _where(self) -> str:
        if self.phase == "forward":
            return f"forward {self._stack[-1] or '(root)'}" if self._stack else "forward"
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is None:
                return "backward"
            module = self._node_module.get(node)
            return f"backward {module} ({node.name()})" if module else f"backward ({node.name()})"
        return self.phase

    # -- storages ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        fix = _CPU_RESULT.get(func)
        if fix is not None and _is_fake(out[0]):
            out = fix(args, out)
        outputs = tensors_in(out)
        if outputs:
            lifted = func in _LIFT
            inputs = set() if lifted else {id(storage_of(t)) for t in tensors_in((args, kwargs))}
            for tensor in outputs:
                storage = storage_of(tensor)
                if storage is None or id(storage) in inputs:
                    continue
                serial = self._serial.get(id(storage))
                if serial is None:
                    self._add(storage)
                elif self._nbytes[serial] != storage.nbytes():   # resized in place (out=)
                    self._resize(serial, storage.nbytes())
        return out

    def _add(self, storage: torch.UntypedStorage | None) -> int | None:
        if storage is None or id(storage) in self._serial:
            return self._serial.get(id(storage)) if storage is not None else None
        serial = len(self.phase_of)
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
        phase = self.phase_of[serial]
        return "activations" if phase == "forward" or phase.startswith("loss") else "temporaries"

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
        sizes: dict[int, int] = {}
        for tensor in tensors:
            if tensor is not None:
                storage = tensor.untyped_storage()
                sizes[id(storage)] = storage.nbytes()
        allocs, frees = [], []
        for nbytes in sizes.values():
            alloc, free = self.synthetic(nbytes, category, "start", freed_at)
            allocs.append(alloc)
            frees.append(free)
        return allocs, frees

    def synthetic(self, nbytes: int, category: str, at: str,
                  freed_at: str = "") -> tuple[_Event, _Event]:
        """The allocation and the free of a storage that was not run, only counted."""
        serial = -1 - len(self.category)
        self.category[serial] = category
        return _Event(serial, nbytes, at, new=True), _Event(serial, -nbytes, freed_at)

    def peak(self, pieces: Sequence[Sequence[_Event]], *, start: int) -> Peak:
        """The highest live total over ``pieces`` played in order, and what made it up then.

        The first ``start`` events build what is alive before the measured call; that state is
        the first candidate (labelled "start"). A free or resize of a storage whose allocation is
        not among the pieces belongs to another timeline and is skipped.
        """
        by_category = dict.fromkeys(CATEGORIES, 0)
        current = 0
        live: set[int] = set()
        best = Peak(-1, "start", {})
        for i, event in enumerate(e for piece in pieces for e in piece):
            if event.new:
                live.add(event.serial)
            elif event.serial not in live:
                continue
            by_category[self.category_of(event.serial)] += event.nbytes
            current += event.nbytes
            if i + 1 >= start and current > best.bytes:
                best = Peak(current, event.at if i >= start else "start", dict(by_category))
        return best

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
class MemoryPrediction:
    inference: Peak
    training: dict[str, Peak]        # optimizer -> steady-state step
    first_step: dict[str, Peak]      # optimizer -> first step (fresh optimizer, no gradients)
    saved_bytes: dict[str, int]      # module -> bytes its training forward leaves for backward


def predict_memory(model: torch.nn.Module, inputs: Sequence[torch.Tensor],
                   targets: Sequence[torch.Tensor], *, loss: str, fake_mode: Any,
                   names: dict[int, str], optimizers: Sequence[str] = ("sgd", "adam"),
                   ) -> MemoryPrediction:
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
    parameters (see :func:`_meta_twins`).
    """
    tensors = [*model.parameters(), *model.buffers()]

    model.eval()
    log = StorageLog(names)
    try:
        log.seed(tensors, "parameters")
        log.seed(inputs, "inputs")
        start = log.cut()
        with fake_mode, log, torch.no_grad():
            log.set_phase("forward")
            out = model(*inputs)
        del out
        inference = log.peak([start, log.cut()], start=len(start))
    finally:
        log.close()

    training: dict[str, Peak] = {}
    first_step: dict[str, Peak] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    if not optimizers or not params:
        return MemoryPrediction(inference, training, first_step, {})
    model.train()
    loss_fn = _loss_fn(loss)
    for p in params:
        p.grad = None
    log = StorageLog(names)
    alive: list[Any] = []   # the step's output and loss, and the optimizers: alive to the end
    try:
        log.seed(tensors, "parameters")
        log.seed(inputs, "inputs")
        log.seed(targets, "inputs")
        start = log.cut()
        with fake_mode, log:
            log.set_phase("forward")
            alive.append(out := model(*inputs))
            log.set_phase(f"loss ({loss_fn.__name__})")
            alive.append(loss_value := _total_loss(loss_fn, outputs(out), targets))
            saved = log.saved_by_module()
            log.set_phase("backward")
            loss_value.backward()
        del out, loss_value
        grads = [p.grad for p in params]
        log.mark(grads, "gradients")
        forward_backward = log.cut()
        for name in optimizers:
            step, created, opt = _optimizer_step(log, name, params)
            alive.append(opt)
            first_step[name] = log.peak([start, forward_backward, step], start=len(start))
            update = [e for e in step if e.serial not in created]
            old_grads, zero_grad = log.alive_before(grads, "gradients", "zero_grad")
            old_state = [log.synthetic(e.nbytes, "optimizer_state", "start")[0]
                         for e in step if e.serial in created and e.new]
            before = [*start, *old_grads, *old_state]
            training[name] = log.peak([before, zero_grad, forward_backward, update],
                                      start=len(before))
    finally:
        log.close()
        alive.clear()
        for p in params:
            p.grad = None
    return MemoryPrediction(inference, training, first_step, saved)


def _optimizer_step(log: StorageLog, name: str, params: Sequence[torch.nn.Parameter]
                    ) -> tuple[list[_Event], set[int], torch.optim.Optimizer]:
    """The first ``step`` of optimizer ``name`` over meta twins of ``params`` (gradients set):
    its events, the serials of the state it created, and the optimizer (keep it alive while the
    log is read)."""
    twins = _meta_twins(params)
    opt = OPTIMIZERS[name].make(twins)
    with log:
        log.set_phase(f"optimizer step ({name})")
        opt.step()
    state = list(_state_tensors(opt))
    log.mark(state, "optimizer_state")
    return log.cut(), log.serials(state), opt


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


def outputs(out: object) -> list[torch.Tensor]:
    """The tensors a loss is computed on, as the runner takes them: the output, or each tensor of
    a tuple, list or dict output (nested containers, such as an LSTM's ``(h, c)``, are left out)."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    found = [o for o in items if isinstance(o, torch.Tensor)]
    if not found:
        raise TypeError("the module returned no tensor to compute a loss on "
                        f"(got {type(out).__name__})")
    return found


def _total_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                outs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several outputs: their losses summed, in order (as the runner does)."""
    total = loss_fn(outs[0], targets[0])
    for o, y in zip(outs[1:], targets[1:]):
        total = total + loss_fn(o, y)
    return total


def make_target(loss: str, out_shape: Sequence[int], out_dtype: torch.dtype) -> torch.Tensor:
    """cross_entropy: one int64 class per position (every axis but the last); mse: like the output.

    Made with ``torch.empty`` on the default device: call it inside the fake mode.
    """
    if loss == "cross_entropy":
        return torch.empty(tuple(out_shape[:-1]), dtype=torch.int64, device="cpu")
    return torch.empty(tuple(out_shape), dtype=out_dtype, device="cpu")


def _loss_fn(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "mse":
        def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(out, y)
        return mse

    def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    return cross_entropy
