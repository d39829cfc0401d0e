"""What machine and software a measurement ran on, saved beside the results.

Everything here is best effort: a missing library, driver or git checkout leaves a field empty
(``None``, ``[]`` or ``"unknown"``) and never raises.
"""
from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """Host, operating system, library versions, CPU, memory and GPUs, as plain values."""
    import numpy
    import psutil
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "numpy_version": numpy.__version__,
        "cpu_model": cpu_model(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "torch_threads": torch.get_num_threads(),
        "total_ram_bytes": int(psutil.virtual_memory().total),
        "gpus": gpus(),
        "modelsize_version": modelsize_version(),
        "git_commit": git_commit(),
    }


def cpu_model() -> str:
    """The "model name" line of /proc/cpuinfo, else ``platform.processor()``, else "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpus() -> list[dict[str, Any]]:
    """Name, total memory and driver version of each NVIDIA GPU; ``[]`` without NVML or driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            found.append({"index": index,
                          "name": _text(pynvml.nvmlDeviceGetName(handle)),
                          "total_memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                          "driver_version": driver})
        return found
    except Exception:  # noqa: BLE001 - a half-working driver must not break a measurement
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def modelsize_version() -> str:
    try:
        return importlib.metadata.version("modelsize")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_commit() -> str | None:
    """The commit of the checkout this package lives in (``-dirty`` if it has changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if commit and dirty else (commit or None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

