"""Summaries of torch modules against PyTorch itself.

Parameters against ``sum(p.numel() for p in module.parameters())`` and ``module.buffers()``, MACs
against ``FlopCounterMode`` on the meta device, shapes against a real forward pass, memory peaks
against the same step run on real CPU tensors (and the runner's independent tracker), and the
user's module against a copy of itself taken before (nothing moved, changed or left behind).
"""
from __future__ import annotations

import copy
from dataclasses import replace
import re
import resource
import time

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import torch_models as Z
from profiler.errors import ModelsizeError
from profiler.engine.kernels.onednn_rnn import onednn_lstm_workspace_bytes
from profiler.engine.module_memory import outputs, predict_memory
from profiler.report.tables import render
from profiler.engine.torch_module import load_factory, summary

BATCH = 3
PEAKS = ("inference_peak_bytes", "train_peak_bytes_sgd", "train_peak_bytes_adam",
         "train_first_step_peak_bytes_sgd", "train_first_step_peak_bytes_adam")

_RESULTS: dict[str, dict] = {}


def result(name: str) -> dict:
    """The summary of a case at BATCH, every leaf listed (computed once per test session)."""
    if name not in _RESULTS:
        factory, shape, input_dtype = Z.CASES[name]
        _RESULTS[name] = summary(factory, shape, batch=BATCH, input_dtype=input_dtype)
    return _RESULTS[name]


def shapes_of(name: str) -> list[tuple[int, ...]]:
    shape = Z.CASES[name][1]
    return list(shape) if isinstance(shape, list) else [shape]


def real_inputs(name: str, batch: int = BATCH) -> list[torch.Tensor]:
    return [Z.make_input(s, Z.CASES[name][2], batch, high=7) for s in shapes_of(name)]


def real_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return Z.CASES[name][0]()


# ----------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("name", Z.CASES)
def test_parameters_are_torchs_own_count(name):
    model = real_model(name)
    params = sum(p.numel() for p in model.parameters())           # tied parameters once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    totals = result(name)["totals"]
    assert totals["parameter_elements"] == params
    assert totals["buffer_elements"] == buffers
    assert totals["params"] == params                           # buffers are not parameters
    assert totals["buffers"] == buffers and totals["convention"] == "torch"
    assert totals["trainable_params"] == trainable
    assert totals["non_trainable_params"] == params - trainable
    assert totals["param_bytes"] == sum(t.numel() * t.element_size() for t in model.parameters())
    assert totals["buffer_bytes"] == sum(t.numel() * t.element_size() for t in model.buffers())
    assert result(name)["predicted"]["param_bytes"] == totals["param_bytes"] + totals["buffer_bytes"]
    rows = result(name)["layers"]
    for key in ("params", "trainable_params", "buffers", "buffer_bytes", "param_bytes"):
        assert sum(r[key] for r in rows) == totals[key], key


def test_at_least_fifteen_cases_cover_the_hard_modules():
    assert len(Z.CASES) >= 15
    kinds = {type(m).__name__ for name in Z.CASES for m in real_model(name).modules()}
    assert {"MultiheadAttention", "TransformerEncoder", "LSTM", "ConvTranspose2d", "Embedding",
            "MatmulMix"} <= kinds
    lstm = real_model("lstm_bidirectional").lstm
    assert lstm.bidirectional and lstm.num_layers == 2
    assert len(real_model("transformer_encoder").layers) == 2
    assert real_model("grouped_conv")[0].groups == 4


def test_tied_weights_are_counted_once_and_marked_shared():
    rows = {r["name"]: r for r in result("tied_lm")["layers"]}
    # embed 50×16 = 800 (counted here), mix 16×16 + 16 = 272, head's weight is embed's
    assert rows["embed"]["params"] == 800 and rows["embed"]["shared"]
    assert rows["head"]["params"] == 0 and rows["head"]["shared"]
    assert "shared with embed.weight" in rows["head"]["formula"]
    assert not rows["mix"]["shared"]
    assert result("tied_lm")["totals"]["params"] == 800 + 272


