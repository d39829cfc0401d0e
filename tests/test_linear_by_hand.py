"""One Linear layer, counted by hand and measured: every peak the memory model predicts, to the byte.

Linear(784 → 10) at batch 4, float32, mean-squared-error loss. The sizes every case uses:
weight 10 × 784 × 4 = 31,360 B and bias 10 × 4 = 40 B, so parameters P = 7,850 × 4 = 31,400 B and
gradients G = 31,400 B; input x = 4 × 784 × 4 = 12,544 B; target y = 4 × 10 × 4 = 160 B; output
out = 4 × 10 × 4 = 160 B. ``mse_loss`` squares (out − y) into a 160 B temporary and takes its mean
into a loss tensor whose storage is as large (160 B, measured), which the caller holds.
"""
import pytest

from profiler import workflow
from profiler.engine.optimizers import CATALOG
from profiler.frontends.spec import loads

P = G = 7_850 * 4
W = 7_840 * 4
BIAS = 10 * 4
X, Y, OUT, LOSS = 4 * 784 * 4, 4 * 10 * 4, 4 * 10 * 4, 4 * 10 * 4
SEED = 4                       # backward starts from ones_like(loss), a 0-d float32
GRAD_OUT = 4 * 10 * 4          # d loss / d out
STEP = 4                       # a float32 step counter per parameter tensor (two tensors)

BY_HAND = {
    # no_grad: the parameters, the input and the output
    "inference_peak_bytes": P + X + OUT,
    # the peak is in the Linear's backward: its weight and bias gradients are written while
    # d out, the seed, the loss and the output are alive; x needs no gradient, so none is made
    "train_peak_bytes_sgd": P + G + X + Y + OUT + LOSS + SEED + GRAD_OUT,
    # momentum buffers exist from the first step on: one more P in the same moment
    "train_peak_bytes_sgd_momentum": P + G + P + X + Y + OUT + LOSS + SEED + GRAD_OUT,
    # first step: buf = clone(grad) is made in the step, after the seed and d out are gone
    "train_first_step_peak_bytes_sgd_momentum": P + G + P + X + Y + OUT + LOSS,
    # Adam: exp_avg and exp_avg_sq (2 P) and two steps; its update of the weight holds
    # sqrt(v) and sqrt(v)/bias_correction2 (2 W) and a float64 scalar (8) with its float32 cast (4)
    "train_peak_bytes_adam": P + G + 2 * P + 2 * STEP + X + Y + OUT + LOSS + 2 * W + 8 + 4,
    # RMSprop: square_avg (P) and two steps; avg = sqrt(square_avg) + eps is still held for the
    # weight (W) while the bias's is made (BIAS)
    "train_peak_bytes_rmsprop": P + G + P + 2 * STEP + X + Y + OUT + LOSS + W + BIAS,
    # Adagrad: state_sum (P, made by the constructor) and two steps; std carried as RMSprop's avg,
    # plus a float64 scalar and its cast
    "train_peak_bytes_adagrad": P + G + P + 2 * STEP + X + Y + OUT + LOSS + W + BIAS + 8 + 4,
}
# the first step finds no state but makes it before the update: the same peaks
for name in ("sgd", "adam", "rmsprop", "adagrad"):
    BY_HAND[f"train_first_step_peak_bytes_{name}"] = BY_HAND[f"train_peak_bytes_{name}"]
BY_HAND["train_peak_bytes_adamw"] = BY_HAND["train_first_step_peak_bytes_adamw"] = BY_HAND["train_peak_bytes_adam"]

LINEAR = "{name: linear, input_shape: [784], layers: [{Dense: {units: 10}}]}"


def test_every_figure_has_its_arithmetic():
    assert set(BY_HAND) == {"inference_peak_bytes"} | {f"train_{first}peak_bytes_{o}" for o in CATALOG
                                                      for first in ("", "first_step_")}


@pytest.fixture(scope="module")
def linear():
    return workflow.profile(loads(LINEAR, source="<linear>"), batch=4, dtype="float32", loss="mse", device="cpu",
                            optimizers=tuple(CATALOG), warmup=0, repeats=1, threads=None)


@pytest.mark.parametrize("key", sorted(BY_HAND))
def test_predicted_and_measured_equal_the_hand_count(linear, key):
    assert linear["predicted"][key] == BY_HAND[key], key
    assert linear["measured"][key] == BY_HAND[key], key


def test_parameters_gradients_and_state(linear):
    assert linear["predicted"]["param_bytes"] == linear["measured"]["param_bytes"] == P
    adam = linear["peaks"]["train_adam"]["breakdown"]
    assert adam["parameters"] == P and adam["gradients"] == G and adam["optimizer_state"] == 2 * P + 2 * STEP


# With input gradients (x.requires_grad_(), cleared with zero_grad before each step): the Linear's
# backward first makes d x = d out · W (4 × 784 × 4 = X bytes), then its weight gradients, so the
# backward peak grows by X; d x is kept as x.grad, so every optimizer step carries it too.
BY_HAND_INPUT_GRAD = {key: (nbytes if key == "inference_peak_bytes" else nbytes + X) for key, nbytes in BY_HAND.items()}


@pytest.fixture(scope="module")
def linear_input_grad():
    return workflow.profile(loads(LINEAR, source="<linear>"), batch=4, dtype="float32", loss="mse", device="cpu",
                            optimizers=tuple(CATALOG), warmup=0, repeats=1, threads=None, input_grad=True)


@pytest.mark.parametrize("key", sorted(BY_HAND_INPUT_GRAD))
def test_input_gradients_by_hand(linear_input_grad, key):
    assert linear_input_grad["predicted"][key] == BY_HAND_INPUT_GRAD[key], key
    assert linear_input_grad["measured"][key] == BY_HAND_INPUT_GRAD[key], key


def test_input_gradient_in_the_breakdown(linear_input_grad):
    sgd = linear_input_grad["peaks"]["train_sgd"]["breakdown"]
    # d out, the seed and d x are the step's temporaries at the backward peak: 160 + 4 + 12,544
    assert sgd["temporaries"] == GRAD_OUT + SEED + X
    assert linear_input_grad["measured"]["breakdown"]["train_sgd"] == sgd
    assert linear_input_grad["options"]["input_grad"] is True and linear_input_grad["input_grad"] is True
