"""The measurement side: exact CPU bytes, timing, machine description, devices, out of memory.

Reference figures are hand-counted for nn.Linear(784, 10) at batch 32 in float32:
weight 10×784×4 = 31,360 B, bias 10×4 = 40 B → parameters 31,400 B;
input x 32×784×4 = 100,352 B; output 32×10×4 = 1,280 B; cross-entropy target y 32×8 = 256 B.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from profiler.measuring.devices import CpuDevice, DoesNotFit, get_device
from profiler.errors import DeviceError, ModelsizeError
from profiler.measuring.machine import machine_info
from profiler.measuring.memory_trace import TensorTracker, allocator_peak
from profiler.measuring.runner import measure, storage_bytes
from profiler.measuring.timing import time_fn

PARAMS = 10 * 784 * 4 + 10 * 4   # 31,400
X = 32 * 784 * 4                 # 100,352
OUT = 32 * 10 * 4                # 1,280
Y = 32 * 8                       # 256: int64 class indices


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc=nn.Linear(784, 10)))


@pytest.fixture(scope="module")
def linear_cpu():
    return measure(linear(), input_shape=(32, 784), device="cpu", warmup=1, repeats=3)


def test_param_bytes_are_exact_storage_bytes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5))
    result = measure(model, input_shape=(2, 3, 8, 8), dtype="bfloat16", device="cpu",
                     optimizers=(), warmup=0, repeats=1)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.dtype == torch.bfloat16 for t in model.parameters())
    # running_mean/var are bf16 now, num_batches_tracked stays an 8-byte int64
    assert result.param_bytes == sum(t.numel() * t.element_size() for t in tensors)
    assert result.train_peak_bytes_sgd is None and result.activation_bytes == {}


def test_linear_param_bytes(linear_cpu):
    assert linear_cpu.param_bytes == PARAMS == storage_bytes(linear().parameters())


def test_storage_bytes_counts_shared_storage_once():
    w = torch.zeros(10, 10)
    assert storage_bytes([w, w.t(), w[0], None]) == 400


def test_linear_inference_peak(linear_cpu):
    # parameters 31,400 + input 100,352 + output 1,280 = 133,032: addmm writes straight into
    # the output, nothing else is allocated.
    assert linear_cpu.inference_peak_bytes == PARAMS + X + OUT == 133_032
    assert linear_cpu.inference_tensor_peak_bytes == 133_032
    assert linear_cpu.inference_workspace_bytes == 0


def test_linear_sgd_steady_step_peak(linear_cpu):
    # Alive before the step: parameters 31,400 + gradients 31,400 + x 100,352 + y 256 = 163,408.
    # zero_grad(set_to_none=True) frees the gradients (−31,400). Forward: out 1,280,
    # log_softmax 1,280, loss 4 + nll's total_weight 4. Backward: seed ones_like(loss) 4,
    # nll_loss_backward 1,280; total_weight, that grad and the log_softmax output are freed as
    # their nodes run; log_softmax_backward gives d loss/d out 1,280, then the new gradients
    # mm 10×784×4 = 31,360 and sum 10×4 = 40: the peak. Alive then:
    # 31,400 + 100,352 + 256 (params, x, y) + 1,280 (out) + 4 (loss) + 4 (seed)
    # + 1,280 (d loss/d out) + 31,400 (gradients) = 165,976. SGD without momentum adds nothing.
    assert linear_cpu.train_baseline_bytes_sgd == PARAMS + PARAMS + X + Y == 163_408
    assert linear_cpu.train_peak_bytes_sgd == PARAMS + X + Y + OUT + 4 + 4 + OUT + PARAMS == 165_976
    assert linear_cpu.train_tensor_peak_bytes_sgd == 165_976
    # the first step (no gradients yet) peaks at the same point with the same tensors alive
    assert linear_cpu.train_first_step_peak_bytes_sgd == 165_976
    # created in backward: seed 4 + 1,280 + 1,280 + 31,360 + 40 = 33,964 (seen by the tracker:
    # autograd runs CPU backward ops on the calling thread, under the dispatch mode)
    assert linear_cpu.phase_bytes["sgd"] == {"forward": OUT + OUT + 4 + 4,
                                             "backward": 33_964, "optimizer": 0}


def test_linear_adam_steady_step_peak(linear_cpu):
    # Alive before: params 31,400 + grads 31,400 + exp_avg 31,400 + exp_avg_sq 31,400
    # + two 0-dim float32 `step` tensors 8 + x 100,352 + y 256 = 226,216.
    # On the CPU torch picks the single-tensor Adam (foreach=False). Its peak is in the weight's
    # update, `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`: sqrt 31,360 and
    # the quotient 31,360 alive together, with out 1,280 and loss 4 still alive, and the Python
    # float divisor wrapped in an 8-byte double tensor plus its 4-byte float32 copy:
    # 1,280 + 4 + 31,360 + 31,360 + 8 + 4 = 64,016 above the baseline.
    assert linear_cpu.adam_foreach is False
    assert linear_cpu.train_baseline_bytes_adam == 4 * PARAMS + 8 + X + Y == 226_216
    assert linear_cpu.train_peak_bytes_adam == 226_216 + 64_016
    # the optimizer phase creates the state (none: it exists) and sqrt + quotient per parameter
    assert linear_cpu.phase_bytes["adam"]["optimizer"] == 2 * PARAMS


def test_linear_peaks_split_by_category(linear_cpu):
    # The same moments as above, each byte named: at the SGD peak the caller's out (1,280) and
    # loss (4) are activations, backward's seed (4) and d loss/d out (1,280) temporaries; at
    # Adam's, sqrt and quotient (2 × 31,360) and the float64 divisor (8) are temporaries and
    # div's float32 copy of the divisor (4), made and freed inside the operator, workspace.
    split = linear_cpu.breakdown
    assert split["inference"] == {"parameters": PARAMS, "gradients": 0, "optimizer_state": 0, "inputs": X,
                                  "activations": OUT, "weight_casts": 0, "temporaries": 0, "communication": 0,
                                  "workspace": 0}
    assert split["train_sgd"] == split["train_first_step_sgd"] == {
        "parameters": PARAMS, "gradients": PARAMS, "optimizer_state": 0, "inputs": X + Y,
        "activations": OUT + 4, "weight_casts": 0, "temporaries": 4 + OUT, "communication": 0, "workspace": 0}
    assert split["train_adam"] == {
        "parameters": PARAMS, "gradients": PARAMS, "optimizer_state": 2 * PARAMS + 8, "inputs": X + Y,
        "activations": OUT + 4, "weight_casts": 0, "temporaries": 2 * 31_360 + 8, "communication": 0, "workspace": 4}
    assert sum(split["train_adam"].values()) == linear_cpu.train_peak_bytes_adam
    # activations by module: fc's output, and the loss outside any module
    assert linear_cpu.activations_at_peak["inference"] == {"fc": OUT}
    assert linear_cpu.activations_at_peak["train_sgd"] == {"fc": OUT, "(outside modules)": 4}


def test_allocator_peak_is_at_least_tensor_peak(linear_cpu):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    other = measure(mlp, input_shape=(4, 3, 8, 8), device="cpu", warmup=0, repeats=1)
    for result in (linear_cpu, other):
        values = result.as_dict()
        for key, value in values.items():
            if "workspace" in key:
                assert value >= 0, key
        assert result.inference_peak_bytes >= result.inference_tensor_peak_bytes
        assert result.train_peak_bytes_sgd >= result.train_tensor_peak_bytes_sgd
        assert result.train_peak_bytes_adam >= result.train_tensor_peak_bytes_adam
        assert result.train_peak_bytes_adam > result.train_peak_bytes_sgd
        assert all(isinstance(v, (int, float, str, list, dict, bool, type(None)))
                   for v in values.values())


def test_tracker_puts_output_on_its_module(linear_cpu):
    # training forward: fc's output; the loss (outside any module): log_softmax 1,280 + 4 + 4
    assert linear_cpu.activation_bytes == {"fc": OUT, "(outside modules)": OUT + 8}
    model = linear().eval()
    x = torch.randn(32, 784)
    with TensorTracker(model, [*model.parameters(), x]) as tracker, torch.no_grad():
        out = model(x)
    assert tracker.baseline_bytes == PARAMS + X
    assert tracker.created_in("forward") == {"fc": OUT}
    assert tracker.peak_bytes == PARAMS + X + OUT
    del out


def test_allocator_and_tracker_agree_on_linear_forward():
    model = linear().eval()
    x = torch.randn(32, 784)

    def forward():
        with torch.no_grad():
            model(x)

    assert allocator_peak(forward).peak_bytes == OUT
    assert allocator_peak(forward).net_bytes == 0
    with TensorTracker(model, ()) as tracker:
        forward()
    assert tracker.peak_bytes == OUT and tracker.current_bytes == 0


def test_timing():
    x = torch.randn(64, 64)
    before = torch.get_num_threads()
    timing = time_fn(lambda: x @ x, CpuDevice(), warmup=2, repeats=7, threads=1)
    assert timing.median_ms > 0 and timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timing.repeats == 7 == len(timing.samples_ms) and timing.warmup == 2
    assert timing.threads == 1 and torch.get_num_threads() == before
    assert timing.iqr_ms >= 0
    with pytest.raises(ModelsizeError, match="repeats"):
        time_fn(lambda: None, CpuDevice(), repeats=0)


def test_measure_records_timing(linear_cpu):
    assert linear_cpu.forward_ms > 0 and linear_cpu.repeats == 3 and linear_cpu.warmup == 1
    assert linear_cpu.threads == torch.get_num_threads()
    assert linear_cpu.device == "cpu" and linear_cpu.batch == 32 and linear_cpu.dtype == "float32"
    assert linear_cpu.max_memory_reserved_bytes is None


def test_machine_info_keys():
    info = machine_info()
    for key in ("hostname", "platform", "python_version", "torch_version", "numpy_version",
                "cpu_model", "cpu_physical_cores", "cpu_logical_cores", "torch_threads",
                "total_ram_bytes", "gpus", "modelsize_version", "git_commit"):
        assert key in info, key
    assert isinstance(info["gpus"], list) and info["total_ram_bytes"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_device_error():
    with pytest.raises(DeviceError, match="CUDA is not available") as info:
        get_device("cuda")
    assert "\n" not in str(info.value)
    assert get_device(None).name == "cpu"


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device"):
        get_device("tpu")


class Greedy(nn.Module):
    """A forward pass that asks for 2**60 bytes: refused at once, nothing is touched."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        torch.empty(2 ** 60, dtype=torch.uint8, device=x.device)
        return self.fc(x)


