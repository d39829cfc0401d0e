"""Architectures nobody here wrote, as users arrive with them: timm, torchvision, Hugging Face
transformers (tiny configs, random weights) and PyTorch's own modules.

Each entry is a factory of no arguments and the inputs of one sample, small enough for a 2-core
machine; ``benchmarks/test_accuracy_realworld.py`` predicts and measures each at two batch sizes
(inference, SGD and Adam steps) and writes ``results/accuracy_realworld.md``;
``benchmarks/test_accuracy_realworld_bf16.py`` does the same for ``LOW_PRECISION`` under each
oneDNN ISA (``results/accuracy_realworld_bf16.md``);
``tests/test_realworld.py`` runs a fast subset. Sizes are chosen for speed, not fidelity: a
kernel's choices depend on shapes, so the zoo keeps each architecture's own layer kinds
(depthwise 7×7 convolutions, patch embeddings, windowed attention, fused attention paths).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

#: image side for the convolutional and vision-transformer models
SIDE = 64


@dataclass(frozen=True)
class Entry:
    name: str
    family: str                          # "timm", "torchvision", "transformers", "torch"
    factory: Callable[[], Any]
    input_shape: Any                     # one sample's shape, or a list of shapes
    input_dtype: Any = None              # "int64" for token ids
    int_high: int | None = None
    batches: tuple[int, ...] = (1, 4)
    needs: tuple[str, ...] = field(default=())   # packages the factory imports


def _timm(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make():
        import timm
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    make.__qualname__ = f"timm.create_model({name!r})"
    return make


def _torchvision(name: str) -> Callable[[], Any]:
    def make():
        import torchvision
        return getattr(torchvision.models, name)(weights=None, num_classes=10)
    make.__qualname__ = f"torchvision.models.{name}"
    return make


VOCAB = 1000
SEQ = 32


def _hf(kind: str, attention: str) -> Callable[[], Any]:
    """A tiny Hugging Face model from a config (2 layers, width 64), random weights."""
    def make():
        import transformers as t
        small = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128)
        if kind == "gpt2":
            config = t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128)
            model_class = t.AutoModelForCausalLM
        elif kind == "llama":
            config = t.LlamaConfig(**small, num_key_value_heads=2)
            model_class = t.AutoModelForCausalLM
        elif kind == "bert":
            config = t.BertConfig(**small)
            model_class = t.AutoModelForMaskedLM
        elif kind == "distilbert":
            config = t.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                        max_position_embeddings=128)
            model_class = t.AutoModelForSequenceClassification
        elif kind == "vit":
            config = t.ViTConfig(image_size=SIDE, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
            model_class = t.AutoModelForImageClassification
        else:
            raise ValueError(kind)
        config.use_cache = False
        return model_class.from_config(config, attn_implementation=attention)
    make.__qualname__ = f"transformers {kind} ({attention})"
    return make


def _lstm():
    import torch
    return torch.nn.LSTM(32, 64, num_layers=2, batch_first=True)


def _gru():
    import torch
    return torch.nn.GRU(32, 64, batch_first=True)


def _encoder_layer():
    import torch
    return torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True)


def _attention():
    import torch
    return torch.nn.MultiheadAttention(64, 4, batch_first=True)


IMAGE = (3, SIDE, SIDE)
TOKENS = dict(input_shape=(SEQ,), input_dtype="int64", int_high=VOCAB)

ZOO: tuple[Entry, ...] = (
    Entry("timm resnet (test_resnet)", "timm", _timm("test_resnet"), IMAGE, needs=("timm",)),
    Entry("timm efficientnet (test_efficientnet)", "timm", _timm("test_efficientnet"), IMAGE, needs=("timm",)),
    Entry("timm mobilenetv3_small_050", "timm", _timm("mobilenetv3_small_050"), IMAGE, needs=("timm",)),
    Entry("timm convnext (test_convnext)", "timm", _timm("test_convnext"), IMAGE, needs=("timm",)),
    Entry("timm vit (test_vit)", "timm", _timm("test_vit", img_size=SIDE), IMAGE, needs=("timm",)),
    Entry("timm deit_tiny", "timm", _timm("deit_tiny_patch16_224", img_size=SIDE, depth=2), IMAGE, needs=("timm",)),
    Entry("timm swin_tiny", "timm", _timm("swin_tiny_patch4_window7_224", img_size=SIDE, window_size=4,
                                         depths=(1, 1, 1, 1)), IMAGE, needs=("timm",)),
    Entry("timm mixer_s16", "timm", _timm("mixer_s16_224", img_size=SIDE), IMAGE, needs=("timm",)),
    Entry("timm densenet121", "timm", _timm("densenet121"), IMAGE, needs=("timm",)),
    Entry("timm regnetx_002", "timm", _timm("regnetx_002"), IMAGE, needs=("timm",)),
    Entry("torchvision resnet18", "torchvision", _torchvision("resnet18"), IMAGE, needs=("torchvision",)),
    Entry("torchvision mobilenet_v3_small", "torchvision", _torchvision("mobilenet_v3_small"), IMAGE,
          needs=("torchvision",)),
    Entry("transformers gpt2 (eager)", "transformers", _hf("gpt2", "eager"), **TOKENS, needs=("transformers",)),
    Entry("transformers gpt2 (sdpa)", "transformers", _hf("gpt2", "sdpa"), **TOKENS, needs=("transformers",)),
    Entry("transformers llama (sdpa)", "transformers", _hf("llama", "sdpa"), **TOKENS, needs=("transformers",)),
    Entry("transformers llama (eager)", "transformers", _hf("llama", "eager"), **TOKENS, needs=("transformers",)),
    Entry("transformers bert (sdpa)", "transformers", _hf("bert", "sdpa"), **TOKENS, needs=("transformers",)),
    Entry("transformers bert (eager)", "transformers", _hf("bert", "eager"), **TOKENS, needs=("transformers",)),
    Entry("transformers distilbert (sdpa)", "transformers", _hf("distilbert", "sdpa"), **TOKENS,
          needs=("transformers",)),
    Entry("transformers vit (sdpa)", "transformers", _hf("vit", "sdpa"), IMAGE, needs=("transformers",)),
    Entry("torch nn.LSTM (2 layers)", "torch", _lstm, (20, 32)),
    Entry("torch nn.GRU", "torch", _gru, (20, 32)),
    Entry("torch nn.TransformerEncoderLayer", "torch", _encoder_layer, (SEQ, 64)),
    Entry("torch nn.MultiheadAttention", "torch", _attention, [(SEQ, 64), (SEQ, 64), (SEQ, 64)]),
)

#: the figures compared, as ``profile`` names them
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam",
         "train_first_step_peak_bytes_sgd", "train_first_step_peak_bytes_adam")


#: the low-precision subset (``test_accuracy_realworld_bf16.py``): (entry name, precision), where
#: precision is "autocast" (float32 weights, ``amp="bfloat16"``) or "bfloat16" (the model's dtype)
LOW_PRECISION: tuple[tuple[str, str], ...] = tuple(
    [(name, "autocast") for name in (
        "timm resnet (test_resnet)", "timm efficientnet (test_efficientnet)", "timm convnext (test_convnext)",
        "timm vit (test_vit)", "timm mixer_s16", "torchvision resnet18", "transformers gpt2 (sdpa)",
        "transformers llama (sdpa)", "transformers bert (eager)", "torch nn.LSTM (2 layers)",
        "torch nn.TransformerEncoderLayer", "torch nn.MultiheadAttention")]
    + [(name, "bfloat16") for name in (
        "timm resnet (test_resnet)", "timm efficientnet (test_efficientnet)", "timm convnext (test_convnext)",
        "timm vit (test_vit)", "transformers gpt2 (sdpa)", "torch nn.LSTM (2 layers)")])

#: the flag line a prediction carries for a kernel it cannot book (``MemoryPrediction.warnings``)
_AT_STAKE = re.compile(r"^NOT MODELLED: .*; up to about ([\d,]+) B per call")


def run(entry: Entry, batch: int, *, repeats: int = 1, precision: str = "float32") -> dict:
    """Predict and measure one entry at one batch size: each peak's predicted and measured bytes,
    and the parameter count beside ``sum(p.numel())`` of the real module. ``precision``:
    "float32", "autocast" (bfloat16) or "bfloat16". The row keeps the prediction's flags: the
    bytes at stake of each kernel it could not book (one call of each), and whether the whole
    low-precision prediction is flagged for the CPU's instruction set."""
    import profiler

    amp, dtype = ("bfloat16", "float32") if precision == "autocast" else (None, precision)
    result = profiler.profile(entry.factory, entry.input_shape, batch=batch, input_dtype=entry.input_dtype,
                              int_high=entry.int_high, warmup=1, repeats=repeats, name=entry.name,
                              amp=amp, dtype=dtype)
    module = entry.factory()
    counted = {id(p): p.numel() for p in module.parameters()}
    row = {"model": entry.name, "family": entry.family, "batch": batch,
           "params": result["totals"]["params"], "params_numel": sum(counted.values()),
           "forward_ms": result["measured"].get("forward_ms"),
           "predicted_time": result.get("predicted_time"), "time_error": result.get("time_error")}
    if precision != "float32":
        stakes = [_AT_STAKE.match(w) for w in result.get("warnings", [])]
        row.update(precision=precision, at_stake=sum(int(m[1].replace(",", "")) for m in stakes if m),
                   not_modelled=[w for w in result.get("warnings", []) if w.startswith("NOT MODELLED")],
                   isa_flagged=any("prediction is NOT MODELLED" in w for w in result.get("warnings", [])))
    for key in PEAKS:
        predicted, measured = result["predicted"][key], result["measured"][key]
        row[key] = {"predicted": predicted, "measured": measured, "error": (predicted - measured) / measured}
    return row


