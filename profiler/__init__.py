"""modelsize: predict a model's parameters, MACs and memory layer by layer, measure, compare.

Prediction never imports torch; building and measuring do, lazily.
"""
from .errors import ModelsizeError, ShapeError, SpecError, UnsupportedLayerError
from .predict import Prediction, predict
from .spec import Model, ModelSpec, layer, load, loads

__all__ = ["Model", "ModelSpec", "ModelsizeError", "Prediction", "ShapeError", "SpecError",
           "UnsupportedLayerError", "layer", "load", "loads", "predict"]
