"""Predicted against measured memory for the seed's three models (issue 2's accuracy figures).

Each case is one pytest-benchmark round (predict + build + measure + compare); the module writes
results/accuracy.md and .json when all cases have run. Target: every peak within 10%.
"""
import pytest

from accuracy import Case, run_case, write

SEED_CASES = ([Case("digits", b) for b in (1, 32, 128)] + [Case("dense-514", b) for b in (1, 32, 128)]
              + [Case("conv-224", b) for b in (1, 8)])
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(ROWS) == len(SEED_CASES):
        write("accuracy", "Memory prediction accuracy: the seed's models (CPU, float32)", ROWS)


@pytest.mark.parametrize("case", SEED_CASES, ids=lambda c: c.label)
def test_seed_accuracy(benchmark, case):
    row = benchmark.pedantic(run_case, args=(case,), rounds=1, iterations=1)
    ROWS.append(row)
    for key in ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam"):
        assert abs(row[key]["error"]) <= 0.10, (case.label, key, row[key])
    assert row["param_bytes"]["error"] == 0
