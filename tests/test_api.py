"""The Python API: profiler.summary / measure / profile / fit take a module, a factory, a spec, a
path or a built-in name, and answer as the CLI does."""
import pytest
import torch
from torch import nn

import profiler
from profiler.frontends.spec import loads
from isa import float32_isa


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def test_summary_of_a_module_counts_parameters_and_buffers_apart():
    model = small_cnn()
    result = profiler.summary(model, (3, 8, 8), batch=2)
    assert result["totals"]["params"] == sum(p.numel() for p in model.parameters())
    assert result["totals"]["buffers"] == sum(b.numel() for b in model.buffers()) == 4 + 4 + 1
    assert result["output_shape"] == [[None, 10]]


@float32_isa   # convolutions' workspace
def test_profile_of_a_factory_is_exact_on_the_cpu():
    result = profiler.profile(small_cnn, (3, 8, 8), batch=2, warmup=0, repeats=1, optimizers=("sgd",))
    for key in ("inference_peak_bytes", "train_peak_bytes_sgd", "train_first_step_peak_bytes_sgd"):
        assert result["relative_error"][key] == 0, key


def test_measure_leaves_a_given_module_as_it_was():
    model = small_cnn().train()
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    measured = profiler.measure(model, (3, 8, 8), batch=2, warmup=0, repeats=1, optimizers=("sgd",))
    assert measured["measured"]["param_bytes"] == sum(t.numel() * t.element_size()
                                                      for t in (*model.parameters(), *model.buffers()))
    for k, v in model.state_dict().items():
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1]), k
    assert model.training and all(p.grad is None for p in model.parameters())


@float32_isa
def test_fit_of_a_factory_is_solved_and_verified():
    answer = profiler.fit(small_cnn, (3, 8, 8), memory="2MiB", train="sgd", verify=True)
    assert answer["batch"] >= 1 and answer["verification"]["held"] is True
    assert answer["verification"]["at_batch"]["measured_bytes"] == answer["peak"]["bytes"]
    assert "a × batch + c" in answer["method"] or answer["method"].startswith("bisection")


def test_spec_and_builtin_name_and_path(tmp_path):
    spec = loads("{name: d, input_shape: [784], layers: [{Dense: {units: 10}}]}", source="<d>")
    assert profiler.summary(spec, batch=1)["totals"]["params"] == 7_850     # 10 × (784 + 1)
    assert profiler.summary("digits")["totals"]["params"] == 7_850
    path = tmp_path / "d.yaml"
    path.write_text("name: d\ninput_shape: [784]\nlayers: [{Dense: {units: 10}}]\n")
    assert profiler.fit(str(path), memory="1MiB", train="sgd")["batch"] > 0


def test_a_torch_model_without_its_input_shape_is_refused():
    with pytest.raises(profiler.SpecError, match="input shape"):
        profiler.summary(small_cnn)
