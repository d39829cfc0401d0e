"""Predicted against measured time on this machine (issue 11): one pytest-benchmark round per
case and pass, each case measured in a process of its own, then ``results/time_accuracy.md/.json``.
The passes run one after another over all cases (this machine's timings drift up to 40 % over
minutes: a case's passes are minutes apart) and each case's figure is the median of its passes.
Each pass starts with a calibration (``modelsize calibrate``) that prices its cases: a calibration
is the machine's state when it was taken, and two taken 40 minutes apart priced the same
measurements 14 % and 24-31 % off.
Each pass's calibration is kept beside the table (``results/time_calibrations/pass<n>.json``): a
change to the pricing can then be scored offline on the same measurements and the same
calibrations, without a calibration's own spread in the comparison.
Nothing here fails on a missed figure: the table reports it (the device model's arithmetic is
asserted in tests/test_time_model.py). ``MODELSIZE_TIME_PASSES`` sets the passes (default 3)."""
import importlib.util
import json
import os

import pytest

from accuracy import RESULTS, _atomic
from time_accuracy import BUILT_IN, ZOO, markdown, merge, run_isolated, summarize

PASSES = int(os.environ.get("MODELSIZE_TIME_PASSES", "3"))
CASES = [("built-in", name, batch) for name, batch in BUILT_IN] + \
        [("zoo", entry.name, batch) for entry in ZOO for batch in entry.batches
         if all(importlib.util.find_spec(n) for n in entry.needs)]
ROWS: dict[tuple[str, int], list[dict]] = {}
CALIBRATED: set[int] = set()   # the passes whose calibration was taken


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(ROWS) == len(CASES) and all(len(rows) == PASSES for rows in ROWS.values()):
        from profiler.measuring.machine import machine_info
        rows = [merge(ROWS[(name, batch)]) for _, name, batch in CASES]
        summary = summarize(rows)
        machine = machine_info()
        _atomic(RESULTS / "time_accuracy.json", json.dumps({"summary": summary, "rows": rows, "machine": machine},
                                                           indent=1))
        _atomic(RESULTS / "time_accuracy.md", markdown(rows, summary, machine))


def _keep_calibration(number: int) -> None:
    """The calibration the pass just took, copied beside the table."""
    import torch

    from profiler.measuring.calibrate import cache_path, machine_key
    kept = RESULTS / "time_calibrations"
    kept.mkdir(parents=True, exist_ok=True)
    _atomic(kept / f"pass{number + 1}.json",
            cache_path(machine_key(torch.get_num_threads())).read_text(encoding="utf-8"))


@pytest.mark.parametrize("number,kind,model,batch", [(n, *case) for n in range(PASSES) for case in CASES],
                         ids=[f"pass{n + 1}-{m}-b{b}" for n in range(PASSES) for _, m, b in CASES])
def test_time_prediction(benchmark, number, kind, model, batch):
    if number not in CALIBRATED:
        # as a user calibrates: ``modelsize calibrate`` in a process of its own (inside this test
        # process, a run's last calibration read 1.27 µs a call of the optimizer's update where
        # fresh processes minutes before read 0.65-0.75)
        import subprocess
        import sys
        subprocess.run([sys.executable, "-m", "profiler", "calibrate"], check=True, capture_output=True)
        CALIBRATED.add(number)
        _keep_calibration(number)
    ROWS.setdefault((model, batch), []).append(
        benchmark.pedantic(run_isolated, args=(kind, model, batch), rounds=1, iterations=1))
