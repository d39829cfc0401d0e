"""How `profile` scales with depth (issue 10: a 10,000-layer Dense spec's `profile` within 5 min
and 2 GB of peak RSS; "the cost of summary, profile and fit grows about linearly with the number
of layers").

Each depth's Dense spec (64 units, relu) is profiled by the CLI in a child process, in-process
(``--in-process``: the measuring child of a default run does the same work, and its peak RSS would
not be seen by ``os.wait4``), with the default batch, optimizers and repeats. The child's wall time,
CPU time (user + system: less sensitive than wall time to a shared machine) and peak RSS go to
``benchmark.extra_info`` and ``results/profile_scaling.md``, with CPU seconds per 1,000 layers:
flat when the cost is linear. Depths: ``MODELSIZE_SCALING_DEPTHS`` (comma-separated; default
500,1000,2000). Nothing fails on a missed target.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_10K_S, TARGET_10K_RSS = 300.0, 2 * 2 ** 30
LAUNCHER = ("import os, sys\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.execv(sys.executable, [sys.executable, '-m', 'profiler', *sys.argv[1:]])\n"
            "_, status, usage = os.wait4(pid, 0)\n"
            "sys.stderr.write(f'\\nUSAGE {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}\\n')\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def dense_spec(path: Path, depth: int) -> Path:
    layers = [{"Dense": {"units": 64, "activation": "relu"}} for _ in range(depth)]
    path.write_text(json.dumps({"name": f"dense-{depth}", "input_shape": [64], "layers": layers}))
    return path


def _profile(spec: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS bytes) of one `modelsize profile --in-process`."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", LAUNCHER, "profile", str(spec), "--in-process", "--no-save"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    assert child.returncode == 0, child.stderr[-2000:]
    _, rss_kib, cpu = child.stderr.strip().splitlines()[-1].split()
    return wall, float(cpu), int(rss_kib) * 1024


def test_profile_scaling(benchmark, tmp_path):
    depths = [int(d) for d in os.environ.get("MODELSIZE_SCALING_DEPTHS", "500,1000,2000").split(",")]
    found: dict[int, tuple[float, float, int]] = {}

    def run() -> None:
        for depth in depths:
            found[depth] = _profile(dense_spec(tmp_path / f"dense-{depth}.json", depth))

    benchmark.pedantic(run, rounds=1, iterations=1)
    rows = []
    for depth, (wall, cpu, rss) in found.items():
        benchmark.extra_info[f"dense-{depth}"] = {"wall_s": wall, "cpu_s": cpu, "max_rss_bytes": rss}
        rows.append(f"| {depth:,} | {wall:.1f} s | {cpu:.1f} s | {1000 * cpu / depth:.1f} s | {rss / 2 ** 20:,.0f} MiB |")
    import torch
    table = "\n".join([
        "# `profile` of deep Dense specs", "",
        "One run per depth of `modelsize profile dense-N.json --in-process --no-save` (64 units, relu; batch 32, "
        "SGD and Adam, 20 timed passes) as a child process. Written by `benchmarks/test_profile_scaling.py`. "
        f"Issue 10's target for 10,000 layers: ≤ {TARGET_10K_S:g} s, ≤ {TARGET_10K_RSS / 2 ** 30:g} GiB.", "",
        "| Layers | Wall time | CPU time | CPU per 1,000 layers | Peak RSS |", "|---:|---:|---:|---:|---:|", *rows, "",
        f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}.", ""])
    (ROOT / "results" / "profile_scaling.md").write_text(table, encoding="utf-8")
    assert len(found) == len(depths)