def test_multihead_attention_owns_its_input_projection():
    rows = {r["name"]: r for r in result("self_attention")["layers"]}
    # in_proj_weight 48×16 + in_proj_bias 48 = 816 belong to the MultiheadAttention itself
    # (torchinfo reports 0 for it); out_proj 16×16 + 16 = 272 is a child that is never called
    assert rows["attn"]["params"] == 816 and rows["attn"]["own_part_only"]
    assert rows["attn.out_proj"]["params"] == 272 and rows["attn.out_proj"]["calls"] == 0
    # all its MACs are its own: projections 3·(6·16·16)·3 + attention 2·(4·6·6·4)·3 + output
    # projection 6·16·16·3 = 6,912 + 3,456 + 4,608 = ... per batch of 3
    assert rows["attn"]["macs"] == result("self_attention")["totals"]["macs"]


def test_frozen_parameters_and_buffers_are_not_trainable():
    totals = result("frozen_features")["totals"]
    # frozen: conv 6×3×3×3 + 6 = 168, batch norm 6 + 6 = 12; buffers 6 + 6 + 1 = 13 (not
    # parameters); trainable head 4×216 + 4 = 868
    assert totals["trainable_params"] == 868
    assert totals["non_trainable_params"] == 168 + 12
    assert totals["buffers"] == 13


def test_float16_halves_floating_parameters_only():
    full = summary(Z.resnet_tiny, (3, 32, 32), optimizers=())["totals"]
    half = summary(Z.resnet_tiny, (3, 32, 32), dtype="float16", optimizers=())["totals"]
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in Z.resnet_tiny().modules())
    assert half["params"] == full["params"]
    assert full["param_bytes"] == 2 * half["param_bytes"]
    # buffers: the running statistics halve, num_batches_tracked (one int64 each) does not
    assert full["buffer_bytes"] - batch_norms * 8 == 2 * (half["buffer_bytes"] - batch_norms * 8)


# ----------------------------------------------------------------------------------------------
# MACs and shapes


@pytest.mark.parametrize("name", Z.CASES)
def test_macs_are_flop_counter_mode_halved_on_meta(name):
    factory, _, input_dtype = Z.CASES[name]
    with torch.device("meta"):
        model = factory()
    model.eval()
    dtype = torch.int64 if input_dtype == "int64" else torch.float32
    inputs = [torch.empty((BATCH, *s), dtype=dtype, device="meta") for s in shapes_of(name)]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    totals = result(name)["totals"]
    assert totals["flops"] == counter.get_total_flops()
    assert totals["macs"] == counter.get_total_flops() // 2
    assert sum(r["flops"] for r in result(name)["layers"]) == totals["flops"]


def test_macs_by_hand():
    # batch 3, 7 tokens: mix 3·7·16·16 = 5,376; head 3·7·16·50 = 16,800
    assert result("tied_lm")["totals"]["macs"] == 5_376 + 16_800
    # grouped conv: 12 out channels × 7×7 positions × (8/4 in channels × 3×3) × 3 samples
    # = 31,752; then 12 × 5×5 × (12/3 × 3×3) × 3 = 32,400
    rows = result("grouped_conv")["layers"]
    assert [r["macs"] for r in rows] == [31_752, 0, 32_400]
    # the custom module's three torch.matmul calls are its own MACs: (N·T·dim·rank =
    # 3·6·12·5 = 1,080) + (N·rank·T·dim = 1,080) + (N·rank·dim·rank = 3·5·12·5 = 900)
    rows = {r["name"]: r for r in result("matmul_mix")["layers"]}
    assert rows["(root)"]["macs"] == 1_080 + 1_080 + 900


