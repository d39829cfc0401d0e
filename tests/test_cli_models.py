"""Every command (summary, measure, profile, fit) takes every kind of model.

The kinds: a YAML spec, a built-in name, a Keras ``to_json()`` file, ``module:factory`` naming a
module file in the current directory (a small CNN with BatchNorm, a tiny timm model, a tiny GPT-2
built in Python) and a Hugging Face ``config.json``. Figures are checked against real instances
(parameter and buffer counts, a real forward's output shape); bad input is one line on stderr with
exit status 2; a module given from Python is left untouched by measuring it.

Everything runs on the CPU, in small batches, with no pretrained weights.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from profiler.cli import main
from isa import require_float32_isa

BATCH = 2
QUICK = ["--batch", str(BATCH), "--repeats", "1", "--warmup", "0", "--format", "json"]

#: The factories, written into a module file beside the test (the current directory).
FACTORIES = '''
from torch import nn


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def timm_net():
    import timm
    return timm.create_model("test_resnet", num_classes=10)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64))


def bad():
    raise RuntimeError("boom")


def notmod():
    return 3


def norm_on_vectors():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
'''

SPEC = """\
input_shape: [4, 4]
layers:
  - Flatten: {}
  - Dense: {units: 8, activation: relu}
  - Dense: {units: 3}
"""

GPT2_CONFIG = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
SEQ = 16

#: kind -> (the factory's name in FACTORIES, its CLI input options)
TORCH_KINDS = {
    "cnn": ("cnn", ["--input-shape", "3,8,8"]),
    "timm": ("timm_net", ["--input-shape", "3,32,32"]),
    "gpt2": ("gpt2", ["--input-shape", str(SEQ), "--input-dtype", "int64"]),
}
SPEC_KINDS = ("spec", "digits", "keras")
KINDS = (*SPEC_KINDS, *TORCH_KINDS, "hf-config")
COMMANDS = ("summary", "measure", "profile", "fit")


def has_hf_config() -> bool:
    return (Path(__file__).resolve().parents[1] / "profiler" / "frontends" / "hf_config.py").is_file()


needs_hf_config = pytest.mark.skipif(not has_hf_config(),
                                     reason="profiler/frontends/hf_config.py (Hugging Face config.json) not there yet")


class Models:
    """Model references for the CLI, written into ``tmp_path`` (the current directory)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.dir = tmp_path
        self.monkeypatch = monkeypatch
        self.module = f"cli_models_{uuid.uuid4().hex}"   # unique: no sys.modules entry is shared
        (tmp_path / f"{self.module}.py").write_text(FACTORIES)
        importlib.invalidate_caches()

    # --- what the command line is given ---------------------------------------------------

    def argv(self, kind: str) -> list[str]:
        if kind == "spec":
            path = self.dir / "tiny.yaml"
            path.write_text(SPEC)
            return [str(path)]
        if kind == "digits":
            return ["digits"]
        if kind == "keras":
            path = self.dir / "keras_cnn.json"
            path.write_text(self.keras_model().to_json())
            return [str(path)]
        if kind == "hf-config":
            if not has_hf_config():
                pytest.skip("profiler/frontends/hf_config.py (Hugging Face config.json) not there yet")
            from transformers import GPT2Config
            path = self.dir / "config.json"
            GPT2Config(**GPT2_CONFIG, architectures=["GPT2LMHeadModel"]).to_json_file(str(path))
            return [str(path), "--seq-len", str(SEQ)]
        factory, options = TORCH_KINDS[kind]
        return [f"{self.module}:{factory}", *options]

    def keras_model(self):
        self.monkeypatch.setenv("KERAS_BACKEND", "torch")   # read only when keras is first imported
        keras = pytest.importorskip("keras")
        keras.backend.clear_session()
        L = keras.layers
        return keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, padding="same"), L.BatchNormalization(),
                                 L.Activation("relu"), L.Flatten(), L.Dense(10)], name="keras_cnn")

    # --- real instances ----------------------------------------------------------------------

    def factory(self, name: str):
        """A factory of the module file: the module the CLI imported, else loaded from its file
        (the current directory is not on sys.path here: the CLI must find it by itself)."""
        module = sys.modules.get(self.module)
        if module is None:
            spec = importlib.util.spec_from_file_location(self.module, self.dir / f"{self.module}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[self.module] = module
            spec.loader.exec_module(module)
        return getattr(module, name)

    def real(self, kind: str) -> torch.nn.Module:
        """A real torch instance of the model the CLI measured."""
        torch.manual_seed(0)
        if kind in TORCH_KINDS:
            return self.factory(TORCH_KINDS[kind][0])()
        if kind == "hf-config":
            from profiler.frontends.hf_config import load_hf_config
            return load_hf_config(str(self.dir / "config.json"), seq_len=SEQ).factory()
        from profiler.frontends.build import build
        from profiler.workflow import resolve_spec
        return build(resolve_spec(self.argv(kind)[0]))

    def real_input(self, kind: str) -> torch.Tensor:
        if kind in ("gpt2", "hf-config"):
            return torch.randint(0, GPT2_CONFIG["vocab_size"], (BATCH, SEQ))
        shape = {"cnn": (3, 8, 8), "timm": (3, 32, 32)}[kind]
        return torch.randn(BATCH, *shape)


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])   # restored after
    made = Models(tmp_path, monkeypatch)
    yield made
    sys.modules.pop(made.module, None)


