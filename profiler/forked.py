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
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable


def call(compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``, computed in a forked child where possible."""
    if not hasattr(os, "fork"):
        return compute()
    for stream in (sys.stdout, sys.stderr):   # what is buffered is written once, not once per process
        if stream is not None:
            stream.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(compute, read, write)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            sent = pipe.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:   # Ctrl-C here: the child stops too
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.waitstatus_to_exitcode(status) == 0:
        return json.loads(sent)
    return compute()


def _child(compute: Callable[[], dict[str, Any]], read: int, write: int) -> None:
    """In the child: send ``compute()``'s result and end, without the caller's exit handlers."""
    status = 1
    try:
        os.close(read)
        sent = json.dumps(compute()).encode()
        with os.fdopen(write, "wb") as pipe:
            pipe.write(sent)
        status = 0
    except BaseException:   # noqa: BLE001 - the caller computes it again, and raises what it raises
        pass
    finally:
        os._exit(status)
