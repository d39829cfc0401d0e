"""A small catalog of accelerators and their memory, for ``modelsize fit --device NAME``.

Which figure, and why. A card sold as "80GB" has 80 GiB of memory chips (HBM stacks and GDDR chips
come in binary sizes), but no program can use all of it: the driver keeps some (ECC, page tables,
firmware), and what CUDA reports as ``cudaDeviceProp.totalGlobalMem`` — the ``total_memory`` of
``torch.cuda.get_device_properties`` — is smaller again than the "Total" nvidia-smi prints. An
H100 80GB HBM3, for example: 80 GiB = 81,920 MiB of HBM3; nvidia-smi: 81,559 MiB; deviceQuery and
torch: 81,079 to 81,106 MiB (85,017,755,648 to 85,045,477,376 bytes), depending on the driver.
It is not 80 GiB (85,899,345,920 bytes), nor 80 × 10⁹.

So each entry's ``memory_bytes`` is, where we found one, a ``totalGlobalMem`` reading (deviceQuery's
"Total amount of global memory" or torch's ``total_memory``) — the smallest one seen across driver
versions, since newer drivers tend to report a little less. Where no such reading was found, the
entry is marked ``nominal`` and says what its figure is. For an exact budget on your own machine,
pass ``--memory`` with ``torch.cuda.get_device_properties(0).total_memory``.

Out of that total, before the caching allocator sees a byte, the CUDA context and the library
handles take their share (:data:`CONTEXT_RESERVE`); the cuBLAS workspace is allocated through the
caching allocator, so it counts in ``memory_allocated`` (:func:`blas_workspace_bytes`).
"""
from __future__ import annotations

from dataclasses import dataclass

from profiler.errors import SpecError

MiB = 1 << 20
GiB = 1 << 30

#: CUDA context, cuBLAS/cuDNN handles and loaded kernels, outside the caching allocator. With lazy
#: module loading (CUDA_MODULE_LOADING=LAZY, PyTorch's default since CUDA 11.7) this is a few
#: hundred MiB; eager loading of every kernel can take over 1 GiB. A stated default, not a
#: measurement: override with ``--reserve``.
CONTEXT_RESERVE = 512 * MiB

#: NCCL's communicator buffers on each rank's card (per-peer channel buffers, proxy and work FIFOs),
#: allocated by NCCL itself: outside the caching allocator, so no replay or allocator reading sees
#: them. Published figures, not measured here (no GPU): about 1.06 GB per GPU on 8 × H100 before any
#: all-to-all, 4.34 GB after one (32 channels per peer pair; NVIDIA/nccl issue #1685), about 1.6 GB
#: with one communicator (NVIDIA/nccl issue #864). The default, for CUDA ranks at world size > 1:
#: override with ``--comm-reserve`` (NCCL_BUFFSIZE and the channel count move it).
COMM_RESERVE = 1 * GiB


@dataclass(frozen=True)
class Accelerator:
    name: str                       # the catalog key, as typed after --device
    model: str                      # what torch.cuda.get_device_name() reports
    memory_bytes: int               # the budget before any reserve (see the module docstring)
    nominal: bool                   # False: a totalGlobalMem reading; True: see ``source``
    source: str                     # where ``memory_bytes`` comes from
    capability: tuple[int, int]     # compute capability (AMD: the gfx major, minor)
    vendor: str = "nvidia"
    #: peak dense (not 2:4-sparse) throughput, TFLOP/s, by the dtype a matrix multiply runs in:
    #: "float32" on the CUDA cores (PyTorch's default for float32 matmuls, TF32 off), "tfloat32",
    #: "bfloat16" and "float16" on the tensor cores with float32 accumulation; from ``datasheet``
    tflops: tuple[tuple[str, float], ...] = ()
    bandwidth_gbs: float = 0.0      # memory bandwidth, GB/s (10⁹ bytes), from the datasheet
    datasheet: str = ""             # where the throughput and bandwidth figures come from
    #: share of the datasheet peak measured on this card by modelsize's GPU check (None: not yet
    #: measured; the time predicted is then a roofline at the datasheet figures)
    measured_efficiency: float | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "memory_bytes": self.memory_bytes,
                "nominal": self.nominal, "source": self.source, "vendor": self.vendor,
                "capability": list(self.capability), "tflops": dict(self.tflops),
                "bandwidth_gbs": self.bandwidth_gbs, "datasheet": self.datasheet,
                "measured_efficiency": self.measured_efficiency}


def _dq(mib: int, nbytes: int, driver: str) -> str:
    return f"deviceQuery totalGlobalMem {nbytes:,} B ({mib:,} MiB), CUDA driver {driver}"


def _peaks(fp32: float, tf32: float, bf16: float, fp16: float | None = None) -> tuple[tuple[str, float], ...]:
    return (("float32", fp32), ("tfloat32", tf32), ("bfloat16", bf16), ("float16", fp16 if fp16 else bf16))


