"""Dtype names as users write them, and their sizes, without importing torch."""
from __future__ import annotations

from profiler.errors import SpecError

#: floating dtypes a model can be predicted and measured in
MODEL_DTYPES = ("float32", "float16", "bfloat16")

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4,
            "bool": 1, "uint8": 1}


def itemsize(name: str) -> int:
    return ITEMSIZE[name]


def check_model_dtype(name: str) -> str:
    if name not in MODEL_DTYPES:
        raise SpecError("unknown dtype", field="dtype", expected=" or ".join(MODEL_DTYPES),
                        received=repr(name))
    return name


def torch_dtype(name: str):
    import torch
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the name ``itemsize`` and the rules use."""
    return str(dtype).removeprefix("torch.")
