"""Each measurement in a child process, so that running out of memory never takes the tool down.

Capacity planning measures at the edge of memory. In-process, an allocator error is caught
(``devices.oom_guard``), but the kernel's OOM killer, a crash inside a kernel or a CUDA context
left broken end the whole process, and a sweep with it. Here the measurement runs in a child
started by a *forkserver*: a server process started once, which imports torch and modelsize (and
never touches CUDA), then forks one fresh child per measurement, so CUDA state is new in each and
the import is paid once, while the parent predicts (``prepare``). The child rebuilds the model
from its reference (a spec path, a built-in name, ``package.module:factory``, a config.json: all
picklable strings) and sends back the measured figures, which are the in-process ones.

What can go wrong becomes a :class:`~profiler.measuring.devices.DoesNotFit` or a
:class:`~profiler.errors.ModelsizeError` in the parent, in one line: a child killed by a signal
("killed by signal 9 (SIGKILL) while measuring"), an allocator error, an exception. Ctrl-C stops
the child and reaches the caller as ``KeyboardInterrupt``.
"""
from __future__ import annotations

import multiprocessing
import signal
from typing import Any

from profiler.errors import ModelsizeError

_PRELOAD = ["profiler.measuring._forkserver_init", "profiler.measuring.isolated", "profiler.workflow", "profiler.measuring.runner"]
_context: Any = None


def _ctx() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


def prepare() -> None:
    """Start the server now (it imports torch while the caller goes on predicting)."""
    from multiprocessing import forkserver
    _ctx()
    forkserver.ensure_running()


def measure(reference: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``workflow.measure`` of the model ``reference`` names (``frontends.source.resolve``'s
    arguments), run in a child: (measured figures, options used)."""
    from profiler.measuring.devices import DoesNotFit

    ctx = _ctx()
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(sender, reference, options), daemon=True)
    child.start()
    sender.close()
    try:
        while not receiver.poll(0.1):
            if not child.is_alive() and not receiver.poll(0):
                break
        message = receiver.recv() if receiver.poll(0) else None
    except EOFError:
        message = None
    except KeyboardInterrupt:
        _stop(child)
        raise
    finally:
        receiver.close()
    child.join(timeout=30)
    if message is None:
        code = child.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            raise DoesNotFit(f"the measurement was killed by signal {-code} ({name}) while measuring "
                             f"(the kernel's OOM killer ends a process that way)", phase="measurement")
        raise ModelsizeError(f"the measuring process ended with status {code} without a result")
    kind, payload = message
    if kind == "ok":
        return payload
    if kind == "does_not_fit":
        raise DoesNotFit(payload, phase="measurement")
    raise ModelsizeError(payload)


def _stop(child: Any) -> None:
    if child.is_alive():
        child.terminate()
        child.join(timeout=5)
    if child.is_alive():
        child.kill()
        child.join()


def _child(sender: Any, reference: dict[str, Any], options: dict[str, Any]) -> None:
    """In the child: resolve, measure, send one message, whatever happens."""
    from profiler import workflow
    from profiler.frontends.source import resolve
    from profiler.measuring.devices import DoesNotFit

    try:
        source = resolve(reference.pop("model"), **reference)
        message = ("ok", workflow.measure(source, **options))
    except DoesNotFit as error:
        message = ("does_not_fit", error.message())
    except ModelsizeError as error:
        message = ("error", error.message())
    except KeyboardInterrupt:
        return
    except BaseException as error:  # noqa: BLE001 - reported, in one line, to the parent
        message = ("error", f"the measurement failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    try:
        sender.send(message)
    finally:
        sender.close()
