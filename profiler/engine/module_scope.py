"""Which module is running: in the forward pass from the *global* module hooks, in backward from
the autograd node being run.

Per-module hooks would change code paths (``nn.TransformerEncoderLayer`` leaves its fused
inference path when a module has hooks), so :class:`ModuleScope` registers the two global ones,
``register_module_forward_pre_hook`` and ``register_module_forward_hook``, and keeps a stack of
module names (the innermost last). Names are the ``named_modules()`` names (the root's is ""); a
module not among them takes its parent's.

Backward runs autograd nodes, not modules. When a module's forward returns, every node its call
created and no inner module has claimed gets the module's name in the node's own ``metadata``
dict: the nodes reachable from its outputs whose sequence number is at least the one autograd was
at when the call began (each enclosing module walks them again: nodes x nesting depth) (sequence numbers grow with each node a thread creates; a parameter's
``AccumulateGrad`` has the largest possible one, so it goes to the first module that reaches it,
the innermost using it). Inner modules return first, so each node carries its innermost module.
A table here holding the nodes would keep them alive, and with them what they save (the nodes an
activation checkpoint's recomputation builds are never run by backward).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

#: where a node's module is written, in the autograd node's own ``metadata`` dict
MODULE_KEY = "modelsize.module"
#: how per-module figures (bytes, time) name the root module's own operators, and those run
#: outside every module (a loss computed on the output)
ROOT = "(root)"
OUTSIDE = "(outside modules)"

_next_sequence_nr: Callable[[], int] = torch._C._autograd._get_sequence_nr


class ModuleScope:
    """The stack of running modules' names; use as a context manager (hooks removed on exit).

    ``on_leave(name, output)`` is called as a module's forward returns, before its nodes are named.
    """

    def __init__(self, names: dict[int, str],
                 on_leave: Callable[[str, object], None] | None = None):
        self.names = names
        self.stack: list[str] = []
        self._starts: list[int] = []        # autograd's next sequence number when each call began
        self._on_leave = on_leave
        self.calls = 0                       # module calls begun (the time model prices each)
        self._hooks: list[Any] = []

    def __enter__(self) -> "ModuleScope":
        self._hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._enter),
            torch.nn.modules.module.register_module_forward_hook(self._leave, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def current(self) -> str | None:
        """The innermost running module's name ("" for the root), or None outside every module."""
        return self.stack[-1] if self.stack else None

    def _enter(self, module: torch.nn.Module, args: object) -> None:
        self.calls += 1
        parent = self.stack[-1] if self.stack else ""
        self.stack.append(self.names.get(id(module), parent))
        self._starts.append(_next_sequence_nr())

    def _leave(self, module: torch.nn.Module, args: object, output: object) -> None:
        if not self.stack:
            return
        name = self.stack.pop()
        start = self._starts.pop()
        if self._on_leave is not None:
            self._on_leave(name, output)
        _claim(_grad_fns(output), name, start)


def backward_module() -> tuple[str | None, str | None]:
    """(module, node name) of the autograd node running now: (None, None) outside backward, and
    module None for a node no module created (the loss's, for one)."""
    node = torch._C._current_autograd_node()
    if node is None:
        return None, None
    return node.metadata.get(MODULE_KEY), node.name()


def _claim(nodes: list[Any], name: str, start: int) -> None:
    """Name ``nodes`` and every node behind them made since ``start`` that has no name yet.

    The walk goes on through nodes an inner module named: behind them may be nodes this module
    made before calling it (``self.body(x * 3)``: the product is this module's). A node made
    before ``start`` is not this call's, and nothing behind it is (a node's inputs are older
    than it, but for the accumulators of leaves, which every walk that reaches them may claim).
    """
    seen: set[Any] = set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen or node._sequence_nr() < start:
            continue
        seen.add(node)
        node.metadata.setdefault(MODULE_KEY, name)
        nodes.extend(next_node for next_node, _ in node.next_functions)


def _grad_fns(tree: object) -> list[Any]:
    """The ``grad_fn`` of every tensor in a (nested) output."""
    found: list[Any] = []
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.grad_fn is not None:
                found.append(item.grad_fn)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())      # transformers' ModelOutput is a dict
    return found
