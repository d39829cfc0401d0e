"""Hugging Face ``config.json`` files as model sources, against transformers and PyTorch.

Tiny configs written to a temporary folder (no hub, no weights). For each family: the model the
factory builds on the meta device is summarized, its parameter count is transformers' own (a real
CPU build's ``parameters()``), and a real forward pass gives the output shape the summary
predicts. Then the errors, one line each.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers   # noqa: E402

import profiler   # noqa: E402
from profiler.errors import SpecError   # noqa: E402
from profiler.frontends.hf_config import HF_TASKS, ModuleSource, is_hf_config, load_hf_config   # noqa: E402

BATCH = 2
SEQ = 16

LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=32, num_hidden_layers=2,
             num_attention_heads=2, intermediate_size=64, vocab_size=128)

#: name -> (config.json contents, load_hf_config keyword arguments, the class built, its input)
FAMILIES = {
    "gpt2": (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=2, n_embd=32, n_head=2,
                  vocab_size=100, n_positions=64), {}, "GPT2LMHeadModel", ((SEQ,), "int64", 100)),
    "bert-masked-lm": (dict(model_type="bert", architectures=["BertForMaskedLM"], hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
                            max_position_embeddings=64), {}, "BertForMaskedLM", ((SEQ,), "int64", 100)),
    "llama-eager": ({**LLAMA, "attn_implementation": "eager"}, {}, "LlamaForCausalLM", ((SEQ,), "int64", 128)),
    "llama-sdpa": ({**LLAMA, "attn_implementation": "sdpa"}, {}, "LlamaForCausalLM", ((SEQ,), "int64", 128)),
    "distilbert-seq-cls": (dict(model_type="distilbert", architectures=["DistilBertForSequenceClassification"],
                                dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=100,
                                max_position_embeddings=64, num_labels=3), {},
                           "DistilBertForSequenceClassification", ((SEQ,), "int64", 100)),
    "vit-image-cls": (dict(model_type="vit", architectures=["ViTForImageClassification"], hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                           patch_size=8, num_channels=3, num_labels=5), {},
                      "ViTForImageClassification", ((3, 32, 32), "float", None)),
    "t5-seq2seq": (dict(model_type="t5", architectures=["T5ForConditionalGeneration"], d_model=32, d_ff=64,
                        d_kv=16, num_layers=2, num_heads=2, vocab_size=100), {},
                   "T5ForConditionalGeneration", ((SEQ,), "int64", 100)),
    "bart-seq2seq": (dict(model_type="bart", architectures=["BartForConditionalGeneration"], d_model=32,
                          encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100, max_position_embeddings=64),
                     {}, "BartForConditionalGeneration", ((SEQ,), "int64", 100)),
}


def write(tmp_path: Path, data: object, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def source_of(tmp_path: Path, family: str) -> ModuleSource:
    data, kwargs, _, _ = FAMILIES[family]
    return load_hf_config(write(tmp_path, data), **({"seq_len": SEQ} | kwargs if data["model_type"] != "vit"
                                                     else kwargs))


def real_input(source: ModuleSource, batch: int = BATCH) -> torch.Tensor:
    (shape,), (kind,), (high,) = source.input_shapes, source.input_dtypes, source.int_high
    if kind == "int64":
        return torch.randint(0, high, (batch, *shape))
    return torch.randn(batch, *shape)


def summarize(source: ModuleSource, **kwargs) -> dict:
    return profiler.summary(source.factory, input_shape=list(source.input_shapes),
                            input_dtype=list(source.input_dtypes), batch=BATCH, **({"optimizers": ()} | kwargs))


# ----------------------------------------------------------------------------------------------
# Families


@pytest.mark.parametrize("family", FAMILIES)
def test_family_predicts_what_transformers_builds(tmp_path, family):
    source = source_of(tmp_path, family)
    _, _, class_name, (shape, kind, high) = FAMILIES[family]
    assert source.name == f"config.json ({class_name})"
    assert source.input_shapes == (shape,) and source.input_dtypes == (kind,) and source.int_high == (high,)

    with torch.device("meta"):
        meta = source.factory()
    assert type(meta).__name__ == class_name
    assert all(p.is_meta for p in meta.parameters())

    result = summarize(source)
    torch.manual_seed(0)
    real = source.factory()
    assert not any(p.is_meta for p in real.parameters())
    assert result["totals"]["parameter_elements"] == sum(p.numel() for p in real.parameters())
    # the same names as transformers' own model: the factory returns the model itself
    assert [n for n, _ in meta.named_parameters()] == [n for n, _ in real.named_parameters()]

    real.eval()
    with torch.no_grad():
        out = real(real_input(source))
    assert isinstance(out, tuple) and all(isinstance(o, torch.Tensor) for o in out)
    logits = out[0]
    assert [None, *logits.shape[1:]] == result["output_shape"][0]
    assert logits.shape[0] == BATCH
    assert len(result["output_shape"]) == len(out)


def test_output_shapes_are_the_heads(tmp_path):
    """What comes back, in order: a language model's logits over the vocabulary, a classifier's
    over its labels, a seq2seq model's logits and then its encoder's last hidden state."""
    expected = {"gpt2": [[None, SEQ, 100]], "llama-sdpa": [[None, SEQ, 128]],
                "distilbert-seq-cls": [[None, 3]], "vit-image-cls": [[None, 5]],
                "t5-seq2seq": [[None, SEQ, 100], [None, SEQ, 32]]}
    for family, shapes in expected.items():
        assert summarize(source_of(tmp_path, family))["output_shape"] == shapes, family


def test_attention_implementation_comes_from_the_config(tmp_path):
    for attn in ("eager", "sdpa"):
        model = load_hf_config(write(tmp_path, {**LLAMA, "attn_implementation": attn})).factory()
        assert model.config._attn_implementation == attn
    # an override from the caller wins over the config's
    model = load_hf_config(write(tmp_path, {**LLAMA, "attn_implementation": "sdpa"}),
                           attn_implementation="eager").factory()
    assert model.config._attn_implementation == "eager"


def test_config_is_set_for_a_forward_pass(tmp_path):
    """No key/value cache (that is for generation), no nested outputs, torch's default dtype."""
    source = load_hf_config(write(tmp_path, {**LLAMA, "use_cache": True, "torch_dtype": "bfloat16",
                                             "output_hidden_states": True}))
    model = source.factory()
    assert model.config.use_cache is False and model.config.output_hidden_states is False
    assert {p.dtype for p in model.parameters()} == {torch.get_default_dtype()}
    with torch.no_grad():
        out = model(real_input(source))
    assert len(out) == 1   # the logits only: no cache, no hidden states


