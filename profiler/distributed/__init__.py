"""Scale-out memory: each rank's training-step peak under DDP, FSDP2 or ZeRO-1 at world size N.

``strategies`` wraps a module (one function per strategy, shared by both halves); ``job`` says what
every rank runs; ``predict`` replays rank r of N on fake tensors with a fake process group through
the memory engine; ``collectives`` books what a backend allocates inside a collective; ``launch``
measures N local gloo ranks with the runner's allocator-event method.
"""

#: the strategies, named as on the command line (what each does: ``strategies``)
STRATEGIES = ("ddp", "fsdp", "zero1")
