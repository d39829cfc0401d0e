"""Which operator calls Python issued: the first aten call after Python ran.

A call from Python into torch (``torch.relu(x)``, ``x + y``, ``F.linear``, ``torch._VF.gru``)
costs its argument parsing on top of the dispatch that the aten operators it runs from C++
(``gru``'s 300 small ones, ``linear``'s ``t`` and ``addmm``, every node of backward) also pay:
0.4 µs more per call on the 2-core EPYC this was written on (``calibrate._python_issue_seconds``).
The time model prices the two apart (:mod:`profiler.engine.step_time`), so the operator log says
which calls followed Python running.

Python running is seen by ``sys.setprofile``'s events (a function called or returning, a C
function called or returning) between two operator calls: C++ issuing one operator after another
makes none. (An operator written as syntax, ``x * 2 + 1``, makes no event of its own: its second
operator counts as issued from C++, a small undercount.) Not a ``TorchFunctionMode``: a
torch-function mode makes ``has_torch_function`` true, and ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` then leave their fused inference paths, which the replay must take
as a real run does. Events inside a dispatch handler (the fake tensors' own Python, the timer's)
are the handler's, not the model's.
"""
from __future__ import annotations

import os
import sys
import weakref
from typing import Any

import torch

_TORCH = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(os.path.dirname(__file__))
#: Python that is not the model's: torch's own between C++ and a dispatch mode's handler (rule
#: look-ups, the compiler's guards, the fake tensors' dispatch), weak-reference finalizers (the
#: engine's storage log), the global module hooks and the timer; what these call does not count
#: either
_MACHINERY = tuple(os.path.join(_TORCH, part) for part in (
    "_library", "_dynamo", "_compile.py", "compiler", "_ops.py", "utils/_python_dispatch.py", "_subclasses",
    "_decomp", "_refs", "_prims", "_meta_registrations.py", "fx", "_guards.py", "_logging", "utils/_pytree.py",
    "_higher_order_ops", "_functorch")) + (weakref.__file__, "<frozen") + tuple(
    os.path.join(_HERE, part) for part in ("engine/python_calls.py", "engine/module_scope.py", "engine/host_calls.py",
                                           "measuring/timing.py", "measuring/devices.py"))


class PythonCalls:
    """While active, counts the model's Python events; :meth:`began` says whether Python ran since
    the previous operator call booked. A dispatch handler's own frames (``__torch_dispatch__`` and
    what it calls between :meth:`enter_handler` and :meth:`leave_handler`) do not count."""

    def __init__(self) -> None:
        self._count = 0
        self._seen = -1
        self._depth = 0          # dispatch handlers running
        self._previous: Any = None
        self._active = False
        self._inside = 0         # machinery frames running
        self._machinery: dict[Any, bool] = {}   # code object -> whether it is machinery

    def _event(self, frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        own = self._machinery.get(code)
        if own is None:
            own = self._machinery[code] = code.co_name == "__torch_dispatch__" or code.co_filename.startswith(_MACHINERY)
        if own:
            if event == "call":
                self._inside += 1
            elif event == "return":
                self._inside = max(self._inside - 1, 0)
        elif not (self._depth or self._inside):
            self._count += 1

    def __enter__(self) -> "PythonCalls":
        self._previous = sys.getprofile()
        self._active = True
        sys.setprofile(self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        sys.setprofile(self._previous)

    def began(self) -> tuple[bool, int]:
        """(whether Python ran since the last call booked, the mark to :meth:`book` this call with)."""
        return self._count != self._seen, self._count

    def book(self, mark: int) -> None:
        """The call asked about with ``mark`` is booked; a call not booked (a query of a tensor's
        size, which a fake tensor makes and a real one does not) leaves Python's run to the next."""
        self._seen = mark

    def enter_handler(self) -> None:
        """A dispatch handler starts: the profile function is off until it ends (the fake tensors'
        Python would make the engine's replay four times slower, every event a call)."""
        if not self._depth:
            sys.setprofile(None)
        self._depth += 1

    def leave_handler(self) -> None:
        self._depth -= 1
        if not self._depth and self._active:
            sys.setprofile(self._event)