def test_file_and_python_give_the_same_model(tmp_path):
    source = load_hf_config(write(tmp_path, LLAMA))
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=128)
    by_hand = transformers.AutoModelForCausalLM.from_config(config)
    built = source.factory()
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in by_hand.parameters())
    assert {n: p.shape for n, p in built.named_parameters()} == {n: p.shape for n, p in by_hand.named_parameters()}
    result = summarize(source)
    assert result["totals"]["parameter_elements"] == sum(p.numel() for p in by_hand.parameters())


def test_defaults_and_sizes(tmp_path):
    # seq_len: min(max positions, 128); T5 has no absolute positions: 128
    assert load_hf_config(write(tmp_path, LLAMA)).input_shapes == ((128,),)
    assert load_hf_config(write(tmp_path, {**LLAMA, "max_position_embeddings": 40})).input_shapes == ((40,),)
    assert load_hf_config(write(tmp_path, FAMILIES["t5-seq2seq"][0])).input_shapes == ((128,),)
    assert load_hf_config(write(tmp_path, FAMILIES["gpt2"][0])).input_shapes == ((64,),)   # n_positions
    assert load_hf_config(write(tmp_path, LLAMA), seq_len=7).input_shapes == ((7,),)
    # an image model is built for the size asked (a ViT's position embeddings depend on it)
    vit = load_hf_config(write(tmp_path, FAMILIES["vit-image-cls"][0]), image_size=48)
    assert vit.input_shapes == ((3, 48, 48),)
    with torch.no_grad():
        assert vit.factory().eval()(torch.randn(1, 3, 48, 48))[0].shape == (1, 5)


def test_task_from_the_architecture_or_given(tmp_path):
    no_arch = {k: v for k, v in LLAMA.items() if k != "architectures"}
    assert load_hf_config(write(tmp_path, no_arch)).name == "config.json (LlamaModel)"
    assert load_hf_config(write(tmp_path, LLAMA), task="seq-cls").name == \
        "config.json (LlamaForSequenceClassification)"
    # an architecture transformers does not know by name: its suffix names the task
    assert load_hf_config(write(tmp_path, {**LLAMA, "architectures": ["MyLlamaForCausalLM"]})).name == \
        "config.json (LlamaForCausalLM)"
    assert set(HF_TASKS) >= {"causal-lm", "masked-lm", "seq-cls", "token-cls", "seq2seq-lm", "image-cls", "base"}


