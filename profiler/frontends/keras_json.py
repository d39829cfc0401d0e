"""Read the text of a Keras ``model.to_json()`` (Keras 2 or 3) as a modelsize spec dict.

Plain ``json`` data in, plain data out: neither TensorFlow nor Keras is needed. The result is what
``profiler.frontends.spec.from_dict`` reads:

* a Sequential model → ``input_shape`` + ``layers`` (``{Type: {name: ..., argument: value}}``);
* a Functional model → ``inputs`` (``{name, shape, dtype?}``), ``layers`` in execution order, each
  one call with its ``inputs``, and ``outputs``; a later call of a shared layer is
  ``{Call: {layer, name, inputs}}`` (named ``layer_call1``, ``layer_call2``...), a nested Sequential or
  Functional model is ``{Model: {name, spec, inputs}}``; a reference ``node:k`` picks tensor k of
  a node with several outputs;
* a tensor and a Python number (``x + 3``: a Keras 3 ops layer, module ``keras.src.ops.*``, or a
  Keras 2 ``TFOpLambda`` with the number as ``y``) → ``{ConstantOp: {op, constant}}``;
* a recurrent layer with ``return_state`` in a Functional model: a reference to its state h is
  its output itself (without return_sequences); a reference to another state (an LSTM's c, or h
  beside a sequence output) makes the layer's ``return_state: true`` and reads ``layer:k``;
  ``initial_state`` tensors of a call are inputs after the sequence;
* ``frozen``: the names of layers (or nested models) whose config says ``trainable: false``, so
  that Keras counts their parameters as non-trainable. It is written only when non-empty, and
  only for layers whose rule has no ``trainable`` argument (if it has, the flag goes in the
  layer's arguments). A nested model's spec carries its own ``frozen`` for its layers.

The two layouts:

* Keras 3: the input is an ``InputLayer`` with ``batch_shape``; a Functional layer's
  ``inbound_nodes`` are calls ``{"args": [...], "kwargs": {...}}`` whose tensors are
  ``{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node, tensor]}}``.
* Keras 2: ``batch_input_shape`` on the first layer or on an ``InputLayer``; ``inbound_nodes`` are
  lists of ``[layer, node, tensor, kwargs]``; a Sequential's config is ``{name, layers}`` or, up
  to Keras 2.1, the list of layers itself.

Node numbers: a reference names a call of a layer by its index among the calls the file keeps.
A nested Functional model also owns a call the file leaves out (its inputs to its outputs), which
the file counts first in these places: Keras 2, every reference to a nested model (a Sequential
only when it has an input shape); Keras 3, ``output_layers`` references to a nested Functional.

Every key of a layer's config is, in this order: an argument of the layer's rule (our argument
names are Keras's) and passed on; structural (``name``, ``trainable``, ``data_format`` — the
model's, one per model —, the input's ``batch_shape``/``batch_input_shape``); in
``IGNORED_KEYS`` (no effect on parameter counts or shapes: initializers, regularizers, dtype,
seeds...); in ``DEFAULT_ONLY`` (would change counts, shapes or outputs at another value:
accepted at the harmless value only); or an error. Nothing that could change a count is dropped
silently.
"""
from __future__ import annotations

import heapq
import json
from typing import Any, Mapping

from profiler.errors import ModelsizeError, SpecError, UnsupportedLayerError, layer_label
from profiler.rules.catalog import all_rules

MODEL_CLASSES = ("Sequential", "Functional", "Model")  # "Model": Keras ≤ 2.3's Functional
DATA_FORMATS = ("channels_last", "channels_first")

_WEIGHTS = ("kernel", "bias", "recurrent", "embeddings", "depthwise", "pointwise", "gamma", "beta", "alpha")

# Keys that change neither parameter counts nor shapes (nor the model's outputs).
IGNORED_KEYS = frozenset(
    {f"{w}_{kind}" for w in _WEIGHTS for kind in ("initializer", "regularizer", "constraint")} | {
        "moving_mean_initializer", "moving_variance_initializer", "activity_regularizer",
        "dtype",              # the layer's compute/variable dtype: the CLI's --dtype decides (quantized refused)
        "seed",               # random streams (Dropout, initializers)
        "noise_shape",        # Dropout: the mask's shape; the mask memory is predicted full-size
        "mask_zero",          # Embedding: a mask for the next layers; shapes unchanged
        "input_length",       # Keras 2 Embedding: repeats the input shape
        "go_backwards", "unroll", "stateful", "zero_output_for_mask", "implementation",
        "unit_forget_bias",   # LSTM: an initializer
        "dropout", "recurrent_dropout",  # recurrent layers (training masks); a rule argument wins first
        "use_cudnn", "fused", "synchronized", "virtual_batch_size", "adjustment",
        "renorm_clipping", "renorm_momentum",  # used only with renorm, which must be off
        "query_shape", "key_shape", "value_shape",  # Keras 2 MultiHeadAttention: build shapes
        "sliding_window",     # MultiHeadAttention: a mask over the scores
        "lora_alpha",         # used only with lora_rank, which must be off
        "num_constants",      # Keras 2 wrappers: constants passed at call time (none in a file)
    })

