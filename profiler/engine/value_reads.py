"""Library code that reads tensor values, answered as the real run answers while the engine
traces on meta or fake tensors (which have no values).

Hugging Face transformers looks at its masks' values to make the most of unpadded input: whether
``position_ids`` pack several sequences in a row (``find_packed_sequence_indices``) and whether a
padding mask is all ones, so that sdpa can run with ``is_causal`` and no mask at all
(``_ignore_causal_mask_sdpa``, ``_ignore_bidirectional_mask_sdpa``). On meta tensors reading
fails (``.item()``); on fake tensors transformers answers "maybe" and builds a ``(batch, 1, seq,
seq)`` mask the real run never makes. The tool's inputs are one unpadded sequence per row, so
while the engine runs those functions give the real answer: nothing packed, no padding. They are
swapped in ``transformers.masking_utils`` for the duration and put back (not thread-safe), and
only when transformers is already imported (a model made by it).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

from torch._subclasses.fake_tensor import FakeTensor


def _not_packed(original: Callable[..., Any]) -> Callable[..., Any]:
    def find_packed_sequence_indices(position_ids: Any) -> None:
        """None, after the calls a real run makes to find it (on fake tensors: the time model
        prices them): transformers' own, which on a fake tensor stop short of the check, then
        the check's (``(mask[:, -1] == 0).all()``, transformers 5.25) but for the read of its
        answer. A real GPT-2 forward pass ran 12 more operator calls than the replay without them.
        A transformers whose function reads the answer on a fake tensor too (which raises) has
        made its calls by then."""
        if isinstance(position_ids, FakeTensor):
            try:
                mask = original(position_ids)
            except Exception:   # noqa: BLE001 - the read of a value a fake tensor does not have
                return None
            if isinstance(mask, FakeTensor) and mask.dim() == 2:
                (mask[:, -1] == 0).all()
        return None
    return find_packed_sequence_indices


def _no_padding(original: Callable[..., Any]) -> Callable[..., Any]:
    def without_padding(padding_mask: Any, *args: Any, **kwargs: Any) -> Any:
        return original(None, *args, **kwargs)
    without_padding.__name__ = original.__name__
    return without_padding


#: transformers.masking_utils functions that read a mask's values -> their replacement's maker.
_MASK_CHECKS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "find_packed_sequence_indices": _not_packed,
    "_ignore_causal_mask_sdpa": _no_padding,
    "_ignore_bidirectional_mask_sdpa": _no_padding,
}


@contextlib.contextmanager
def answered_as_real() -> Iterator[None]:
    """Within: the value reads above answer as for real, unpadded inputs."""
    masking_utils = sys.modules.get("transformers.masking_utils")
    if masking_utils is None and "transformers" in sys.modules:
        try:
            from transformers import masking_utils
        except ImportError:   # pragma: no cover - a transformers without these masks
            masking_utils = None
    if masking_utils is None:
        yield
        return
    saved = {name: getattr(masking_utils, name) for name in _MASK_CHECKS if hasattr(masking_utils, name)}
    for name, original in saved.items():
        setattr(masking_utils, name, _MASK_CHECKS[name](original))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(masking_utils, name, original)
