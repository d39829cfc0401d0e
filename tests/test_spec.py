"""Reading specs: both layer forms, names like Keras's, and one-line errors naming file, layer, field."""
import pytest

from profiler.frontends import spec as S
from profiler.errors import ShapeError, SpecError, UnsupportedLayerError
from profiler.engine.predict import predict

GOOD = """
name: digits
input_shape: [28, 28, 1]
layers:
  - Flatten: {}
  - Dense: {units: 10}
  - {type: Activation, activation: softmax, name: probs}
"""


def test_yaml_and_json_give_the_same_spec(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text(GOOD)
    j = tmp_path / "m.json"
    j.write_text('{"name": "digits", "input_shape": [28, 28, 1], "layers": [{"Flatten": {}}, '
                 '{"Dense": {"units": 10}}, {"Activation": {"activation": "softmax", "name": "probs"}}]}')
    a, b = S.load(y), S.load(j)
    assert a.layers == b.layers
    assert [layer.name for layer in a.layers] == ["flatten", "dense", "probs"]


def test_auto_names_follow_keras():
    spec = S.Model("m", (8,), [S.layer("Dense", units=4), S.layer("Dense", units=4), S.layer("Dense", units=2)])
    assert [layer.name for layer in spec.layers] == ["dense", "dense_1", "dense_2"]


def test_spec_round_trips_through_as_dict():
    spec = S.loads(GOOD)
    again = S.from_dict(spec.as_dict())
    assert again.layers == spec.layers and again.input_shape == spec.input_shape


@pytest.mark.parametrize("text, error, pattern", [
    ("input_shape: [4]\nlayers:\n  - Dense: {units: -3}", SpecError,
     r"^m\.yaml: layer 0 \(Dense \"dense\"\): field 'units': must be a positive integer"),
    ("input_shape: [4]\nlayers:\n  - Dense: {units: '10'}", SpecError, r"field 'units'.*Received '10' \(str\)"),
    ("input_shape: [4]\nlayers:\n  - Dense: {}", SpecError, r"layer 0 \(Dense \"dense\"\): field 'units': missing"),
    ("input_shape: [4]\nlayers:\n  - Dense: {units: 2}\n  - Dance: {}", UnsupportedLayerError,
     r"layer 1 \(Dance \"dance\"\): unknown layer type 'Dance'. Expected one of .*Dense"),
    ("input_shape: [4, 4, 1]\nlayers:\n  - Conv2D: {filters: 2, kernel_size: 5}", ShapeError,
     r"layer 0 \(Conv2D \"conv2d\"\): field 'kernel_size'"),
    ("input_shape: [4, -4]\nlayers:\n  - Flatten: {}", SpecError, r"field 'input_shape'"),
    ("input_shape: [4\nlayers: x", SpecError, r"^m\.yaml: malformed YAML at line \d+, column \d+"),
    ("input_shape: [4]\nlayers: []", SpecError, r"field 'layers'"),
    ("- just a list", SpecError, r"a spec must be a mapping"),
])
def test_bad_specs_name_file_layer_and_field(text, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        predict(S.loads(text, source="m.yaml"))
    assert "\n" not in str(info.value)


def test_yaml_is_never_executed():
    # A python tag is a code-execution vector in unsafe YAML loaders; safe_load refuses it.
    with pytest.raises(SpecError, match="malformed YAML"):
        S.loads("input_shape: !!python/object/apply:os.system ['echo pwned']\nlayers: []")
