"""Predicted against measured time on this machine (issue 11): one pytest-benchmark round per
case, then ``results/time_accuracy.md/.json``. Nothing here fails on a missed figure: the table
reports it (the device model's arithmetic is asserted in tests/test_time_model.py)."""
import importlib.util
import json

import pytest

from accuracy import RESULTS, _atomic
from time_accuracy import BUILT_IN, ZOO, markdown, run_built_in, run_entry, summarize

CASES = [("built-in", name, batch) for name, batch in BUILT_IN] + \
        [("zoo", entry, batch) for entry in ZOO for batch in entry.batches
         if all(importlib.util.find_spec(n) for n in entry.needs)]
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(ROWS) == len(CASES):
        from profiler.measuring.machine import machine_info
        summary = summarize(ROWS)
        machine = machine_info()
        _atomic(RESULTS / "time_accuracy.json", json.dumps({"summary": summary, "rows": ROWS, "machine": machine},
                                                           indent=1))
        _atomic(RESULTS / "time_accuracy.md", markdown(ROWS, summary, machine))


@pytest.mark.parametrize("kind,model,batch", CASES,
                         ids=[f"{m if isinstance(m, str) else m.name}-b{b}" for _, m, b in CASES])
def test_time_prediction(benchmark, kind, model, batch):
    run = run_built_in if kind == "built-in" else run_entry
    ROWS.append(benchmark.pedantic(run, args=(model, batch), rounds=1, iterations=1))
