"""modelsize: predict a model's parameters, MACs and memory layer by layer, measure, compare.

Prediction never imports torch; building and measuring do, lazily.
"""
from profiler.errors import ModelsizeError, ShapeError, SpecError, UnsupportedLayerError
from profiler.engine.predict import Prediction, predict
from profiler.frontends.spec import Model, ModelSpec, layer, load, loads

__all__ = ["Model", "ModelSpec", "ModelsizeError", "Prediction", "ShapeError", "SpecError",
           "UnsupportedLayerError", "layer", "load", "loads", "predict", "summary"]


def __getattr__(name: str):
    """``profiler.summary(module, input_shape=...)`` for torch modules, imported on first use
    (it needs torch, which predicting a spec does not)."""
    if name == "summary":
        from profiler.engine.torch_module import summary
        return summary
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")
