"""How fast a torch module is summarized (issue 3 §4–5).

(a) The LLaMA-7B-shaped decoder (6,738,415,616 parameters, 25.1 GiB in float32) from its factory,
    as a whole process: ``python -c "... summary('torch_models:llama_7b', ...)"``, wall time and
    peak RSS of the child (``os.wait4``). Target: under 5 s and 500 MiB.
(b) A ResNet-50-sized model with real weights at batch 32: our ``summary`` (parameters, shapes,
    MACs and every memory peak) against ``torchinfo.summary(model, input_size=(32, 3, 224, 224),
    verbose=0)``, timed in the same run, interleaved (the order alternates every round), garbage
    collection off while timing, medians reported. Target: ours at least 5× faster.

Figures go to ``benchmark.extra_info`` (saved with ``--benchmark-json``).
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import torch_models as Z  # noqa: E402
from profiler.engine.torch_module import summary  # noqa: E402

SEQ = 2048          # tokens per sample: LLaMA's context
CHILD = f"""
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, {str(TESTS)!r})
from profiler.engine.torch_module import summary
imported = time.perf_counter()
result = summary("torch_models:llama_7b", ({SEQ},), input_dtype="int64")
done = time.perf_counter()
print(json.dumps({{"params": result["totals"]["params"], "macs": result["totals"]["macs"],
                  "predicted": result["predicted"], "import_s": imported - start,
                  "summary_s": done - imported}}))
"""


def _spread(samples: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (samples[0],) * 3
    return {"median": statistics.median(samples), "iqr": q3 - q1, "min": min(samples),
            "max": max(samples), "rounds": len(samples)}


def test_llama_7b_summary_as_a_process(benchmark):
    rounds: list[dict] = []

    def run_child() -> None:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                                 cwd=TESTS.parent, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        assert child.returncode == 0, out
        report = json.loads(out)
        rounds.append({"wall_s": wall, "max_rss_mib": usage.ru_maxrss / 1024, **report})

    benchmark.pedantic(run_child, rounds=5, iterations=1, warmup_rounds=1)
    measured = rounds[1:]                  # the warm-up round (cold file cache) is not counted
    wall = _spread([r["wall_s"] for r in measured])
    rss = _spread([r["max_rss_mib"] for r in measured])
    benchmark.extra_info.update({
        "what": f"python -c summary('torch_models:llama_7b', ({SEQ},), input_dtype='int64')",
        "wall_s": wall, "max_rss_mib": rss,
        "import_s": _spread([r["import_s"] for r in measured]),
        "summary_s": _spread([r["summary_s"] for r in measured]),
        "predicted": measured[-1]["predicted"]})
    assert all(r["params"] == Z.LLAMA_7B_PARAMS for r in rounds)
    assert wall["median"] < 5.0, wall
    assert rss["max"] < 500, rss


def test_resnet50_summary_against_torchinfo(benchmark):
    torchinfo = pytest.importorskip("torchinfo")
    torch.manual_seed(0)
    model = Z.resnet50()                   # real weights: 25,557,032 parameters, 97.5 MiB
    ours: list[float] = []
    theirs: list[float] = []

    def timed(fn) -> float:
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        finally:
            gc.enable()

    def run_ours() -> None:
        summary(model, (3, 224, 224), batch=32)

    def run_torchinfo() -> None:
        torchinfo.summary(model, input_size=(32, 3, 224, 224), verbose=0)

    def pair() -> None:
        order = [(run_ours, ours), (run_torchinfo, theirs)]
        if len(ours) % 2:                  # alternate which one runs first
            order.reverse()
        for fn, samples in order:
            samples.append(timed(fn))

    run_ours(), run_torchinfo()           # warm-up: imports, caches, thread pools
    benchmark.pedantic(pair, rounds=7, iterations=1)
    speedup = statistics.median(theirs) / statistics.median(ours)
    benchmark.extra_info.update({
        "what": "ResNet-50 (real weights) at batch 32, CPU, interleaved rounds",
        "ours_s": _spread(ours), "torchinfo_s": _spread(theirs), "speedup_of_medians": speedup,
        "threads": torch.get_num_threads()})
    res = summary(model, (3, 224, 224), batch=32, optimizers=())
    assert res["totals"]["parameter_elements"] == Z.RESNET50_PARAMS
    assert speedup >= 5, (speedup, ours, theirs)
