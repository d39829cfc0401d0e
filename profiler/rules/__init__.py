"""Every layer rule. Importing this package registers them all (see ``profiler.registry``)."""
from . import conv, core, normalization, pooling  # noqa: F401
