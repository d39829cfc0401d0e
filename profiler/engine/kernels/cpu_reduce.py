"""torch's CPU ``mean``: the float32 copies it sums in reduced precision, and the wrapped count it
divides by."""
from __future__ import annotations

from profiler.rules.registry import Saved

#: ``mean`` sums, then divides in place by the count, a Python number that torch wraps in a
#: tensor for the one operation: a float64 scalar and its cast to the activations' dtype. Its
#: backward divides the same way.
SCALAR_OPERAND = (Saved("new", elements=1, dtype="float64", per_sample=False, what="wrapped Python number"),
                  Saved("new", elements=1, per_sample=False, what="the number cast to the tensor's dtype"))


def mean_upcast(elements: int, result: int) -> tuple[Saved, Saved]:
    """In bfloat16 or float16 the CPU's ``mean`` sums a float32 copy of its input (``elements``)
    into a float32 result, then copies that into the output (``mean_out``), measured: the two
    float32 tensors are alive together. (result, input copy)."""
    return (Saved("new", elements=result, dtype="float32", what="float32 result"),
            Saved("new", elements=elements, dtype="float32", what="the input in float32"))
