"""A framework-neutral model description: input shape (batch excluded), data format, layers.

Specs are data. They come from Python (``Model(...)``, ``layer(...)``) or from a YAML/JSON file
read with ``yaml.safe_load``/``json.load``: nothing in a spec is ever evaluated. Every argument is
checked against its rule's schema when the spec is made, so a bad file fails before any work, with
one line that names the file, the layer and the field.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from profiler.rules.args import LayerArgs, _plain, parse_args
from profiler.errors import ModelsizeError, SpecError, layer_label
from profiler.rules.catalog import rule_for
from profiler.rules.registry import Context

DATA_FORMATS = ("channels_last", "channels_first")
INPUT_DTYPES = ("float", "int64")


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its Keras type name, a unique name, and its parsed arguments.

    A nested model is a layer of type "Model" whose ``model`` is its own spec.
    """
    type: str
    name: str
    args: LayerArgs
    model: "ModelSpec | None" = None

    def label(self, index: int) -> str:
        return layer_label(index, self.type, self.name)


@dataclass(frozen=True)
class InputSpec:
    """A model input; ``shape`` excludes the batch axis, which stays free (None)."""
    name: str
    shape: tuple[int, ...]
    dtype: str = "float"   # "int64" for token ids


Ref = tuple[str, int]  # (input or node name, index of the tensor among that node's outputs)


@dataclass(frozen=True)
class Node:
    """One call of a layer on tensors produced earlier: Keras's node. A layer called twice shares
    its weights between two nodes."""
    index: int          # position in the spec's list, for messages
    name: str
    layer: LayerSpec
    inputs: tuple[Ref, ...]

    def label(self) -> str:
        return self.layer.label(self.index) if self.name == self.layer.name else \
            f'layer {self.index} ({self.layer.type} "{self.layer.name}", call "{self.name}")'


