"""Keras model JSON (``model.to_json()``) read as a spec: Keras 2 files written by hand in the
layouts Keras 2.x writes (tests/keras2/), Keras 3 models built here and checked layer by layer
against Keras's own counts and shapes, and the errors for what cannot be read.
"""
from __future__ import annotations

import importlib.util
import json
import os
from math import prod
from pathlib import Path

import pytest

from profiler.errors import SpecError, UnsupportedLayerError
from profiler.keras_json import is_keras_json, supported_classes, to_spec_dict
from profiler.predict import predict
from profiler.spec import from_dict, loads

KERAS2 = Path(__file__).parent / "keras2"


def _frozen_supported() -> bool:
    """Whether from_dict reads the top-level "frozen" list this reader writes for trainable: false."""
    try:
        from_dict({"input_shape": [2], "layers": [{"Dense": {"units": 1}}], "frozen": ["dense"]})
    except SpecError:
        return False
    return True


FROZEN = pytest.mark.xfail(not _frozen_supported(), strict=False,
                           reason='the spec-level "frozen" list is not yet supported by spec.from_dict')


def convert(path: Path) -> dict:
    return to_spec_dict(json.loads(path.read_text()), source=str(path))


def rows_of(spec_dict: dict, source: str = "<test>") -> dict:
    """name → (trainable, non-trainable, output shape) for every row of the prediction."""
    prediction = predict(from_dict(spec_dict, source=source))
    return {r.name: (r.params.trainable, r.params.non_trainable, r.output_shape) for r in prediction.rows}


# --- Keras 2 files ---------------------------------------------------------------------------

KERAS2_EXPECTED = {
    # the seed's models
    "digits.json": {"flatten": (0, 0, (784,)),
                    "dense": (7_850, 0, (10,)),          # 10 × (784 + 1)
                    "activation": (0, 0, (10,))},
    "dense-514.json": {"dense_1": (264_710, 0, (514,)),  # 514 × (514 + 1)
                       "activation_1": (0, 0, (514,)),
                       "dense_2": (132_355, 0, (257,))},  # 257 × (514 + 1); 397,065 in all
    "conv-224.json": {"conv2d_1": (896, 0, (222, 222, 32)),        # 32 × (3·3·3 + 1)
                      "conv2d_2": (18_496, 0, (220, 220, 64)),     # 64 × (3·3·32 + 1)
                      "conv2d_3": (73_856, 0, (218, 218, 128)),    # 128 × (3·3·64 + 1)
                      "dense_1": (1_290, 0, (218, 218, 10))},      # 10 × (128 + 1), on the last axis
    "text-rnn.json": {"embedding": (32_000, 0, (20, 32)),          # 1000 × 32
                      "bidirectional": (6_272, 0, (20, 32)),       # 2 × 4 × 16 × (32 + 16 + 1)
                      "gru": (984, 0, (8,)),                       # 3 × 8 × (32 + 8 + 1), reset_after false
                      "dense": (9, 0, (1,))},
    "functional-cnn.json": {"conv": (448, 0, (32, 32, 16)),        # 16 × (3·3·3 + 1)
                            "bn": (32, 32, (32, 32, 16)),          # gamma, beta | moving mean, variance
                            "leaky": (0, 0, (32, 32, 16)),
                            "pool": (0, 0, (16, 16, 16)),
                            "conv_1x1": (272, 0, (16, 16, 16)),    # 16 × (16 + 1)
                            "add": (0, 0, (16, 16, 16)),
                            "gap": (0, 0, (16,)),
                            "head": (170, 0, (10,))},              # 10 × (16 + 1)
    "functional-shared.json": {"encoder": (36, 0, (4,)),           # 4 × (8 + 1)
                               "encoder_call1": (0, 0, (4,)),      # the same weights again
                               "merged": (0, 0, (8,)),
                               "classifier": (27, 0, (3,)),        # 3 × (8 + 1)
                               "classifier/scores": (27, 0, (3,)),
                               "classifier/probabilities": (0, 0, (3,))},
    "functional-attention.json": {"attention": (288, 0, (5, 8)),   # 4 projections × (8 × 2·4 + 8)
                                  "residual": (0, 0, (5, 8)),
                                  "norm": (16, 0, (5, 8)),         # gamma, beta over 8
                                  "pool": (0, 0, (8,)),
                                  "logits": (18, 0, (2,))},        # 2 × (8 + 1)
}


@pytest.mark.parametrize("file", sorted(KERAS2_EXPECTED))
def test_keras2_file_gives_keras_counts_and_shapes(file):
    spec_dict = convert(KERAS2 / file)
    assert rows_of(spec_dict, file) == KERAS2_EXPECTED[file]


