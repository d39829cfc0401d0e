"""``modelsize fit --verify`` on the CPU: is the solved batch right when measured?

Each case solves for the largest batch b whose predicted peak fits a CPU budget, then builds the
model and measures the peak of the same mode at b and b + 1 (one pytest-benchmark round per case:
solve + two measurements). Required: measured(b) <= budget every time (the answer is safe). Target:
measured(b + 1) > budget in at least 80% of the cases (the answer is the largest). The module writes
results/fit_verify.md when every case has run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from accuracy import RESULTS, _atomic
from profiler.planning import fit
from profiler.frontends import models
from profiler.measuring.machine import machine_info
from profiler.report import grid
from profiler.report.fit_tables import mode_label
from profiler.frontends.spec import ModelSpec, load, loads

EXTRA = {
    "mlp-dropout-ln": """
name: mlp-dropout-ln
input_shape: [256]
layers:
  - Dense: {units: 512, activation: relu}
  - Dropout: {rate: 0.5}
  - Dense: {units: 256, activation: gelu}
  - LayerNormalization: {}
  - Dense: {units: 10}
""",
    "embedding-pool": """
name: embedding-pool
input_shape: [64]
layers:
  - Embedding: {input_dim: 5000, output_dim: 64}
  - GlobalAveragePooling1D: {}
  - Dense: {units: 4}
""",
    "text-conv1d": """
name: text-conv1d
input_shape: [64]
layers:
  - Embedding: {input_dim: 5000, output_dim: 64}
  - Conv1D: {filters: 64, kernel_size: 5, activation: relu}
  - GlobalAveragePooling1D: {}
  - Dense: {units: 4}
