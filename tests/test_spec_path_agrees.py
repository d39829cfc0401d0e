"""The spec path's fast replay against the one engine every torch module goes through.

A spec is predicted by replaying its layers' rules (``engine/predict.py``, integer arithmetic: a
1,000-layer spec in 0.3 s) where the module engine (fake tensors, ``engine/module_memory.py``)
takes seconds; the kernel facts both book are the same functions (``engine/kernels/``). This
keeps them honest: over the accuracy zoo, each peak from the spec path equals the engine's
replay of the module the spec builds, in float32 and bfloat16, at two batch sizes.
"""
from pathlib import Path

import pytest

from profiler.engine import spec_memory
from profiler.engine.predict import predict
from profiler.frontends.source import resolve

ZOO = sorted(Path(__file__).resolve().parent.parent.glob("benchmarks/zoo/*.yaml"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_spec_replay_equals_the_engine(path, dtype):
    spec = resolve(str(path))
    for batch in (1, 3):
        fast = predict(spec, batch=batch, dtype=dtype, threads=2)
        engine = spec_memory.replay(spec, batch=batch, dtype=dtype, loss="cross_entropy", device_kind="cpu",
                                    optimizers=("sgd", "adam"), amp=None, checkpoint=(), threads=2,
                                    input_grad=False)
        assert fast.inference.bytes == engine.inference.bytes, (batch, "inference")
        for optimizer in ("sgd", "adam"):
            assert fast.training[optimizer].bytes == engine.training[optimizer].bytes, (batch, optimizer)
            assert fast.first_step[optimizer].bytes == engine.first_step[optimizer].bytes, (batch, optimizer)
