"""Keras itself as the reference: the same layers built in Keras 3 (torch backend) and as a spec.

Each model below is a list of ``{Type: {argument: value}}`` entries, read twice: by modelsize
(``profiler.frontends.spec.Model`` and ``profiler.engine.predict.predict``) and by Keras, where every entry becomes
``getattr(keras.layers, Type)(**arguments)`` (a wrapper's ``layer`` argument a Keras layer built
the same way). The models are chains, each layer feeding the next; Keras builds them with the
functional API, since its Sequential cannot hold MultiHeadAttention (query and value inputs).

Per layer, the trainable and non-trainable parameter counts (from the layer's weights) and the
output shape must equal Keras's; so must the totals. Then Keras's weights are copied into the
torch modules modelsize builds and both compute the same outputs (eval mode), which checks the
semantics behind the counts: gate order, padding sides, attention scaling, etc.

TransformerEncoder is keras_hub's; without keras_hub installed, ``HubTransformerEncoder`` below
rebuilds it from keras_hub's source (``keras_hub/src/layers/modeling/transformer_encoder.py``):
the same sublayers, weights and call.
"""
from __future__ import annotations

import inspect
import os
from math import prod

import numpy as np
import pytest
import torch

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # keras was imported earlier with another backend
    pytest.skip("needs Keras on its torch backend", allow_module_level=True)

from profiler.rules.args import parse_args  # noqa: E402
from profiler.engine.predict import predict  # noqa: E402
from profiler.rules.catalog import all_rules, rule_for  # noqa: E402
from profiler.rules.registry import Context  # noqa: E402
from profiler.frontends.spec import Model  # noqa: E402


class HubTransformerEncoder(keras.layers.Layer):
    """keras_hub.layers.TransformerEncoder's structure and call, for when keras_hub is absent."""

    def __init__(self, intermediate_dim, num_heads, dropout=0.0, activation="relu",
                 layer_norm_epsilon=1e-5, normalize_first=False, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dim, self.num_heads, self.dropout = intermediate_dim, num_heads, dropout
        self.activation, self.layer_norm_epsilon = activation, layer_norm_epsilon
        self.normalize_first = normalize_first

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        self._self_attention_layer = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads, key_dim=int(hidden_dim // self.num_heads), dropout=self.dropout)
        self._self_attention_layer.build(query_shape=inputs_shape, value_shape=inputs_shape)
        self._self_attention_layer_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon)
        self._self_attention_layer_norm.build(inputs_shape)
        self._self_attention_dropout = keras.layers.Dropout(rate=self.dropout)
        self._feedforward_layer_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon)
        self._feedforward_layer_norm.build(inputs_shape)
        self._feedforward_intermediate_dense = keras.layers.Dense(self.intermediate_dim, activation=self.activation)
        self._feedforward_intermediate_dense.build(inputs_shape)
        self._feedforward_output_dense = keras.layers.Dense(hidden_dim)
        self._feedforward_output_dense.build((*inputs_shape[:-1], self.intermediate_dim))
        self._feedforward_dropout = keras.layers.Dropout(rate=self.dropout)
        self.built = True

    def call(self, inputs, training=None):
        x, residual = inputs, inputs
        if self.normalize_first:
            x = self._self_attention_layer_norm(x)
        x = self._self_attention_layer(query=x, value=x, training=training)
        x = self._self_attention_dropout(x, training=training) + residual
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)
        residual = x
        if self.normalize_first:
            x = self._feedforward_layer_norm(x)
        x = self._feedforward_output_dense(self._feedforward_intermediate_dense(x))
        x = self._feedforward_dropout(x, training=training) + residual
        if not self.normalize_first:
            x = self._feedforward_layer_norm(x)
        return x

    def compute_output_shape(self, inputs_shape):
        return inputs_shape


def _transformer_encoder_class():
    try:
        import keras_hub
        return keras_hub.layers.TransformerEncoder
    except ImportError:
        return HubTransformerEncoder


def L(type_name: str, **args):
    return {type_name: args}


