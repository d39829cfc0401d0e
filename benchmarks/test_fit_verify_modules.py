"""``modelsize fit --verify`` for torch modules: the batch solved from two replays, then measured.

Torch models reach ``fit`` as factories: the accuracy zoo's models built as modules, a ResNet
written here, timm's and Hugging Face's (tiny configs, random weights). For each, ``fit`` reads
every allocation as ``a × batch + c`` from fake-tensor replays at batches 2 and 3, solves the
largest batch within the CPU budget, proves it by replays at b and b + 1, and ``--verify`` builds
the model and measures the same mode at b and b + 1 (CPU allocator peak). Written to
results/fit_verify_modules.md when every case has run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from accuracy import RESULTS, _atomic
from profiler import workflow
from profiler.frontends.build import build
from profiler.frontends.source import ModuleSource, resolve
from profiler.measuring.machine import machine_info
from profiler.planning import fit
from profiler.report import grid
from profiler.report.fit_tables import mode_label

ZOO = Path(__file__).parent / "zoo"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def zoo_module(name: str) -> ModuleSource:
    spec = workflow.resolve_spec(str(ZOO / f"{name}.yaml"))
    return ModuleSource(f"{name} (module)", lambda: build(spec), tuple(i.shape for i in spec.inputs),
                        tuple(i.dtype for i in spec.inputs),
                        tuple(workflow.token_range(spec, i.name) for i in spec.inputs))


def timm_resnet():
    import timm
    return timm.create_model("test_resnet", num_classes=10)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                                      use_cache=False))


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128, vocab_size=256,
                                        max_position_embeddings=64, use_cache=False))


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    memory: str

    def source(self) -> ModuleSource:
        if self.model in ("mlp", "cnn", "cnn-bn", "resnet", "transformer", "lstm", "gru", "embedding", "unet"):
            return zoo_module(self.model)
        if self.model == "resnet_tiny":
            return resolve("torch_models:resnet_tiny", input_shape=(3, 32, 32))
        if self.model == "timm test_resnet":
            return resolve(timm_resnet, input_shape=(3, 32, 32), name=self.model)
        return resolve({"gpt2": gpt2, "llama": llama}[self.model], input_shape=(32,), input_dtype="int64",
                       name=self.model)

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode} {self.memory}"


CASES = [
    Case("mlp", "adam", "11.85MB"), Case("cnn", "adam", "14MB"), Case("cnn-bn", "sgd", "10MB"),
    Case("resnet", "adam", "20MB"), Case("transformer", "inference", "8MiB"), Case("gru", "sgd", "2MB"),
    Case("unet", "adam", "12MiB"), Case("resnet_tiny", "adam", "24MiB"), Case("resnet_tiny", "inference", "8MiB"),
    Case("timm test_resnet", "sgd", "32MiB"), Case("gpt2", "adam", "16MiB"), Case("llama", "sgd", "16MiB"),
]
ROWS: list[dict] = []


def run_case(case: Case) -> dict:
    source = case.source()
    answer = fit.solve(source, fit.make_budget(memory=case.memory), mode=case.mode)
    v = fit.verify(source, answer)
    return {"case": case.label, "model": case.model, "mode": case.mode, "memory": case.memory,
            "budget_bytes": answer.budget.usable_bytes, "batch": answer.batch, "replays": answer.predict_calls,
            "method": answer.method, "notes": list(answer.notes), "verification": v.as_dict(),
            "safe": v.fits_at_batch is True, "tight": v.over_at_next is True, "held": v.held is True}


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(ROWS) == len(CASES):
        write(ROWS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_fit_verify_module(benchmark, case):
    row = benchmark.pedantic(run_case, args=(case,), rounds=1, iterations=1)
    ROWS.append(row)
    assert row["batch"] >= 1, row["case"]


def write(rows: list[dict]) -> None:
    headers = ["Model", "Mode", "Budget", "Batch b", "Replays", "Predicted at b", "Measured at b",
               "Predicted at b+1", "Measured at b+1", "Held?"]
    cells = []
    for r in rows:
        at, nxt = r["verification"]["at_batch"], r["verification"]["next"]
        cells.append([r["model"], mode_label(r["mode"]), f"{r['memory']} ({r['budget_bytes']:,} B)", f"{r['batch']:,}",
                      str(r["replays"]), f"{at['predicted_bytes']:,}", f"{at['measured_bytes']:,}",
                      f"{nxt['predicted_bytes']:,}", f"{nxt['measured_bytes']:,}",
                      "yes" if r["held"] else ("no: over at b" if not r["safe"] else "no: b+1 fits too")])
    n = len(rows)
    exact = sum(all(c["measured_bytes"] == c["predicted_bytes"] for c in (r["verification"]["at_batch"],
                                                                          r["verification"]["next"])) for r in rows)
    refits = [f"{r['case']}: {'; '.join(r['notes'])}" for r in rows if r["notes"]]
    machine = machine_info()
    text = (f"# `modelsize fit --verify` for torch modules (CPU)\n\n"
            f"Each batch is solved from fake-tensor replays (every allocation as a × batch + c from batches 2 "
            f"and 3, proven by replays at b and b + 1; 'Replays' counts them all), then the model is built "
            f"by its factory and the same mode measured at b and b + 1 (CPU allocator peak, float32).\n\n"
            f"{grid.markdown(headers, cells, right=[False, False] + [True] * 7 + [False])}\n\n"
            f"Over {n} cases: held in {sum(r['held'] for r in rows)}/{n}; measured(b) <= budget in "
            f"{sum(r['safe'] for r in rows)}/{n}; predicted == measured at b and b + 1 in {exact}/{n}.\n\n"
            + ("Refitted near the answer: " + " | ".join(refits) + "\n\n" if refits else "")
            + f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} logical cores, torch "
            f"{machine.get('torch_version')}, modelsize commit {machine.get('git_commit')}.\n")
    _atomic(RESULTS / "fit_verify_modules.md", text)
