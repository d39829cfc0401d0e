"""The one place where layer types are known: a rule per type, registered once.

A rule answers, for one layer type and a known input shape (batch axis excluded): the output
shape, the parameter count with its arithmetic, the multiply-accumulates per sample, what
autograd keeps for backward, and how to build the equivalent ``torch.nn`` module. Adding a layer
type means writing one rule and registering it; the tests are parametrized over ``all_rules()``,
so a new rule is checked against real PyTorch the moment it exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from profiler.rules.args import Arg, LayerArgs, NestedLayer, Parser, _describe, parse_args
from profiler.errors import SpecError, UnsupportedLayerError

if TYPE_CHECKING:  # torch is imported lazily: predicting must not pay for it
    import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Context:
    """Facts about the model a rule may need besides its own arguments."""
    data_format: str = "channels_last"  # where the channel axis is: last (Keras) or first (torch)
    input_dtype: str = "float"          # "float" for real-valued inputs, "int64" for token ids
    device_kind: str = "cpu"            # kernels differ by device ("cpu" or "cuda"), and so does memory
    # the run's settings: kernels choose their algorithm (and workspace) by batch and dtype
    batch: int = 1                      # samples per step
    dtype: str = "float32"              # the parameters' and activations' dtype
    amp: str | None = None              # autocast's lower dtype, when the forward pass runs under it
    threads: int = 1                    # CPU threads: oneDNN sizes per-thread scratchpads by them
    # the layer's weights do not train (Keras ``trainable=False``, itself or a model around it):
    # Keras 3 then runs a BatchNormalization on its moving statistics, in training too
    frozen: bool = False

    def compute_dtype(self, autocast_lowered: bool) -> str:
        """The dtype an op computes in: autocast's for ops on its lower-precision list."""
        return self.amp if self.amp and autocast_lowered else self.dtype


@dataclass(frozen=True)
class Params:
    """Parameter count of one layer, split as Keras splits it, with the arithmetic shown."""
    trainable: int = 0
    non_trainable: int = 0
    formula: str = ""
    tensors: tuple[int, ...] = ()  # elements of each trainable tensor (default: one tensor of all)

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable


@dataclass(frozen=True)
class Saved:
    """A tensor autograd keeps from a layer's forward pass until its backward has run.

    ``of`` is "input" or "output" when the layer keeps a tensor that exists anyway (no new
    bytes unless nothing else holds it), or "new" for a tensor the op creates only to save it
    (a dropout mask, pooling indices, normalisation statistics); ``elements`` and ``dtype`` size
    a new one. ``dtype`` is "act" for the activations' dtype, otherwise a torch dtype name.
    """
    of: str
    elements: int = 0
    dtype: str = "act"
    what: str = ""
    per_sample: bool = True  # elements scale with the batch (False: per-channel statistics)

    def nbytes(self, batch: int, act: str) -> int:
        """Bytes for a run of ``batch`` samples whose ops compute in ``act`` (the dtype of "act")."""
        from profiler.dtypes import itemsize
        return self.elements * (batch if self.per_sample else 1) * itemsize(act if self.dtype == "act" else self.dtype)


@dataclass(frozen=True)
class Memory:
    """How a layer's forward pass uses memory, beyond its output."""
    output_is_view: bool = False              # Flatten, Reshape: the output shares the input's storage
    identity_in_eval: bool = False            # Dropout: in eval mode the input itself is returned
    grad_passthrough: bool = False            # Add: each input's gradient is the output's gradient
    # temporaries alive at the op's worst moment and gone when it returns ("new" Saved entries):
    scratch: tuple[Saved, ...] = field(default_factory=tuple)           # in the forward pass
    backward_scratch: tuple[Saved, ...] = field(default_factory=tuple)  # in the op's backward
    saved: tuple[Saved, ...] = field(default_factory=tuple)  # kept for backward in training
    # kernels whose temporaries depend on the step (see memory_model.Op for how each is replayed):
    training_scratch: tuple[Saved, ...] | None = None   # training's forward temporaries, beside the saved ones
    input_grad_scratch: tuple[Saved, ...] = ()          # backward temporaries only an input's gradient needs
    reduced_scratch: tuple[Saved, ...] = ()   # forward temporaries when it computes in bfloat16/float16
    gradients_last: bool = False   # backward scratch includes the gradients made on the way (attention)
    weight_casts: tuple[str, ...] = ()   # under autocast, what becomes of the layer's own weight casts
    grads_strided: bool = False    # its inputs' gradients are strided slices of its output's (Concatenate)
    dense_grad: bool = False       # its backward copies a strided incoming gradient (Embedding)
    # recurrent states: the inputs after the first whose gradients backward makes among its
    # scratch (initial states), and the elements per sample of a second output that inference
    # makes among its scratch and training keeps in its first "new" saved tensor (an LSTM's c)
    state_grads: int = 0
    cell_state: int = 0