def test_a_built_model_copies_and_keeps_its_call(tmp_path):
    source = source_of(tmp_path, "t5-seq2seq")
    model = source.factory().eval()
    twin = copy.deepcopy(model)
    assert isinstance(twin, transformers.T5ForConditionalGeneration) and type(twin) is type(model)
    x = real_input(source)
    with torch.no_grad():
        assert torch.equal(model(x)[0], twin(x)[0])


def test_a_bare_model_returns_its_hidden_states(tmp_path):
    bert = {k: v for k, v in FAMILIES["bert-masked-lm"][0].items() if k != "architectures"}
    source = load_hf_config(write(tmp_path, bert), seq_len=SEQ)
    result = summarize(source)
    assert result["output_shape"] == [[None, SEQ, 32], [None, 32]]   # last hidden state, pooled
    assert result["totals"]["parameter_elements"] == sum(p.numel() for p in source.factory().parameters())


def test_training_is_predicted_on_an_encoder_decoder(tmp_path):
    """The memory replay (fake tensors, a training step) runs through the seq2seq call too."""
    result = summarize(source_of(tmp_path, "bart-seq2seq"), optimizers=("sgd",))
    assert result["predicted"]["train_peak_bytes_sgd"] > result["predicted"]["inference_peak_bytes"] > 0


