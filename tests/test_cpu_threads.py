"""The thread count every command assumes equals the one torch will run with (issue 9).

Each case starts a fresh process (the variables are read when torch starts) and compares
``threads_from_environment`` there with ``torch.get_num_threads()``; then checks that a spec's
``summary`` under ``OMP_NUM_THREADS=1`` predicts what one thread allocates.
"""
import json
import os
import subprocess
import sys

import pytest

from profiler.cpu_threads import default_threads

CASES = [{}, {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "4"},
         {"OMP_NUM_THREADS": "8"}, {"MKL_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"},
         {"OMP_NUM_THREADS": "0"}, {"OMP_NUM_THREADS": "1,2"}, {"OMP_NUM_THREADS": "many"}]

PROBE = ("import os, json; from profiler.cpu_threads import threads_from_environment as rule; "
         "before = rule(os.environ); import torch; print(json.dumps([before, torch.get_num_threads()]))")


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(extra)
    return env


@pytest.mark.parametrize("extra", CASES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "unset")
def test_rule_equals_torch(extra):
    out = subprocess.run([sys.executable, "-c", PROBE], env=_env(extra), capture_output=True, text=True,
                         check=True)
    predicted, torch_threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert predicted == torch_threads


def test_torch_answers_once_imported():
    import torch
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_summary_follows_omp_num_threads(tmp_path):
    """A bfloat16 Dense stack: oneDNN's gemm scratchpad is per thread, so the peak depends on the
    thread count; the CLI under OMP_NUM_THREADS=1 predicts what --threads 1 predicts."""
    spec = tmp_path / "mlp.json"
    spec.write_text(json.dumps({"name": "mlp", "input_shape": [256],
                                "layers": [{"Dense": {"units": 256}}, {"Dense": {"units": 10}}]}))

    def peaks(extra, *args):
        out = subprocess.run([sys.executable, "-m", "profiler", "summary", str(spec), "--dtype", "bfloat16",
                              "--batch", "64", "--format", "json", *args], env=_env(extra),
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)["predicted"]

    one = peaks({}, "--threads", "1")
    two = peaks({}, "--threads", "2")
    assert peaks({"OMP_NUM_THREADS": "1"}) == one
    if (os.cpu_count() or 1) >= 2:
        assert one != two   # otherwise the test could not tell the settings apart
