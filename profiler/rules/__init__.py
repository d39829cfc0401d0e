"""Every layer rule. Importing this package registers them all (see ``profiler.registry``)."""
from . import activations, attention, conv, core, merge, normalization, pooling, recurrent, reshaping  # noqa: F401
