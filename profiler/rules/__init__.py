"""Every layer rule. Importing this package registers them all (see ``profiler.registry``)."""
from . import core  # noqa: F401