# Keys accepted only at the values listed: any other value changes counts, shapes or outputs.
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "return_state": (False,),        # recurrent layers outside a functional model (a functional
    #                                  model's references to the states are followed)
    "time_major": (False,),          # Keras 2 recurrent layers: (steps, batch, features) input
    "renorm": (False,),              # BatchNormalization: three more non-trainable weights
    "rms_scaling": (False,),         # LayerNormalization: gamma only, no beta
    "use_gate": (False,),            # MultiHeadAttention: a gating projection
    "attention_axes": (None, 1, [1]),  # MultiHeadAttention: [1] is what Keras writes after build
    "lora_rank": (None,),            # Dense/Conv/Embedding: LoRA adds trainable matrices
    "quantization_config": (None,),  # quantized weights
    "groups": (1,),                  # Keras 2 DepthwiseConv2D carries Conv2D's groups
    "sparse": (False,), "ragged": (False,), "optional": (False,),  # InputLayer
    "invert": (False,),              # Normalization: x · std + mean instead
}

# Keras 3 ops layers (``keras.src.ops.numpy``) that a functional model writes for ``x + 3`` and the
# like: with a Python number for an operand, a ConstantOp (with two tensors, the merge of that name).
OPS_WITH_A_NUMBER = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Divide": "divide",
                     "TrueDivide": "divide"}

# Keras 2 (tf.keras) writes x + 3 as a TFOpLambda of a TensorFlow function, the number as y
TF_OPS_WITH_A_NUMBER = {"__operators__.add": "add", "math.add": "add", "math.multiply": "multiply",
                        "math.subtract": "subtract", "math.truediv": "divide", "math.divide": "divide"}

# Recurrent layers: with return_state, their outputs are [output, h] or [output, h, c]
RECURRENT = ("SimpleRNN", "LSTM", "GRU")

# Keras 2 names of an argument that Keras 3 (and our rule) renamed.
RENAMED = {("LeakyReLU", "alpha"): "negative_slope"}

# Keras 2 called SiLU "swish"; the same function.
ACTIVATION_ALIASES = {"swish": "silu"}

_INPUT_KEYS = ("batch_shape", "batch_input_shape")
_CALL_KWARGS_IGNORED = ("training", "use_causal_mask", "mask")  # mask: only as null (a tensor is refused)
_ATTENTION_INPUTS = ("query", "value", "key")


def is_keras_json(data: Any) -> bool:
    """True when ``data`` has the top level of ``model.to_json()``: ``class_name`` and ``config``."""
    return isinstance(data, Mapping) and isinstance(data.get("class_name"), str) and "config" in data


def to_spec_dict(data: Any, *, source: str) -> dict[str, Any]:
    """Convert parsed Keras model JSON into a spec dict; errors name ``source`` and the layer."""
    try:
        if not is_keras_json(data):
            raise SpecError("not a Keras model JSON", expected='an object with "class_name" and "config" '
                            "(the text of model.to_json())", received=_short(data))
        if data["class_name"] not in MODEL_CLASSES:
            raise UnsupportedLayerError(f"the top-level class {data['class_name']!r} is not a Keras model "
                                        "this reader knows", expected="one of " + ", ".join(MODEL_CLASSES))
        return _Reader(_keras_major(data)).model(data, path="", build_shape=None)
    except ModelsizeError as error:
        raise error.located(source=source)


def supported_classes() -> list[str]:
    """Keras class names the reader converts: every registered rule, InputLayer and the models."""
    return sorted({*all_rules(), "InputLayer", *MODEL_CLASSES})


def _keras_major(data: Mapping[str, Any]) -> int:
    """2 or 3. Keras 2 writes ``keras_version``; Keras 3 writes none, but its own layout."""
    version = data.get("keras_version")
    if isinstance(version, str) and version[:1].isdigit():
        return int(version.split(".")[0])
    if "module" in data:
        return 3
    text = json.dumps(data)
    if '"__keras_tensor__"' in text or '"batch_shape"' in text:
        return 3
    return 2 if '"batch_input_shape"' in text else 3


