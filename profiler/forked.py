"""A prediction's heavy pass run in a forked child, so that its memory never lands in the caller.

The engine's replay behind a spec's predicted time holds ~190 KiB per layer while it runs and
leaves ~150 KiB per layer in the process after it returns (no Python object is left: the
allocators keep the pages), so in ``profile`` a 10,000-layer spec's measurement started ~1.5 GiB
higher than it needed to. Forked, the child runs the pass on a copy-on-write image of the caller
(nothing to import or rebuild) and sends its result back as JSON: plain dicts of names and
numbers, which round-trip exactly. Where there is no ``os.fork``, or the child fails, the pass runs
in the caller, so its errors are the in-process ones.
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
    sys.stdout.flush()
    sys.stderr.flush()
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