# (name, input shape without batch, layers[, data_format])
MODELS = [
    ("mlp", (20,), [L("Dense", units=16, activation="relu"), L("Dropout", rate=0.2),
                    L("Dense", units=8, use_bias=False), L("Activation", activation="softmax")]),
    ("cnn2d", (16, 16, 3), [L("Conv2D", filters=8, kernel_size=3, padding="same", activation="relu"),
                            L("BatchNormalization"), L("MaxPooling2D"),
                            L("Conv2D", filters=4, kernel_size=[3, 1], strides=2, groups=2),
                            L("AveragePooling2D", pool_size=2, padding="same"), L("Flatten"), L("Dense", units=10)]),
    ("cnn1d", (20, 4), [L("Conv1D", filters=6, kernel_size=3, padding="causal", dilation_rate=2),
                        L("MaxPooling1D", pool_size=3, strides=1), L("AveragePooling1D", pool_size=2),
                        L("GlobalAveragePooling1D"), L("Dense", units=2)]),
    ("cnn3d", (6, 6, 6, 2), [L("Conv3D", filters=4, kernel_size=2), L("MaxPooling3D"),
                             L("AveragePooling3D", pool_size=1), L("GlobalAveragePooling3D", keepdims=True),
                             L("Flatten")]),
    ("embedding_lstm", (12,), [L("Embedding", input_dim=100, output_dim=16),
                               L("LSTM", units=8, return_sequences=True), L("LSTM", units=4)]),
    ("gru", (10, 6), [L("GRU", units=5, return_sequences=True),
                      L("GRU", units=3, reset_after=False), L("Dense", units=1)]),
    ("gru_variants", (4, 3), [L("GRU", units=4, use_bias=False, return_sequences=True),
                              L("GRU", units=2, reset_after=False, use_bias=False, activation="relu",
                                recurrent_activation="tanh")]),
    ("simple_rnn", (7, 3), [L("SimpleRNN", units=4, activation="relu", return_sequences=True),
                            L("SimpleRNN", units=2, use_bias=False)]),
    ("lstm_variants", (5, 3), [L("LSTM", units=3, use_bias=False, return_sequences=True,
                                 recurrent_activation="relu", activation="sigmoid"),
                               L("LSTM", units=2)]),
    ("bidirectional", (9, 5), [L("Bidirectional", layer=L("LSTM", units=4, return_sequences=True)),
                               L("Bidirectional", layer=L("GRU", units=3), merge_mode="sum")]),
    ("bidirectional_mul_ave", (6, 4), [
        L("Bidirectional", layer=L("SimpleRNN", units=3, return_sequences=True), merge_mode="mul"),
        L("Bidirectional", layer=L("GRU", units=2, reset_after=False, return_sequences=True), merge_mode="ave"),
        L("LayerNormalization")]),
    ("time_distributed_cnn", (5, 8, 8, 3), [L("TimeDistributed", layer=L("Conv2D", filters=4, kernel_size=3)),
                                            L("TimeDistributed", layer=L("MaxPooling2D")),
                                            L("TimeDistributed", layer=L("Flatten")), L("LSTM", units=6)]),
    ("time_distributed_dense", (7, 10), [L("TimeDistributed", layer=L("Dense", units=6, activation="tanh")),
                                         L("TimeDistributed", layer=L("BatchNormalization")),
                                         L("TimeDistributed", layer=L("Dropout", rate=0.1)),
                                         L("GlobalMaxPooling1D")]),
    ("time_distributed_rnn", (3, 5, 4), [L("TimeDistributed", layer=L("LSTM", units=3)), L("LSTM", units=2)]),
    ("attention", (10, 16), [L("MultiHeadAttention", num_heads=4, key_dim=8), L("LayerNormalization"),
                             L("MultiHeadAttention", num_heads=2, key_dim=3, value_dim=5, output_shape=6,
                               use_bias=False)]),
    ("attention_output_shape", (5, 7), [L("MultiHeadAttention", num_heads=3, key_dim=2, output_shape=[4, 2],
                                          dropout=0.1),
                                        L("Reshape", target_shape=[5, 8]), L("Dense", units=3)]),
    ("transformer", (12, 16), [L("TransformerEncoder", intermediate_dim=32, num_heads=4),
                               L("TransformerEncoder", intermediate_dim=24, num_heads=3, dropout=0.1,
                                 activation="gelu", normalize_first=True, layer_norm_epsilon=1e-3)]),
    ("embedding_transformer", (8,), [L("Embedding", input_dim=50, output_dim=12),
                                     L("TransformerEncoder", intermediate_dim=16, num_heads=2),
                                     L("GlobalAveragePooling1D"), L("Dense", units=2, activation="softmax")]),
    ("depthwise_separable", (12, 12, 3), [
        L("DepthwiseConv2D", kernel_size=3, depth_multiplier=2, padding="same"),
        L("SeparableConv2D", filters=8, kernel_size=3, strides=2),
        L("DepthwiseConv2D", kernel_size=[1, 3], use_bias=False, activation="relu"),
        L("SeparableConv2D", filters=4, kernel_size=1, depth_multiplier=3, use_bias=False),
        L("GlobalMaxPooling2D")]),
    ("depthwise_strided_same", (9, 8, 2), [L("DepthwiseConv2D", kernel_size=3, strides=2, padding="same"),
                                           L("SeparableConv2D", filters=3, kernel_size=2, padding="same",
                                             strides=2)]),
    ("conv2d_transpose", (4, 4, 8), [L("Conv2DTranspose", filters=6, kernel_size=3, strides=2, padding="same"),
                                     L("Conv2DTranspose", filters=4, kernel_size=3, strides=2, output_padding=1),
                                     L("Conv2DTranspose", filters=2, kernel_size=[2, 3], padding="same",
                                       dilation_rate=2)]),
    ("conv1d_transpose", (5, 3), [L("Conv1DTranspose", filters=4, kernel_size=1, strides=3),
                                  L("Conv1DTranspose", filters=2, kernel_size=4, strides=2, padding="same",
                                    output_padding=1),
                                  L("Conv1DTranspose", filters=2, kernel_size=4, strides=2, padding="same")]),
    ("conv3d_transpose", (3, 3, 3, 2), [L("Conv3DTranspose", filters=2, kernel_size=2, strides=2),
                                        L("Conv3DTranspose", filters=1, kernel_size=3, padding="same",
                                          use_bias=False),
                                        L("GlobalMaxPooling3D")]),
    ("upsampling_padding", (6, 6, 2), [L("UpSampling2D"), L("ZeroPadding2D", padding=1),
                                       L("Cropping2D", cropping=[[1, 2], [0, 3]]),
                                       L("UpSampling2D", size=[1, 3], interpolation="bilinear"),
                                       L("ZeroPadding2D", padding=[[0, 1], [2, 0]]),
                                       L("Cropping2D", cropping=1), L("Conv2D", filters=3, kernel_size=3)]),
    ("sequence_upsampling", (5, 3), [L("UpSampling1D", size=3), L("ZeroPadding1D", padding=[2, 1]),
                                     L("Conv1D", filters=4, kernel_size=3), L("ZeroPadding1D", padding=2)]),
    ("permute_repeat", (6, 4), [L("Permute", dims=[2, 1]), L("Dense", units=5), L("Flatten"),
                                L("Dense", units=8), L("RepeatVector", n=3), L("SimpleRNN", units=2)]),
    ("activations", (4, 5, 6), [L("PReLU"), L("LeakyReLU"), L("ELU", alpha=0.5),
                                L("PReLU", shared_axes=[1, 2]), L("LeakyReLU", negative_slope=0.01),
                                L("Permute", dims=[3, 1, 2]), L("PReLU", shared_axes=3)]),
    ("autoencoder", (8, 8, 1), [L("Conv2D", filters=4, kernel_size=3, padding="same", activation="relu"),
                                L("MaxPooling2D"), L("Conv2D", filters=8, kernel_size=3, padding="same"),
                                L("UpSampling2D"),
                                L("Conv2DTranspose", filters=1, kernel_size=3, padding="same",
                                  activation="sigmoid")]),
    ("global_max", (10, 4), [L("GlobalMaxPooling1D", keepdims=True), L("Flatten"), L("RepeatVector", n=2),
                             L("GRU", units=3)]),
    ("normalization", (6, 6, 4), [L("BatchNormalization", center=False),
                                  L("BatchNormalization", scale=False, momentum=0.9),
                                  L("LayerNormalization", axis=[-2, -1]), L("GlobalAveragePooling2D"),
                                  L("Reshape", target_shape=[2, -1]), L("GlobalMaxPooling1D")]),
    ("relu_softmax", (5, 6), [L("ReLU"), L("Dense", units=4), L("ReLU", max_value=6.0), L("Dense", units=4),
                              L("ReLU", negative_slope=0.1), L("ReLU", threshold=0.2), L("Softmax", axis=1),
                              L("Activation", activation="hard_silu"), L("Activation", activation="hard_sigmoid"),
                              L("Softmax")]),
    ("preprocessing", (6, 6, 3), [L("Rescaling", scale=1 / 127.5, offset=-1.0), L("Normalization"),
                                  L("Normalization", axis=-1, mean=[0.5, 0.1, -0.2], variance=[2.0, 0.5, 1.0]),
                                  L("Rescaling", scale=2.0), L("Conv2D", filters=4, kernel_size=3),
                                  L("LayerScale", init_values=0.5, projection_dim=4),
                                  L("ConstantOp", op="add", constant=3.0), L("ConstantOp", op="multiply", constant=0.25),
                                  L("ConstantOp", op="subtract", constant=1.0),
                                  L("ConstantOp", op="subtract", constant=2.0, constant_first=True),
                                  L("ConstantOp", op="divide", constant=4.0), L("SpatialDropout2D", rate=0.3)]),
    ("spatial_dropout_separable1d", (12, 4), [L("SpatialDropout1D", rate=0.2),
                                              L("SeparableConv1D", filters=6, kernel_size=3, padding="same",
                                                depth_multiplier=2),
                                              L("SeparableConv1D", filters=3, kernel_size=2, strides=2,
                                                use_bias=False)]),
    ("channels_first", (3, 9, 9), [L("Conv2D", filters=4, kernel_size=3), L("MaxPooling2D"),
                                   L("ZeroPadding2D", padding=1), L("UpSampling2D"), L("Cropping2D", cropping=1),
                                   L("DepthwiseConv2D", kernel_size=3),
                                   L("Conv2DTranspose", filters=2, kernel_size=3, strides=2, padding="same"),
                                   L("SeparableConv2D", filters=3, kernel_size=2), L("SpatialDropout2D", rate=0.1),
                                   L("GlobalMaxPooling2D"), L("Dense", units=2)], "channels_first"),
]


