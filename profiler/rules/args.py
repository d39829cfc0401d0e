"""Argument schemas for layer rules: parse, check and normalise the values a spec gives.

A spec is data (YAML or JSON), so every value is checked here before any arithmetic runs; a
parser returns the normalised value (an int becomes a tuple of the layer's rank, and so on) or
raises SpecError naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from profiler.errors import SpecError

Parser = Callable[[str, Any], Any]


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Arg:
    """One argument of a layer, named as Keras names it."""
    name: str
    parse: Parser
    default: Any = REQUIRED


class LayerArgs(Mapping[str, Any]):
    """Parsed, immutable arguments of one layer, readable as attributes (``args.units``)."""

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LayerArgs is immutable")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"LayerArgs({self._values!r})"


def parse_args(schema: tuple[Arg, ...], given: Mapping[str, Any]) -> LayerArgs:
    """Check ``given`` against ``schema``: unknown names and missing required ones are errors."""
    known = {arg.name for arg in schema}
    for name in given:
        if name not in known:
            raise SpecError("unknown argument", field=str(name),
                            expected="one of " + ", ".join(sorted(known)) if known else "no arguments")
    values = {}
    for arg in schema:
        if arg.name in given:
            values[arg.name] = arg.parse(arg.name, given[arg.name])
        elif arg.default is REQUIRED:
            raise SpecError("missing required argument", field=arg.name)
        else:
            values[arg.name] = arg.default
    return LayerArgs(values)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(field: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise SpecError("must be a positive integer", field=field, expected="an integer > 0",
                        received=_describe(value))
    return value


def non_negative_int(field: str, value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise SpecError("must be a non-negative integer", field=field, expected="an integer >= 0",
                        received=_describe(value))
    return value


def integer(field: str, value: Any) -> int:
    if not _is_int(value):
        raise SpecError("must be an integer", field=field, received=_describe(value))
    return value


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError("must be true or false", field=field, received=_describe(value))
    return value


def number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError("must be a number", field=field, received=_describe(value))
    return float(value)


def rate(field: str, value: Any) -> float:
    """A probability in [0, 1), as Dropout's rate."""
    value = number(field, value)
    if not 0.0 <= value < 1.0:
        raise SpecError("must be in [0, 1)", field=field, received=repr(value))
    return value


def choice(*options: str) -> Parser:
    def parse(field: str, value: Any) -> str:
        if value not in options:
            raise SpecError("unknown value", field=field, expected="one of " + ", ".join(options),
                            received=_describe(value))
        return value
    return parse


def int_tuple(rank: int, *, minimum: int = 1) -> Parser:
    """An int or a list of ``rank`` ints, each >= ``minimum``, as Keras's kernel_size or strides."""
    def parse(field: str, value: Any) -> tuple[int, ...]:
        items = [value] * rank if _is_int(value) else value
        if (not isinstance(items, (list, tuple)) or len(items) != rank
                or not all(_is_int(v) and v >= minimum for v in items)):
            raise SpecError(f"must be an integer or a list of {rank} integers >= {minimum}",
                            field=field, received=_describe(value))
        return tuple(items)
    return parse


def shape(field: str, value: Any) -> tuple[int, ...]:
    """A shape without the batch axis; -1 once, as in Reshape, stands for the rest."""
    if (not isinstance(value, (list, tuple)) or not value
            or not all(_is_int(v) and (v > 0 or v == -1) for v in value)
            or list(value).count(-1) > 1):
        raise SpecError("must be a non-empty list of positive integers (at most one -1)",
                        field=field, received=_describe(value))
    return tuple(value)


def optional(parser: Parser) -> Parser:
    def parse(field: str, value: Any) -> Any:
        return None if value is None else parser(field, value)
    return parse


class NestedLayer(dict):
    """A layer given as an argument of another (Bidirectional's and TimeDistributed's ``layer``).

    It is the plain mapping ``{Type: {argument: value, ...}}`` (so a spec saved as data reads
    back the same), with the parsed arguments at hand as ``.type`` and ``.args``.
    """

    def __init__(self, type_name: str, args: LayerArgs):
        super().__init__({type_name: _plain(dict(args))})
        self.type = type_name
        self.args = args

    def __repr__(self) -> str:
        return f"NestedLayer({self.type!r}, {dict(self.args)!r})"


def _plain(value: Any) -> Any:
    """Parsed values as plain data: tuples become lists (as a spec file writes them)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
