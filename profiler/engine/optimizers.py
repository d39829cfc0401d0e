"""The optimizers modelsize predicts and measures: how to make each, and what memory it needs.

One entry per optimizer, used by the memory model (state and scratch) and by the runners (the
torch constructor), so the two cannot disagree. Hyper-parameters are PyTorch's defaults except
the learning rates, which do not change memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from profiler.errors import SpecError


@dataclass(frozen=True)
class Optimizer:
    """Memory facts of one torch optimizer, for its single-tensor (CPU) and foreach (CUDA) kernels.

    ``states``: parameter-sized state tensors per parameter; ``step``: a float32 scalar ``step``
    tensor per parameter; ``state_at_init``: the constructor creates the state (Adagrad), so even
    the first step finds it; ``scratch``: parameter-sized temporaries alive together in the
    single-tensor update of one parameter (so sized by the largest one); ``scalar_bytes``: a Python
    float wrapped as a 0-d float64 tensor during that update; ``foreach_scratch``: parameter-sized
    temporaries per parameter that the foreach update keeps for all parameters at once;
    ``carries``: the update's last temporary is a Python variable that still holds the previous
    parameter's tensor while the next one is computed (``denom``, ``avg``, ``std``).
    """
    name: str
    make: Callable[[Any], Any]
    states: int = 0
    step: bool = False
    state_at_init: bool = False
    scratch: int = 0
    scalar_bytes: int = 0
    foreach_scratch: int = 0
    carries: bool = False

    def state_bytes(self, tensors: list[int]) -> list[int]:
        """Bytes of each state tensor this optimizer keeps for parameters of ``tensors`` bytes."""
        return [n for n in tensors for _ in range(self.states)] + [4] * (len(tensors) if self.step else 0)

    def scratch_bytes(self, tensors: list[int], foreach: bool, itemsize: int) -> list[int]:
        """Temporaries of the update; ``itemsize``: bytes per element of the parameters."""
        if not tensors:
            return []
        if foreach:
            return [n for n in tensors for _ in range(self.foreach_scratch)]
        scalar = [self.scalar_bytes, itemsize] if self.scalar_bytes else []   # the double, then its cast
        if not self.scratch:
            return []
        worst = max(range(len(tensors)), key=lambda i: self.scratch * tensors[i]
                    + (tensors[i - 1] if self.carries and i else 0))
        carried = [tensors[worst - 1]] if self.carries and worst else []
        return carried + [tensors[worst]] * self.scratch + scalar


def _torch(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    def make(params: Any) -> Any:
        import torch
        return getattr(torch.optim, name)(params, **kwargs)
    return make


CATALOG: dict[str, Optimizer] = {o.name: o for o in (
    # param.add_(grad, alpha=-lr): in place, nothing kept
    Optimizer("sgd", _torch("SGD", lr=0.01)),
    # buf = clone(grad) on the first step, then buf.mul_(m).add_(grad); param.add_(buf, alpha=-lr)
    Optimizer("sgd_momentum", _torch("SGD", lr=0.01, momentum=0.9), states=1),
    # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps): sqrt and quotient together;
    # foreach: exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs), then updated in place
    Optimizer("adam", _torch("Adam"), states=2, step=True, scratch=2, scalar_bytes=8, foreach_scratch=1,
              carries=True),
    Optimizer("adamw", _torch("AdamW"), states=2, step=True, scratch=2, scalar_bytes=8, foreach_scratch=1,
              carries=True),
    # avg = square_avg.sqrt().add_(eps); param.addcdiv_(grad, avg, value=-lr)
    Optimizer("rmsprop", _torch("RMSprop", lr=0.01), states=1, step=True, scratch=1, foreach_scratch=1,
              carries=True),
    # std = state_sum.sqrt().add_(eps); the state is made by the constructor; a scalar becomes a
    # 0-d double and its cast (12 B, measured)
    Optimizer("adagrad", _torch("Adagrad", lr=0.01), states=1, step=True, state_at_init=True, scratch=1,
              scalar_bytes=8, foreach_scratch=1, carries=True),
)}

DEFAULT = ("sgd", "adam")


def get(name: str) -> Optimizer:
    try:
        return CATALOG[name]
    except KeyError:
        raise SpecError("unknown optimizer", field="optimizer", expected="one of " + ", ".join(CATALOG),
                        received=repr(name)) from None
