"""One distributed training job, as predicted and as measured: the model, each rank's inputs, and
the step both run.

Each rank trains on its own batch of ``batch`` samples (the per-rank batch); inputs and targets are
made as the single-device runner makes them, seeded by the rank. The step is the runner's training
step (``opt.zero_grad(set_to_none=True); out = model(*x); loss = loss_fn(out, y); loss.backward();
opt.step()``), run twice: the second, steady step is the one whose peak is reported, with the
gradients, optimizer state and whatever the strategy keeps from the first alive when it starts.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from profiler.distributed.strategies import Strategy, parallelize
from profiler.engine.module_memory import autocast
from profiler.step import loss_fn as step_loss, outputs, total_loss

STEPS = 2   # the first step makes gradients and state; the second is measured


@dataclass(frozen=True)
class Job:
    """What every rank runs: ``factory()`` (a new module) wrapped by ``strategy``, trained with
    ``optimizer`` on ``batch`` samples per rank."""
    factory: Callable[[], torch.nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]     # per sample (batch excluded)
    input_dtypes: tuple[str, ...]                 # "float" or "int64"
    int_high: tuple[int | None, ...]
    batch: int
    strategy: Strategy
    world: int
    optimizer: str = "sgd"
    loss: str = "cross_entropy"
    dtype: str = "float32"
    amp: str | None = None
    seed: int = 0
    threads: int = 1                              # intra-op threads of each rank
    device_kind: str = "cpu"                      # "cuda": predicted for CUDA ranks (see predict)
    checkpoint: tuple[str, ...] = ()              # module classes run under activation checkpointing
    output_shapes: tuple[tuple[int, ...], ...] = field(default=())   # filled by with_outputs

    def with_outputs(self) -> "Job":
        """The job with the model's output shapes (a pass on fake tensors), which size the targets."""
        from dataclasses import replace
        from torch._subclasses.fake_tensor import FakeTensorMode
        from profiler.engine.value_reads import answered_as_real
        fake = FakeTensorMode()
        module = fake_model(self, fake)
        with fake, answered_as_real():
            x = [torch.empty(s, dtype=torch.int64 if k == "int64" else getattr(torch, self.dtype))
                 for s, k in zip(self.shapes(), self.input_dtypes)]
            with torch.no_grad():
                out = outputs(module(*x))
        return replace(self, output_shapes=tuple(tuple(o.shape) for o in out))

    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.batch, *s) for s in self.input_shapes]


def make_model(job: Job) -> torch.nn.Module:
    """A new module in the job's dtype, seeded alike on every rank."""
    torch.manual_seed(job.seed)
    module = job.factory()
    return module if job.dtype == "float32" else module.to(getattr(torch, job.dtype))


def fake_model(job: Job, fake_mode: Any) -> torch.nn.Module:
    """The job's module with fake CPU tensors of ``fake_mode``: built on the meta device, then
    twinned as the single-device engine twins it (a fake module cannot be cast in place)."""
    from profiler.engine.torch_module import _all_meta, _to_fake, _to_meta, _twin
    dtype = getattr(torch, job.dtype)
    with torch.device("meta"):
        module = job.factory()
    meta = module if _all_meta(module, dtype) else _twin(module, _to_meta(dtype))
    with fake_mode:
        return _twin(meta, _to_fake)


def make_data(job: Job, rank: int, device: torch.device = torch.device("cpu")
              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The rank's inputs and targets on ``device``, as the runner makes them (seeded by the rank)."""
    from profiler.measuring.runner import _make_input, _make_target
    dtype = getattr(torch, job.dtype)
    seed = job.seed + 1000 * rank
    x = [_make_input(s, k, h, dtype, device, seed + i)
         for i, (s, k, h) in enumerate(zip(job.shapes(), job.input_dtypes, job.int_high))]
    out_dtype = torch.float32 if job.amp else dtype
    y = [_make_target(job.loss, s, out_dtype, device, seed + i) for i, s in enumerate(job.output_shapes)]
    return x, y


def build(job: Job, module: torch.nn.Module, mesh: Any, fake: bool
          ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The module spread over the mesh, and its optimizer; then every rank's start-up collectives
    finished (a barrier) and what they left in reference cycles collected, so that the first step
    starts from the same state in every run."""
    import gc
    import torch.distributed as dist
    checkpointed(module, job.checkpoint)
    made = parallelize(module, job.strategy, job.optimizer, mesh, amp=job.amp, fake=fake)
    dist.barrier(group=mesh.get_group())
    gc.collect()
    return made


def checkpointed(module: torch.nn.Module, classes: tuple[str, ...]) -> None:
    """Run every module of ``classes`` under activation checkpointing (``torch.utils.checkpoint``,
    non-reentrant, as the single-device runner's ``--checkpoint``), before the strategy wraps it."""
    from functools import partial
    for sub in module.modules():
        if type(sub).__name__ in classes:
            sub.forward = partial(_checkpoint, sub.forward)   # type: ignore[method-assign]


def _checkpoint(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def train_step(job: Job, model: torch.nn.Module, opt: torch.optim.Optimizer,
               x: list[torch.Tensor], y: list[torch.Tensor],
               mark: Callable[[str], None] = lambda phase: None) -> None:
    """The runner's training step; ``mark`` names each phase as it starts. Mixed precision:
    autocast around forward and loss, except under FSDP, whose policy casts the parameters itself."""
    region = contextlib.nullcontext() if job.strategy.name == "fsdp" else autocast(job.amp)
    mark("zero_grad")
    opt.zero_grad(set_to_none=True)
    mark("forward")
    with region:
        out = outputs(model(*x))
        mark(f"loss ({job.loss})")
        loss = total_loss(step_loss(job.loss), out, y)
    mark("backward")
    loss.backward()
    mark("optimizer step")
    opt.step()