def summarize(rows: list[dict]) -> dict:
    """Error statistics over every peak figure, overall and per family (the zoo's targets:
    median |error| 0, maximum <= 1%, no under-prediction beyond 0.5%)."""
    import statistics

    def stats(members: list[dict]) -> dict:
        errors = [row[key]["error"] for row in members for key in PEAKS]
        if not errors:
            return {"figures": 0}
        return {"figures": len(errors), "exact": sum(e == 0 for e in errors),
                "median_abs_error": statistics.median(abs(e) for e in errors),
                "max_abs_error": max(abs(e) for e in errors),
                "under_predictions": sum(e < 0 for e in errors),
                "under_predictions_over_half_pct": sum(e < -0.005 for e in errors)}
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    return {"all": stats(rows), **{f: stats(m) for f, m in families.items()},
            "params_equal_numel": sum(r["params"] == r["params_numel"] for r in rows), "rows": len(rows)}


def markdown(rows: list[dict], summary: dict, machine: dict) -> str:
    from profiler.report import grid, units

    labels = {"inference_peak_bytes": "inference", "train_peak_bytes_sgd": "SGD step",
              "train_peak_bytes_adam": "Adam step", "train_first_step_peak_bytes_sgd": "first SGD step",
              "train_first_step_peak_bytes_adam": "first Adam step"}
    headers = ["Model", "batch", "params = Σ numel"] + [h for key in PEAKS
                                                         for h in (f"{labels[key]} measured", "error")]
    cells = [[row["model"], str(row["batch"]), "yes" if row["params"] == row["params_numel"] else "NO"]
             + [c for key in PEAKS for c in (units.nbytes(row[key]["measured"]), units.percent(row[key]["error"]))]
             for row in rows]
    lines = []
    for group, s in summary.items():
        if isinstance(s, dict) and s.get("figures"):
            lines.append(f"- {group}: {s['figures']} peak figures, {s['exact']} exact; median |error| "
                         f"{s['median_abs_error'] * 100:.3f}%, maximum |error| {s['max_abs_error'] * 100:.3f}%, "
                         f"{s['under_predictions']} under-predictions ({s['under_predictions_over_half_pct']} "
                         f"by more than 0.5%).")
    lines.append(f"- Parameter totals equal to `sum(p.numel())`: {summary['params_equal_numel']} of {summary['rows']}.")
    return ("# Memory prediction accuracy: real-world architectures (CPU, float32)\n\n"
            "Architectures the project did not write (timm, torchvision, Hugging Face transformers from tiny "
            "configs, PyTorch's own modules; `benchmarks/realworld_zoo.py`), random weights. Each peak "
            "predicted by `profiler.summary` (fake tensors, nothing allocated) and measured by `profile` on "
            "the CPU allocator. Error = (predicted − measured) / measured; one measurement per case (memory "
            "is deterministic).\n\n" + grid.markdown(headers, cells, right=[False] + [True] * (len(headers) - 1))
            + "\n\n" + "\n".join(lines) + "\n\n"
            f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} logical cores, "
            f"{machine.get('torch_threads')} torch threads, torch {machine.get('torch_version')}, modelsize "
            f"commit {machine.get('git_commit')}.\n")