class Rule:
    """Base rule: no parameters, shape preserved, no MACs, nothing saved. Override what differs."""

    type_name: ClassVar[str] = ""
    args: tuple[Arg, ...] = ()
    internal_activation: ClassVar[bool] = False  # its `activation` argument acts inside (RNN cells)
    min_inputs: ClassVar[int] = 1          # merge layers take several tensors:
    max_inputs: ClassVar[int | None] = 1   # then x is a tuple of shapes (None: no upper bound)

    def output_shape(self, a: LayerArgs, x: Shape, ctx: Context) -> Shape:
        return x

    def output_shapes(self, a: LayerArgs, x: Shape, ctx: Context) -> tuple[Shape, ...]:
        """Every output's shape: the layer's output, then any others (a recurrent layer's states);
        the other methods see the first as ``y``."""
        return (self.output_shape(a, x, ctx),)

    def params(self, a: LayerArgs, x: Shape, ctx: Context) -> Params:
        return Params()

    def macs(self, a: LayerArgs, x: Shape, y: Shape, ctx: Context) -> int:
        """Multiply-accumulates for one sample (the predictor multiplies by the batch)."""
        return 0

    def memory(self, a: LayerArgs, x: Shape, y: Shape, ctx: Context) -> Memory:
        return Memory()

    def build(self, a: LayerArgs, x: Shape, ctx: Context) -> "torch.nn.Module":
        raise NotImplementedError(f"{self.type_name} has no torch builder")


_RULES: dict[str, Rule] = {}


def register(rule: Rule | type[Rule]):
    """Register a rule (an instance, or a class that takes no arguments). Names are unique."""
    instance = rule() if isinstance(rule, type) else rule
    name = instance.type_name
    if not name:
        raise ValueError(f"{rule!r} has no type_name")
    if name in _RULES:
        raise ValueError(f"a rule for {name} is registered already")
    _RULES[name] = instance
    return rule


def registered(type_name: str) -> Rule:
    """The rule registered for ``type_name``. Registering happens when the rule modules are
    imported: callers outside this package import :mod:`profiler.rules.catalog`, which imports
    them all."""
    try:
        return _RULES[type_name]
    except KeyError:
        raise UnsupportedLayerError(f"unknown layer type {type_name!r}",
                                    expected="one of " + ", ".join(sorted(_RULES))) from None


def registered_rules() -> dict[str, Rule]:
    return dict(_RULES)


def nested_layer(*allowed: str) -> Parser:
    """A layer written as ``{Type: {argument: value}}`` inside another layer's arguments.

    Its arguments are checked against its own rule's schema; ``allowed`` limits the types (none:
    any registered type). Errors name the field as ``layer.units``.
    """
    def parse(field: str, value: Any) -> NestedLayer:
        if isinstance(value, NestedLayer):
            return value
        if not isinstance(value, Mapping) or len(value) != 1:
            raise SpecError("must be one layer written as {Type: {argument: value, ...}}", field=field,
                            received=_describe(value))
        (type_name, given), = value.items()
        if allowed and type_name not in allowed:
            raise SpecError("this layer type cannot be wrapped here", field=field,
                            expected="one of " + ", ".join(allowed), received=repr(type_name))
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise SpecError("a layer's arguments must be a mapping", field=f"{field}.{type_name}",
                            received=_describe(given))
        try:
            rule = registered(str(type_name))
            args = parse_args(rule.args, given)
        except SpecError as error:
            error.field = f"{field}.{error.field}" if error.field else field
            error.args = (error.message(),)
            raise
        return NestedLayer(str(type_name), args)
    return parse