# Datasheet figures (dense, i.e. half the "with sparsity" numbers the sheets print first):
_H100_SXM = dict(tflops=_peaks(67, 494.5, 989.4), bandwidth_gbs=3350,
                 datasheet="NVIDIA H100 Tensor Core GPU datasheet (SXM5): FP32 67 TF, TF32 989 TF and "
                           "BF16/FP16 1,979 TF with sparsity, HBM3 3.35 TB/s")
_H100_NVL = dict(tflops=_peaks(60, 417.5, 835.5), bandwidth_gbs=3900,
                 datasheet="NVIDIA H100 NVL datasheet: FP32 60 TF, TF32 835 TF and BF16/FP16 1,671 TF "
                           "with sparsity, HBM3 3.9 TB/s")
_A100 = dict(tflops=_peaks(19.5, 156, 312),
             datasheet="NVIDIA A100 Tensor Core GPU datasheet (SXM): FP32 19.5 TF, TF32 156 TF, "
                       "BF16/FP16 312 TF dense")
_L40S = dict(tflops=_peaks(91.6, 183, 362), bandwidth_gbs=864,
             datasheet="NVIDIA L40S datasheet: FP32 91.6 TF, TF32 366 TF and BF16/FP16 733 TF with "
                       "sparsity, GDDR6 864 GB/s")
_L4 = dict(tflops=_peaks(30.3, 60, 121), bandwidth_gbs=300,
           datasheet="NVIDIA L4 datasheet: FP32 30.3 TF, TF32 120 TF and BF16/FP16 242 TF with "
                     "sparsity, GDDR6 300 GB/s")
_A10 = dict(tflops=_peaks(31.2, 62.5, 125), bandwidth_gbs=600,
            datasheet="NVIDIA A10 datasheet: FP32 31.2 TF, TF32 62.5 TF, BF16/FP16 125 TF dense, "
                      "GDDR6 600 GB/s")
_RTX4090 = dict(tflops=_peaks(82.6, 82.6, 165.2), bandwidth_gbs=1008,
                datasheet="NVIDIA Ada GPU architecture whitepaper (RTX 4090): FP32 82.6 TF, TF32 82.6 TF, "
                          "BF16/FP16 with FP32 accumulate 165.2 TF dense; GDDR6X 1,008 GB/s")
_RTX3090 = dict(tflops=_peaks(35.6, 35.6, 71), bandwidth_gbs=936,
                datasheet="NVIDIA Ampere GA102 whitepaper (RTX 3090): FP32 35.6 TF, TF32 35.6 TF, "
                          "BF16/FP16 with FP32 accumulate 71 TF dense; GDDR6X 936 GB/s")
_T4 = dict(tflops=_peaks(8.1, 8.1, 8.1, 65), bandwidth_gbs=320,
           datasheet="NVIDIA T4 datasheet: FP32 8.1 TF, FP16/FP32 mixed 65 TF, no bfloat16 tensor cores "
                     "(bfloat16 priced at FP32), GDDR6 320 GB/s")
_V100 = dict(tflops=_peaks(15.7, 15.7, 15.7, 125), bandwidth_gbs=900,
             datasheet="NVIDIA V100 datasheet (SXM2): FP32 15.7 TF, tensor (FP16) 125 TF, no bfloat16 "
                       "tensor cores (bfloat16 priced at FP32), HBM2 900 GB/s")
_MI300X = dict(tflops=_peaks(163.4, 653.7, 1307.4), bandwidth_gbs=5300,
               datasheet="AMD Instinct MI300X datasheet: FP32 vector 163.4 TF, TF32 653.7 TF, BF16/FP16 "
                         "1,307.4 TF dense, HBM3 5.3 TB/s")