@pytest.mark.parametrize("name", Z.CASES)
def test_output_shapes_match_a_real_forward(name):
    model = real_model(name).eval()
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[str, tuple[int, ...]] = {}

    def record(module, args, output):
        found = outputs(output) if not isinstance(output, torch.Tensor) else [output]
        if id(module) in names and found:
            seen.setdefault(names[id(module)], tuple(found[0].shape))

    # with gradients on: in eval mode under no_grad the CPU takes fused fast paths
    # (TransformerEncoderLayer, MultiheadAttention) that call no child module
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        out = model(*real_inputs(name))
    finally:
        handle.remove()
    res = result(name)
    assert res["output_shape"][0] == [None, *tuple(outputs(out)[0].shape)[1:]]
    for row in res["layers"]:
        key = "" if row["name"] == "(root)" else row["name"]
        if key not in seen:
            assert row["calls"] == 0, row["name"]
            continue
        real = seen[key]
        expected = [None, *real[1:]] if real and real[0] == BATCH else list(real)
        assert row["output_shape"] == expected, row["name"]


# ----------------------------------------------------------------------------------------------
# The tree and its depth


def test_depth_folds_subtrees_and_every_depth_sums_to_the_totals():
    totals = result("resnet_tiny")["totals"]
    for depth in (0, 1, 2, 3, None):
        res = summary(Z.resnet_tiny, (3, 32, 32), batch=BATCH, depth=depth, optimizers=())
        rows = res["layers"]
        assert all(depth is None or r["depth"] <= depth for r in rows)
        for key in ("params", "trainable_params", "macs", "flops", "param_bytes"):
            assert sum(r[key] for r in rows) == totals[key], (depth, key)
    (root,) = summary(Z.resnet_tiny, (3, 32, 32), batch=BATCH, depth=0, optimizers=())["layers"]
    assert root["name"] == "(root)" and root["params"] == totals["params"]
    by_name = {r["name"]: r for r in summary(Z.resnet_tiny, (3, 32, 32), batch=BATCH, depth=1,
                                                optimizers=())["layers"]}
    # layer1 folds one bottleneck: convolutions 1×1 8→8 (64), 3×3 8→8 (576), 1×1 8→32 (256),
    # downsample 1×1 8→32 (256); batch norms of 8 channels (8 + 8 weights) twice and of 32
    # channels (32 + 32) twice; their statistics (8 + 8 + 1 counter, 32 + 32 + 1) are buffers
    assert by_name["layer1"]["params"] == 64 + 576 + 256 + 256 + 2 * 16 + 2 * 64 == 1_312
    assert by_name["layer1"]["buffers"] == 2 * 17 + 2 * 65
    assert by_name["layer1"]["formula"].endswith("over 12 modules")


def test_every_leaf_at_unlimited_depth():
    rows = result("resnet_tiny")["layers"]
    model = Z.resnet_tiny()
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    assert [r["name"] for r in rows] == leaves


# ----------------------------------------------------------------------------------------------
# Memory: predicted on fake tensors, counted on real ones


@pytest.mark.parametrize("name", ["tied_lm", "multihead_attention", "transformer_encoder",
                                  "lstm_bidirectional", "grouped_conv", "embedding_bag",
                                  "resnet_tiny", "llama_tiny"])
def test_peaks_equal_the_same_steps_on_real_cpu_tensors(name):
    model = real_model(name)
    inputs = real_inputs(name)
    with torch.no_grad():
        outs = outputs(model(*inputs))
    targets = [torch.randint(0, o.shape[-1], o.shape[:-1]) for o in outs]
    names = {id(m): n for n, m in model.named_modules()}
    import contextlib
    real = predict_memory(model, inputs, targets, loss="cross_entropy",
                          fake_mode=contextlib.nullcontext(), names=names)
    predicted = result(name)["predicted"]
    assert predicted["inference_peak_bytes"] == real.inference.bytes
    for opt in ("sgd", "adam"):
        assert predicted[f"train_peak_bytes_{opt}"] == real.training[opt].bytes
        assert predicted[f"train_first_step_peak_bytes_{opt}"] == real.first_step[opt].bytes
    for row in result(name)["layers"]:
        assert row["kept_for_backward_bytes"] == real.saved_bytes.get(
            "" if row["name"] == "(root)" else row["name"], 0)