class _Reader:
    def __init__(self, major: int):
        self.major = major
        self.rules = all_rules()

    # ---- models ---------------------------------------------------------------------------

    def model(self, entry: Mapping[str, Any], *, path: str, build_shape: Any) -> dict[str, Any]:
        if entry["class_name"] == "Sequential":
            return self.sequential(entry["config"], path=path, build_shape=build_shape)
        return self.functional(entry["config"], path=path)

    def sequential(self, config: Any, *, path: str, build_shape: Any) -> dict[str, Any]:
        raw = config.get("layers") if isinstance(config, Mapping) else config  # Keras ≤ 2.1: a list
        if not isinstance(raw, list):
            raise SpecError("a Sequential model's config needs a list of layers", layer=path.rstrip(" >") or None,
                            field="layers", received=_short(raw))
        formats = _Formats()
        shape, dtype, layers, frozen = None, None, [], []
        for index, entry in enumerate(raw):
            cls, cfg, name = _entry(entry, index, path)
            label = path + layer_label(index, cls, name)
            if cls == "InputLayer":
                if index != 0:
                    raise SpecError("an InputLayer can only come first in a Sequential model", layer=label)
                shape, dtype = _input_layer(cfg, label)
                continue
            if shape is None and not layers and isinstance(cfg, Mapping) and "batch_input_shape" in cfg:
                # Keras 2: the input shape on the first layer
                shape = _batch_shape(cfg["batch_input_shape"], label, "batch_input_shape")
            if cls in MODEL_CLASSES:
                spec = self.model(entry, path=label + " > ", build_shape=_build_shape(entry))
                layers.append({"Model": {"name": name, "spec": spec}})
                is_frozen = cfg.get("trainable") is False if isinstance(cfg, Mapping) else False
            else:
                args, is_frozen = self.layer(cls, cfg, label, formats)
                layers.append({cls: {"name": name, **args}})
            if is_frozen:
                frozen.append(name)
        if shape is None:
            given = config.get("build_input_shape") if isinstance(config, Mapping) else None
            given = given if given is not None else build_shape
            if given is None:
                raise SpecError("the model has no input shape", layer=path.rstrip(" >") or None,
                                expected="an InputLayer, batch_input_shape on the first layer, or build_input_shape")
            shape = _batch_shape(given, path.rstrip(" >") or "the model", "build_input_shape")
        spec: dict[str, Any] = {**_model_name(config), "input_shape": shape,
                                "data_format": formats.resolve(), "layers": layers}
        if dtype == "int64":
            spec["input_dtype"] = "int64"
        if isinstance(config, Mapping) and config.get("trainable") is False:
            frozen = [next(iter(layer.values()))["name"] for layer in layers]
        if frozen:
            spec["frozen"] = frozen
        return spec

    def functional(self, config: Any, *, path: str) -> dict[str, Any]:
        where = path.rstrip(" >") or None
        if not isinstance(config, Mapping) or not isinstance(config.get("layers"), list):
            raise SpecError("a Functional model's config needs a list of layers", layer=where,
                            field="layers", received=_short(config))
        entries: dict[str, tuple[int, str, Any, Mapping[str, Any]]] = {}  # name → (index, class, config, entry)
        for index, entry in enumerate(config["layers"]):
            cls, cfg, name = _entry(entry, index, path)
            if name in entries:
                raise SpecError("two layers have the same name", layer=path + layer_label(index, cls, name))
            entries[name] = (index, cls, cfg, entry)

        def label(name: str) -> str:
            index, cls, _, _ = entries[name]
            return path + layer_label(index, cls, name)

        # every call (node) of every layer, with the calls it reads
        calls: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
        for name, (index, cls, cfg, entry) in entries.items():
            if cls == "InputLayer":
                continue
            nodes = entry.get("inbound_nodes", [])
            if not isinstance(nodes, list):
                raise SpecError("inbound_nodes must be a list", layer=label(name), received=_short(nodes))
            numbers = _ops_with_a_number(entry, cls)
            for k, node in enumerate(nodes):
                refs = self.call_inputs(cls, node, entries, label(name), numbers=numbers)
                calls[(name, k)] = [_state_as_output(self.resolve(ref, entries, label(name), outputs=False),
                                                     entries) for ref in refs]

        inputs = [self.resolve(ref, entries, where or "the model", outputs=False)
                  for ref in _triples(config.get("input_layers"), entries)]
        outputs = [_state_as_output(self.resolve(ref, entries, where or "the model", outputs=True), entries)
                   for ref in _triples(config.get("output_layers"), entries)]
        # recurrent layers whose other states are read: the rule returns them (return_state)
        returning = {n for n, _, t in [*outputs, *(r for refs in calls.values() for r in refs)]
                     if t and entries[n][1] in RECURRENT}
        for ref in inputs:
            if entries[ref[0]][1] != "InputLayer":
                raise SpecError("input_layers must name InputLayers", layer=label(ref[0]))
        if not outputs:
            raise SpecError("the model has no outputs", layer=where, field="output_layers")

        order = _execution_order(calls, {n: e[0] for n, e in entries.items()}, label)

        # name every call: the first one the layer's own name, later ones "name_call1", "name_call2", ...
        node_names: dict[tuple[str, int], str] = {}
        used = set(entries)
        first_call: dict[str, str] = {}
        seen: dict[str, int] = {}
        for name, k in order:
            seen[name] = seen.get(name, 0) + 1
            if name not in first_call:
                node_names[(name, k)] = first_call[name] = name
                continue
            candidate = f"{name}_call{seen[name] - 1}"
            while candidate in used:
                candidate += "_"
            used.add(candidate)
            node_names[(name, k)] = candidate

        def ref_text(ref: tuple[str, int, int]) -> str:
            name, k, t = ref
            text = name if entries[name][1] == "InputLayer" else node_names[(name, k)]
            return f"{text}:{t}" if t else text

        formats = _Formats()
        layers: list[dict[str, Any]] = []
        frozen: list[str] = []
        for name, k in order:
            index, cls, cfg, entry = entries[name]
            node_inputs = [ref_text(ref) for ref in calls[(name, k)]]
            node_name = node_names[(name, k)]
            if node_name != first_call[name]:
                layers.append({"Call": {"layer": first_call[name], "name": node_name, "inputs": node_inputs}})
                continue
            if cls in MODEL_CLASSES:
                spec = self.model(entry, path=label(name) + " > ", build_shape=_build_shape(entry))
                layers.append({"Model": {"name": name, "spec": spec, "inputs": node_inputs}})
                is_frozen = cfg.get("trainable") is False if isinstance(cfg, Mapping) else False
            elif _ops_with_a_number(entry, cls):
                operation = _number_operand(cls, cfg, entry["inbound_nodes"], label(name))
                layers.append({"ConstantOp": {"name": name, **operation, "inputs": node_inputs}})
                is_frozen = False
            else:
                args, is_frozen = self.layer(cls, cfg, label(name), formats, states=cls in RECURRENT)
                if name in returning:
                    args["return_state"] = True
                layers.append({cls: {"name": name, **args, "inputs": node_inputs}})
            if is_frozen:
                frozen.append(name)

        spec_inputs = []
        for name, _, _ in inputs:
            # without a dtype, from_dict makes an input read by an Embedding int64 (Keras's Input
            # says float32 unless told otherwise, even for token ids)
            shape, dtype = _input_layer(entries[name][2], label(name))
            spec_inputs.append({"name": name, "shape": shape, **({"dtype": dtype} if dtype == "int64" else {})})
        spec: dict[str, Any] = {**_model_name(config), "inputs": spec_inputs,
                                "data_format": formats.resolve(), "layers": layers,
                                "outputs": [ref_text(ref) for ref in outputs]}
        if config.get("trainable") is False:
            frozen = [name for name, k in order if node_names[(name, k)] == name]
        if frozen:
            spec["frozen"] = frozen
        return spec

    # ---- calls ----------------------------------------------------------------------------

    def call_inputs(self, cls: str, node: Any, entries: Mapping[str, Any], where: str, *,
                    numbers: bool = False) -> list[tuple[str, int, int]]:
        """The tensors one call reads, as raw [layer, node, tensor] references, in order.
        ``numbers``: an ops layer whose Python numbers become a ConstantOp (they are let pass)."""
        if isinstance(node, Mapping) and "args" in node:   # Keras 3
            positional = _keras3_tensors(node["args"], where, None if numbers else "a constant positional argument")
            kwargs = node.get("kwargs") or {}
            named = {key: _keras3_tensors(value, where, None) for key, value in kwargs.items()}
        elif isinstance(node, list) and node:              # Keras 2
            items = [node] if isinstance(node[0], str) else node
            positional, kwargs = [], {}
            for item in items:
                if (not isinstance(item, list) or len(item) < 3 or not isinstance(item[0], str)
                        or item[0] == "_CONSTANT_VALUE"):
                    raise SpecError("a call argument that is not a layer's output is not supported", layer=where,
                                    field="inbound_nodes", received=_short(item))
                positional.append(tuple(item[:3]))
                if len(item) > 3 and isinstance(item[3], Mapping):
                    kwargs = item[3]
            named = {key: _triples(value, entries) for key, value in kwargs.items()}
        else:
            raise SpecError("a call without inputs is not supported", layer=where, field="inbound_nodes",
                            received=_short(node))
        if cls in RECURRENT and named.get("initial_state"):   # the states follow the sequence
            positional = positional + named.pop("initial_state")
        for key, tensors in named.items():
            if tensors and not (cls == "MultiHeadAttention" and key in _ATTENTION_INPUTS):
                raise SpecError("a tensor passed by keyword is not supported", layer=where, field=key)
            if (not tensors and key not in _CALL_KWARGS_IGNORED and kwargs[key] not in (None, False)
                    and not (numbers and key == "y" and _is_number(kwargs[key]))):
                raise SpecError("a call argument modelsize does not model", layer=where, field=key,
                                received=_short(kwargs[key]))
        if cls == "MultiHeadAttention":
            # call(query, value, key=None): query = value (= key) is self-attention, one input
            given = dict(zip(_ATTENTION_INPUTS, positional))
            given.update({k: v[0] for k, v in named.items() if v})
            query, value, key = (given.get(n) for n in _ATTENTION_INPUTS)
            if query is None or value is None:
                raise SpecError("MultiHeadAttention needs a query and a value", layer=where, field="inbound_nodes")
            if key == value:
                key = None
            if value == query and key is None:
                return [query]
            return [query, value] + ([key] if key is not None else [])
        if not positional:
            raise SpecError("a call without inputs is not supported", layer=where, field="inbound_nodes")
        return positional

    def resolve(self, ref: tuple[str, int, int], entries: Mapping[str, Any], where: str, *,
                outputs: bool) -> tuple[str, int, int]:
        """A file's [layer, node, tensor] → (layer, index of its call in the file, tensor)."""
        name, node, tensor = ref
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in (node, tensor)):
            raise SpecError("a reference is [layer name, call index, tensor index] with indices >= 0", layer=where,
                            field="inbound_nodes", received=_short(list(ref)))
        if not isinstance(name, str) or name not in entries:
            raise SpecError(f"a reference to a layer that is not in the file: {name!r}", layer=where)
        _, cls, cfg, entry = entries[name]
        if cls == "InputLayer":
            return name, 0, 0
        k = node - self.skipped_calls(cls, cfg, outputs=outputs)
        count = len(entry.get("inbound_nodes") or [])
        if not 0 <= k < count:
            raise SpecError(f"a reference to call {node} of layer {name!r}, which has {count} in the file",
                            layer=where)
        return name, k, tensor

    def skipped_calls(self, cls: str, cfg: Any, *, outputs: bool) -> int:
        """How many calls of a nested model the file counts but leaves out (see the module's docstring)."""
        if cls not in MODEL_CLASSES:
            return 0
        if self.major >= 3:
            return 1 if outputs and cls != "Sequential" else 0
        if cls == "Sequential":
            return 1 if _sequential_has_input(cfg) else 0
        return 1

    # ---- one layer ------------------------------------------------------------------------

    def layer(self, cls: str, cfg: Any, where: str, formats: "_Formats", *,
              states: bool = False) -> tuple[dict[str, Any], bool]:
        """(arguments for the rule, whether Keras counts the layer's parameters as non-trainable).
        ``states``: a recurrent layer in a functional model, whose ``return_state`` the references
        to its outputs answer (``_state_as_output``)."""
        rule = self.rules.get(cls)
        if rule is None:
            raise UnsupportedLayerError(f"unknown Keras layer class {cls!r}", layer=where,
                                        expected="one of " + ", ".join(supported_classes()))
        if not isinstance(cfg, Mapping):
            raise SpecError("a layer's config must be a mapping", layer=where, received=_short(cfg))
        schema = {arg.name for arg in rule.args}
        args: dict[str, Any] = {}
        frozen = False
        for key, value in cfg.items():
            arg = RENAMED.get((cls, key), key)
            if key == "name" or key in _INPUT_KEYS or (key == "return_state" and states):
                continue
            if key == "trainable" and "trainable" not in schema:
                frozen = value is False
            elif key == "data_format" and "data_format" not in schema:
                formats.add(value, cls, where)
            elif key in DEFAULT_ONLY and (key == "return_state" or arg not in schema):
                # return_state outside a functional model (a Sequential's layer, a wrapped one):
                # the next layer would get a list
                _default_only(key, value, where)
            elif arg in schema:
                args[arg] = self.value(cls, arg, value, where, formats, cfg)
            elif key == "dtype":
                _check_dtype(value, where)
            elif key == "backward_layer" and cls == "Bidirectional":
                self.check_backward(cfg, value, where, formats)
            elif key in IGNORED_KEYS:
                continue
            else:
                raise SpecError(f"unknown key in the Keras config of {cls} (it is not dropped: it might change "
                                "counts or shapes)", layer=where, field=key,
                                expected="one of " + ", ".join(sorted(schema)) if schema else "no arguments",
                                received=_short(value))
        return args, frozen

    def value(self, cls: str, arg: str, value: Any, where: str, formats: "_Formats", cfg: Mapping) -> Any:
        if arg in ("activation", "recurrent_activation"):
            name = _activation(value)
            if self.major < 3 and name == "hard_sigmoid":
                raise SpecError("Keras 2's hard_sigmoid (clip(0.2·x + 0.5, 0, 1)) is not Keras 3's, which modelsize "
                                "builds (relu6(x + 3) / 6)", layer=where, field=arg, received=_short(value))
            return name
        if cls == "BatchNormalization" and arg == "axis" and isinstance(value, list) and len(value) == 1:
            return value[0]  # Keras 2 writes the built axis as a list: [3]
        if arg == "layer" and is_keras_json(value):  # a wrapper's layer
            return self.wrapped(cls, value, where, formats, cfg)
        return value

    def wrapped(self, cls: str, value: Mapping, where: str, formats: "_Formats", cfg: Mapping) -> dict[str, Any]:
        inner_cls, inner_cfg = value["class_name"], value["config"]
        inner_name = inner_cfg.get("name", "?") if isinstance(inner_cfg, Mapping) else "?"
        inner_where = f'{where} > layer ({inner_cls} "{inner_name}")'
        if inner_cls in MODEL_CLASSES:
            raise UnsupportedLayerError("a model inside a wrapper layer is not supported", layer=inner_where)
        args, frozen = self.layer(inner_cls, inner_cfg, inner_where, formats)
        if frozen and cfg.get("trainable") is not False:
            raise SpecError("a frozen layer inside a trainable wrapper is not supported", layer=inner_where,
                            field="trainable")
        return {inner_cls: args}

    def check_backward(self, cfg: Mapping, value: Any, where: str, formats: "_Formats") -> None:
        """Keras 3 writes Bidirectional's backward layer; modelsize mirrors the forward one."""
        if value is None:
            return
        forward = cfg.get("layer")
        if not (is_keras_json(value) and is_keras_json(forward)):
            raise SpecError("backward_layer must be a layer config", layer=where, field="backward_layer")
        same = (value["class_name"] == forward["class_name"]
                and self.wrapped("Bidirectional", value, where, formats, cfg)
                == self.wrapped("Bidirectional", forward, where, formats, cfg))
        if not same:
            raise SpecError("a backward layer unlike the forward layer is not supported", layer=where,
                            field="backward_layer", expected="the forward layer's class and arguments")


