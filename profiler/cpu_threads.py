"""The number of CPU threads a run will use, which sizes oneDNN's per-thread scratchpads.

One definition for every command. When torch is already imported, torch answers
(``torch.get_num_threads()``, which also sees a ``torch.set_num_threads`` made by the caller).
Otherwise it is worked out without importing torch, so that a spec's summary stays fast, the way
torch 2.14 picks its default: ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) when it is a positive
integer, at most the CPUs the process may run on (measured here: ``OMP_NUM_THREADS=8`` on 2 CPUs
gives 2 threads, ``=1`` gives 1, an invalid value is ignored, a list ``1,2`` gives its first); else those CPUs, counted as physical
cores where hyper-threads share one. ``tests/test_cpu_threads.py`` checks the rule against torch in
fresh processes.
"""
from __future__ import annotations

import os
import sys


def default_threads() -> int:
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return torch.get_num_threads()
    return threads_from_environment(os.environ)


def threads_from_environment(environ: "os._Environ[str] | dict[str, str]") -> int:
    available = _available_cpus()
    for variable in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):   # MKL's wins when both are set
        value = environ.get(variable, "").split(",")[0].strip()   # OpenMP's list: the first level
        if value.isdigit() and int(value) > 0:
            return min(int(value), available)
    return available


def _available_cpus() -> int:
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    try:
        import psutil
        logical, physical = psutil.cpu_count(logical=True), psutil.cpu_count(logical=False)
    except Exception:   # psutil cannot read the topology on this platform
        return allowed
    if logical and physical and physical < logical:   # hyper-threads: torch counts cores
        return max(1, allowed * physical // logical)
    return allowed