@pytest.mark.parametrize("name", ["tied_lm", "gru", "llama_tiny"])
def test_steady_peaks_equal_the_runners_tensor_tracker(name):
    """Independent: two real steps per optimizer, tracked by profiler.measuring.memory_trace."""
    from profiler.measuring.runner import measure
    shapes = [(BATCH, *s) for s in shapes_of(name)]
    measured = measure(real_model(name), input_shape=shapes if len(shapes) > 1 else shapes[0],
                       input_dtype="int64" if Z.CASES[name][2] == "int64" else "float",
                       int_high=7, optimizers=("sgd", "adam"), warmup=0, repeats=1)
    predicted = result(name)["predicted"]
    if name == "gru":
        # under a dispatch mode ATen's ``linear`` of nn.GRU's transposed input adds its bias out
        # of place (``isTensorSubclassLike`` is true for every tensor while a mode runs), the
        # untracked run the engine predicts adds it in place: measured (one run), the allocator's
        # inference peak 3,804 B, the tracker's 4,224 B
        assert predicted["inference_peak_bytes"] == measured.inference_peak_bytes
    else:
        assert predicted["inference_peak_bytes"] == measured.inference_tensor_peak_bytes
    assert predicted["train_peak_bytes_sgd"] == measured.train_tensor_peak_bytes_sgd
    assert predicted["train_peak_bytes_adam"] == measured.train_tensor_peak_bytes_adam


def test_linear_peaks_by_hand():
    # nn.Linear(784, 10) at batch 32 (tests/test_measure.py derives the same figures):
    # parameters 31,400, x 100,352, out 1,280, y 256
    res = summary(lambda: nn.Linear(784, 10), (784,), batch=32)
    p = res["predicted"]
    assert p["inference_peak_bytes"] == 31_400 + 100_352 + 1_280
    # backward of the weight: params, x, y, out, loss 4, seed 4, d out 1,280, new gradients
    assert p["train_peak_bytes_sgd"] == 31_400 + 100_352 + 256 + 1_280 + 4 + 4 + 1_280 + 31_400
    # Adam: params, grads, exp_avg, exp_avg_sq, two float32 steps, x, y; then out, loss, and
    # sqrt(v) and sqrt(v)/bc2 of the weight (2 × 31,360) at once, with bc2 wrapped in a 0-d
    # double (8) and cast to float32 (4) for the division
    assert p["train_peak_bytes_adam"] == 4 * 31_400 + 8 + 100_352 + 256 + 1_280 + 4 + 2 * 31_360 + 8 + 4
    assert res["peaks"]["train_adam"]["at"] == "optimizer step (adam)"
    assert res["peaks"]["train_adam"]["breakdown"]["optimizer_state"] == 2 * 31_400 + 8


def test_every_optimizer_of_the_catalog_equals_the_runners_allocator_peaks():
    """Adagrad makes its state in its constructor: both steps start with it. Adam and Adagrad
    divide by a Python number, wrapped in a 0-d double and cast (12 bytes, allocator level)."""
    from profiler.engine.optimizers import CATALOG
    from profiler.measuring.runner import measure

    def factory():
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    torch.manual_seed(0)
    measured = measure(factory(), input_shape=(4, 64), optimizers=tuple(CATALOG), warmup=0, repeats=1)
    predicted = summary(factory, (64,), batch=4, optimizers=tuple(CATALOG))["predicted"]
    for name in CATALOG:
        for key in (f"train_peak_bytes_{name}", f"train_first_step_peak_bytes_{name}"):
            assert predicted[key] == getattr(measured, key), key


