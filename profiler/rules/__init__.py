"""What a layer is: one rule per layer type (``registry``), all loaded by ``catalog``."""