def test_every_single_input_layer_type_is_covered():
    used = set()

    def collect(entry):
        (type_name, args), = entry.items()
        used.add(type_name)
        if "layer" in args:
            collect(args["layer"])

    for model in MODELS:
        for entry in model[2]:
            collect(entry)
    # layers of several inputs (merges) need a graph, not a chain: they are not covered here
    single = {name for name, rule in all_rules().items() if getattr(rule, "max_inputs", 1) == 1}
    assert not sorted(single - used), "add these layer types to a parity model"
    assert len(MODELS) >= 25


# --- Keras side ------------------------------------------------------------------------------

class KerasConstantOp(keras.layers.Layer):
    """What Keras 3 writes as an ops layer (``x + 3``): the same arithmetic, as a layer."""

    def __init__(self, op, constant, constant_first=False, **kwargs):
        super().__init__(**kwargs)
        self.op, self.constant, self.constant_first = op, constant, constant_first

    def call(self, x):
        c = self.constant
        if self.op == "subtract":
            return c - x if self.constant_first else x - c
        return {"add": lambda: x + c, "multiply": lambda: x * c, "divide": lambda: x / c}[self.op]()

    def compute_output_shape(self, shape):
        return shape


def _layer_class(type_name: str):
    if type_name == "TransformerEncoder":
        return _transformer_encoder_class()
    if type_name == "LayerScale":   # ConvNeXt's own layer
        from keras.src.applications.convnext import LayerScale
        return LayerScale
    if type_name == "ConstantOp":
        return KerasConstantOp
    return getattr(keras.layers, type_name)