def test_onednn_lstm_workspace_matches_the_real_kernel():
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.mkldnn_rnn_layer.default:
                seen.append((tuple(args[0].shape), args[10], out[3].numel()))
            return out

    for i, h, t, n in [(8, 10, 9, 3), (300, 33, 17, 2), (16, 256, 5, 8)]:
        lstm = nn.LSTM(i, h, batch_first=True)
        with Spy():
            lstm(torch.randn(n, t, i))
    assert seen, "the CPU LSTM did not use oneDNN"
    for (t, n, i), h, nbytes in seen:
        assert onednn_lstm_workspace_bytes(t, n, i, h) == nbytes


# ----------------------------------------------------------------------------------------------
# The user's module is left alone


def test_a_real_module_is_not_moved_changed_or_hooked():
    model = real_model("resnet_tiny")
    model.train()
    before = copy.deepcopy(model.state_dict())
    params = {n: (p, p.requires_grad) for n, p in model.named_parameters()}
    hooks = (dict(torch.nn.modules.module._global_forward_hooks),
             dict(torch.nn.modules.module._global_forward_pre_hooks))
    summary(model, (3, 32, 32), batch=2, dtype="bfloat16")
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key].device.type == "cpu" and after[key].dtype == value.dtype
        assert torch.equal(after[key], value), key
    for n, p in model.named_parameters():
        assert p is params[n][0] and p.requires_grad == params[n][1] and p.grad is None
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert (dict(torch.nn.modules.module._global_forward_hooks),
            dict(torch.nn.modules.module._global_forward_pre_hooks)) == hooks


def test_a_module_and_its_factory_give_the_same_summary():
    from_module = summary(real_model("lstm_bidirectional"), (9, 8), batch=BATCH)
    from_factory = result("lstm_bidirectional")
    for key in ("layers", "totals", "predicted", "peaks", "output_shape"):
        assert from_module[key] == from_factory[key], key


def test_global_hooks_are_removed_when_the_forward_fails():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no")

    count = len(torch.nn.modules.module._global_forward_hooks)
    with pytest.raises(ModelsizeError, match="forward pass on the meta device failed"):
        summary(Broken, (3,))
    assert len(torch.nn.modules.module._global_forward_hooks) == count


class _AuxHeadInTraining(nn.Module):
    """Two outputs in training, one in eval (as torchvision's Inception v3 with its aux logits)."""

    def __init__(self):
        super().__init__()
        self.body, self.aux = nn.Linear(6, 4), nn.Linear(6, 9)

    def forward(self, x):
        return (self.body(x), self.aux(x)) if self.training else self.body(x)