@dataclass(frozen=True)
class ModelSpec:
    """A model: its inputs, the calls of its layers in execution order, and its outputs."""
    name: str
    inputs: tuple[InputSpec, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Ref, ...]
    data_format: str = "channels_last"
    source: str = "<python>"     # where the spec came from, for error messages
    frozen: frozenset[str] = frozenset()  # layers whose weights do not train (Keras trainable=False)

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """Each layer once, in the order of its first call."""
        seen: dict[str, LayerSpec] = {}
        for node in self.nodes:
            seen.setdefault(node.layer.name, node.layer)
        return tuple(seen.values())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs[0].shape

    @property
    def input_dtype(self) -> str:
        return self.inputs[0].dtype

    @property
    def is_sequential(self) -> bool:
        """One input, one output, every node fed by the one before: Keras's Sequential."""
        previous = self.inputs[0].name
        for node in self.nodes:
            if node.inputs != ((previous, 0),) or node.layer.type in ("Call", "Model"):
                return False
            previous = node.name
        return len(self.inputs) == 1 and self.outputs == ((previous, 0),) and \
            len({n.layer.name for n in self.nodes}) == len(self.nodes)

    @property
    def context(self) -> Context:
        return Context(data_format=self.data_format, input_dtype=self.input_dtype)

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain data, the same form ``from_dict`` reads (saved in results)."""
        if self.is_sequential:
            return {"name": self.name, "input_shape": list(self.input_shape), "data_format": self.data_format,
                    "input_dtype": self.input_dtype,
                    "layers": [{n.layer.type: {"name": n.layer.name, **_plain(dict(n.layer.args))}}
                               for n in self.nodes],
                    **({"frozen": sorted(self.frozen)} if self.frozen else {})}
        entries, defined = [], set()
        for node in self.nodes:
            refs = [_ref_text(r) for r in node.inputs]
            if node.layer.name in defined:
                entries.append({"Call": {"layer": node.layer.name, "name": node.name, "inputs": refs}})
                continue
            defined.add(node.layer.name)
            if node.layer.model is not None:
                body = {"name": node.layer.name, "spec": node.layer.model.as_dict()}
            else:
                body = {"name": node.layer.name, **_plain(dict(node.layer.args))}
            entries.append({node.layer.type: {**body, "inputs": refs}})
        return {"name": self.name, "data_format": self.data_format,
                "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in self.inputs],
                "layers": entries, "outputs": [_ref_text(r) for r in self.outputs],
                **({"frozen": sorted(self.frozen)} if self.frozen else {})}


def layer(type_name: str, /, **args: Any) -> dict[str, Any]:
    """A layer entry for ``Model``: ``layer("Dense", units=10)``; ``name=`` and ``inputs=`` optional."""
    return {type_name: args}


def Model(name: str, input_shape: Iterable[int] | None = None, layers: Iterable[Mapping[str, Any]] = (), *,
          inputs: Iterable[Mapping[str, Any]] | None = None, outputs: Iterable[str] | None = None,
          data_format: str = "channels_last", input_dtype: str | None = None) -> ModelSpec:
    """Build a checked spec from Python, with the same rules as a file."""
    data: dict[str, Any] = {"name": name, "layers": list(layers), "data_format": data_format}
    if input_shape is not None:
        data["input_shape"] = list(input_shape)
    if inputs is not None:
        data["inputs"] = [dict(i) for i in inputs]
    if outputs is not None:
        data["outputs"] = list(outputs)
    if input_dtype is not None:
        data["input_dtype"] = input_dtype
    return from_dict(data)


#: limits on what a spec file may be: a spec someone sends must not take the machine down
MAX_SPEC_BYTES = 16 * 2 ** 20     # a 10,000-layer spec is under 1 MiB
MAX_NESTING = 64                  # lists and mappings inside each other


def load(path: str | Path) -> ModelSpec:
    """Read a spec from a .yaml/.yml/.json file."""
    path = Path(path)
    source = str(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"the file is larger than {MAX_SPEC_BYTES // 2 ** 20} MiB: not read", source=source)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", source=source) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read the file ({error.__class__.__name__})", source=source) from None
    return loads(text, source=source, as_json=path.suffix.lower() == ".json")


def _keras(data: Any, source: str) -> Any:
    """A Keras ``model.to_json()`` document becomes a spec dict; anything else passes through."""
    from profiler.frontends import keras_json
    return keras_json.to_spec_dict(data, source=source) if keras_json.is_keras_json(data) else data


def loads(text: str, *, source: str = "<string>", as_json: bool = False) -> ModelSpec:
    """Parse spec text; JSON when ``as_json``, otherwise YAML (a superset of JSON)."""
    try:
        if as_json:
            data = json.loads(text)
        else:
            data = _safe_yaml(text)
    except SpecError as error:
        raise error.located(source=source) from None
    except RecursionError:
        raise SpecError(f"nested more than {MAX_NESTING} levels deep", source=source) from None
    except json.JSONDecodeError as error:
        raise SpecError(f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}",
                        source=source) from None
    except Exception as error:  # yaml.YAMLError and its subclasses
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or error.__class__.__name__
        raise SpecError(f"malformed YAML{where}: {problem}", source=source) from None
    return from_dict(_keras(data, source), source=source)


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases and nested at most ``MAX_NESTING`` deep.

    An alias (``*name``) repeats a node without repeating its text: nine levels of ``[*a, *a, …]``
    in 500 bytes stand for 10⁹ items, which anything that walks or prints the value expands (a
    `summary` of such a spec grew to 24 GB before the kernel killed it). Specs never need one.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise SpecError(f"YAML aliases (*{event.anchor}) are not allowed in a spec, at line "
                                f"{event.start_mark.line + 1}: write the value out")
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise SpecError(f"nested more than {MAX_NESTING} levels deep, at line "
                                f"{self.peek_event().start_mark.line + 1}")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def from_dict(data: Any, *, source: str = "<python>") -> ModelSpec:
    """Check and normalise a spec given as plain data."""
    try:
        return _from_dict(data, source)
    except ModelsizeError as error:
        raise error.located(source=source)


TOP_LEVEL = ("name", "input_shape", "input_dtype", "inputs", "layers", "outputs", "data_format", "frozen")


def _from_dict(data: Any, source: str) -> ModelSpec:
    if not isinstance(data, Mapping):
        raise SpecError("a spec must be a mapping with input_shape (or inputs) and layers",
                        received=type(data).__name__)
    for key in data:
        if key not in TOP_LEVEL:
            raise SpecError("unknown top-level key", field=str(key), expected="one of " + ", ".join(TOP_LEVEL))
    data_format = data.get("data_format", "channels_last")
    if data_format not in DATA_FORMATS:
        raise SpecError("unknown value", field="data_format", expected=" or ".join(DATA_FORMATS),
                        received=repr(data_format))
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SpecError("must be a non-empty list of layers", field="layers", received=repr(raw_layers))
    inputs = _parse_inputs(data)
    nodes = _parse_nodes(raw_layers, inputs, source)
    outputs = _parse_outputs(data.get("outputs"), nodes)
    inputs = tuple(_infer_dtype(i, nodes, data) for i in inputs)
    name = data.get("name") or ("model" if source.startswith("<") else Path(source).stem)
    if not isinstance(name, str):
        raise SpecError("must be a string", field="name", received=repr(name))
    frozen = data.get("frozen", [])
    known_layers = {n.layer.name for n in nodes}
    if not isinstance(frozen, list) or not all(isinstance(f, str) and f in known_layers for f in frozen):
        raise SpecError("must be a list of layer names", field="frozen", received=repr(frozen),
                        expected="names among " + ", ".join(sorted(known_layers)))
    return ModelSpec(name=name, inputs=inputs, nodes=nodes, outputs=outputs, data_format=data_format,
                     source=source, frozen=frozenset(frozen))


def _shape(field: str, value: Any) -> tuple[int, ...]:
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)):
        raise SpecError("must be a non-empty list of positive integers (the batch axis excluded)",
                        field=field, received=repr(value))
    return tuple(value)


def _dtype(field: str, value: Any) -> str:
    if value not in INPUT_DTYPES:
        raise SpecError("unknown value", field=field, expected=" or ".join(INPUT_DTYPES), received=repr(value))
    return value


def _parse_inputs(data: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    if ("input_shape" in data) == ("inputs" in data):
        raise SpecError("give either input_shape (one input) or inputs (a list)", field="input_shape")
    if "input_shape" in data:
        dtype = _dtype("input_dtype", data["input_dtype"]) if "input_dtype" in data else ""
        return (InputSpec("input", _shape("input_shape", data["input_shape"]), dtype),)
    raw = data["inputs"]
    if not isinstance(raw, list) or not raw:
        raise SpecError("must be a non-empty list of {name, shape, dtype}", field="inputs", received=repr(raw))
    inputs = []
    for k, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or set(entry) - {"name", "shape", "dtype"} or "shape" not in entry:
            raise SpecError("each input is a mapping with shape and optional name and dtype",
                            field=f"inputs[{k}]", received=repr(entry))
        name = entry.get("name", f"input_{k}" if k else "input")
        if not isinstance(name, str) or not name:
            raise SpecError("must be a non-empty string", field=f"inputs[{k}].name", received=repr(name))
        dtype = _dtype(f"inputs[{k}].dtype", entry["dtype"]) if "dtype" in entry else ""
        inputs.append(InputSpec(name, _shape(f"inputs[{k}].shape", entry["shape"]), dtype))
    if len({i.name for i in inputs}) != len(inputs):
        raise SpecError("input names must be unique", field="inputs")
    return tuple(inputs)


def _infer_dtype(spec_input: InputSpec, nodes: tuple[Node, ...], data: Mapping[str, Any]) -> InputSpec:
    """An input without a dtype is int64 when an Embedding reads it, float otherwise."""
    if spec_input.dtype:
        return spec_input
    feeds_embedding = any(node.layer.type == "Embedding" and (spec_input.name, 0) in node.inputs
                          for node in nodes)
    return replace(spec_input, dtype="int64" if feeds_embedding else "float")


def _parse_nodes(raw_layers: list[Any], inputs: tuple[InputSpec, ...], source: str) -> tuple[Node, ...]:
    nodes: list[Node] = []
    layers: dict[str, LayerSpec] = {}
    calls: dict[str, int] = {}
    names: set[str] = {i.name for i in inputs}
    taken = set(names)   # names and layers' names, kept as they grow (a union per layer was quadratic)
    counters: dict[str, int] = {}
    for index, entry in enumerate(raw_layers):
        type_name, given = _split_entry(index, entry)
        given = dict(given)
        explicit = given.pop("name", None)
        raw_inputs = given.pop("inputs", None)
        label = f"layer {index} ({type_name})"
        try:
            if explicit is not None and (not isinstance(explicit, str) or not explicit):
                raise SpecError("must be a non-empty string", field="name", received=repr(explicit))
            if type_name == "Call":
                layer_spec, name = _called_layer(given, layers, calls, explicit)
                label = f'layer {index} ({layer_spec.type} "{layer_spec.name}", call "{name}")'
            else:
                name = explicit or _auto_name(type_name, counters, taken)
                label = layer_label(index, type_name, name)
                if name in layers:
                    raise SpecError("layer names must be unique", field="name", received=repr(name))
                layer_spec = _new_layer(type_name, name, given, source)
                layers[name] = layer_spec
                taken.add(name)
                calls[name] = 1
            if name in names:
                raise SpecError("names must be unique among inputs and calls", field="name", received=repr(name))
            refs = _parse_refs(raw_inputs, nodes, inputs, names)
        except ModelsizeError as error:
            raise error.located(layer=label)
        names.add(name)
        taken.add(name)
        nodes.append(Node(index=index, name=name, layer=layer_spec, inputs=refs))
    return tuple(nodes)


def _new_layer(type_name: str, name: str, given: dict[str, Any], source: str) -> LayerSpec:
    if type_name == "Model":
        if set(given) != {"spec"}:
            raise SpecError("a nested model takes spec (a whole model spec), name and inputs",
                            field=", ".join(sorted(set(given) - {"spec"})) or "spec")
        nested = _from_dict(given["spec"], source)
        return LayerSpec(type="Model", name=name, args=LayerArgs({}), model=replace(nested, name=name))
    rule = rule_for(type_name)
    return LayerSpec(type=type_name, name=name, args=parse_args(rule.args, given))


def _called_layer(given: dict[str, Any], layers: dict[str, LayerSpec], calls: dict[str, int],
                  explicit: str | None) -> tuple[LayerSpec, str]:
    """``Call: {layer: dense, inputs: [...]}``: the layer ``dense`` applied again, weights shared."""
    if set(given) != {"layer"}:
        raise SpecError("Call takes layer (the name of a layer defined above), name and inputs",
                        field="layer")
    target = given["layer"]
    if target not in layers:
        raise SpecError("no such layer defined above", field="layer", received=repr(target),
                        expected="one of " + ", ".join(layers) if layers else "a layer defined earlier")
    name = explicit or f"{target}_call{calls[target]}"
    calls[target] += 1
    return layers[target], name


def _parse_refs(raw: Any, nodes: list[Node], inputs: tuple[InputSpec, ...], defined: set[str]) -> tuple[Ref, ...]:
    """A node's inputs: names of inputs or earlier nodes ("name" or "name:k"); default the previous.
    ``defined``: those names as a set, kept by the caller (a list per node was quadratic)."""
    if raw is None:
        if nodes:
            return ((nodes[-1].name, 0),)
        if len(inputs) > 1:
            raise SpecError("the first layer of a model with several inputs must name its inputs",
                            field="inputs", expected="one of " + ", ".join(i.name for i in inputs))
        return ((inputs[0].name, 0),)
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(r, str) for r in items):
        raise SpecError("must be a name or a list of names", field="inputs", received=repr(raw))
    refs = []
    for text in items:
        name, _, index = text.partition(":")
        if name not in defined or (index and not index.isdigit()):
            known = [i.name for i in inputs] + [n.name for n in nodes]
            raise SpecError("refers to nothing defined above", field="inputs", received=repr(text),
                            expected="an input or an earlier layer: " + ", ".join(known))
        refs.append((name, int(index or 0)))
    return tuple(refs)


def _parse_outputs(raw: Any, nodes: tuple[Node, ...]) -> tuple[Ref, ...]:
    if raw is None:
        return ((nodes[-1].name, 0),)
    items = [raw] if isinstance(raw, str) else raw
    known = {n.name for n in nodes}
    if not isinstance(items, list) or not items:
        raise SpecError("must be a name or a list of names", field="outputs", received=repr(raw))
    refs = []
    for text in items:
        name, _, index = str(text).partition(":")
        if name not in known or (index and not index.isdigit()):
            raise SpecError("refers to no layer call", field="outputs", received=repr(text))
        refs.append((name, int(index or 0)))
    return tuple(refs)


def _ref_text(ref: Ref) -> str:
    return ref[0] if ref[1] == 0 else f"{ref[0]}:{ref[1]}"


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
