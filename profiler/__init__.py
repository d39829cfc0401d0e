"""modelsize: predict a model's parameters, MACs and memory layer by layer, measure, compare, plan.

``profiler.summary / measure / profile / fit / sweep`` take any model: a torch module or factory, a
``"package.module:factory"``, a spec, Keras JSON or Hugging Face config path, or a built-in name
(:mod:`profiler.api`); ``profiler.sweep`` profiles over batches and dtypes, ``profiler.compare``
reads result files side by side, ``profiler.html_report`` draws results as one HTML page and
``profiler.distributed`` predicts (and measures) each rank under DDP, FSDP2 or ZeRO-1. They
import torch on first use; predicting a spec with :func:`predict` does not.
"""
from profiler.errors import ModelsizeError, ShapeError, SpecError, UnsupportedLayerError
from profiler.engine.predict import Prediction, predict
from profiler.frontends.spec import Model, ModelSpec, layer, load, loads

__all__ = ["Model", "ModelSpec", "ModelsizeError", "Prediction", "ShapeError", "SpecError",
           "UnsupportedLayerError", "compare", "distributed", "fit", "html_report", "layer", "load", "loads",
           "measure", "predict", "profile", "summary", "sweep"]

_API = ("summary", "measure", "profile", "fit", "sweep", "compare", "html_report", "distributed")


def __getattr__(name: str):
    """The API's jobs, imported on first use (they need torch, which predicting a spec does not)."""
    if name in _API:
        from profiler import api
        return getattr(api, name)
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")