def keras_layer(entry, data_format: str):
    (type_name, args), = entry.items()
    args = dict(args)
    if "layer" in args:
        args["layer"] = keras_layer(args["layer"], data_format)
    cls = _layer_class(type_name)
    if data_format != "channels_last" and "data_format" in inspect.signature(cls.__init__).parameters:
        args["data_format"] = data_format
    return cls(**args)


def keras_model(input_shape, layers, data_format):
    integer = next(iter(layers[0])) == "Embedding"
    inputs = keras.Input(input_shape, dtype="int32" if integer else "float32")
    x, built = inputs, []
    for entry in layers:
        layer = keras_layer(entry, data_format)
        x = layer(x, x) if isinstance(layer, keras.layers.MultiHeadAttention) else layer(x)
        built.append(layer)
    return keras.Model(inputs, x), built


def _elements(weights) -> int:
    return sum(prod(w.shape) for w in weights)


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def pair(request):
    name, input_shape, layers, *rest = request.param
    data_format = rest[0] if rest else "channels_last"
    keras.utils.set_random_seed(0)
    model, built = keras_model(input_shape, layers, data_format)
    spec = Model(name, input_shape, layers, data_format=data_format)
    return input_shape, layers, data_format, model, built, predict(spec)


def test_counts_and_shapes_match_keras(pair):
    _, layers, _, model, built, prediction = pair
    assert len(prediction.rows) == len(built)
    for row, layer in zip(prediction.rows, built):
        where = f"{row.name} ({row.type})"
        assert row.params.trainable == _elements(layer.trainable_weights), where
        assert row.params.non_trainable == _elements(layer.non_trainable_weights), where
        assert row.params.total == layer.count_params(), where
        assert tuple(row.output_shape) == tuple(layer.output.shape[1:]), where
    assert prediction.trainable_params == _elements(model.trainable_weights)
    assert prediction.non_trainable_params == _elements(model.non_trainable_weights)
    assert prediction.params == model.count_params()


