"""Host calls: what a model's Python calls that runs no operator and still takes time.

A CUDA build of torch on a machine without a usable driver answers
``torch.cuda.is_current_stream_capturing()`` by asking the driver again at every call, and raises:
12 µs a call in a loop, a median of 60-66 µs after a cache sweep, 45-124 µs a call in a Hugging
Face decoder's forward pass on the 2-core Xeon. transformers asks it through ``is_tracing``, twice
a GPT-2 forward pass and once a Llama one: removing the two made a GPT-2 pass at batch 1 0.09-0.25
ms (7-18 %) faster. Such a torch is what ``pip install torch`` gives a machine without a GPU. On
a CPU-only build or with a driver the call answers at once, and the calibration then reads its
microsecond.

The engine's replay runs the model's own Python, so it makes these calls too: :class:`HostCalls`
counts them, the operator log books the count on the next operator call
(:attr:`~profiler.engine.op_cost.OpCost.host_calls`), the calibration times one as a model makes
it (:func:`profiler.measuring.calibrate._host_call_seconds`) and the time model adds that per
call (``DeviceModel.host_call_s``). A module that bound the function to a name of its own before
the replay (``from torch.cuda import is_current_stream_capturing``) calls past the count.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

#: (module, function) of each host call counted
WATCHED: tuple[tuple[str, str], ...] = (("torch.cuda", "is_current_stream_capturing"),)


def call_watched() -> None:
    """Make each watched call once, as a model does: its error (no driver) caught and dropped."""
    for module, name in WATCHED:
        try:
            getattr(importlib.import_module(module), name)()
        except Exception:   # noqa: BLE001 - what transformers' is_tracing does with it
            pass


class HostCalls:
    """While active, each watched function is one that counts its calls and then makes the real
    call (the model gets its real answer, or its real error)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: list[tuple[Any, str, Callable[..., Any]]] = []

    def __enter__(self) -> "HostCalls":
        for module_name, name in WATCHED:
            module = importlib.import_module(module_name)
            original = getattr(module, name)

            def counted(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                self.count += 1
                return _original(*args, **kwargs)
            setattr(module, name, counted)
            self._saved.append((module, name, original))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._saved:
            module, name, original = self._saved.pop()
            setattr(module, name, original)