def test_keras2_layouts_convert_to_the_expected_spec():
    # Keras 2.1's list config, batch_input_shape on the first layer, no InputLayer
    conv = convert(KERAS2 / "conv-224.json")
    assert conv["input_shape"] == [224, 224, 3] and conv["data_format"] == "channels_last"
    assert conv["layers"][0] == {"Conv2D": {"name": "conv2d_1", "filters": 32, "kernel_size": [3, 3],
                                            "strides": [1, 1], "padding": "valid", "dilation_rate": [1, 1],
                                            "activation": "relu", "use_bias": True}}
    # inbound_nodes lists: a shared layer's second call, a nested Sequential (its node 1 is its first call)
    shared = convert(KERAS2 / "functional-shared.json")
    assert shared["inputs"] == [{"name": "left", "shape": [8]}, {"name": "right", "shape": [8]}]
    assert shared["layers"][1] == {"Call": {"layer": "encoder", "name": "encoder_call1", "inputs": ["right"]}}
    assert shared["layers"][3]["Model"]["inputs"] == ["merged"]
    assert shared["outputs"] == ["classifier"]
    # Keras 2 names: LeakyReLU's alpha, the built BatchNormalization axis [3]
    cnn = {next(iter(e.values()))["name"]: e for e in convert(KERAS2 / "functional-cnn.json")["layers"]}
    assert cnn["leaky"] == {"LeakyReLU": {"name": "leaky", "negative_slope": 0.1, "inputs": ["bn"]}}
    assert cnn["bn"]["BatchNormalization"]["axis"] == 3
    # the value passed by keyword (self-attention: one input)
    attention = convert(KERAS2 / "functional-attention.json")
    assert attention["layers"][0]["MultiHeadAttention"]["inputs"] == ["tokens"]


def test_trainable_false_goes_to_the_frozen_list():
    spec_dict = convert(KERAS2 / "frozen.json")
    assert spec_dict["frozen"] == ["features"]
    assert "trainable" not in spec_dict["layers"][0]["Dense"]


@FROZEN
def test_frozen_layer_counts_as_non_trainable():
    rows = rows_of(convert(KERAS2 / "frozen.json"))
    assert rows == {"features": (0, 528, (16,)),   # 16 × (32 + 1), frozen
                    "head": (68, 0, (4,))}          # 4 × (16 + 1)


# --- errors ----------------------------------------------------------------------------------

def _keras3_sequential(*layers: dict) -> dict:
    return {"module": "keras", "class_name": "Sequential", "config": {"name": "m", "trainable": True, "layers": [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, 8], "dtype": "float32", "sparse": False, "ragged": False,
                    "name": "input_layer", "optional": False}, "registered_name": None},
        *layers]}}


def _layer(cls: str, name: str, **config) -> dict:
    return {"module": "keras.layers", "class_name": cls, "registered_name": None,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config}}


def test_unknown_class_names_file_layer_and_class_and_lists_supported():
    data = _keras3_sequential(_layer("Dense", "dense", units=4), _layer("Frobnicate", "frob", strength=3))
    with pytest.raises(UnsupportedLayerError) as info:
        to_spec_dict(data, source="model.json")
    message = str(info.value)
    assert message.startswith('model.json: layer 2 (Frobnicate "frob"): unknown Keras layer class \'Frobnicate\'')
    assert "Expected one of " in message and "Conv2D" in message and "Sequential" in message
    assert "\n" not in message
    assert set(supported_classes()) >= {"Dense", "InputLayer", "Functional"}


def test_custom_class_with_a_known_name_is_refused():
    layer = {**_layer("Dense", "dense", units=4), "registered_name": "my_package>Dense"}
    with pytest.raises(UnsupportedLayerError, match=r"m\.json: layer 1 \(Dense \"dense\"\): custom Keras class"):
        to_spec_dict(_keras3_sequential(layer), source="m.json")


def test_nested_layers_are_named_by_their_path():
    inner = {"module": "keras", "class_name": "Sequential", "registered_name": None,
             "config": {"name": "inner", "layers": [_layer("Dense", "d", units=2), _layer("Frob", "f")]},
             "build_config": {"input_shape": [None, 8]}}
    with pytest.raises(UnsupportedLayerError, match=r'layer 1 \(Sequential "inner"\) > layer 1 \(Frob "f"\)'):
        to_spec_dict(_keras3_sequential(inner), source="m.json")