def test_does_not_fit():
    with pytest.raises(DoesNotFit, match="inference does not fit") as info:
        measure(Greedy(), input_shape=(2, 4), device="cpu", warmup=0, repeats=1)
    assert info.value.phase == "inference" and info.value.partial["param_bytes"] == 4 * 4 * 4 + 16
    assert "\n" not in str(info.value) and "can't allocate memory" in str(info.value)
    with pytest.raises(DoesNotFit):
        CpuDevice().peak(lambda: torch.empty(2 ** 60, dtype=torch.uint8), 0)
    with pytest.raises(ZeroDivisionError):   # other errors pass through unchanged
        CpuDevice().peak(lambda: 1 / 0, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_linear_on_cuda():
    device = get_device("cuda")
    result = measure(linear(), input_shape=(32, 784), device=device, warmup=1, repeats=3)
    assert result.device == "cuda:0" and result.param_bytes == PARAMS
    # The caching allocator rounds blocks up to 512 B: weight 31,744 + bias 512 + x 100,352
    # + output 1,536 = 134,144, plus whatever else is alive (the cuBLAS workspace).
    assert result.inference_peak_bytes >= 134_144
    assert result.max_memory_reserved_bytes >= result.inference_peak_bytes
    assert result.train_peak_bytes_adam > result.train_peak_bytes_sgd > result.inference_peak_bytes
    assert result.inference_workspace_bytes >= 0 and result.forward_ms > 0
    model = linear().to(device.torch_device).eval()
    x = torch.randn(32, 784, device=device.torch_device)
    with torch.no_grad():
        model(x)   # handles and workspaces first
        reading = device.peak(lambda: model(x), 0)
    assert reading.above_baseline >= 1_536 and reading.above_baseline % 512 == 0


def test_tracker_finds_the_tensors_tree_flatten_finds():
    """The tracker's own walk of an operator's arguments and results (cheaper than pytree's):
    the same tensors, in the same order, through tuples, lists, dicts and torch's result tuples."""
    from torch.utils._pytree import tree_flatten
    from profiler.engine.op_cost import tensors_in_tree as _tensors
    a, b, c, d = (torch.ones(i + 1) for i in range(4))
    tree = ((a, [1.5, b, None], {"weight": c, "n": 2}), torch.max(torch.stack([d, d]), dim=0), "x")
    expected = [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]
    found = _tensors(tree)
    assert len(found) == len(expected) == 5 and all(x is y for x, y in zip(found, expected))
