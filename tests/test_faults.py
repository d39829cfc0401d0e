"""Fault injection through the CLI (issue 10): a factory that hangs, a real allocator error under a
lowered address-space limit, and running out of memory in the forward and in the backward pass.
Each ends in one line naming what failed, with its exit status, and saves nothing. The failing
factories are in ``tests/fault_models.py``; the CLI runs from ``tests/`` (it imports from there)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.frontends import source

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _modelsize(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "profiler", *args], cwd=TESTS, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _one_line(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


@pytest.mark.parametrize("how", [["--factory-timeout", "1"], []])
def test_a_factory_that_hangs_is_one_line_and_exit_2(how):
    env = {} if how else {source.FACTORY_TIMEOUT_ENV: "1"}
    start = time.monotonic()
    out = _modelsize("summary", "fault_models:sleeps_forever", "--input-shape", "8", *how, env=env)
    assert time.monotonic() - start < 60
    assert out.returncode == 2
    line = _one_line(out)
    assert "fault_models:sleeps_forever" in line and "the factory did not return within 1 s" in line


def test_a_hanging_factory_is_stopped_in_the_measuring_child_too():
    """measure --force predicts nothing: the factory is first called in the child, which keeps the limit."""
    out = _modelsize("measure", "fault_models:sleeps_forever", "--input-shape", "8", "--force",
                     "--factory-timeout", "1")
    assert out.returncode == 2
    assert "the factory did not return within 1 s" in _one_line(out)


def test_the_deadline_is_lifted_and_the_alarm_restored():
    import signal
    previous = signal.getsignal(signal.SIGALRM)
    with source.factory_deadline("the factory", "f"):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is previous


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_factory_timeout_is_refused(value, monkeypatch):
    monkeypatch.setenv(source.FACTORY_TIMEOUT_ENV, value)
    with pytest.raises(source.SpecError, match="bad factory timeout"):
        source.factory_timeout()


@pytest.mark.parametrize("factory, shape, says", [
    # the child lowers RLIMIT_AS to its use + 256 MiB, then builds a 1 GiB weight: malloc fails
    ("under_address_limit", "16384", "building the model does not fit in the memory of cpu"),
    ("oom_in_forward", "8", "inference does not fit in the memory of cpu"),
    ("oom_in_backward", "8", "training step with sgd does not fit in the memory of cpu (it ran out in the "
                             "backward pass)"),
])
def test_a_real_allocator_error_is_does_not_fit_in_one_line(factory, shape, says, tmp_path):
    runs = tmp_path / "runs"
    out = _modelsize("profile", f"fault_models:{factory}", "--input-shape", shape, "--batch", "2", "--repeats", "1",
                     "--optimizers", "sgd", "--results-dir", str(runs))
    assert out.returncode == 3, out.stderr
    line = _one_line(out)
    assert f"fault_models:{factory} at batch 2 does not fit: {says}" in line
    assert "can't allocate memory" in line
    assert not runs.exists() or not any(runs.iterdir())   # nothing saved