def verdict(row: dict, key: str) -> str:
    """One low-precision peak: "exact", "over" (predicted above measured), "flagged" (under, but
    the prediction says NOT MODELLED: for the whole ISA, or with bytes at stake covering the gap)
    or "under" (silently under-predicted)."""
    predicted, measured = row[key]["predicted"], row[key]["measured"]
    if predicted == measured:
        return "exact"
    if predicted > measured:
        return "over"
    return "flagged" if row["isa_flagged"] or row["at_stake"] >= measured - predicted else "under"


def does_not_run(entry: Entry, batch: int, precision: str, error: Exception) -> dict:
    """The row of a case PyTorch itself cannot run here (oneDNN has no bfloat16 LSTM under
    ``ONEDNN_MAX_CPU_ISA=AVX2``): nothing to compare, said in the table."""
    return {"model": entry.name, "family": entry.family, "batch": batch, "precision": precision,
            "does_not_run": str(error).splitlines()[0]}


def summarize_low_precision(rows: list[dict]) -> dict:
    """Per precision and overall: :func:`summarize`'s error statistics plus how many peaks are
    exact, over, flagged and silently under, and the worst silent under-prediction (cases that
    do not run are counted apart)."""
    failed = [r for r in rows if "does_not_run" in r]
    rows = [r for r in rows if "does_not_run" not in r]
    def counts(members: list[dict]) -> dict:
        verdicts = [(verdict(r, k), r[k]["error"]) for r in members for k in PEAKS]
        silent = [-e for v, e in verdicts if v == "under"]
        # under, and covered only by the flag on the whole ISA (no kernel flag covering the gap)
        isa_only = [-r[k]["error"] for r in members for k in PEAKS
                    if r["isa_flagged"] and verdict({**r, "isa_flagged": False}, k) == "under"]
        return {**{v: sum(x == v for x, _ in verdicts) for v in ("exact", "over", "flagged", "under")},
                "max_silent_under": max(silent, default=0.0), "under_flagged_by_isa_only": len(isa_only),
                "max_under_flagged_by_isa_only": max(isa_only, default=0.0)}
    out = {"verdicts": counts(rows), **{p: counts([r for r in rows if r["precision"] == p])
                                        for p in dict.fromkeys(r["precision"] for r in rows)}}
    return {**summarize(rows), **out, "does_not_run": len(failed)}