# ---- helpers ------------------------------------------------------------------------------

class _Formats:
    """The data_format the layers of one model write; they must agree (Flatten's is only order)."""

    def __init__(self):
        self.seen: list[tuple[str, str, str]] = []  # (value, class, where)

    def add(self, value: Any, cls: str, where: str) -> None:
        if value not in DATA_FORMATS:
            raise SpecError("unknown value", layer=where, field="data_format",
                            expected=" or ".join(DATA_FORMATS), received=_short(value))
        self.seen.append((value, cls, where))

    def resolve(self) -> str:
        votes = [s for s in self.seen if s[1] != "Flatten"] or self.seen
        if not votes:
            return "channels_last"
        first = votes[0][0]
        for value, _, where in votes:
            if value != first:
                raise SpecError("the layers disagree on data_format; modelsize has one per model", layer=where,
                                field="data_format", expected=repr(first), received=repr(value))
        return first


def _default_only(key: str, value: Any, where: str) -> None:
    if _plain(value) not in DEFAULT_ONLY[key]:
        raise SpecError("modelsize supports this Keras setting only at its default", layer=where,
                        field=key, expected=" or ".join(json.dumps(v) for v in DEFAULT_ONLY[key]),
                        received=_short(value))


def _entry(entry: Any, index: int, path: str) -> tuple[str, Any, str]:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("class_name"), str) or "config" not in entry:
        raise SpecError('a layer must be an object with "class_name" and "config"',
                        layer=f"{path}layer {index}", received=_short(entry))
    cls, cfg = entry["class_name"], entry["config"]
    name = entry.get("name") or (cfg.get("name") if isinstance(cfg, Mapping) else None)
    if not isinstance(name, str) or not name:
        raise SpecError("the layer has no name", layer=f"{path}layer {index} ({cls})")
    # Keras 3 writes registered_name null for its layers and the class name for its models; a
    # class registered by a package ("package>Name") is custom code, whatever its name
    registered = entry.get("registered_name")
    if (isinstance(registered, str) and registered != cls
            and registered.split(">")[0] not in ("keras", "keras_hub", "keras_nlp")):
        raise UnsupportedLayerError(f"custom Keras class {registered!r}", layer=path + layer_label(index, cls, name),
                                    expected="one of " + ", ".join(supported_classes()))
    return cls, cfg, name


