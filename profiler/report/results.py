"""Saving results: one JSON file a run, written whole or not at all."""
from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def relative_errors(predicted: dict[str, Any], measured: dict[str, Any]) -> dict[str, float | None]:
    """(predicted − measured) / measured for every figure both sides have; None where unmeasured."""
    errors: dict[str, float | None] = {}
    for key, value in predicted.items():
        real = measured.get(key)
        if isinstance(value, (int, float)) and isinstance(real, (int, float)) and real:
            errors[key] = (value - real) / real
        elif key in measured:
            errors[key] = None
    return errors


def breakdown_comparison(peaks: dict[str, Any], measured: dict[str, dict[str, int]]
                         ) -> dict[str, dict[str, dict[str, Any]]]:
    """Peak → category → predicted and measured bytes side by side, with the relative error
    (predicted − measured) / measured (None where nothing was measured in that category).

    ``peaks`` is a prediction's ``peaks`` (each with its ``breakdown``); ``measured`` the
    measurement's ``breakdown``. Only peaks both sides have.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, peak in peaks.items():
        real = measured.get(name)
        if real is None:
            continue
        predicted = peak["breakdown"]
        out[name] = {}
        for category in [*predicted, *(c for c in real if c not in predicted)]:
            p, m = predicted.get(category, 0), real.get(category, 0)
            out[name][category] = {"predicted": p, "measured": m,
                                   "relative_error": (p - m) / m if m else None}
    return out


def file_name(result: dict[str, Any], now: datetime) -> str:
    options = result.get("options", {})
    parts = [now.strftime("%Y%m%dT%H%M%S%fZ"), result.get("model", "model"),
             options.get("device", "predicted"), result.get("dtype", ""), f"b{result.get('batch', '')}"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(p for p in parts if p)) + ".json"


def check_writable(directory: str | Path) -> None:
    """Fail before a measurement, not after it: the folder exists (or is made) and takes a file."""
    from profiler.errors import ModelsizeError
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ModelsizeError(f"cannot write result files there ({error.strerror or error.__class__.__name__})",
                             field="results-dir", received=str(directory)) from None


def save(result: dict[str, Any], directory: str | Path) -> Path:
    """Write ``result`` atomically (temporary file, fsync, rename); never overwrites another run."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    result = {"schema_version": SCHEMA_VERSION, "datetime": now.isoformat(), **result}
    target = directory / file_name(result, now)
    text = json.dumps(result, indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".partial-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            raise FileExistsError(target)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read(path: str | Path) -> dict[str, Any]:
    """A saved result, or a :class:`~profiler.errors.ModelsizeError` naming the file that cannot be
    read or is not JSON (whether it holds a result's keys is the renderer's to check)."""
    from profiler.errors import ModelsizeError
    try:
        return load(path)
    except OSError as error:
        raise ModelsizeError(f"cannot read it ({error.strerror or error.__class__.__name__})",
                             source=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelsizeError(f"not a JSON result file ({error})", source=str(path)) from None
    except RecursionError:   # hostile nesting: json's decoder recurses per level
        raise ModelsizeError("not a result file (JSON nested too deeply)", source=str(path)) from None
