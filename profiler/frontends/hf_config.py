"""A local Hugging Face ``config.json`` as a torch model source, built with ``transformers``.

Only the configuration is read: no weights, no tokenizer, no hub (nothing is downloaded). The
config is made with ``transformers.AutoConfig.for_model(model_type, **config)`` and the model with
``AutoModelFor<Task>.from_config(config)``, randomly initialized: under ``torch.device("meta")``
to predict (no weight is allocated), plainly to measure on CPU.

Which model class (the task):

* ``task`` given (a key of :data:`HF_TASKS`): that Auto class's model for the ``model_type``;
* otherwise ``architectures[0]``: the class of that name if transformers has it (``GPT2LMHeadModel``,
  ``T5ForConditionalGeneration``...), else the task its suffix names (``...ForCausalLM`` →
  ``causal-lm``, see :data:`ARCHITECTURE_SUFFIXES`), else refused (``NoSuchModel``: the base
  model is ``--hf-task base`` or its own class name, ``LlamaModel``);
* no ``architectures``: the bare model (``base``, ``AutoModel``).

What the config is changed in, always (each is about running the model once per step, not
about its size):

* ``use_cache=False``: a key/value cache is for generation, one token at a time; a forward pass
  over a whole sequence (inference or a training step) has no use for it, and it would come
  back as a nested output;
* ``output_hidden_states`` and ``output_attentions`` are False (they too come back nested);
* the checkpoint's ``dtype``/``torch_dtype`` is dropped: the model is built in torch's default
  dtype and the tool's own ``dtype`` option decides what it is counted and run in.

``attn_implementation`` ("eager", "sdpa"...) is taken from the config when it has one, else
transformers' default is left.

How the model is called: ``model(*inputs)``, one input, positionally. Text models take
``input_ids`` (``(seq_len,)`` int64 token ids below ``vocab_size``), image models
``pixel_values`` (``(num_channels, image_size, image_size)`` float). The factory returns the
Hugging Face model itself (same modules, parameter names and class name), its class swapped for
a subclass that changes ``forward`` only, to fit transformers' calling convention to the tool's:

* an encoder-decoder (T5, BART...) is given ``decoder_input_ids=input_ids`` (the decoder runs
  over as many tokens as the encoder), and a model whose ``forward`` does not take its main
  input first is given it by name;
* a ``ModelOutput`` comes back as ``output.to_tuple()`` (its tensors that are not None, in
  order), which the predictor and the runner both read: the logits first for a model with a
  head (``(batch, seq_len, vocab_size)`` for a language model, ``(batch, num_labels)`` for a
  classifier); a seq2seq model also returns the encoder's last hidden state; a bare model
  returns its last hidden state (and a pooled output where it has a pooler). The training loss
  is computed on each of them, as for any module with several outputs;
* on meta or fake inputs the engine has transformers make its attention masks as on real
  ones (``profiler.engine.value_reads``, for any transformers model, from here or a factory):
  without it the meta forward fails on Llama, GPT-2 and BART, and the fake replay counts a mask
  the real run never makes.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from profiler.errors import ModelsizeError, SpecError
from profiler.frontends.source import ModuleSource

if TYPE_CHECKING:
    import torch

#: ``task`` -> the transformers Auto class that builds a model for it.
HF_TASKS: dict[str, str] = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "pretraining": "AutoModelForPreTraining",
    "image-cls": "AutoModelForImageClassification",
    "base": "AutoModel",
}

#: An architecture transformers does not know by name: the task its suffix names (first match).
ARCHITECTURE_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForMaskedLM", "masked-lm"),
    ("ForConditionalGeneration", "seq2seq-lm"),
    ("ForSeq2SeqLM", "seq2seq-lm"),
    ("ForSequenceClassification", "seq-cls"),
    ("ForTokenClassification", "token-cls"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForPreTraining", "pretraining"),
    ("ForImageClassification", "image-cls"),
)
# No bare "Model" suffix: every class name ends so (``NoSuchModel``); a name transformers does not
# have and whose suffix names no task is refused, not read as the base model.

#: The sequence length when none is given, capped by the model's maximum number of positions.
DEFAULT_SEQ_LEN = 128
#: The image size when neither the caller nor the config gives one.
DEFAULT_IMAGE_SIZE = 224
#: Config keys left out of the config object (see the module doc).
_DROPPED_KEYS = ("model_type", "dtype", "torch_dtype", "attn_implementation", "_attn_implementation",
                 "transformers_version")
_HF_EXTRA = "needs the Hugging Face extra: pip install modelsize[hf]"


def is_hf_config(path: str | Path) -> bool:
    """A local file holding a Hugging Face config: a JSON object with ``model_type`` (and not a
    Keras ``to_json()`` file or a modelsize spec, which have ``class_name`` or ``layers``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data and "class_name" not in data \
        and "layers" not in data


def load_hf_config(path: str | Path, *, task: str | None = None, seq_len: int | None = None,
                   image_size: int | None = None, attn_implementation: str | None = None) -> ModuleSource:
    """A Hugging Face ``config.json`` as a :class:`ModuleSource` (see the module doc).

    ``task``: a key of :data:`HF_TASKS`, or None to take it from ``architectures``. ``seq_len``:
    the number of token ids per sample of a text model (default ``min(max positions, 128)``).
    ``image_size``: an image model's input size; a config with an ``image_size`` is built for it
    (a ViT's position embeddings depend on it). ``attn_implementation`` overrides the config's.
    Nothing is built here: the factory builds the model each time it is called.
    """
    source = str(path)
    data = _read(path, source)
    transformers = _transformers(source)
    config = _config(transformers, data, source)
    attn = attn_implementation or data.get("attn_implementation") or data.get("_attn_implementation")
    if attn is not None and not isinstance(attn, str):
        raise SpecError("must be a string", field="attn_implementation", source=source,
                        expected='"eager", "sdpa"...', received=repr(attn))
    task, cls = _model_class(transformers, config, data, task, source)
    name = f"{Path(source).name} ({cls.__name__})"

    input_name = getattr(cls, "main_input_name", "input_ids")
    if input_name == "input_ids":
        shape: tuple[int, ...] = (_seq_len(config, seq_len, source),)
        kind, high = "int64", _vocab_size(config)
    elif input_name == "pixel_values":
        shape = _image_shape(config, image_size, source)
        kind, high = "float", None
    else:
        raise SpecError(f"{cls.__name__} takes {input_name!r}: only token ids (input_ids) and images "
                        "(pixel_values) are supported", source=source, field="model_type",
                        expected="a text or image model", received=repr(data["model_type"]))

    def factory() -> "torch.nn.Module":
        try:
            with _quiet(transformers):
                fresh = copy.deepcopy(config)   # transformers may write into the config it builds from
                if task is None:   # an architecture no Auto class maps to: its own class
                    model = cls._from_config(fresh, **_attn_kwargs(attn))
                else:
                    auto = getattr(transformers, HF_TASKS[task])
                    model = auto.from_config(fresh, **_attn_kwargs(attn))
        except ModelsizeError:
            raise
        except Exception as err:
            raise SpecError(f"building {cls.__name__} raised {type(err).__name__}: {err}".split("\n")[0],
                            source=name) from None
        model.__class__ = _called_as_tool(type(model), config, input_name)   # called as the tool calls it
        return model

    return ModuleSource(name=name, factory=factory, input_shapes=(shape,), input_dtypes=(kind,),
                        int_high=(high,))


# --- reading ----------------------------------------------------------------------------------

def _read(path: str | Path, source: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise SpecError("no such file", source=source, expected="a Hugging Face config.json")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read the file: {err}".split("\n")[0], source=source) from None
    except ValueError as err:
        raise SpecError(f"not JSON: {err}".split("\n")[0], source=source,
                        expected="a Hugging Face config.json") from None
    if not isinstance(data, dict):
        raise SpecError("not a Hugging Face config", source=source, expected="a JSON object",
                        received=type(data).__name__)
    if "model_type" not in data:
        raise SpecError("not a Hugging Face config: no model_type", field="model_type", source=source,
                        expected='a config.json with "model_type" (and "architectures")')
    if not isinstance(data["model_type"], str):
        raise SpecError("must be a string", field="model_type", source=source,
                        received=repr(data["model_type"]))
    for key in _SIZES:   # transformers builds e.g. no layer at all from n_layer = -1, silently
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError("must be a positive integer", field=key, source=source, received=repr(value))
    return data


#: Config sizes that must be positive integers where a config has them.
_SIZES = ("n_layer", "num_hidden_layers", "num_layers", "n_embd", "hidden_size", "d_model", "n_head",
          "num_attention_heads", "num_key_value_heads", "intermediate_size", "n_inner", "d_ff", "vocab_size",
          "n_positions", "max_position_embeddings", "num_labels", "image_size", "patch_size", "num_channels")


def _transformers(source: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise SpecError(f"a Hugging Face config {_HF_EXTRA}", source=source) from None
    return transformers


def _config(transformers: Any, data: dict[str, Any], source: str) -> Any:
    """The config object, with the changes of the module doc."""
    from transformers import CONFIG_MAPPING
    model_type = data["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise SpecError(f"unknown architecture: model_type {model_type!r} is not in transformers "
                        f"{transformers.__version__}", field="model_type", source=source,
                        expected="a model type transformers knows (custom code is never run)")
    kwargs = {k: v for k, v in data.items() if k not in _DROPPED_KEYS}
    try:
        with _quiet(transformers):
            config = transformers.AutoConfig.for_model(model_type, **kwargs)
    except Exception as err:   # transformers validates its configs (head counts, sizes...)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "Error:" in line), lines[0] if lines else "")
        raise SpecError(f"bad {model_type} config: {type(err).__name__}: {detail.rstrip('.')}",
                        source=source) from None
    config.use_cache = False
    config.output_hidden_states = False
    config.output_attentions = False
    return config


def _model_class(transformers: Any, config: Any, data: dict[str, Any], task: str | None,
                 source: str) -> tuple[str | None, type]:
    """The task (None for a class no Auto class maps to) and the model class it builds."""
    model_type = data["model_type"]
    if task is not None:
        if task not in HF_TASKS:
            raise SpecError("unknown task", field="hf-task", source=source,
                            expected=" or ".join(HF_TASKS), received=repr(task))
        cls = _task_class(transformers, task, config)
        if cls is None:
            raise SpecError(f"model_type {model_type!r} has no {task} model", field="hf-task", source=source,
                            expected=_tasks_of(transformers, config) or "no task: none is supported")
        return task, cls
    architectures = data.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise SpecError("must be a list of class names", field="architectures", source=source,
                        received=repr(architectures))
    if not architectures:
        cls = _task_class(transformers, "base", config)
        if cls is None:
            raise SpecError(f"model_type {model_type!r} has no base model", field="architectures",
                            source=source, expected=_tasks_of(transformers, config))
        return "base", cls
    arch = architectures[0]
    for name in HF_TASKS:   # the class of that name, as an Auto class builds it
        cls = _task_class(transformers, name, config)
        if cls is not None and cls.__name__ == arch:
            return name, cls
    try:
        named = getattr(transformers, arch, None)
    except Exception:   # transformers' lazy module raises more than AttributeError
        named = None
    if isinstance(named, type) and hasattr(named, "_from_config") and hasattr(named, "config_class"):
        if named.config_class is not None and not isinstance(config, named.config_class):
            raise SpecError(f"architecture {arch!r} is not a {model_type!r} model", field="architectures",
                            source=source, expected=f"a class for {type(config).__name__}")
        return None, named
    for suffix, name in ARCHITECTURE_SUFFIXES:
        if arch.endswith(suffix):
            cls = _task_class(transformers, name, config)
            if cls is not None:
                return name, cls
    raise SpecError(f"unknown architecture {arch!r}", field="architectures", source=source,
                    expected=f"a transformers class for model_type {model_type!r}, or a task (--hf-task): "
                             + (_tasks_of(transformers, config) or "none has a model"))


def _task_class(transformers: Any, task: str, config: Any) -> type | None:
    """The class ``HF_TASKS[task]`` builds for this config, or None if it has none."""
    mapping = getattr(transformers, HF_TASKS[task])._model_mapping
    try:
        if type(config) not in mapping:
            return None
        found = mapping[type(config)]
    except Exception:   # a model module that cannot be imported here
        return None
    if isinstance(found, (list, tuple)):   # several classes: as transformers picks one
        arch = (getattr(config, "architectures", None) or [None])[0]
        found = next((c for c in found if c.__name__ == arch), found[0])
    return found


def _tasks_of(transformers: Any, config: Any) -> str:
    return ", ".join(t for t in HF_TASKS if _task_class(transformers, t, config) is not None)


def _seq_len(config: Any, seq_len: int | None, source: str) -> int:
    limit = None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limit = value
            break
    if seq_len is None:
        return min(limit, DEFAULT_SEQ_LEN) if limit else DEFAULT_SEQ_LEN
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise SpecError("must be a positive integer", field="seq-len", source=source, received=repr(seq_len))
    if limit is not None and seq_len > limit:   # on meta tensors an embedding never checks its indices
        raise SpecError("longer than the model's positions", field="seq-len", source=source,
                        expected=f"at most {limit} (max_position_embeddings)", received=str(seq_len))
    return seq_len


def _vocab_size(config: Any) -> int | None:
    value = getattr(config, "vocab_size", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _image_shape(config: Any, image_size: int | None, source: str) -> tuple[int, int, int]:
    channels = getattr(config, "num_channels", None) or 3
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise SpecError("must be a positive integer", field="image-size", source=source,
                            received=repr(image_size))
        if hasattr(config, "image_size"):   # built for that size (a ViT's positions depend on it)
            config.image_size = image_size
        return (channels, image_size, image_size)
    size = getattr(config, "image_size", None) or DEFAULT_IMAGE_SIZE
    if isinstance(size, (list, tuple)):
        return (channels, int(size[0]), int(size[-1]))
    return (channels, int(size), int(size))


def _attn_kwargs(attn: str | None) -> dict[str, str]:
    return {} if attn is None else {"attn_implementation": attn}


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own warnings (default token ids out of a tiny vocabulary...) left out."""
    logging = transformers.utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


# --- calling ----------------------------------------------------------------------------------

_CALLED: dict[tuple[type, str, bool, bool], type] = {}


def _called_as_tool(cls: type, config: Any, input_name: str) -> type:
    """A subclass of ``cls`` whose ``forward`` is the tool's calling convention (module doc):
    same name, same modules and parameters, only ``forward`` differs (made once per class)."""
    try:
        params = [p for p in inspect.signature(cls.forward).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        params = []
    by_name = bool(params) and params[0].name != input_name
    decoder = bool(getattr(config, "is_encoder_decoder", False)) and input_name == "input_ids" \
        and any(p.name == "decoder_input_ids" for p in params)
    key = (cls, input_name, by_name, decoder)
    if key not in _CALLED:
        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            if args:
                first = args[0]
                if decoder and kwargs.get("decoder_input_ids") is None \
                        and kwargs.get("decoder_inputs_embeds") is None:
                    kwargs["decoder_input_ids"] = first
                if by_name and input_name not in kwargs:
                    kwargs[input_name] = first
                    args = args[1:]
            output = super(called, self).forward(*args, **kwargs)
            from transformers.utils import ModelOutput
            return output.to_tuple() if isinstance(output, ModelOutput) else output

        called = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                             "__qualname__": cls.__qualname__,
                                             "__doc__": f"{cls.__name__}, called as modelsize calls a model."})
        _CALLED[key] = called
    return _CALLED[key]
