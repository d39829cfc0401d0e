"""Every layer rule. Importing this package registers them all (see ``profiler.rules.registry``)."""
from profiler.rules import activations, attention, conv, core, merge, normalization, pooling, recurrent, reshaping  # noqa: F401