def run(capsys, argv: list[str]) -> tuple[int, Any, str]:
    """Exit status, the parsed JSON on stdout (None when there is none), stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def element_count(tensors) -> int:
    return sum(t.numel() for t in tensors)


def byte_count(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def expected_params(models: Models, kind: str) -> int:
    if kind == "keras":   # Keras's own count (BatchNormalization's moving statistics are weights)
        return models.keras_model().count_params()
    return element_count(models.real(kind).parameters())


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors a forward pass returned, in order (through tuples, lists and ModelOutputs)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):   # transformers' ModelOutput is an ordered dict of what is not None
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    return []


# --- 1. every command × every kind ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_summary(models, capsys, kind):
    code, out, err = run(capsys, ["summary", *models.argv(kind), "--batch", str(BATCH), "--format", "json"])
    assert code == 0, err
    assert out["totals"]["params"] == expected_params(models, kind)
    if kind == "digits":
        assert out["totals"]["params"] == 7850   # 10 × (784 + 1)
    if kind in (*TORCH_KINDS, "hf-config"):
        real = models.real(kind)
        assert out["totals"]["buffers"] == element_count(real.buffers())
        assert out["totals"]["buffer_bytes"] == byte_count(real.buffers())
    if kind in ("cnn", "timm"):
        assert out["totals"]["buffers"] > 0   # BatchNorm's running statistics are counted


@pytest.mark.parametrize("kind", KINDS)
def test_measure(models, capsys, kind):
    code, out, err = run(capsys, ["measure", *models.argv(kind), *QUICK, "--optimizers", "sgd"])
    assert code == 0, err
    real = models.real(kind)
    assert out["measured"]["param_bytes"] == byte_count(real.parameters()) + byte_count(real.buffers())
    assert out["measured"]["batch"] == BATCH
    assert out["measured"]["inference_peak_bytes"] > 0 and out["measured"]["train_peak_bytes_sgd"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_profile(models, capsys, kind):
    if kind == "cnn":   # convolutions' workspace
        require_float32_isa()
    code, out, err = run(capsys, ["profile", *models.argv(kind), *QUICK, "--optimizers", "sgd", "--no-save"])
    assert code == 0, err
    assert "saved_to" not in out
    predicted, measured = out["predicted"], out["measured"]
    assert {"param_bytes", "inference_peak_bytes", "train_peak_bytes_sgd"} <= set(predicted)
    missing = [figure for figure in predicted if figure not in measured]
    assert not missing, f"predicted but not measured: {missing}"
    assert set(out["relative_error"]) == set(predicted)
    assert out["relative_error"]["param_bytes"] == 0
    if kind in ("spec", "cnn"):   # byte-exact on the CPU in float32
        assert out["relative_error"]["inference_peak_bytes"] == 0, (predicted, measured)
        assert out["relative_error"]["train_peak_bytes_sgd"] == 0, (predicted, measured)


def test_profile_saves_into_results_dir(models, capsys, tmp_path):
    code, out, err = run(capsys, ["profile", *models.argv("cnn"), *QUICK, "--optimizers", "sgd",
                                  "--results-dir", str(tmp_path / "runs")])
    assert code == 0, err
    saved = Path(out["saved_to"])
    assert saved.is_file() and saved.parent == tmp_path / "runs"
    assert json.loads(saved.read_text())["predicted"] == out["predicted"]


@pytest.mark.parametrize("kind", KINDS)
def test_fit(models, capsys, kind):
    code, out, err = run(capsys, ["fit", *models.argv(kind), "--memory", "64MiB", "--train", "sgd",
                                  "--format", "json"])
    assert code == 0, err
    assert isinstance(out["batch"], int) and out["batch"] >= 1


@pytest.mark.parametrize("kind,memory", [("spec", "1MiB"), ("cnn", "4MiB"), ("gpt2", "16MiB")])
def test_fit_verify_holds(models, capsys, kind, memory):
    if kind == "cnn":
        require_float32_isa()
    """The solved batch fits the budget when measured, and the next one does not (CPU, exact bytes).

    Smaller budgets than 64MiB keep the two measurements at the solved batch quick."""
    code, out, err = run(capsys, ["fit", *models.argv(kind), "--memory", memory, "--train", "sgd",
                                  "--format", "json", "--verify"])
    assert code == 0, err
    assert out["batch"] >= 1
    verification = out["verification"]
    assert verification["held"] is True, json.dumps(verification, indent=1)


# --- 2. output shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*TORCH_KINDS, "hf-config"])
def test_output_shape_is_the_real_forwards(models, capsys, kind):
    code, out, err = run(capsys, ["summary", *models.argv(kind), "--batch", str(BATCH), "--format", "json"])
    assert code == 0, err
    real = models.real(kind).eval()
    with torch.no_grad():
        tensors = output_tensors(real(models.real_input(kind)))
    assert tensors
    expected = [[None, *t.shape[1:]] for t in tensors]
    assert all(t.shape[0] == BATCH for t in tensors)
    assert out["output_shape"] == expected


# --- 3. bad input: one line on stderr, exit status 2 -------------------------------------------

COMMAND_OPTIONS = {
    "summary": ["--batch", str(BATCH)],
    "measure": ["--batch", str(BATCH), "--repeats", "1", "--warmup", "0"],
    "profile": ["--batch", str(BATCH), "--repeats", "1", "--warmup", "0", "--no-save"],
    "fit": ["--memory", "64MiB", "--train", "sgd"],
}


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    assert err.startswith("modelsize: error: "), err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_factory_that_raises(models, capsys, command):
    code, _, err = run(capsys, [command, f"{models.module}:bad", "--input-shape", "4", *COMMAND_OPTIONS[command]])
    assert_one_line_error(code, err, "RuntimeError", "boom", f"{models.module}:bad")


@pytest.mark.parametrize("command", COMMANDS)
def test_factory_that_returns_no_module(models, capsys, command):
    code, _, err = run(capsys, [command, f"{models.module}:notmod", "--input-shape", "4",
                                *COMMAND_OPTIONS[command]])
    assert_one_line_error(code, err, "torch.nn.Module", "int")


@pytest.mark.parametrize("command", COMMANDS)
def test_factory_without_input_shape(models, capsys, command):
    code, _, err = run(capsys, [command, f"{models.module}:cnn", *COMMAND_OPTIONS[command]])
    assert_one_line_error(code, err, "field 'input-shape'")


@needs_hf_config
@pytest.mark.parametrize("command", COMMANDS)
def test_hf_config_with_unknown_model_type(tmp_path, capsys, command):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "no-such-model", "architectures": ["NoSuchModelForCausalLM"],
                                "hidden_size": 32}))
    code, _, err = run(capsys, [command, str(path), *COMMAND_OPTIONS[command]])
    assert_one_line_error(code, err, "no-such-model")


@needs_hf_config
@pytest.mark.parametrize("command", COMMANDS)
def test_hf_config_with_unknown_architecture(tmp_path, capsys, command):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GPT2_CONFIG, "model_type": "gpt2", "architectures": ["NoSuchArchitecture"]}))
    code, _, err = run(capsys, [command, str(path), *COMMAND_OPTIONS[command]])
    assert_one_line_error(code, err, "NoSuchArchitecture")


@needs_hf_config
@pytest.mark.parametrize("command", COMMANDS)
def test_hf_config_naming_a_class_transformers_lacks_is_refused(tmp_path, capsys, command):
    # "NoSuchModel" ends in "Model" as every class name does: it names no task, and is not read
    # as the base model; the one line names the file, the field and the value
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GPT2_CONFIG, "model_type": "gpt2", "architectures": ["NoSuchModel"]}))
    code, _, err = run(capsys, [command, str(path), *COMMAND_OPTIONS[command]])
    assert_one_line_error(code, err, str(path), "architectures", "'NoSuchModel'")


# --- 4. a module passed from Python is left as it was -------------------------------------------


def test_measuring_a_module_from_python_leaves_it_untouched(models):
    from profiler import workflow
    from profiler.frontends.source import resolve

    module = models.factory("cnn")()
    before = {name: (t.data_ptr(), t.detach().clone(), t.device, t.dtype, t.requires_grad)
              for name, t in [*module.named_parameters(), *module.named_buffers()]}
    training = module.training
    source = resolve(module, input_shape=(3, 8, 8))
    measured, options = workflow.measure(source, batch=BATCH, warmup=0, repeats=1, optimizers=("sgd", "adam"))
    assert measured["param_bytes"] == byte_count(module.parameters()) + byte_count(module.buffers())
    summary = workflow.summary(source, batch=BATCH)
    assert summary["totals"]["params"] == element_count(module.parameters())
    workflow.profile(source, batch=BATCH, warmup=0, repeats=1, optimizers=("sgd",))

    after = dict([*module.named_parameters(), *module.named_buffers()])
    assert after.keys() == before.keys()
    for name, (ptr, value, device, dtype, requires_grad) in before.items():
        tensor = after[name]
        assert tensor.data_ptr() == ptr, name
        assert tensor.device == device and tensor.dtype == dtype and tensor.requires_grad == requires_grad, name
        assert torch.equal(tensor, value), name
        assert not tensor.is_meta, name
    assert all(p.grad is None for p in module.parameters())
    assert module.training == training



def test_a_batch_pytorch_refuses_names_the_model_and_the_batch(models, capsys):
    """BatchNorm over one value per channel cannot train at batch 1: fit says so in one line."""
    code, _, err = run(capsys, ["fit", f"{models.module}:norm_on_vectors", "--input-shape", "4",
                                "--memory", "100", "--train", "sgd"])   # not even batch 2 fits
    assert_one_line_error(code, err, f"{models.module}:norm_on_vectors",
                          "replaying inference and training on fake tensors at batch 1", "more than 1 value")
