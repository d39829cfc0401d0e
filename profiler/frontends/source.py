"""Whatever model a user names, as one of two sources every command takes.

- a :class:`~profiler.frontends.spec.ModelSpec`: a YAML/JSON spec, a Keras ``to_json()`` file or a
  built-in model (data: nothing is executed);
- a :class:`ModuleSource`: a torch module made by a factory — ``package.module:factory`` (its
  module is IMPORTED, so its code runs), a Hugging Face ``config.json`` (built with transformers),
  a factory or a module passed from Python — with the inputs it is called on.

Predicting calls the factory under ``torch.device("meta")`` (no weight is allocated); measuring
calls it for real. A module given from Python is never moved or changed: it is predicted on a
meta twin and measured on a deep copy.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from profiler.errors import ModelsizeError, SpecError
from profiler.frontends import models
from profiler.frontends.spec import ModelSpec, load

if TYPE_CHECKING:
    from torch import nn

#: Seconds a user's factory may take to be imported, and each time it is called, before it is
#: reported as hanging (``--factory-timeout``; 0: no limit). Read from the environment, so that a
#: measuring child process keeps the caller's limit.
FACTORY_TIMEOUT_ENV = "MODELSIZE_FACTORY_TIMEOUT"
DEFAULT_FACTORY_TIMEOUT = 60.0

#: ``package.module:factory`` (the attribute may be dotted: ``pkg.zoo:Models.resnet``).
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
INPUT_KINDS = ("float", "int64")


@dataclass(frozen=True)
class ModuleSource:
    """A torch model and the inputs it is called on (``model(*inputs)``), batch excluded."""
    name: str
    factory: Callable[[], "nn.Module"]         # a new module each call (random initial weights)
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]              # "float" (the model's dtype) or "int64" (token ids)
    int_high: tuple[int | None, ...]           # token ids are drawn in [0, int_high)
    module: "nn.Module | None" = None          # given from Python: predicted on a meta twin

    def for_prediction(self) -> "nn.Module | Callable[[], nn.Module]":
        """What the engine summarizes: the given module (left untouched) or the factory."""
        return self.module if self.module is not None else self.factory

    def build(self) -> "nn.Module":
        """A real module to measure: a new one from the factory, or a copy of the given one."""
        if self.module is not None:
            if any(t.is_meta for t in (*self.module.parameters(), *self.module.buffers())):
                raise ModelsizeError("a module on the meta device cannot be measured", field="model",
                                     expected="a module with real weights, or its factory")
            return copy.deepcopy(self.module)
        return call_factory(self.factory, self.name)

    def bounds(self) -> tuple[int | None, ...]:
        """``int_high`` with each missing bound of a token input filled in (the model built once)."""
        if all(h is not None or k != "int64" for h, k in zip(self.int_high, self.input_dtypes)):
            return self.int_high
        import torch
        with torch.device("meta"):
            module = self.module if self.module is not None else call_factory(self.factory, self.name)
        vocab = _smallest_vocabulary(module)
        if vocab is None:
            raise SpecError("token-id inputs need an upper bound and the model has no nn.Embedding to take "
                            "it from", field="int-high", source=self.name, expected="--int-high N")
        return tuple(vocab if h is None and k == "int64" else h for h, k in zip(self.int_high, self.input_dtypes))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "torch", "input_shapes": [list(s) for s in self.input_shapes],
                "input_dtypes": list(self.input_dtypes), "int_high": list(self.int_high)}


def resolve(model: Any = None, *, input_shape: Sequence[Any] | None = None,
            input_dtype: str | Sequence[str] | None = None, int_high: int | Sequence[int | None] | None = None,
            hf_task: str | None = None, seq_len: int | None = None, name: str | None = None
            ) -> ModelSpec | ModuleSource:
    """Any model reference as a source: None (the default built-in model), a :class:`ModelSpec`,
    a path (spec, Keras JSON or Hugging Face ``config.json``), a built-in name,
    ``"package.module:factory"``, a factory or a ``torch.nn.Module``.

    ``input_shape`` (one shape, or one per input, batch excluded), ``input_dtype`` ("float" or
    "int64", one or one per input) and ``int_high`` are for torch models; a Hugging Face config
    sets its own (``seq_len`` token ids, or its image size).
    """
    if model is None:
        return models.builtin(models.DEFAULT)
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, ModuleSource):
        return model
    if isinstance(model, (str, Path)):
        text = str(model)
        path = Path(text)
        from profiler.frontends.hf_config import is_hf_config, load_hf_config
        if path.is_file() and path.suffix == ".json" and is_hf_config(path):
            return load_hf_config(text, task=hf_task, seq_len=seq_len)
        if path.exists() or text.endswith((".yaml", ".yml", ".json")) or "/" in text:
            return load(text)
        if text in models.names():
            return models.builtin(text)
        if FACTORY.match(text):
            return _module_source(load_factory(text), text, input_shape, input_dtype, int_high)
        raise SpecError("no such file, built-in model or factory", source=text,
                        expected="a .yaml/.json spec, a Keras or Hugging Face config .json, "
                                 "package.module:factory, or one of " + ", ".join(models.names()))
    import torch
    if isinstance(model, torch.nn.Module):
        return _module_source(lambda: model, name or type(model).__name__, input_shape, input_dtype, int_high,
                              module=model)
    if callable(model):
        return _module_source(model, name or getattr(model, "__qualname__", repr(model)), input_shape,
                              input_dtype, int_high)
    raise SpecError("cannot read this model", field="model",
                    expected="a spec, a path, a built-in name, 'package.module:factory', a factory or a "
                             "torch.nn.Module", received=type(model).__name__)


def _module_source(factory: Callable[[], Any], name: str, input_shape: Sequence[Any] | None,
                   input_dtype: str | Sequence[str] | None, int_high: int | Sequence[int | None] | None,
                   module: Any = None) -> ModuleSource:
    shapes = input_shapes(input_shape, source=name)
    kinds = _per_input(input_dtype or "float", len(shapes), "input-dtype", name)
    for kind in kinds:
        if kind not in INPUT_KINDS:
            raise SpecError("unknown input dtype", field="input-dtype", source=name,
                            expected=" or ".join(INPUT_KINDS), received=repr(kind))
    highs = _per_input(int_high, len(shapes), "int-high", name)
    for high in highs:
        if high is not None and (isinstance(high, bool) or not isinstance(high, int) or high < 1):
            raise SpecError("must be a positive integer", field="int-high", source=name, received=repr(high))
    return ModuleSource(name, factory, shapes, tuple(kinds), tuple(highs), module)


def input_shapes(input_shape: Sequence[Any] | None, *, source: str = "") -> tuple[tuple[int, ...], ...]:
    """One shape (sizes) or several (a sequence of shapes), batch excluded, as a tuple of shapes."""
    if input_shape is None or (isinstance(input_shape, Sequence) and len(input_shape) == 0):
        raise SpecError("a torch model needs its input shape", field="input-shape", source=source or None,
                        expected="--input-shape 3,224,224 (batch excluded), once per input "
                                 "(input_shape=(3, 224, 224) from Python)")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise SpecError("bad input shape", field="input-shape", source=source or None,
                        expected="a tuple of sizes (batch excluded) or a list of them", received=repr(input_shape))
    several = all(isinstance(s, Sequence) and not isinstance(s, str) for s in input_shape)
    shapes = tuple(tuple(s) for s in input_shape) if several else (tuple(input_shape),)
    for shape in shapes:
        if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise SpecError("bad input shape", field="input-shape", source=source or None,
                            expected="positive integer sizes, batch excluded", received=repr(input_shape))
    return shapes


def _per_input(value: Any, count: int, field: str, source: str) -> list[Any]:
    """One value for every input, or one per input."""
    if value is None or isinstance(value, (str, int)):
        return [value] * count
    values = list(value)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise SpecError(f"one value per input ({count})", field=field, source=source, received=repr(value))
    return values


def load_factory(reference: str) -> Callable[[], Any]:
    """``"package.module:factory"`` -> the factory, a callable of no arguments.

    This IMPORTS ``package.module``, running its top-level code, and the factory is later CALLED:
    only name code you trust. The current directory is searched first, as ``python -m`` does, so
    a module beside the user needs no ``PYTHONPATH``.
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError("bad factory", field="factory", expected='"package.module:factory"',
                        received=repr(reference))
    cwd = str(Path.cwd())
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    import torch  # noqa: F401 - every factory needs it: its import is not counted in the user's time
    try:
        with factory_deadline(f"importing {module_name!r}", reference):
            target: Any = importlib.import_module(module_name)
    except ModelsizeError:   # the import did not finish in time
        raise
    except ImportError as err:
        raise SpecError(f"cannot import {module_name!r}: {err}", field="factory", source=reference) from None
    except Exception as err:   # the user's module raised while being imported
        raise SpecError(f"importing {module_name!r} raised {type(err).__name__}: {err}".split("\n")[0],
                        field="factory", source=reference) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SpecError(f"module {module_name!r} has no attribute {attr!r}", field="factory",
                            source=reference) from None
    if not callable(target):
        raise SpecError("the factory is not callable", field="factory", source=reference,
                        expected="a function or class that takes no arguments", received=type(target).__name__)
    return target