def test_fake_tensors_make_the_masks_a_real_run_makes(tmp_path, monkeypatch):
    """sdpa runs causal without a materialized mask on real inputs; it must on fake ones too while
    the engine traces (profiler.engine.value_reads), and transformers' mask functions are its own
    again afterwards."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import masking_utils

    from profiler.engine.value_reads import answered_as_real
    before = {n: getattr(masking_utils, n) for n in
              ("find_packed_sequence_indices", "_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa")}
    masks: list[object] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    source = source_of(tmp_path, "llama-sdpa")
    with torch.no_grad():
        source.factory()(real_input(source))
    assert masks and all(m is None for m in masks)
    masks.clear()
    with FakeTensorMode(), torch.no_grad():
        source.factory()(torch.empty(BATCH, SEQ, dtype=torch.int64))
    assert masks and not all(m is None for m in masks)   # left alone, transformers makes a mask
    masks.clear()
    with FakeTensorMode(), torch.no_grad(), answered_as_real():
        source.factory()(torch.empty(BATCH, SEQ, dtype=torch.int64))
    assert masks and all(m is None for m in masks)
    assert {n: getattr(masking_utils, n) for n in before} == before


@pytest.mark.parametrize("family", ["gpt2", "llama-sdpa"])
def test_the_replay_logs_the_calls_a_real_decoder_forward_pass_makes(tmp_path, family):
    """transformers checks whether the position ids pack several sequences: a real pass computes the
    check's operators and reads its answer; the replay makes the same calls but the read (a
    ``_local_scalar_dense``, which a fake tensor cannot answer), so the time model prices them."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from profiler.engine import torch_module

    class Calls(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func.namespace == "aten":
                self.seen[str(func)] += 1
            return func(*args, **(kwargs or {}))

    source = source_of(tmp_path, family)
    model, x = source.factory().eval(), real_input(source)
    calls = Calls()
    with torch.no_grad(), calls:
        model(x)
    shape, dtype, _ = FAMILIES[family][3]
    replayed = torch_module.memory(source.factory, shape, batch=BATCH, input_dtype=dtype,
                                   record_costs=True).costs["inference"]
    logged = Counter(c.op for c in replayed)
    assert calls.seen - logged == Counter({"aten._local_scalar_dense.default": 1})
    assert not logged - calls.seen
    assert logged["aten.cumsum.default"] == 1   # the packed-sequence check's


@pytest.mark.parametrize("family,asked", [("gpt2", 2), ("llama-sdpa", 1)])
def test_the_replay_counts_the_host_calls_a_real_decoder_forward_pass_makes(tmp_path, family, asked):
    """transformers asks ``torch.cuda.is_current_stream_capturing()`` through ``is_tracing`` (twice
    a GPT-2 forward pass: its padding warning and its packed-sequence check; once a Llama one), a
    call that costs tens of microseconds on a CUDA build without a driver: the replay books as many
    as the real pass makes, on the root module's operators."""
    from profiler.engine import torch_module
    from profiler.engine.host_calls import HostCalls

    source = source_of(tmp_path, family)
    model, x = source.factory().eval(), real_input(source)
    with torch.no_grad(), HostCalls() as real:
        model(x)
    shape, dtype, _ = FAMILIES[family][3]
    costs = torch_module.memory(source.factory, shape, batch=BATCH, input_dtype=dtype, record_costs=True).costs
    booked = [c for c in costs["inference"] if c.host_calls]
    assert real.count == asked == sum(c.host_calls for c in booked)
    assert sum(c.host_calls for c in costs["training"]) == asked   # the training step's forward asks too
    assert all(c.module.count(".") == 0 for c in booked)   # the model's own Python, before its layers


def test_a_packed_sequence_check_that_reads_a_fake_value_answers_unpacked():
    """A transformers whose check reads its answer even on a fake tensor raises there: the stand-in
    then answers None (nothing packed), as it does for the real inputs the tool makes."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    from profiler.engine.value_reads import _not_packed

    def reads(position_ids: torch.Tensor) -> torch.Tensor:
        raise DataDependentOutputException(torch.ops.aten._local_scalar_dense.default)

    with FakeTensorMode():
        position_ids = torch.empty(2, 8, dtype=torch.int64)
        assert _not_packed(reads)(position_ids) is None
        assert _not_packed(lambda ids: ids.cumsum(-1))(position_ids) is None


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("content, kwargs, pattern", [
    ('{"model_type": "no_such_model"}', {}, r"unknown architecture: model_type 'no_such_model'"),
    ("{not json", {}, r"not JSON"),
    ("[1, 2]", {}, r"not a Hugging Face config.*Received list"),
    ('{"architectures": ["LlamaForCausalLM"], "hidden_size": 32}', {}, r"field 'model_type'.*no model_type"),
    (json.dumps({**LLAMA, "architectures": ["NoSuchThing"]}), {}, r"unknown architecture 'NoSuchThing'"),
    # every class name ends in "Model": that suffix is not read as the base model
    (json.dumps({**LLAMA, "architectures": ["NoSuchModel"]}), {}, r"field 'architectures': unknown architecture 'NoSuchModel'"),
    (json.dumps({**LLAMA, "architectures": ["BertForMaskedLM"]}), {}, r"'BertForMaskedLM' is not a 'llama' model"),
    (json.dumps(LLAMA), {"task": "no-such-task"}, r"field 'hf-task': unknown task"),
    (json.dumps(LLAMA), {"task": "image-cls"}, r"'llama' has no image-cls model. Expected causal-lm"),
    (json.dumps(LLAMA), {"seq_len": 4096}, r"field 'seq-len'.*at most 2048"),
    (json.dumps({**LLAMA, "hidden_size": 33}), {}, r"bad llama config.*not a multiple"),
    # transformers itself builds no layer at all from a negative count
    ('{"model_type": "gpt2", "n_layer": -1}', {}, r"field 'n_layer': must be a positive integer. Received -1"),
    (json.dumps({**LLAMA, "vocab_size": "many"}), {}, r"field 'vocab_size': must be a positive integer"),
])
def test_errors_are_one_line(tmp_path, content, kwargs, pattern):
    path = write(tmp_path, content)
    with pytest.raises(SpecError, match=pattern) as err:
        load_hf_config(path, **kwargs)
    assert "\n" not in str(err.value) and path in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"no such file"):
        load_hf_config(str(tmp_path / "config.json"))


def test_what_the_build_raises_is_a_spec_error(tmp_path):
    source = load_hf_config(write(tmp_path, {**LLAMA, "attn_implementation": "no_such_attention"}))
    with pytest.raises(SpecError, match=r"config.json \(LlamaForCausalLM\): building LlamaForCausalLM raised "
                                        r"ValueError: .*no_such_attention") as err:
        source.factory()
    assert "\n" not in str(err.value)


def test_without_transformers_the_extra_is_named(tmp_path, monkeypatch):
    path = write(tmp_path, LLAMA)
    monkeypatch.setitem(sys.modules, "transformers", None)   # import transformers -> ImportError
    with pytest.raises(SpecError, match=r"needs the Hugging Face extra: pip install modelsize\[hf\]"):
        load_hf_config(path)


def test_is_hf_config(tmp_path):
    assert is_hf_config(write(tmp_path, LLAMA))
    assert not is_hf_config(write(tmp_path, {"class_name": "Sequential", "config": {}, "model_type": "x"}))
    assert not is_hf_config(write(tmp_path, {"input_shape": [4], "layers": []}))
    assert not is_hf_config(write(tmp_path, "{not json"))
    assert not is_hf_config(str(tmp_path / "missing.json"))
