"""Which instruction set oneDNN will run on this CPU, and whether the kernel facts here hold for it.

oneDNN picks its kernels (and with them their scratchpads, reorders and blocked layouts) by the
CPU's instruction set, capped by ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``),
read once when oneDNN first runs. The workspace functions in this folder were measured on
``MODELLED``; elsewhere (a laptop with AVX2 only, AVX-512 without bf16) the low-precision kernels
are other kernels with other buffers: measured with ``ONEDNN_MAX_CPU_ISA=AVX2``, the bfloat16 zoo
is 25–80% under-predicted, and with ``AVX512_CORE`` a transformer's bf16 inference 53%; the
digits classifier's bf16 inference (batch 32) is 199% over under AVX2 and 194% over under AVX512_CORE. Those
predictions are flagged, not silently given. float32 held exact on the zoo under both caps, and
is exact, convolutions included, on ``AVX512_CORE_AMX`` (:data:`FLOAT32_EXACT`), which flags only
low precision.

Read from ``/proc/cpuinfo`` and the environment, without importing torch.
"""
from __future__ import annotations

import os
from functools import lru_cache

#: oneDNN's ISA names (``dnnl::cpu_isa``), lowest first, each with the CPU flags it needs
LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("SSE41", frozenset({"sse4_1"})),
    ("AVX", frozenset({"avx"})),
    ("AVX2", frozenset({"avx2"})),
    ("AVX2_VNNI", frozenset({"avx2", "avx_vnni"})),
    ("AVX512_CORE", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})),
    ("AVX512_CORE_VNNI", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"})),
    ("AVX512_CORE_BF16", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"})),
    ("AVX512_CORE_FP16", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
                                    "avx512_fp16"})),
    ("AVX512_CORE_AMX", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
                                   "amx_tile", "amx_bf16"})),
)
NAMES = tuple(name for name, _ in LEVELS)
#: where this folder's kernel facts were measured (AMD EPYC with AVX-512 BF16, no AMX)
MODELLED = "AVX512_CORE_BF16"
#: where float32's kernel workspace (oneDNN's convolution reorders and scratchpads, im2col
#: columns) was measured exact too: on an Intel Xeon with AMX the suite's float32 cases, their ISA
#: skip lifted, passed (548 of 548, 6 Dec); its low-precision kernels are others (212 cases failed)
FLOAT32_EXACT = frozenset({MODELLED, "AVX512_CORE_AMX"})
# (capped there with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, its low-precision cases passed too: 398 of
# 398 in the files of oneDNN's matmul, convolution and recurrent workspace, the cap's kernels exact)
#: oneDNN's aliases for its caps
_ALIASES = {"ALL": NAMES[-1], "AVX10_1_512": "AVX512_CORE_FP16", "AVX10_1_512_AMX": "AVX512_CORE_AMX",
            "AVX512_CORE_AMX_FP16": "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX"}


def cpu_isa(flags: frozenset[str] | None = None) -> str | None:
    """The highest oneDNN ISA this CPU supports (None where ``/proc/cpuinfo`` does not say)."""
    flags = _cpu_flags() if flags is None else flags
    if not flags:
        return None
    best = None
    for name, needed in LEVELS:
        if needed <= flags:
            best = name
    return best


def onednn_isa(environ: "os._Environ[str] | dict[str, str] | None" = None,
               flags: frozenset[str] | None = None) -> str | None:
    """The ISA oneDNN will use: the CPU's, capped by ``ONEDNN_MAX_CPU_ISA``."""
    environ = os.environ if environ is None else environ
    found = cpu_isa(flags)
    cap = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    cap = _ALIASES.get(cap, cap)
    if found is None or cap not in NAMES:
        return found
    return min(found, cap, key=NAMES.index)


def warnings(*, dtype: str, amp: str | None, device_kind: str,
             environ: "os._Environ[str] | dict[str, str] | None" = None,
             flags: frozenset[str] | None = None) -> list[str]:
    """What a CPU prediction cannot vouch for on this machine's ISA; empty where it can."""
    if device_kind != "cpu":
        return []
    isa = onednn_isa(environ, flags)
    if isa == MODELLED:
        return []
    running = isa or "an unknown ISA"
    low = amp or (dtype if dtype in ("bfloat16", "float16") else None)
    if low:
        return [f"{low} kernels' workspace (oneDNN matmul and convolution scratchpads, reorders) is modelled "
                f"for oneDNN's {MODELLED}; this CPU runs {running}: the {low} prediction is NOT MODELLED and "
                f"may be far off either way (measured under AVX2: 25-80% under on a bf16 zoo, 199% over on the "
                f"digits classifier's inference). Measure it (modelsize profile) before relying on it."
                + (f" This CPU is above {MODELLED}: run with ONEDNN_MAX_CPU_ISA={MODELLED} (the prediction and "
                   f"the training alike) for the modelled kernels, exact on an Intel Xeon with AMX."
                   if isa in NAMES and NAMES.index(isa) > NAMES.index(MODELLED) else "")]
    if isa in FLOAT32_EXACT:
        return []
    return [f"kernel workspace was measured on oneDNN's {MODELLED}; this CPU runs {running}: float32 held exact "
            f"on the accuracy zoo under AVX2 and AVX512_CORE, but convolutions' workspace is not modelled there "
            f"(a small CNN's inference measured 22% over under AVX2)."]


@lru_cache(maxsize=None)
def per_core_cache(level: int, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Bytes of the level-``level`` data (or unified) cache over the CPUs that share it, as oneDNN
    sizes its blocks by them (``platform::get_per_core_cache_size``); read from sysfs, None where
    it does not say."""
    try:
        for index in sorted(os.listdir(root)):
            folder = os.path.join(root, index)

            def read(name: str) -> str:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    return f.read().strip()
            if not index.startswith("index") or read("type") not in ("Data", "Unified") or int(read("level")) != level:
                continue
            size = read("size")
            scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1:], 1)
            sharing = sum(int(b) - int(a) + 1 if "-" in part else 1
                          for part in read("shared_cpu_list").split(",") if part
                          for a, _, b in [part.partition("-")])
            return int(size.rstrip("KMG")) * scale // max(sharing, 1)
    except (OSError, ValueError):
        return None
    return None


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
