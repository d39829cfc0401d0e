"""Scale-out memory (issue 13): each model of ``distributed.models()`` predicted and measured on 2
gloo ranks under every strategy and optimizer, one pytest-benchmark round per model; once all have
run, ``results/distributed.md/.json``. Nothing here fails on a missed figure: the table reports it
(the exact cases are asserted in tests/test_distributed.py)."""
import json

import pytest

from accuracy import RESULTS, _atomic
from distributed import markdown, models, run, summarize

MODELS = models()
ROWS: list[dict] = []
DONE: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(DONE) == len(MODELS):
        from profiler.measuring.machine import machine_info
        order = {name: i for i, (name, _, _) in enumerate(MODELS)}
        rows = sorted(ROWS, key=lambda r: order[r["model"]])
        summary = summarize(rows)
        machine = machine_info()
        _atomic(RESULTS / "distributed.json", json.dumps({"summary": summary, "rows": rows, "machine": machine},
                                                         indent=1))
        _atomic(RESULTS / "distributed.md", markdown(rows, summary, machine))



@pytest.mark.parametrize("name,reference,inputs", MODELS, ids=[m[0] for m in MODELS])
def test_distributed_accuracy(benchmark, name, reference, inputs):
    rows = benchmark.pedantic(run, args=(name, reference, inputs), rounds=1, iterations=1)
    ROWS.extend(rows)
    DONE.append(name)
    assert all(r["param_bytes"] == r["measured_param_bytes"] for r in rows)