""",
}
#: A case whose *prediction* is known to be wrong on the CPU sets ``known`` to say why: it is then
#: expected to fail (strictly: a fixed prediction makes it pass, and the mark must go). None now:
#: Conv1D's workspace, the last one, is predicted since the rules model oneDNN's.


ZOO = Path(__file__).parent / "zoo"


def spec_of(name: str) -> ModelSpec:
    if name in EXTRA:
        return loads(EXTRA[name], source=f"<{name}>")
    if (ZOO / f"{name}.yaml").exists():   # the accuracy zoo's models, by name
        return load(ZOO / f"{name}.yaml")
    return models.builtin(name)


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    memory: str            # as typed after --memory
    loss: str = "cross_entropy"
    known: str = ""        # a known misprediction (see above)
    dtype: str = "float32"
    amp: str | None = None

    @property
    def precision(self) -> str:
        return f"autocast {self.amp}" if self.amp else self.dtype

    @property
    def label(self) -> str:
        return (f"{self.model} {self.mode} {self.memory}" + (f" {self.loss}" if self.loss != "cross_entropy" else "")
                + (f" {self.precision}" if self.precision != "float32" else ""))


CASES = [
    Case("digits", "adam", "500kB"), Case("digits", "sgd", "1MiB"), Case("digits", "inference", "4MB"),
    Case("dense-514", "adam", "9MB"), Case("dense-514", "sgd", "4MiB"), Case("dense-514", "inference", "3MB"),
    Case("conv-224", "adam", "400MB"), Case("conv-224", "sgd", "1GB"), Case("conv-224", "inference", "700MB"),
    Case("bn-conv", "adam", "30MB"), Case("bn-conv", "sgd", "20MiB"), Case("bn-conv", "inference", "10MB"),
    Case("mlp-dropout-ln", "adam", "6MB"), Case("mlp-dropout-ln", "sgd", "3MiB", loss="mse"),
    Case("mlp-dropout-ln", "inference", "2MB"),
    Case("embedding-pool", "adam", "8MB"), Case("embedding-pool", "sgd", "5MiB"),
    Case("embedding-pool", "inference", "3MB"),
    Case("text-conv1d", "adam", "12MB"),
    # the accuracy zoo (benchmarks/zoo), budgets putting b between ~10 and a few hundred
    Case("mlp", "adam", "11.85MB"), Case("mlp", "inference", "2.3MB"),
    Case("cnn", "adam", "14MB"), Case("cnn", "inference", "8MiB"),
    Case("cnn-bn", "adam", "12MiB"), Case("cnn-bn", "sgd", "10MB"), Case("cnn-bn", "inference", "5MB"),
    Case("resnet", "adam", "20MB"), Case("resnet", "sgd", "16MiB"), Case("resnet", "inference", "6MiB"),
    Case("transformer", "adam", "40MB"), Case("transformer", "inference", "8MiB"),
    Case("lstm", "adam", "3.5MiB"), Case("lstm", "inference", "1MiB"),
    Case("gru", "adam", "3MiB"), Case("gru", "sgd", "2MB"),
    Case("embedding", "adam", "7.5MiB"), Case("embedding", "inference", "1.7MB"),
    Case("unet", "adam", "12MiB"), Case("unet", "inference", "6MiB"),
    # low precision: bfloat16 models and autocast (float32 weights)
    Case("cnn-bn", "adam", "6MiB", dtype="bfloat16"), Case("gru", "sgd", "1MiB", dtype="bfloat16"),
    Case("mlp", "inference", "1.27MB", dtype="bfloat16"),
    Case("resnet", "adam", "12MiB", amp="bfloat16"), Case("transformer", "adam", "40MB", amp="bfloat16"),
    Case("lstm", "adam", "3MiB", amp="bfloat16"), Case("unet", "inference", "4MiB", amp="bfloat16"),
]
ROWS: list[dict] = []


def run_case(case: Case) -> dict:
    spec = spec_of(case.model)
    answer = fit.solve(spec, fit.make_budget(memory=case.memory), mode=case.mode, loss=case.loss, dtype=case.dtype,
                       amp=case.amp)
    v = fit.verify(spec, answer)
    return {"case": case.label, "model": case.model, "mode": case.mode, "loss": case.loss, "memory": case.memory,
            "precision": case.precision,
            "known": case.known,
            "budget_bytes": answer.budget.usable_bytes, "batch": answer.batch, "predict_calls": answer.predict_calls,
            "fit": answer.as_dict(), "verification": v.as_dict(),
            "safe": v.fits_at_batch is True, "tight": v.over_at_next is True, "held": v.held is True}


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(ROWS) == len(CASES):
        write(ROWS)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=c.known, strict=True)) if c.known
                                  else c for c in CASES], ids=lambda c: c.label)
def test_fit_verify(benchmark, case):
    row = benchmark.pedantic(run_case, args=(case,), rounds=1, iterations=1)
    ROWS.append(row)
    assert row["batch"] >= 1, row["case"]
    assert row["safe"], ("measured peak at the solved batch is over the budget", row["verification"])


def test_hit_rates():
    """Runs last: every answer safe where the prediction is right; at least 80% of them the largest."""
    if len(ROWS) != len(CASES):
        pytest.skip("not every case ran")
    summary = summarize(ROWS)
    assert summary["safe"] == summary["cases"]
    assert summary["tight"] >= 0.8 * summary["cases"]


def summarize(rows: list[dict]) -> dict:
    """Counts over the cases without a known misprediction, and those apart."""
    right = [r for r in rows if not r["known"]]
    exact = sum(all(c["measured_bytes"] == c["predicted_bytes"]
                    for c in (r["verification"]["at_batch"], r["verification"]["next"])) for r in right)
    return {"cases": len(right), "safe": sum(r["safe"] for r in right), "tight": sum(r["tight"] for r in right),
            "held": sum(r["held"] for r in right), "exact": exact,
            "known_mispredicted": len(rows) - len(right),
            "known_mispredicted_safe": sum(r["safe"] for r in rows if r["known"])}


def markdown(rows: list[dict], summary: dict, machine: dict) -> str:
    headers = ["Model", "Mode", "Budget", "Batch b", "Predicted at b", "Measured at b", "Predicted at b+1",
               "Measured at b+1", "Held?"]
    cells = []
    for r in rows:
        at, nxt = r["verification"]["at_batch"], r["verification"]["next"]
        mode = mode_label(r["mode"]) + (f", {r['loss']}" if r["loss"] != "cross_entropy" else "") \
            + (f", {r['precision']}" if r.get("precision", "float32") != "float32" else "")
        cells.append([r["model"], mode, f"{r['memory']} ({r['budget_bytes']:,} B)", f"{r['batch']:,}",
                      f"{at['predicted_bytes']:,}", _measured(at), f"{nxt['predicted_bytes']:,}",
                      _measured(nxt), ("yes" if r["held"] else ("no: over at b" if not r["safe"] else
                                                                    "no: b+1 fits too"))
                      + (" (known misprediction)" if r["known"] else "")])
    table = grid.markdown(headers, cells, right=[False, False, True, True, True, True, True, True, False])
    n = summary["cases"]
    return (f"# Capacity planning checked: `modelsize fit --verify` on the CPU\n\n"
            f"For each case `fit` solves for the largest batch b whose *predicted* peak fits the budget "
            f"(exponential + binary search over predictions, nothing built), then the model is built and "
            f"the same mode measured at b and b + 1 (CPU allocator peak; float32 unless the mode says "
            f"otherwise; training: the larger of the first and the steady step). Bytes are exact integers.\n\n{table}\n\n"
            f"Over {n} cases: measured(b) <= budget in {summary['safe']}/{n} (required: all); "
            f"measured(b + 1) > budget in {summary['tight']}/{n} (target: at least 80%); the measured peak "
            f"equals the predicted one at both b and b + 1 in {summary['exact']}/{n}.{_known(rows)}\n\n"
            f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} logical cores, torch "
            f"{machine.get('torch_version')}, modelsize commit {machine.get('git_commit')}. kB and MB are "
            f"powers of 1000, MiB of 1024.\n")


def _known(rows: list[dict]) -> str:
    known = [r for r in rows if r["known"]]
    if not known:
        return ""
    return (f" Not counted: {len(known)} case(s) whose prediction is known to be wrong "
            f"({'; '.join(sorted({r['known'] for r in known}))}); "
            f"fit's answer was over the budget when measured in {sum(not r['safe'] for r in known)} of them, "
            f"and --verify says so.")


def _measured(check: dict) -> str:
    if check["measured_bytes"] is not None:
        return f"{check['measured_bytes']:,}"
    return "does not fit" if check["does_not_fit"] else f"skipped ({check['skipped']})"


def write(rows: list[dict]) -> None:
    machine = machine_info()
    summary = summarize(rows)
    RESULTS.mkdir(exist_ok=True)
    _atomic(RESULTS / "fit_verify.md", markdown(rows, summary, machine))
