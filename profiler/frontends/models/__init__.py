"""Built-in model specs, by name: the seed question's three models."""
from __future__ import annotations

from importlib import resources

from profiler.frontends.spec import ModelSpec, loads

DEFAULT = "digits"


def names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".yaml"))


def builtin(name: str) -> ModelSpec:
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return loads(text, source=f"<builtin {name}>")
