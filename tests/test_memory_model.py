"""The memory model's arithmetic on the seed's digit classifier, counted by hand."""
from profiler.frontends.models import builtin
from profiler.engine.predict import predict


def test_digits_inference_peak_by_hand():
    p = predict(builtin("digits"), batch=32)
    # parameters 7,850 × 4 = 31,400; input 32 × 784 × 4 = 100,352; flatten is a view;
    # dense output 32 × 10 × 4 = 1,280, alive while softmax writes its own 1,280
    assert p.inference.bytes == 31_400 + 100_352 + 1_280 + 1_280
    assert p.inference.at == "forward activation"


def test_digits_training_step_by_hand():
    p = predict(builtin("digits"), batch=32)
    params, x, y = 31_400, 100_352, 32 * 8          # targets: one int64 class per sample
    grads = params
    # SGD keeps no state. In backward of dense: params + grads + x + y, saved softmax output (1,280),
    # the caller's `out` (= softmax output), loss (4) and backward's seed ones_like(loss) (4), d out (1,280);
    # dense's input needs no gradient. The start of the step holds the same minus activations.
    sgd = p.training["sgd"]
    assert sgd.bytes == params + grads + x + y + 1_280 + 4 + 4 + 1_280
    assert sgd.breakdown["gradients"] == grads and sgd.breakdown["optimizer_state"] == 0
    # Adam: exp_avg and exp_avg_sq (2 × 31,400) and a float32 step per tensor (2 × 4); its CPU
    # update holds sqrt(v) and sqrt(v)/bc2 of the largest tensor (the 7,840-element weight) at once,
    # with bc2 as a float64 scalar (8) cast to float32 (4). By then nll_loss's total_weight and the
    # backward seed are gone.
    adam = p.training["adam"]
    assert adam.breakdown["optimizer_state"] == 2 * params + 2 * 4
    assert adam.bytes == params + grads + 2 * params + 8 + x + y + 1_280 + 4 + 2 * 7_840 * 4 + 8 + 4
    assert adam.at == "optimizer step (adam)"


def test_float16_halves_parameters_and_activations():
    full, half = predict(builtin("dense-514"), batch=4), predict(builtin("dense-514"), batch=4, dtype="float16")
    assert half.param_bytes * 2 == full.param_bytes == 397_065 * 4


def test_foreach_adam_on_cuda_holds_one_scratch_per_parameter():
    cpu = predict(builtin("dense-514"), batch=4, device_kind="cpu").training["adam"]
    cuda = predict(builtin("dense-514"), batch=4, device_kind="cuda").training["adam"]
    # CPU: 2 × the largest tensor (514 × 514); CUDA foreach: one scratch per parameter, all of them
    assert cpu.breakdown["temporaries"] == 2 * 514 * 514 * 4 + 8 and cpu.breakdown["workspace"] == 4
    assert cuda.breakdown["temporaries"] == 397_065 * 4