def markdown_low_precision(runs: dict[str, dict]) -> str:
    """``results/accuracy_realworld_bf16.md``: one section per oneDNN ISA the subset ran under."""
    from profiler.report import grid, units

    labels = {"inference_peak_bytes": "inference", "train_peak_bytes_sgd": "SGD",
              "train_peak_bytes_adam": "Adam", "train_first_step_peak_bytes_sgd": "first SGD",
              "train_first_step_peak_bytes_adam": "first Adam"}
    sections = []
    for isa, run_ in runs.items():
        rows, summary, machine = run_["rows"], run_["summary"], run_["machine"]
        failed = [r for r in rows if "does_not_run" in r]
        rows = [r for r in rows if "does_not_run" not in r]
        headers = ["Model", "precision", "batch"] + [h for key in PEAKS for h in (f"{labels[key]} measured",
                                                                                   "error")] + [
            "NOT MODELLED flag", "at stake"]
        cells = [[r["model"], r["precision"], str(r["batch"])]
                 + [c for key in PEAKS for c in (units.nbytes(r[key]["measured"]),
                                                 units.percent(r[key]["error"]) + _MARK[verdict(r, key)])]
                 + ["ISA" if r["isa_flagged"] else ("kernel" if r["not_modelled"] else "no"),
                    units.nbytes(r["at_stake"]) if r["at_stake"] else "—"]
                 for r in rows]
        lines = []
        for group in ("verdicts", *(p for p in ("autocast", "bfloat16") if p in summary)):
            v = summary[group]
            lines.append(f"- {'all' if group == 'verdicts' else group}: {sum(v[k] for k in _MARK)} peaks: "
                         f"{v['exact']} exact, {v['over']} over, {v['flagged']} under but flagged, "
                         f"{v['under']} silently under (worst {v['max_silent_under'] * 100:.3f}%)"
                         + (f"; {v['under_flagged_by_isa_only']} of the flagged covered by the ISA flag alone "
                            f"(worst {v['max_under_flagged_by_isa_only'] * 100:.3f}% under)"
                            if v["under_flagged_by_isa_only"] else "") + ".")
        s = summary["all"]
        lines.append(f"- error: median |error| {s['median_abs_error'] * 100:.3f}%, maximum |error| "
                     f"{s['max_abs_error'] * 100:.3f}%, {s['under_predictions']} under-predictions "
                     f"({s['under_predictions_over_half_pct']} by more than 0.5%).")
        lines.append(f"- Parameter totals equal to `sum(p.numel())`: {summary['params_equal_numel']} of "
                     f"{summary['rows']}.")
        lines += [f"- Does not run in PyTorch here: {r['model']} ({r['precision']}, batch {r['batch']}): "
                  f"{r['does_not_run']}" for r in failed]
        sections.append(
            f"## oneDNN ISA {isa}\n\n" + grid.markdown(headers, cells, right=[False, False] + [True] * (len(headers) - 2))
            + "\n\n" + "\n".join(lines) + "\n\n"
            f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_logical_cores')} logical cores, "
            f"{machine.get('torch_threads')} torch threads, torch {machine.get('torch_version')}, modelsize "
            f"commit {machine.get('git_commit')}."
            + "".join(f" Re-run since: {note}." for note in run_.get("reruns", [])) + "\n")
    return ("# Memory prediction accuracy: real-world architectures in bfloat16 (CPU)\n\n"
            "The low-precision subset of `benchmarks/realworld_zoo.py` (`LOW_PRECISION`): autocast "
            "(float32 weights, `amp=\"bfloat16\"`) and plain bfloat16 weights, under each oneDNN ISA "
            "(`ONEDNN_MAX_CPU_ISA`, set before torch starts). Error = (predicted − measured) / measured, one "
            "measurement per case. Marks: none = exact, `↑` over-predicted, `⚑` under but flagged NOT MODELLED "
            "(for the whole ISA, or by kernel with bytes at stake covering the gap), `✗` silently under. "
            "\"at stake\": the bytes the prediction's kernel flags say may be missing (one call of each).\n\n"
            + "\n".join(sections))


_MARK = {"exact": "", "over": " ↑", "flagged": " ⚑", "under": " ✗"}
