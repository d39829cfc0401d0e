"""A framework-neutral model description: input shape (batch excluded), data format, layers.

Specs are data. They come from Python (``Model(...)``, ``layer(...)``) or from a YAML/JSON file
read with ``yaml.safe_load``/``json.load``: nothing in a spec is ever evaluated. Every argument is
checked against its rule's schema when the spec is made, so a bad file fails before any work, with
one line that names the file, the layer and the field.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .args import LayerArgs, parse_args
from .errors import ModelsizeError, SpecError, layer_label
from .registry import Context, rule_for

DATA_FORMATS = ("channels_last", "channels_first")
INPUT_DTYPES = ("float", "int64")


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its Keras type name, a unique name, and its parsed arguments."""
    type: str
    name: str
    args: LayerArgs

    def label(self, index: int) -> str:
        return layer_label(index, self.type, self.name)


@dataclass(frozen=True)
class ModelSpec:
    """A sequential model. ``input_shape`` excludes the batch axis, which stays free (None)."""
    name: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    data_format: str = "channels_last"
    input_dtype: str = "float"   # "int64" for token ids (a model that starts with Embedding)
    source: str = "<python>"     # where the spec came from, for error messages

    @property
    def context(self) -> Context:
        return Context(data_format=self.data_format, input_dtype=self.input_dtype)

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain data, the same form ``from_dict`` reads (saved in results)."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "data_format": self.data_format,
            "input_dtype": self.input_dtype,
            "layers": [{layer.type: {"name": layer.name, **_plain(dict(layer.args))}}
                       for layer in self.layers],
        }


def layer(type_name: str, /, **args: Any) -> dict[str, Any]:
    """A layer entry for ``Model``: ``layer("Dense", units=10)``; ``name=`` is optional."""
    return {type_name: args}


def Model(name: str, input_shape: Iterable[int], layers: Iterable[Mapping[str, Any]], *,
          data_format: str = "channels_last", input_dtype: str | None = None) -> ModelSpec:
    """Build a checked spec from Python, with the same rules as a file."""
    data = {"name": name, "input_shape": list(input_shape), "layers": list(layers),
            "data_format": data_format}
    if input_dtype is not None:
        data["input_dtype"] = input_dtype
    return from_dict(data)


def load(path: str | Path) -> ModelSpec:
    """Read a spec from a .yaml/.yml/.json file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", source=source) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read the file ({error.__class__.__name__})", source=source) from None
    return loads(text, source=source, as_json=path.suffix.lower() == ".json")


def loads(text: str, *, source: str = "<string>", as_json: bool = False) -> ModelSpec:
    """Parse spec text; JSON when ``as_json``, otherwise YAML (a superset of JSON)."""
    try:
        if as_json:
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}",
                        source=source) from None
    except Exception as error:  # yaml.YAMLError and its subclasses
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or error.__class__.__name__
        raise SpecError(f"malformed YAML{where}: {problem}", source=source) from None
    return from_dict(data, source=source)


def from_dict(data: Any, *, source: str = "<python>") -> ModelSpec:
    """Check and normalise a spec given as plain data."""
    try:
        return _from_dict(data, source)
    except ModelsizeError as error:
        raise error.located(source=source)


def _from_dict(data: Any, source: str) -> ModelSpec:
    if not isinstance(data, Mapping):
        raise SpecError("a spec must be a mapping with input_shape and layers",
                        received=type(data).__name__)
    known = {"name", "input_shape", "layers", "data_format", "input_dtype"}
    for key in data:
        if key not in known:
            raise SpecError("unknown top-level key", field=str(key), expected="one of " + ", ".join(sorted(known)))
    if "input_shape" not in data:
        raise SpecError("missing required key", field="input_shape")
    input_shape = data["input_shape"]
    if (not isinstance(input_shape, (list, tuple)) or not input_shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape)):
        raise SpecError("must be a non-empty list of positive integers (the batch axis excluded)",
                        field="input_shape", received=repr(input_shape))
    data_format = data.get("data_format", "channels_last")
    if data_format not in DATA_FORMATS:
        raise SpecError("unknown value", field="data_format", expected=" or ".join(DATA_FORMATS),
                        received=repr(data_format))
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SpecError("must be a non-empty list of layers", field="layers", received=repr(raw_layers))
    layers = _parse_layers(raw_layers)
    input_dtype = data.get("input_dtype", "int64" if layers[0].type == "Embedding" else "float")
    if input_dtype not in INPUT_DTYPES:
        raise SpecError("unknown value", field="input_dtype", expected=" or ".join(INPUT_DTYPES),
                        received=repr(input_dtype))
    name = data.get("name") or ("model" if source.startswith("<") else Path(source).stem)
    if not isinstance(name, str) or not name:
        raise SpecError("must be a non-empty string", field="name", received=repr(name))
    return ModelSpec(name=name, input_shape=tuple(input_shape), layers=layers,
                     data_format=data_format, input_dtype=input_dtype, source=source)


def _parse_layers(raw_layers: list[Any]) -> tuple[LayerSpec, ...]:
    layers: list[LayerSpec] = []
    used: set[str] = set()
    counters: dict[str, int] = {}
    for index, entry in enumerate(raw_layers):
        type_name, given = _split_entry(index, entry)
        given = dict(given)
        explicit = given.pop("name", None)
        label = f"layer {index} ({type_name})"
        try:
            if explicit is not None and (not isinstance(explicit, str) or not explicit):
                raise SpecError("must be a non-empty string", field="name", received=repr(explicit))
            name = explicit or _auto_name(type_name, counters, used)
            if name in used:
                raise SpecError("layer names must be unique", field="name", received=repr(name))
            label = layer_label(index, type_name, name)
            rule = rule_for(type_name)
            args = parse_args(rule.args, given)
        except ModelsizeError as error:
            raise error.located(layer=label)
        used.add(name)
        layers.append(LayerSpec(type=type_name, name=name, args=args))
    return tuple(layers)


def _split_entry(index: int, entry: Any) -> tuple[str, Mapping[str, Any]]:
    """Accept ``{Dense: {units: 10}}`` (the documented form) or ``{type: Dense, units: 10}``."""
    if isinstance(entry, Mapping) and "type" in entry:
        rest = {k: v for k, v in entry.items() if k != "type"}
        return str(entry["type"]), rest
    if isinstance(entry, Mapping) and len(entry) == 1:
        (type_name, given), = entry.items()
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise SpecError("a layer's arguments must be a mapping", layer=f"layer {index} ({type_name})",
                            received=repr(given))
        return str(type_name), given
    raise SpecError("a layer must be written as {Type: {argument: value, ...}}",
                    layer=f"layer {index}", received=repr(entry))


def _auto_name(type_name: str, counters: dict[str, int], used: set[str]) -> str:
    """Keras 3's names: dense, dense_1, dense_2, ... (conv2d for Conv2D)."""
    base = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type_name)
    base = re.sub(r"([a-z])([A-Z])", r"\1_\2", base).lower()
    while True:
        count = counters.get(base, 0)
        counters[base] = count + 1
        name = base if count == 0 else f"{base}_{count}"
        if name not in used:
            return name


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
