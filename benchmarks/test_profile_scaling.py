"""How summary, fit and profile scale with depth (issue 10: a 10,000-layer Dense spec's `summary`
within 10 s, its `fit` within 20 s, its `profile` within 5 min and 2 GB of peak RSS; "the cost of
summary, profile and fit grows about linearly with the number of layers").

Each depth's Dense spec (64 units, relu) goes through each command of :data:`COMMANDS` once, by
the CLI in a child process: ``summary``; ``fit --device h100-80gb --train adam`` (the batch solved,
then its time on the card); ``fit --memory 8GiB --train adam``; ``profile --in-process`` (the
measuring child of a default run does the same work, and its peak RSS would not be seen by
``os.wait4``) with the default batch, optimizers and repeats. The child's wall time, CPU time (user
+ system: less sensitive than wall time to a shared machine) and peak RSS (``os.wait4`` counts the
child's own reaped children too: the forked replay behind a spec's predicted time, see
``profiler/forked.py``, is in both figures, CPU time summed, RSS the largest) go to
``benchmark.extra_info`` and ``results/profile_scaling.md``, with the load average at the end.
Depths: ``MODELSIZE_SCALING_DEPTHS`` (comma-separated; default 500,1000,2000); commands:
``MODELSIZE_SCALING_COMMANDS`` (comma-separated names of :data:`COMMANDS`; default all). Nothing
fails on a missed target. On a machine shared with other work, run it with
``OMP_WAIT_POLICY=PASSIVE``: with libgomp's default, a thread of torch's team spins while it waits,
and where the cores are busy that spin multiplies CPU and wall time at random (a 3,000-layer SGD
step: 0.5-4.8 s of CPU against 0.26-0.29 s passive; ``results/profile_scaling.md``); the line
under the table says which policy ran.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: name -> (arguments after the spec, issue 10's targets at 10,000 layers: seconds, bytes of RSS)
COMMANDS = {
    "summary": (["summary"], 10.0, None),
    "fit h100": (["fit", "--device", "h100-80gb", "--train", "adam"], 20.0, None),
    "fit 8GiB": (["fit", "--memory", "8GiB", "--train", "adam"], 20.0, None),
    "profile": (["profile", "--in-process", "--no-save"], 300.0, 2 * 2 ** 30),
}
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


def _run(spec: Path, command: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS bytes) of one `modelsize <command> spec ...`."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", LAUNCHER, command[0], str(spec), *command[1:]],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    assert child.returncode == 0, child.stderr[-2000:]
    _, rss_kib, cpu = child.stderr.strip().splitlines()[-1].split()
    return wall, float(cpu), int(rss_kib) * 1024


def test_profile_scaling(benchmark, tmp_path):
    depths = [int(d) for d in os.environ.get("MODELSIZE_SCALING_DEPTHS", "500,1000,2000").split(",")]
    names = os.environ.get("MODELSIZE_SCALING_COMMANDS", ",".join(COMMANDS)).split(",")
    found: dict[tuple[int, str], tuple[float, float, int]] = {}

    def run() -> None:
        for depth in depths:
            spec = dense_spec(tmp_path / f"dense-{depth}.json", depth)
            for name in names:
                found[depth, name] = _run(spec, COMMANDS[name][0])

    benchmark.pedantic(run, rounds=1, iterations=1)
    rows = []
    for (depth, name), (wall, cpu, rss) in found.items():
        benchmark.extra_info[f"dense-{depth} {name}"] = {"wall_s": wall, "cpu_s": cpu, "max_rss_bytes": rss}
        rows.append(f"| {depth:,} | `{name}` | {wall:.1f} s | {cpu:.1f} s | {1000 * cpu / depth:.2f} s "
                    f"| {rss / 2 ** 20:,.0f} MiB |")
    targets = "; ".join(f"`{name}` ≤ {seconds:g} s" + (f" and ≤ {rss / 2 ** 30:g} GiB" if rss else "")
                        for name, (_, seconds, rss) in COMMANDS.items())
    import torch
    table = "\n".join([
        "# `summary`, `fit` and `profile` of deep Dense specs", "",
        "One run per depth and command of `modelsize <command> dense-N.json` (64 units, relu; profile: "
        "`--in-process --no-save`, batch 32, SGD and Adam, 20 timed passes) as a child process. Written by "
        f"`benchmarks/test_profile_scaling.py`. Issue 10's targets at 10,000 layers: {targets}.", "",
        "| Layers | Command | Wall time | CPU time | CPU per 1,000 layers | Peak RSS |",
        "|---:|---|---:|---:|---:|---:|", *rows, "",
        f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'not set')}.", ""])
    (ROOT / "results" / "profile_scaling.md").write_text(table, encoding="utf-8")
    assert len(found) == len(depths) * len(names)