# --- the same numbers from the same weights ------------------------------------------------

def _torch_modules(input_shape, layers, data_format):
    ctx = Context(data_format=data_format)
    x, modules = tuple(input_shape), []
    for entry in layers:
        (type_name, args), = entry.items()
        rule = rule_for(type_name)
        a = parse_args(rule.args, args)
        modules.append(rule.build(a, x, ctx))
        x = rule.output_shape(a, x, ctx)
    return modules


def _keras_to_torch(owner: torch.nn.Module, name: str, value: np.ndarray, target: torch.Tensor) -> np.ndarray:
    """A Keras weight in the layout of the torch parameter that takes its place."""
    from torch import nn

    from profiler.rules.modules import CroppedConvTranspose
    if isinstance(owner, nn.Linear) and name == "weight":
        return value.T
    if isinstance(owner, (nn.modules.conv._ConvTransposeNd, CroppedConvTranspose)) and name == "weight":
        r = value.ndim - 2  # Keras (*kernel, filters, in) → torch (in, filters, *kernel)
        return np.transpose(value, (r + 1, r, *range(r)))
    if isinstance(owner, nn.modules.conv._ConvNd) and name == "weight":
        r = value.ndim - 2  # Keras (*kernel, in, out) → torch (out, in/groups, *kernel)
        if owner.groups > 1 and target.shape[1] == 1 and value.shape[-2] == owner.groups:
            # depthwise: Keras (*kernel, in, multiplier) → torch (in·multiplier, 1, *kernel)
            flat = value.reshape(*value.shape[:r], -1)
            return np.transpose(flat, (r, *range(r)))[:, None]
        return np.transpose(value, (r + 1, r, *range(r)))
    return value


def _copy_weights(keras_layer, module: torch.nn.Module) -> None:
    trainable = [w for w in keras_layer.trainable_weights]
    frozen = [w for w in keras_layer.non_trainable_weights]
    params = [(owner, name, p) for owner in module.modules() for name, p in owner.named_parameters(recurse=False)]
    buffers = [b for b in module.buffers()]
    assert len(params) == len(trainable) and len(buffers) == len(frozen)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for (owner, name, p), w in zip(params, trainable):
            value = rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32")
            w.assign(value)
            p.copy_(torch.from_numpy(np.ascontiguousarray(_keras_to_torch(owner, name, value, p))).reshape(p.shape))
        for b, w in zip(buffers, frozen):
            value = rng.uniform(0.5, 1.5, tuple(w.shape)).astype("float32")
            w.assign(value)
            b.copy_(torch.from_numpy(value).reshape(b.shape))


def test_same_outputs_as_keras(pair):
    input_shape, layers, data_format, model, built, _ = pair
    modules = _torch_modules(input_shape, layers, data_format)
    for layer, module in zip(built, modules):
        _copy_weights(layer, module)
    torch.manual_seed(0)
    if next(iter(layers[0])) == "Embedding":
        x = torch.randint(0, layers[0]["Embedding"]["input_dim"], (3, *input_shape))
    else:
        x = torch.randn(3, *input_shape)
    with torch.no_grad():
        expected = model(x, training=False)
        got = x
        for module in modules:
            got = module.eval()(got)
    torch.testing.assert_close(got, torch.as_tensor(expected).to(got.dtype), rtol=1e-4, atol=1e-4)