@pytest.mark.parametrize("factory", [Z.SdpaBlock, _AuxHeadInTraining])
@pytest.mark.parametrize("cpus", [1, 2])
def test_targets_are_the_inference_outputs_whichever_pass_makes_them(monkeypatch, factory, cpus):
    """Without targets, training makes them from its own forward pass (so that it need not wait
    for inference, replayed beside it); they are the inference outputs' targets, as the runner's,
    also where training returns more: the prediction is the one given those targets."""
    from profiler import forked
    from profiler.engine import module_memory
    from profiler.engine.torch_module import _fake_run
    monkeypatch.setattr(forked, "_cpus", lambda: cpus)
    replays = []
    replay = module_memory._replay_training
    monkeypatch.setattr(module_memory, "_replay_training", lambda *a: replays.append(1) or replay(*a))

    def predicted(given: bool):
        with torch.device("meta"):
            meta = factory()
        mode, fake, inputs, names = _fake_run(meta, [(6, 6) if factory is _AuxHeadInTraining else (6, 16)],
                                              [torch.float32], 2)
        with mode:
            targets = [module_memory.make_target("cross_entropy", o.shape, o.dtype)
                       for o in outputs(fake.eval()(*inputs))] if given else None
        return predict_memory(fake, inputs, targets, loss="cross_entropy", fake_mode=mode, names=names,
                              record_costs=True)

    def figures(prediction):   # targets made later get later serials: each timeline by its bytes
        rounded = {k: t.peak(lambda n: -(-n // 512) * 512) for k, t in prediction.timelines.items()}
        return replace(prediction, timelines={k: t.compact() for k, t in prediction.timelines.items()}), rounded

    made = predicted(given=False)
    assert len(replays) == (2 if factory is _AuxHeadInTraining else 1)   # made again from inference's
    assert figures(made) == figures(predicted(given=True))


def test_a_failing_forward_names_the_meta_pass_while_training_replays_beside(monkeypatch):
    """With a child replaying inference and the trace, the trace's error still comes first."""
    from profiler import forked
    monkeypatch.setattr(forked, "_cpus", lambda: 2)

    class Broken(nn.Linear):
        def forward(self, x):
            raise RuntimeError("no")

    with pytest.raises(ModelsizeError, match="forward pass on the meta device failed: RuntimeError: no"):
        summary(lambda: Broken(3, 3), (3,))

    class Text(nn.Linear):
        def forward(self, x):
            return "text"

    with pytest.raises(ModelsizeError, match="no loss can be computed"):
        summary(lambda: Text(3, 3), (3,))


# ----------------------------------------------------------------------------------------------
# Factories, the 7B decoder, the result dict


def test_llama_7b_from_a_factory_on_meta_exactly():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss    # KiB on Linux
    start = time.perf_counter()
    res = summary("torch_models:llama_7b", (128,), input_dtype="int64", optimizers=())
    elapsed = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert res["totals"]["params"] == Z.LLAMA_7B_PARAMS == 6_738_415_616
    assert res["totals"]["param_bytes"] == 4 * Z.LLAMA_7B_PARAMS       # 25.1 GiB never allocated
    assert elapsed < 30 and grown < 400 * 1024, (elapsed, grown)
    rows = {r["name"]: r for r in res["layers"]}
    assert rows["layers.0.feed_forward.up"]["formula"] == "weight 11008×4096"
    assert rows["output"]["output_shape"] == [None, 128, 32000]


def test_load_factory_imports_and_finds_the_callable():
    assert load_factory("torch_models:llama_tiny") is Z.llama_tiny
    assert load_factory("torch_models:LlamaConfig") is Z.LlamaConfig


@pytest.mark.parametrize("spec, message", [
    ("torch_models", r"field 'factory': bad factory. Expected \"package.module:factory\""),
    ("no_such_module_xyz:f", r"cannot import 'no_such_module_xyz'"),
    ("torch_models:nope", r"module 'torch_models' has no attribute 'nope'"),
    ("torch_models:LLAMA_7B_PARAMS", r"the factory is not callable"),
])
def test_load_factory_errors_name_the_problem(spec, message):
    with pytest.raises(ModelsizeError, match=message):
        load_factory(spec)


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shape": (0, 3)}, r"field 'input_shape': bad input shape"),
    ({"input_shape": "3,4"}, r"field 'input_shape': bad input shape"),
    ({"input_shape": (4,), "batch": 0}, r"field 'batch': must be a positive integer"),
    ({"input_shape": (4,), "dtype": "float64"}, r"field 'dtype': unknown dtype"),
    ({"input_shape": (4,), "input_dtype": "int8"}, r"field 'input_dtype': unknown input dtype"),
    ({"input_shape": (4,), "loss": "hinge"}, r"field 'loss': unknown loss"),
    ({"input_shape": (4,), "depth": -1}, r"field 'depth'"),
    ({"input_shape": (4,), "amp": "float8"}, r"field 'amp': unknown mixed-precision dtype"),
    ({"input_shape": (4,), "amp": "bfloat16", "dtype": "bfloat16"}, r"field 'dtype': mixed precision keeps"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ModelsizeError, match=message):
        summary(lambda: nn.Linear(4, 2), **kwargs)


def test_a_factory_that_returns_no_module_is_refused():
    with pytest.raises(ModelsizeError, match=re.escape("did not return a torch.nn.Module")):
        summary(lambda: 3, (4,))


def test_the_result_renders_as_a_prediction_does():
    res = result("self_attention")
    assert {"model", "batch", "dtype", "loss", "device_kind", "layers", "totals", "predicted",
            "peaks"} <= res.keys()
    for row in res["layers"]:
        assert {"index", "name", "type", "depth", "input_shape", "output_shape", "params",
                "trainable_params", "non_trainable_params", "formula", "macs", "flops",
                "param_bytes", "activation_bytes", "output_bytes", "kept_for_backward_bytes",
                "shared"} <= row.keys()
    for peak in res["peaks"].values():
        assert set(peak) == {"bytes", "at", "breakdown", "by_dtype"}
        assert sum(peak["by_dtype"].values()) == peak["bytes"] == sum(peak["breakdown"].values())
        assert sum(peak["breakdown"].values()) == peak["bytes"]
    text = render(res, explain=True)
    assert "attn (MultiheadAttention)" in text
    assert f"Total params: {res['totals']['params']:,}" in text


@pytest.mark.parametrize("zoo", ["gru", "transformer"])
def test_built_recurrent_and_attention_modules_summarize(zoo):
    # the builder's recurrent and attention modules ask autocast for its dtype: on the meta device
    # (shape tracing) there is none to ask; the torch path must trace them and agree with the spec's
    from profiler import predict
    from profiler import summary, workflow
    from profiler.frontends.build import build
    spec = workflow.resolve_spec(f"benchmarks/zoo/{zoo}.yaml")
    from_module = summary(build(spec), spec.inputs[0].shape, batch=2, input_dtype=spec.inputs[0].dtype)
    from_spec = predict(spec, batch=2, threads=torch.get_num_threads())
    assert from_module["peaks"]["train_adam"]["bytes"] == from_spec.training["adam"].bytes


def test_queries_answered_first_are_in_no_table():
    """``StorageLog`` answers metadata queries (``prim.device``) before its bookkeeping: exact only
    while no table books, fixes or flags them."""
    from profiler.engine import module_memory
    from profiler.engine.kernels import aten_cpu
    tables = (module_memory._CPU_RESULT, aten_cpu._WORKSPACE, aten_cpu._UNMODELLED,
              module_memory._IN_PLACE_IN_BACKWARD)
    assert all(not set(module_memory._QUERIES) & set(table) for table in tables)
    assert not set(module_memory._QUERIES) & (module_memory._SAVES_OTHER | module_memory._LIFT)


class _TransposedLinear(nn.Module):
    """A linear layer over a transposed (not contiguous) input: ATen's ``linear`` cannot flatten
    it, runs ``matmul`` and adds the bias in place (``output.add_(bias)``); written by hand,
    ``x @ w.t() + b`` is two Python operators and adds out of place."""
    def __init__(self, by_hand: bool):
        super().__init__()
        self.lin, self.by_hand = nn.Linear(32, 48), by_hand

    def forward(self, x):
        x = x.transpose(0, 1)
        return x @ self.lin.weight.t() + self.lin.bias if self.by_hand else self.lin(x)


@pytest.mark.parametrize("by_hand", [False, True], ids=["F.linear", "by hand"])
def test_a_linear_of_a_transposed_input_adds_its_bias_as_the_cpu_does(by_hand):
    """Measured (one run each, CPU allocator): inference over (4, 20, 32) peaks at 42,176 B
    through ``nn.Linear`` (the fake run's out-of-place add made it 47,296 B before the fix: one
    (20, 4, 48) float32 result, 15,360 B, alive with the input's copy instead of after it) and at
    47,296 B by hand."""
    import profiler
    result = profiler.profile(lambda: _TransposedLinear(by_hand), (20, 32), batch=4, warmup=1, repeats=1)
    peaks = [k for k in result["predicted"] if "peak_bytes" in k and k in result["measured"]]
    assert len(peaks) == 5
    assert {k: result["predicted"][k] for k in peaks} == {k: result["measured"][k] for k in peaks}
    assert result["measured"]["inference_peak_bytes"] == (47_296 if by_hand else 42_176)
