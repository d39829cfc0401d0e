"""Number formatting with unambiguous binary units (KiB, MiB, GiB: powers of 1024)."""
from __future__ import annotations


def count(n: int | None) -> str:
    """7850 -> '7,850'."""
    return "-" if n is None else f"{n:,}"


def nbytes(n: int | None) -> str:
    """31400 -> '30.66 KiB'; exact bytes below 1 KiB."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def signed_nbytes(n: int | None) -> str:
    """4 -> '+4 B', -31400 -> '-30.66 KiB', 0 -> '0 B': a difference."""
    if n is None:
        return "-"
    return ("+" if n > 0 else "") + nbytes(n)


def si(n: int | None) -> str:
    """250880 -> '250.88 K' (MACs and FLOPs are counts, so decimal prefixes)."""
    if n is None:
        return "-"
    value = float(n)
    for prefix in ("", " K", " M", " G", " T"):
        if abs(value) < 1000 or prefix == " T":
            return f"{value:.0f}" if prefix == "" else f"{value:.2f}{prefix}"
        value /= 1000
    raise AssertionError("unreachable")


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.2f}%"


def shape(dims) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ")"


def millis(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} ms"


#: how reports name each optimizer of the catalogue (profiler.engine.optimizers)
OPTIMIZER_LABELS = {"sgd": "SGD", "sgd_momentum": "SGD with momentum", "adam": "Adam", "adamw": "AdamW",
                    "rmsprop": "RMSprop", "adagrad": "Adagrad"}
