"""Tests whose expected bytes are kernel workspace measured on oneDNN's ``MODELLED`` ISA.

Under another ISA (another CPU, or ``ONEDNN_MAX_CPU_ISA=AVX2`` / ``AVX512_CORE``) those kernels
are other kernels: such tests skip with the reason, and the prediction itself carries the
warning (``profiler.engine.kernels.cpu_isa``, tested in tests/test_cpu_isa.py). float32's
workspace holds on ``cpu_isa.FLOAT32_EXACT`` too (AMX): its cases skip only elsewhere
(``float32_isa``, :func:`require_float32_isa`). Everything else in the suite runs, and passes,
under either cap.
"""
import pytest

from profiler.engine.kernels import cpu_isa

RUNNING = cpu_isa.onednn_isa()
OFF = RUNNING != cpu_isa.MODELLED
#: float32's workspace holds on more ISAs than low precision's (``cpu_isa.FLOAT32_EXACT``)
FLOAT32_OFF = RUNNING not in cpu_isa.FLOAT32_EXACT
REASON = (f"expects kernel workspace measured on oneDNN's {cpu_isa.MODELLED}; this process runs "
          f"{RUNNING} (ONEDNN_MAX_CPU_ISA or the CPU): predictions carry a warning there instead")

#: for a whole test (or a whole file: ``pytestmark = modelled_isa``)
modelled_isa = pytest.mark.skipif(OFF, reason=REASON)
#: for a whole test that runs float32 only
float32_isa = pytest.mark.skipif(FLOAT32_OFF, reason=REASON)


def require_modelled_isa() -> None:
    """Skip the running case (for the low-precision cases of a parametrized test)."""
    if OFF:
        pytest.skip(REASON)


def require_float32_isa() -> None:
    """Skip the running float32 case where float32's workspace is not known exact."""
    if FLOAT32_OFF:
        pytest.skip(REASON)


def workspace_off(*, dtype: str = "float32", amp: str | None = None, convolutions: bool = False) -> bool:
    """Whether a case books kernel workspace not known exact on this ISA: low precision's off the
    modelled ISA, float32 convolutions' off ``cpu_isa.FLOAT32_EXACT``."""
    if amp or dtype != "float32":
        return OFF
    return convolutions and FLOAT32_OFF


def require_modelled_isa_for(spec=None, *, dtype: str = "float32", amp: str | None = None) -> None:
    """Skip when the case books ISA-measured workspace: low precision, or a spec with convolutions."""
    convolutions = spec is not None and any("Conv" in node.layer.type for node in _all_nodes(spec))
    if workspace_off(dtype=dtype, amp=amp, convolutions=convolutions):
        pytest.skip(REASON)


def _all_nodes(spec):
    for node in spec.nodes:
        yield node
        if node.layer.model is not None:
            yield from _all_nodes(node.layer.model)
