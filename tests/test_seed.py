"""The seed question's numbers, exactly as Keras reports them, and checked against PyTorch."""
import pytest
import torch

from profiler.frontends import spec as S
from profiler.frontends.build import build
from profiler.frontends.models import builtin
from profiler.engine.predict import predict


def params_of(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, input_shape", [("digits", (28, 28, 1)), ("digits-theano", (1, 28, 28))])
def test_digit_classifier_has_7850_params(name, input_shape):
    spec = builtin(name)
    p = predict(spec)
    dense = p.rows[1]
    # 10 units × (784 inputs + 1 bias) = 7,850
    assert dense.params.total == 7_850
    assert dense.params.formula == "10 × (784 + 1) = 7,850"
    assert p.params == 7_850 and p.trainable_params == 7_850 and p.non_trainable_params == 0
    assert [r.output_shape for r in p.rows] == [(784,), (10,), (10,)]
    module = build(spec)
    assert params_of(module) == 7_850
    assert module(torch.randn(3, *input_shape)).shape == (3, 10)


def test_dense_514_has_397065_params():
    p = predict(builtin("dense-514"))
    # 514 × (514 + 1) = 264,710; 257 × (514 + 1) = 132,355
    assert [r.params.total for r in p.rows] == [264_710, 0, 132_355]
    assert p.params == 397_065
    assert params_of(build(builtin("dense-514"))) == 397_065


def test_conv_224_counts_and_shapes():
    spec = builtin("conv-224")
    p = predict(spec)
    # 32 × (3 × 3×3 + 1) = 896; 64 × (32 × 3×3 + 1) = 18,496; 128 × (64 × 3×3 + 1) = 73,856;
    # Dense on the last axis: 10 × (128 + 1) = 1,290
    assert [r.params.total for r in p.rows] == [896, 18_496, 73_856, 1_290]
    assert [r.output_shape for r in p.rows] == [(222, 222, 32), (220, 220, 64), (218, 218, 128), (218, 218, 10)]
    assert [r.as_dict()["output_shape"] for r in p.rows][0] == [None, 222, 222, 32]
    module = build(spec)
    assert params_of(module) == 896 + 18_496 + 73_856 + 1_290
    with torch.no_grad():
        assert module(torch.randn(1, 224, 224, 3)).shape == (1, 218, 218, 10)


def test_python_api_matches_file():
    spec = S.Model("digits", (28, 28, 1), [S.layer("Flatten"), S.layer("Dense", units=10),
                                           S.layer("Activation", activation="softmax")])
    assert predict(spec).params == predict(builtin("digits")).params == 7_850


def test_channels_first_conv_matches_channels_last():
    layers = [S.layer("Conv2D", filters=32, kernel_size=3), S.layer("Conv2D", filters=64, kernel_size=3)]
    last = predict(S.Model("last", (32, 32, 3), layers))
    first = predict(S.Model("first", (3, 32, 32), layers, data_format="channels_first"))
    assert [r.params.total for r in last.rows] == [r.params.total for r in first.rows] == [896, 18_496]
    assert first.rows[-1].output_shape == (64, 28, 28)