def _model_name(config: Any) -> dict[str, str]:
    """``{"name": ...}`` when the config names the model (from_dict otherwise names it after the file)."""
    name = config.get("name") if isinstance(config, Mapping) else None
    return {"name": name} if isinstance(name, str) and name else {}


def _input_layer(cfg: Any, where: str) -> tuple[list[int], str | None]:
    """(shape without the batch, "int64" for integer inputs) of an InputLayer's config."""
    if not isinstance(cfg, Mapping):
        raise SpecError("an InputLayer's config must be a mapping", layer=where)
    for key, value in cfg.items():
        if key in ("name", "dtype", *_INPUT_KEYS):
            continue
        if key not in DEFAULT_ONLY or _plain(value) not in DEFAULT_ONLY[key]:
            raise SpecError("InputLayer setting that modelsize does not support", layer=where, field=key,
                            received=_short(value))
    key = next((k for k in _INPUT_KEYS if k in cfg), None)
    if key is None:
        raise SpecError("the InputLayer has no shape", layer=where, expected="batch_shape or batch_input_shape")
    dtype = cfg.get("dtype")
    if isinstance(dtype, Mapping):  # a dtype policy
        dtype = (dtype.get("config") or {}).get("name")
    integer = isinstance(dtype, str) and (dtype.startswith("int") or dtype.startswith("uint"))
    return _batch_shape(cfg[key], where, key), "int64" if integer else None


