"""keras.applications models, read from their own ``to_json()``: every layer's parameters (trainable
and non-trainable, from its weights), ``count_params()`` and output shape equal Keras's, and the
torch module built from the file computes Keras's logits from Keras's weights.

Each model is built once per module with ``weights=None``, ten classes and the smallest input its
builder accepts (Keras 3 on its torch backend), so that building and predicting take seconds. A
model the torch backend cannot build is skipped with Keras's reason.
"""
from __future__ import annotations

import json
import os
from math import prod

import pytest

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier with another backend
    pytest.skip("needs Keras on its torch backend", allow_module_level=True)

from profiler.engine.predict import predict  # noqa: E402
from profiler.frontends.keras_json import to_spec_dict  # noqa: E402
from profiler.frontends.spec import from_dict  # noqa: E402

# (builder in keras.applications, input side): 32 where the builder accepts it, else its minimum
APPLICATIONS = [
    ("MobileNet", 32), ("MobileNetV2", 32), ("MobileNetV3Small", 32), ("MobileNetV3Large", 32),
    ("EfficientNetB0", 32), ("EfficientNetV2B0", 32), ("ResNet50", 32), ("ResNet50V2", 32),
    ("DenseNet121", 32), ("ConvNeXtTiny", 32), ("Xception", 71), ("InceptionV3", 75), ("VGG16", 32),
    ("InceptionResNetV2", 75), ("NASNetMobile", 32),
]


def _elements(weights) -> int:
    return sum(prod(w.shape) for w in weights)


@pytest.fixture(scope="module", params=APPLICATIONS, ids=[a[0] for a in APPLICATIONS])
def application(request):
    name, side = request.param
    keras.backend.clear_session()
    try:
        model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=10,
                                                  classifier_activation=None)   # logits: compared below
    except ValueError as error:   # NASNetMobile: "not available with the torch backend at this time"
        pytest.skip(f"Keras's torch backend does not build {name}: {error}")
    data = json.loads(model.to_json())
    spec_dict = to_spec_dict(data, source=f"{name}.json")
    return model, data, spec_dict, predict(from_dict(spec_dict, source=f"{name}.json"))


def test_every_layer_matches_keras(application):
    model, _, _, prediction = application
    rows = {r.name: r for r in prediction.rows}
    compared = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        where = f"{layer.name} ({type(layer).__name__})"
        row = rows[layer.name]
        assert row.params.trainable == _elements(layer.trainable_weights), where
        assert row.params.non_trainable == _elements(layer.non_trainable_weights), where
        assert row.params.total == layer.count_params(), where
        assert tuple(row.output_shape) == tuple(layer.output.shape[1:]), where
        compared += 1
    assert compared >= 20
    assert prediction.trainable_params == _elements(model.trainable_weights)
    assert prediction.non_trainable_params == _elements(model.non_trainable_weights)
    assert prediction.params == model.count_params()


def _child(module, name: str):
    """The built module of the layer ``name``: a graph's child, or a chain's (nn.Sequential)."""
    from profiler.rules.modules import GraphModel, module_keys
    if isinstance(module, GraphModel):
        return module.layers[module.child_names[name]]
    return dict(module.named_children())[module_keys([name])[name]]


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")  # Keras → NumPy
def test_same_logits_as_keras(application):
    """The torch module modelsize builds from the file, given the Keras model's weights, computes
    Keras's logits (inference): every layer's semantics, the ops layers' numbers, the ReLU forms,
    hard_silu, Rescaling, Normalization, LayerScale and CustomScaleLayer included."""
    import numpy as np
    import torch

    from profiler.frontends.build import build
    from test_keras_parity import _keras_to_torch
    model, _, spec_dict, _ = application
    rng = np.random.default_rng(0)
    for w in model.weights:   # Keras starts biases, betas and statistics at 0 or 1: vary them
        short = w.path.split("/")[-1]
        if short in ("bias", "beta", "moving_mean", "mean"):
            w.assign(rng.normal(0.0, 0.1, tuple(w.shape)).astype("float32"))
        elif short in ("gamma", "moving_variance", "variance"):
            w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype("float32"))
    module = build(from_dict(spec_dict, source="m.json")).eval()
    with torch.no_grad():
        for layer in model.layers:
            if not layer.weights:
                continue
            child = _child(module, layer.name)
            params = [(o, n, p) for o in child.modules() for n, p in o.named_parameters(recurse=False)]
            buffers = list(child.buffers())
            assert (len(params), len(buffers)) == (len(layer.trainable_weights), len(layer.non_trainable_weights))
            for (owner, name, p), w in zip(params, layer.trainable_weights):
                value = np.ascontiguousarray(_keras_to_torch(owner, name, keras.ops.convert_to_numpy(w), p))
                p.copy_(torch.from_numpy(value).reshape(p.shape))
            for b, w in zip(buffers, layer.non_trainable_weights):
                b.copy_(torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(w), dtype="float32")).reshape(b.shape))
        x = torch.rand(2, *model.input_shape[1:]) * 255   # pixels, as the preprocessing layers expect
        expected = torch.as_tensor(model(x, training=False))
        got = module(x)
    scale = expected.abs().max().item()
    assert scale > 1e-3   # not vanishing: the comparison means something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_ops_layers_with_a_number_become_constant_ops(application):
    """Keras 3 writes ``x + 3`` as an ops layer (module keras.src.ops.numpy) with the number among
    its arguments: each becomes a ConstantOp with that number, shaped like its tensor (MobileNetV3's
    hard sigmoid: x + 3, ReLU(6), · 1/6; models without any have none)."""
    model, data, spec_dict, prediction = application
    written = {}
    for entry in data["config"]["layers"]:
        if entry.get("module", "").startswith("keras.src.ops."):
            args = entry["inbound_nodes"][0]["args"]
            numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if numbers:
                written[entry["name"]] = (entry["class_name"], float(numbers[0]))
    ops = {e["ConstantOp"]["name"]: e["ConstantOp"] for e in spec_dict["layers"] if "ConstantOp" in e}
    assert {name: (cls.lower(), number) for name, (cls, number) in written.items()} \
        == {name: (op["op"], op["constant"]) for name, op in ops.items()}
    rows = {r.name: r for r in prediction.rows}
    for name in ops:
        assert rows[name].output_shape == rows[ops[name]["inputs"][0]].output_shape


def test_frozen_application_base_trains_at_batch_one_with_exact_peaks():
    """Transfer learning as Keras's guide does it: a frozen MobileNetV2 (every BatchNormalization
    in inference mode, as Keras 3 runs a frozen one) under a new head. PyTorch would refuse a
    training-mode batch norm over 1×1 maps at batch 1; the built module runs it, and every
    predicted peak equals the measured one."""
    import profiler
    L = keras.layers
    keras.backend.clear_session()
    base = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), include_top=False)
    base.trainable = False
    x = keras.Input((32, 32, 3))
    model = keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(base(x, training=False))))
    spec = from_dict(to_spec_dict(json.loads(model.to_json()), source="transfer.json"), source="transfer.json")
    prediction = predict(spec)
    assert prediction.trainable_params == _elements(model.trainable_weights) == 10 * (1280 + 1)
    assert prediction.params == model.count_params()
    result = profiler.profile(spec, batch=1, warmup=0, repeats=1, optimizers=("sgd", "adam"))
    assert result["relative_error"]["train_peak_bytes_sgd"] == 0
    assert {k: v for k, v in result["relative_error"].items() if v} == {}