CATALOG: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator("h100-80gb", "NVIDIA H100 80GB HBM3", 85_017_755_648, False,
                _dq(81_079, 85_017_755_648, "13.0") + "; 81,090-81,106 MiB with drivers 12.7-12.8; "
                "nvidia-smi shows 81,559 MiB", (9, 0), **_H100_SXM),
    Accelerator("h100-94gb", "NVIDIA H100 NVL", 99_961_274_368, True,
                "nominal: framebuffer total 99,961,274,368 B (95,330 MiB) as the kernel's DRM driver "
                "reports it; totalGlobalMem is smaller (on the 80 GB H100 by ~480 MiB)", (9, 0), **_H100_NVL),
    Accelerator("a100-80gb", "NVIDIA A100-SXM4-80GB", 84_987_740_160, False,
                _dq(81_051, 84_987_740_160, "12.2") + "; 81,158 MiB with driver 12.5", (8, 0),
                **_A100, bandwidth_gbs=2039),
    Accelerator("a100-40gb", "NVIDIA A100-SXM4-40GB", 42_298_834_944, False,
                _dq(40_339, 42_298_834_944, "12.2"), (8, 0), **_A100, bandwidth_gbs=1555),
    Accelerator("l40s-48gb", "NVIDIA L40S", 47_576_711_168, False,
                _dq(45_373, 47_576_711_168, "12.4"), (8, 9), **_L40S),
    Accelerator("l4-24gb", "NVIDIA L4", 23_612_293_120, False,
                _dq(22_518, 23_612_293_120, "12.0"), (8, 9), **_L4),
    Accelerator("a10-24gb", "NVIDIA A10", 23_609_475_072, False,
                _dq(22_516, 23_609_475_072, "12.2") + "; 22,599 MiB with driver 12.8", (8, 6), **_A10),
    Accelerator("rtx-4090-24gb", "NVIDIA GeForce RTX 4090", 25_250_627_584, False,
                _dq(24_081, 25_250_627_584, "13.0") + " on Linux; 24,564 MiB with driver 12.1; "
                "Windows (WDDM) reports ~23,028 MiB", (8, 9), **_RTX4090),
    Accelerator("rtx-3090-24gb", "NVIDIA GeForce RTX 3090", 25_414_860_800, False,
                _dq(24_238, 25_414_860_800, "12.1") + "; 24,268 MiB with driver 11.8", (8, 6), **_RTX3090),
    Accelerator("t4-16gb", "Tesla T4", 15_642_329_088, False,
                _dq(14_918, 15_642_329_088, "12.5") + " (ECC on); 15,110 MiB with driver 11.2", (7, 5), **_T4),
    Accelerator("v100-16gb", "Tesla V100-SXM2-16GB", 16_911_433_728, False,
                _dq(16_128, 16_911_433_728, "11.0") + "; 16,144-16,160 MiB with other drivers", (7, 0), **_V100),
    Accelerator("v100-32gb", "Tesla V100-SXM2-32GB", 34_058_272_768, False,
                _dq(32_480, 34_058_272_768, "10.0") + "; 32,494-32,511 MiB with drivers 11.2-12.9", (7, 0), **_V100),
    Accelerator("mi300x-192gb", "AMD Instinct MI300X", 196_592 * MiB, False,
                "torch (ROCm 6.2) total_memory=196592MB, i.e. 196,592 MiB rounded down "
                "(192 GiB = 196,608 MiB of HBM3)", (9, 4), vendor="amd", **_MI300X),
)}


def lookup(name: str) -> Accelerator:
    """The catalog entry for ``name`` (case and ``_``/space for ``-`` do not matter)."""
    key = "-".join(name.strip().lower().replace("_", "-").split())
    if key in CATALOG:
        return CATALOG[key]
    hint = "; for a CPU budget use --memory SIZE" if key == "cpu" else ""
    raise SpecError(f"unknown accelerator{hint}", field="device", expected="one of " + ", ".join(CATALOG),
                    received=repr(name))


#: a call's shortest time on a GPU in PyTorch's eager mode: the CPU's dispatch and the kernel
#: launch (a stated figure, typical of eager PyTorch, not a measurement on these cards)
LAUNCH_SECONDS = 5e-6


def roofline_model(accelerator: Accelerator) -> "DeviceModel":
    """The time model of a card nobody here has measured: each call the larger of its FLOPs at the
    datasheet peak for its dtype and its bytes at the datasheet bandwidth, at least a launch
    (:mod:`profiler.engine.step_time`); scaled by the measured efficiency where there is one."""
    from profiler.engine.step_time import DeviceModel
    share = accelerator.measured_efficiency or 1.0
    measured = f", {share:.0%} of peak as measured" if accelerator.measured_efficiency else \
        ": a roofline prediction, not yet checked on this card"
    return DeviceModel(name=accelerator.name, method="roofline",
                       peak_flops={dtype: tflops * 1e12 * share for dtype, tflops in accelerator.tflops},
                       bandwidth=accelerator.bandwidth_gbs * 1e9 * share, launch_s=LAUNCH_SECONDS,
                       source=f"{accelerator.datasheet}{measured}")


def blas_workspace_bytes(accelerator: Accelerator | None) -> int:
    """Bytes of one cuBLAS workspace, allocated through the caching allocator per (handle, stream).

    PyTorch's default (``CUBLAS_WORKSPACE_CONFIG`` unset, ``aten/src/ATen/cuda/CublasHandlePool.cpp``):
    ``:4096:8`` = 4096 KiB × 8 = 32 MiB on compute capability 9.0 (Hopper), otherwise
    ``:4096:2:16:8`` = 4096 KiB × 2 + 16 KiB × 8 = 8,519,680 bytes; cuBLASLt shares it (the unified
    workspace). ROCm keeps a separate hipBLASLt workspace (76 MiB by default): assumed here on top of
    a 32 MiB hipBLAS one. Unknown hardware (``--memory`` with ``--target cuda``): 32 MiB, the larger.
    """
    if accelerator is None:
        return 32 * MiB
    if accelerator.vendor == "amd":
        return 32 * MiB + 76 * MiB
    if accelerator.capability >= (9, 0):
        return 32 * MiB
    return 4096 * 1024 * 2 + 16 * 1024 * 8
