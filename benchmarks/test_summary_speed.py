"""How fast prediction is: the whole `summary` path (parse, check, trace, memory model, render).

Issue 2's figure: a 1,000-layer Dense spec in well under a second.
"""
import json

import pytest

from profiler.frontends import spec as S
from profiler.engine.predict import predict
from profiler.report.tables import render


def deep_dense_text(depth: int) -> str:
    layers = [{"Dense": {"units": 64, "activation": "relu"}} for _ in range(depth)]
    return json.dumps({"name": f"dense-{depth}", "input_shape": [64], "layers": layers})


@pytest.mark.parametrize("depth", [1000])
def test_summary_of_deep_dense_spec(benchmark, depth):
    text = deep_dense_text(depth)

    def summary():
        model = S.loads(text, as_json=True)
        return render(predict(model, batch=32).as_dict(), explain=True)

    out = benchmark(summary)
    # 64 × (64 + 1) = 4,160 per layer
    assert f"Total params: {4160 * depth:,}" in out
    assert benchmark.stats.stats.median < 1.0
