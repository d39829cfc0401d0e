"""Factories that fail on purpose, for the CLI's fault-injection tests (tests/test_faults.py).

Each misbehaves only on real tensors: prediction calls a factory under ``torch.device("meta")``
and runs the model on fake tensors, and must get through, so that the failure happens where it is
meant to, in the measuring child.
"""
import resource
import time

import psutil
import torch
from torch import nn

TOO_MUCH = 1 << 50   # 1 PiB: no allocator can give it, so the allocation fails for real


def _real(tensor: torch.Tensor) -> bool:
    return not isinstance(tensor, torch._subclasses.FakeTensor) and tensor.device.type != "meta"


def sleeps_forever() -> nn.Module:
    """A factory that never returns (waiting on something that never comes)."""
    while True:
        time.sleep(3600)


def under_address_limit() -> nn.Module:
    """A 1 GiB Linear, built after lowering the process's address-space limit to what it uses now
    plus 256 MiB: allocating its weight fails for real in the allocator (``RLIMIT_AS``)."""
    if torch.get_default_device().type != "meta":   # the measuring child, not the prediction
        limit = psutil.Process().memory_info().vms + (256 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return nn.Linear(16384, 16384, bias=False)


class _OomInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(8, 4)

    def forward(self, x):
        if _real(x):
            torch.empty(TOO_MUCH, dtype=torch.uint8)
        return self.dense(x)


def oom_in_forward() -> nn.Module:
    """A model whose forward pass asks the allocator for more than any machine has."""
    return _OomInForward()


class _HugeGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if _real(grad):
            torch.empty(TOO_MUCH, dtype=torch.uint8)
        return grad


class _OomInBackward(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(8, 4)

    def forward(self, x):
        return _HugeGradient.apply(self.dense(x))


def oom_in_backward() -> nn.Module:
    """A model whose backward pass asks the allocator for more than any machine has."""
    return _OomInBackward()
