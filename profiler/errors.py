"""Named errors for bad input, with one message grammar: where, what, expected, received.

The CLI prints ``str(error)`` as a single line and exits with status 2, so every message must be
self-contained: it names the file, the layer (index, type and name) and the field at fault.
"""
from __future__ import annotations


class ModelsizeError(Exception):
    """Base of every error caused by the user's input rather than by a bug in modelsize."""

    def __init__(self, what: str, *, field: str | None = None, expected: str | None = None,
                 received: str | None = None, layer: str | None = None, source: str | None = None):
        self.what = what
        self.field = field
        self.expected = expected
        self.received = received
        self.layer = layer
        self.source = source
        super().__init__(self.message())

    def located(self, *, source: str | None = None, layer: str | None = None) -> "ModelsizeError":
        """Fill in where the error happened, keeping anything more specific already known."""
        self.source = self.source or source
        self.layer = self.layer or layer
        self.args = (self.message(),)
        return self

    def message(self) -> str:
        where = [part for part in (self.source, self.layer) if part]
        if self.field:
            where.append(f"field '{self.field}'")
        text = ": ".join(where + [self.what]) if where else self.what
        if self.expected is not None:
            text += f". Expected {self.expected}"
        if self.received is not None:
            text += f". Received {self.received}"
        return " ".join(text.split())

    def __str__(self) -> str:
        return self.message()


class SpecError(ModelsizeError):
    """A model description that cannot be read or has a wrong argument."""


class ShapeError(SpecError):
    """A layer whose arguments do not fit the shape of its input."""


class UnsupportedLayerError(SpecError):
    """A layer type that has no rule in the registry."""


class DeviceError(ModelsizeError):
    """A device that was asked for but is not available."""


def layer_label(index: int, type_name: str, name: str) -> str:
    """How every message names a layer: ``layer 2 (Conv2D "conv2d_1")``."""
    return f'layer {index} ({type_name} "{name}")'
