"""Convolution kernels' workspace on the CPU: what oneDNN (and torch's own kernels) allocate
inside a convolution, predicted by the conv rules and checked against the allocator."""
import pytest

from profiler import workflow
from profiler.models import builtin


@pytest.fixture(scope="module")
def conv224_amp():
    return workflow.profile(builtin("conv-224"), batch=1, dtype="float32", loss="cross_entropy", device="cpu",
                            warmup=0, repeats=1, threads=None, amp="bfloat16", optimizers=("sgd",))


def test_seed_conv_model_amp_inference_exact(conv224_amp):
    assert conv224_amp["predicted"]["inference_peak_bytes"] == conv224_amp["measured"]["inference_peak_bytes"]


def test_seed_conv_model_amp_training_exact(conv224_amp):
    assert conv224_amp["predicted"]["train_peak_bytes_sgd"] == conv224_amp["measured"]["train_peak_bytes_sgd"]