def _batch_shape(value: Any, where: str, field: str) -> list[int]:
    """Keras's shape with the batch axis first → the shape without it, every size known."""
    if (not isinstance(value, list) or len(value) < 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value[1:])):
        raise SpecError("every axis but the batch needs a fixed positive size (modelsize does not predict "
                        "free axes)", layer=where, field=field, received=_short(value))
    return list(value[1:])


def _build_shape(entry: Mapping[str, Any]) -> Any:
    build = entry.get("build_config")
    return build.get("input_shape") if isinstance(build, Mapping) else None


def _sequential_has_input(cfg: Any) -> bool:
    layers = cfg.get("layers") if isinstance(cfg, Mapping) else cfg
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], Mapping):
        return False
    first = layers[0]
    inner = first.get("config") if isinstance(first.get("config"), Mapping) else {}
    return first.get("class_name") == "InputLayer" or "batch_input_shape" in inner


def _keras3_tensors(value: Any, where: str, constant: str | None) -> list[tuple[str, int, int]]:
    """Every ``__keras_tensor__`` in a Keras 3 call argument, in order. ``constant``: refuse other
    leaves (positional arguments) with this message; None lets them pass (keyword values)."""
    if isinstance(value, Mapping) and value.get("class_name") == "__keras_tensor__":
        history = (value.get("config") or {}).get("keras_history")
        if not (isinstance(history, list) and len(history) == 3 and isinstance(history[0], str)):
            raise SpecError("a tensor without keras_history", layer=where, field="inbound_nodes")
        return [tuple(history)]  # type: ignore[list-item]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _keras3_tensors(v, where, constant)]
    if isinstance(value, list):
        return [t for v in value for t in _keras3_tensors(v, where, constant)]
    if constant is not None and value is not None:
        raise SpecError(f"{constant} is not supported", layer=where, field="inbound_nodes", received=_short(value))
    return []