@pytest.mark.parametrize("config, field, words", [
    ({"units": 4, "frobnicate": 3}, "frobnicate", "unknown key in the Keras config of Dense"),
    ({"units": 4, "lora_rank": 2}, "lora_rank", "only at its default"),
    ({"units": 4, "quantization_config": {"mode": "int8"}}, "quantization_config", "only at its default"),
    ({"units": 4, "dtype": {"class_name": "QuantizedDTypePolicy", "config": {"name": "int8_from_float32"}}},
     "dtype", "quantized layers are not supported"),
    ({"units": 0}, None, None),  # a bad value is the rule's to refuse (from_dict), not the reader's
])
def test_config_keys_that_would_change_counts_are_never_dropped(config, field, words):
    data = _keras3_sequential(_layer("Dense", "dense", **config))
    if field is None:
        spec_dict = to_spec_dict(data, source="m.json")
        with pytest.raises(SpecError, match="field 'units'"):
            from_dict(spec_dict, source="m.json")
        return
    with pytest.raises(SpecError) as info:
        to_spec_dict(data, source="m.json")
    message = str(info.value)
    assert message.startswith(f"m.json: layer 1 (Dense \"dense\"): field '{field}': ") and words in message


def test_return_state_and_free_axes_are_refused():
    lstm = _layer("LSTM", "lstm", units=3, return_state=True)
    data = _keras3_sequential(lstm)
    data["config"]["layers"][0]["config"]["batch_shape"] = [None, 5, 8]
    with pytest.raises(SpecError, match="field 'return_state': .*only at its default"):
        to_spec_dict(data, source="m.json")
    data["config"]["layers"][0]["config"]["batch_shape"] = [None, None, 8]
    with pytest.raises(SpecError, match=r"m\.json: layer 0 \(InputLayer \"input_layer\"\): field 'batch_shape': "
                                        r"every axis but the batch needs a fixed positive size"):
        to_spec_dict(data, source="m.json")


def test_layers_that_disagree_on_data_format_are_refused():
    data = _keras3_sequential(_layer("Conv1D", "a", filters=2, kernel_size=1, data_format="channels_last"),
                              _layer("Conv1D", "b", filters=2, kernel_size=1, data_format="channels_first"))
    data["config"]["layers"][0]["config"]["batch_shape"] = [None, 4, 4]
    with pytest.raises(SpecError, match=r'layer 2 \(Conv1D "b"\): field \'data_format\': the layers disagree'):
        to_spec_dict(data, source="m.json")


def test_malformed_input():
    with pytest.raises(SpecError, match=r"^m\.json: malformed JSON at line 1"):
        loads('{"class_name": "Sequential", "config": {', source="m.json", as_json=True)
    assert not is_keras_json({"input_shape": [2], "layers": []})
    assert is_keras_json({"class_name": "Sequential", "config": {}})
    with pytest.raises(SpecError, match=r"^m\.json: not a Keras model JSON"):
        to_spec_dict({"layers": []}, source="m.json")
    with pytest.raises(UnsupportedLayerError, match=r"^m\.json: the top-level class 'Dense' is not a Keras model"):
        to_spec_dict({"class_name": "Dense", "config": {}}, source="m.json")
    with pytest.raises(SpecError, match=r"^m\.json: field 'layers': a Sequential model's config needs a list"):
        to_spec_dict({"class_name": "Sequential", "config": {"name": "m"}}, source="m.json")
    with pytest.raises(SpecError, match=r'^m\.json: layer 1: a layer must be an object with "class_name"'):
        to_spec_dict(_keras3_sequential({"config": {}}), source="m.json")
    broken = json.loads((KERAS2 / "functional-shared.json").read_text())
    broken["config"]["layers"][3]["inbound_nodes"] = [[["encoder", 5, 0, {}]]]
    with pytest.raises(SpecError, match=r"layer 3 \(Concatenate \"merged\"\): a reference to call 5 of layer "
                                        r"'encoder', which has 2 in the file"):
        to_spec_dict(broken, source="m.json")
    broken["config"]["layers"][3]["inbound_nodes"] = [[["nowhere", 0, 0, {}]]]
    with pytest.raises(SpecError, match="a reference to a layer that is not in the file: 'nowhere'"):
        to_spec_dict(broken, source="m.json")


def test_spec_load_reads_keras_json(tmp_path):
    """spec.load hands a .json file with top-level class_name and config to this reader."""
    import profiler.spec
    path = tmp_path / "digits.json"
    path.write_text((KERAS2 / "digits.json").read_text())
    if "keras_json" not in Path(profiler.spec.__file__).read_text():
        pytest.xfail("spec.load is not wired to profiler.keras_json yet")
    spec = profiler.spec.load(path)
    assert predict(spec).params == 7_850
