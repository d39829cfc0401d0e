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
    _assert_agrees(resolve(str(path)), dtype)


def _assert_agrees(spec, dtype: str) -> None:
    for batch in (1, 3):
        fast = predict(spec, batch=batch, dtype=dtype, threads=2)
        engine = spec_memory.replay(spec, batch=batch, dtype=dtype, loss="cross_entropy", device_kind="cpu",
                                    optimizers=("sgd", "adam"), amp=None, checkpoint=(), threads=2,
                                    input_grad=False)
        assert fast.inference.bytes == engine.inference.bytes, (batch, "inference")
        for optimizer in ("sgd", "adam"):
            assert fast.training[optimizer].bytes == engine.training[optimizer].bytes, (batch, optimizer)
            assert fast.first_step[optimizer].bytes == engine.first_step[optimizer].bytes, (batch, optimizer)


#: encoder-decoders: an LSTM's states (h, the output; c, a second output) start an LSTM; a GRU's
#: sequence and its h (the sequence's last step) start a GRU and a SimpleRNN
SEQ2SEQ = {
    "lstm": {"inputs": [{"name": "source", "shape": [5, 3]}, {"name": "shifted", "shape": [4, 2]}], "layers": [
        {"LSTM": {"name": "encoder", "units": 6, "return_state": True, "inputs": ["source"]}},
        {"LSTM": {"name": "decoder", "units": 6, "return_sequences": True,
                  "inputs": ["shifted", "encoder:1", "encoder:2"]}},
        {"Dense": {"name": "head", "units": 7}}], "outputs": ["head"]},
    "gru": {"inputs": [{"name": "source", "shape": [5, 3]}, {"name": "shifted", "shape": [4, 2]}], "layers": [
        {"GRU": {"name": "encoder", "units": 5, "return_sequences": True, "return_state": True,
                 "reset_after": False, "inputs": ["source"]}},
        {"GRU": {"name": "decoder", "units": 5, "return_sequences": True, "inputs": ["shifted", "encoder:1"]}},
        {"SimpleRNN": {"name": "rnn", "units": 5, "inputs": ["shifted", "encoder:1"]}},
        {"Dense": {"name": "head", "units": 3, "inputs": ["decoder"]}}], "outputs": ["head", "rnn", "encoder"]},
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", SEQ2SEQ)
def test_recurrent_states_replay_equals_the_engine(name, dtype):
    """Initial states (their gradients: the decoder's state buffers) and returned states (an
    LSTM's c, a view of what training keeps; h beside a sequence, a view of its last step)."""
    from profiler.engine.predict import states_need_engine
    from profiler.frontends.spec import from_dict
    spec = from_dict(SEQ2SEQ[name], source=f"{name}.yaml")
    assert not states_need_engine(spec, frozenset())   # the spec replay's own figures
    _assert_agrees(spec, dtype)


@pytest.mark.parametrize("outputs", [["sequence", "head"], ["head", "sequence"]])
def test_several_outputs_under_autocast(outputs):
    """Backward reaches the last output's loss first (autograd runs the later node first): under
    autocast, where each bfloat16 output's loss gradient is cast back, the order shows in the
    peak (before: 82 B off one way or the other, by the order of the outputs)."""
    from profiler.frontends.spec import from_dict
    spec = from_dict({"inputs": [{"name": "x", "shape": [5, 3]}], "layers": [
        {"GRU": {"name": "sequence", "units": 5, "return_sequences": True, "inputs": ["x"]}},
        {"Dense": {"name": "head", "units": 3, "inputs": ["sequence"]}}], "outputs": outputs}, source="m.yaml")
    fast = predict(spec, batch=3, amp="bfloat16", threads=2, optimizers=("sgd",))
    engine = spec_memory.replay(spec, batch=3, dtype="float32", loss="cross_entropy", device_kind="cpu",
                                optimizers=("sgd",), amp="bfloat16", checkpoint=(), threads=2, input_grad=False)
    assert fast.training["sgd"].bytes == engine.training["sgd"].bytes
    assert fast.first_step["sgd"].bytes == engine.first_step["sgd"].bytes