def _state_as_output(ref: tuple[str, int, int], entries: Mapping[str, Any]) -> tuple[str, int, int]:
    """A reference to the state h a recurrent layer returns (``return_state=True``: [output, h]
    or [output, h, c]) without return_sequences → its output, the same tensor (in Keras and in
    the torch module), so that a layer whose other states nobody reads stays a plain layer."""
    name, k, tensor = ref
    _, cls, cfg, _ = entries[name]
    if (tensor == 1 and cls in RECURRENT and isinstance(cfg, Mapping) and cfg.get("return_state")
            and not cfg.get("return_sequences")):
        return name, k, 0
    return ref


def _ops_with_a_number(entry: Mapping[str, Any], cls: str) -> bool:
    """True for an operation of a tensor and a Python number (``x + 3`` in a functional model),
    which becomes a ConstantOp: a Keras 3 ops layer (module ``keras.src.ops.*``), the number among
    its arguments, or a Keras 2 TFOpLambda (``tf.math.multiply``...), the number as ``y``."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list) or not nodes:
        return False
    if cls == "TFOpLambda":
        return _tf_operation(entry) is not None and _keras2_number(nodes[0]) is not None
    module = entry.get("module")
    if not (isinstance(module, str) and module.startswith("keras.src.ops.") and cls in OPS_WITH_A_NUMBER):
        return False
    return (isinstance(nodes[0], Mapping) and isinstance(nodes[0].get("args"), list)
            and any(_is_number(v) for v in nodes[0]["args"]))


def _tf_operation(entry: Mapping[str, Any]) -> str | None:
    cfg = entry.get("config")
    function = cfg.get("function") if isinstance(cfg, Mapping) else None
    return TF_OPS_WITH_A_NUMBER.get(function) if isinstance(function, str) else None


def _keras2_number(node: Any) -> Any:
    """The number ``y`` of a Keras 2 TFOpLambda call ``[[layer, node, tensor, {"y": 3.0, ...}]]``."""
    items = [node] if isinstance(node, list) and node and isinstance(node[0], str) else node
    if not (isinstance(items, list) and len(items) == 1 and isinstance(items[0], list) and len(items[0]) == 4
            and isinstance(items[0][3], Mapping)):
        return None
    y = items[0][3].get("y")
    return y if _is_number(y) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _different_numbers(where: str):
    raise SpecError("the calls of an ops layer use different numbers", layer=where, field="inbound_nodes")


def _number_operand(cls: str, cfg: Any, nodes: list, where: str) -> dict[str, Any]:
    """ConstantOp's arguments for an ops layer's calls: one tensor and one number, in either order
    (the same number in every call)."""
    found = set()
    if cls == "TFOpLambda":   # Keras 2: the tensor first, the number as y
        numbers = {_keras2_number(n) for n in nodes}
        if len(numbers) != 1 or None in numbers:
            _different_numbers(where)
        return {"op": _tf_operation({"config": cfg}), "constant": float(numbers.pop())}
    for node in nodes:
        args = node.get("args") if isinstance(node, Mapping) else None
        kwargs = node.get("kwargs") if isinstance(node, Mapping) else None
        if not isinstance(args, list) or len(args) != 2 or kwargs or sum(_is_number(v) for v in args) != 1:
            raise SpecError(f"an ops layer {cls} with a number is supported with one tensor and one number",
                            layer=where, field="inbound_nodes", received=_short(args))
        first = _is_number(args[0])
        number = args[0] if first else args[1]
        op = OPS_WITH_A_NUMBER[cls]
        found.add((op, float(number), first and op == "subtract"))
        if first and op == "divide":
            raise SpecError("a number divided by a tensor is not supported", layer=where, field="inbound_nodes",
                            received=_short(args))
    if len(found) != 1:
        _different_numbers(where)
    op, number, constant_first = found.pop()
    return {"op": op, "constant": number, **({"constant_first": True} if constant_first else {})}


def _triples(value: Any, entries: Mapping[str, Any] | None) -> list[tuple[str, int, int]]:
    """Every [layer, node, tensor] in a nested structure of lists and dicts (``input_layers``,
    ``output_layers``, Keras 2 keyword arguments); ``entries`` limits them to known layer names."""
    if (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3])
            and (entries is None or value[0] in entries)):
        return [(value[0], value[1], value[2])]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _triples(v, entries)]
    if isinstance(value, list):
        return [t for v in value for t in _triples(v, entries)]
    return []


def _execution_order(calls: Mapping[tuple[str, int], list[tuple[str, int, int]]], position: Mapping[str, int],
                     label) -> list[tuple[str, int]]:
    """Calls in an order where each comes after those it reads; ties go by the file's order."""
    waiting = {node: {(n, k) for n, k, _ in refs if (n, k) in calls} for node, refs in calls.items()}
    readers: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for node, deps in waiting.items():
        for dep in deps:
            readers.setdefault(dep, []).append(node)
    ready = [(position[n], k, n) for (n, k), deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k, name = heapq.heappop(ready)
        order.append((name, k))
        for reader in readers.get((name, k), []):
            waiting[reader].discard((name, k))
            if not waiting[reader]:
                heapq.heappush(ready, (position[reader[0]], reader[1], reader[0]))
    if len(order) != len(calls):
        stuck = min((n for n, _ in set(calls) - set(order)), key=position.__getitem__)
        raise SpecError("the layers' calls form a cycle", layer=label(stuck))
    return order


def _activation(value: Any) -> Any:
    """A Keras activation as written in a config → its name (a custom one stays as is: the rule refuses it)."""
    if isinstance(value, Mapping) and isinstance(value.get("config"), str):  # Keras 3 {"class_name": "function", ...}
        value = value["config"]
    return ACTIVATION_ALIASES.get(value, value) if isinstance(value, str) else value


def _check_dtype(value: Any, where: str) -> None:
    name = value
    if isinstance(value, Mapping):
        if "Quantized" in str(value.get("class_name", "")):
            name = "quantized"
        else:
            name = (value.get("config") or {}).get("name")
    if isinstance(name, str) and (name == "quantized" or "_from_" in name):
        raise SpecError("quantized layers are not supported", layer=where, field="dtype", received=_short(value))


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
