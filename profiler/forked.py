"""A prediction's heavy pass run in a forked child, whose memory is given back by its exit.

The engine's replay behind a spec's predicted time builds ~190 KiB of objects per layer (fake
tensors, the autograd graph, the log). In the caller, freeing them one by one when the pass
returns costs CPU time (~1 s per 2,000 layers here) and leaves ~150 KiB per layer of pages with the
allocators; a forked child runs the pass on a copy-on-write image of the caller (nothing to import
or rebuild), sends its result back as JSON (plain dicts of names and numbers, which round-trip
exactly) and ends without freeing anything. Measured on a 2,000-layer Dense spec (h100, Adam, two
runs each): 10.6-11.0 s CPU and 908 MiB peak RSS in process, 9.6-10.2 s and 830 MiB forked.
Where there is no ``os.fork``, or the child fails, the pass runs in the caller, so its errors are
the in-process ones.

:func:`beside` forks for the other reason: to run a pass on the second CPU while the caller runs
another (the module engine's inference replay beside its training replay). The child runs with
one torch thread: a process forked after OpenMP ran a parallel region hangs in its next one.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Any, Callable, Iterator


def call(compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``, computed in a forked child where possible."""
    if not hasattr(os, "fork"):
        return compute()
    return _fork(compute)()


@contextlib.contextmanager
def beside(compute: Callable[[], dict[str, Any]], fork: bool = True
           ) -> Iterator[Callable[[], dict[str, Any]]]:
    """``compute()`` begun in a forked child, to run while the caller works on: yields the function
    that waits for its result. Without ``fork``, with one CPU or without ``os.fork``: computed in
    the caller, at once. A child still running when the block ends (the caller raised) is stopped."""
    if not fork or not hasattr(os, "fork") or _cpus() < 2:
        result = compute()
        yield lambda: result
        return
    wait = _fork(compute, threads=1)
    try:
        yield wait
    finally:
        wait(stop=True)


def _cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _fork(compute: Callable[[], dict[str, Any]], threads: int | None = None) -> Callable[..., Any]:
    """Fork a child computing ``compute()`` (with ``threads`` torch threads); return the function
    that waits for it: its result, or ``compute()`` in the caller where the child failed
    (``stop``: end the child instead, if still running)."""
    for stream in (sys.stdout, sys.stderr):   # what is buffered is written once, not once per process
        if stream is not None:
            stream.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        if threads is not None:
            import torch
            torch.set_num_threads(threads)
        _child(compute, read, write)
    os.close(write)
    done: dict[str, Any] = {}   # "exited": the child is waited for; "result": what it gave

    def wait(stop: bool = False) -> Any:
        if "result" in done or ("exited" in done and stop):
            return done.get("result")
        if "exited" not in done:
            done["exited"] = True
            if stop:
                os.close(read)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            try:
                with os.fdopen(read, "rb") as pipe:
                    sent = pipe.read()
                _, status = os.waitpid(pid, 0)
            except BaseException:   # Ctrl-C here: the child stops too
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise
            if os.waitstatus_to_exitcode(status) == 0:
                done["result"] = json.loads(sent)
                return done["result"]
        done["result"] = compute()
        return done["result"]
    return wait


def _child(compute: Callable[[], dict[str, Any]], read: int, write: int) -> None:
    """In the child: send ``compute()``'s result and end, without the caller's exit handlers."""
    status = 1
    try:
        os.close(read)
        sent = json.dumps(compute()).encode()
        for stream in (sys.stdout, sys.stderr):   # what the pass printed, as it would in the caller
            if stream is not None:
                stream.flush()
        with os.fdopen(write, "wb") as pipe:
            pipe.write(sent)
        status = 0
    except BaseException:   # noqa: BLE001 - the caller computes it again, and raises what it raises
        pass
    finally:
        os._exit(status)