def call_factory(factory: Callable[[], Any], name: str) -> "nn.Module":
    """Call a factory; what it raises, or a result that is not a module, is one line naming it.

    An allocation failure is raised as it is: the model does not fit, which the caller reports
    (``workflow.measure`` builds under ``oom_guard``). A factory still running after
    :func:`factory_timeout` seconds is reported as hanging."""
    import torch
    try:
        with factory_deadline("the factory", name):
            built = factory()
    except ModelsizeError:
        raise
    except Exception as err:
        from profiler.measuring.devices import is_out_of_memory
        if is_out_of_memory(err):   # building real weights ran out: the caller's oom_guard says "does not fit"
            raise
        raise SpecError(f"the factory raised {type(err).__name__}: {err}".split("\n")[0], field="factory",
                        source=name) from None
    if not isinstance(built, torch.nn.Module):
        raise SpecError("the factory did not return a torch.nn.Module", field="factory", source=name,
                        received=type(built).__name__)
    return built


def factory_timeout() -> float:
    """The limit in seconds on importing and calling a user's factory (0: none); see
    ``FACTORY_TIMEOUT_ENV``."""
    text = os.environ.get(FACTORY_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_FACTORY_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:   # also NaN
        raise SpecError("bad factory timeout", field=FACTORY_TIMEOUT_ENV,
                        expected="a number of seconds >= 0 (0: no limit)", received=repr(text))
    return value


class _TimedOut(BaseException):
    """Raised into the user's code when its time is up: a BaseException, so that a broad
    ``except Exception`` in that code does not swallow it."""


@contextlib.contextmanager
def factory_deadline(what: str, name: str) -> Any:
    """Turn user code that runs longer than :func:`factory_timeout` into a one-line SpecError
    naming it ("the factory did not return within 60 s").

    A real-time timer (``SIGALRM``) interrupts the Python code; code stuck inside one C call is
    interrupted when that call returns. Only where it is safe: on POSIX, in the main thread, and
    when no other timer is pending (pytest-timeout's, for one): otherwise no limit is applied.
    """
    seconds = factory_timeout()
    usable = (seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not usable:
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expired)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _TimedOut:
        raise SpecError(f"{what} did not return within {seconds:g} s (is it waiting for something? "
                        f"--factory-timeout sets the limit)", field="factory", source=name) from None
    finally:
        signal.signal(signal.SIGALRM, previous)


def _smallest_vocabulary(module: "nn.Module") -> int | None:
    """The smallest ``num_embeddings`` of the module's ``nn.Embedding`` layers: every token id is valid."""
    import torch
    sizes = [m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    return min(sizes) if sizes else None
