"""Settings for the whole suite, made before any test module imports torch.

``make test`` runs the suite on two pytest-xdist workers (the Makefile), each with torch's own thread
count, so every byte figure (oneDNN sizes its scratchpads per thread) is the one a serial run
measures. libgomp's threads spin-wait after each parallel region by default; beside a second
worker that spinning takes the core the other worker needs (measured: 64-68 s of CPU against
18-19 s passive for the same 5 timm/transformers tests (two runs each) on the loaded machine). Passive waiting
changes how idle threads wait, not what runs or allocates. An ``OMP_WAIT_POLICY`` already set is
kept. Children (the CLI, the forkserver, the distributed ranks) inherit it.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # read once, when torch loads libgomp
