"""Whole-process wall time and peak memory of the CLI, as a user runs it (issue 8's figures).

Each case runs ``modelsize ...`` as a child process ``ROUNDS`` times (cases interleaved round by
round, so drift hits all alike); the child's wall time and its peak RSS (``os.wait4``) are kept.
Medians with spread go to ``benchmark.extra_info`` and to ``results/cli_speed.md``. Targets
(issue 8): summary of digits <= 3 s; a 1,000-layer Dense spec <= 2 s; the 7B decoder <= 3 s and
<= 350 MiB; ``fit`` of the 7B decoder on an H100 with Adam <= 15 s. Nothing here fails on a missed
target: the table says which were met on the machine that ran it.

torch's CUDA build alone takes about 520 MB of RSS to import, so the 7B row is also run with a
CPU-only torch when ``MODELSIZE_CPU_TORCH_PYTHON`` names a Python that has one (a venv with
``pip install torch --index-url .../cpu``, the package installed or on ``PYTHONPATH``); without
it that row is left out.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
ROUNDS = 3
#: A small launcher runs the CLI and reports the child's peak RSS (``os.wait4``) on stderr's last
#: line. (A child started straight from this large pytest process would inherit its high-water
#: mark at exec; a launcher's own fork starts from a small process.)
LAUNCHER = ("import os, sys\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.execv(sys.executable, [sys.executable, '-m', 'profiler', *sys.argv[1:]])\n"
            "_, status, usage = os.wait4(pid, 0)\n"
            "sys.stderr.write(f'\\nMAXRSS {usage.ru_maxrss}\\n')\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
#: a Python whose torch is a CPU-only build (optional): the 7B summary is run with it too
CPU_PYTHON = os.environ.get("MODELSIZE_CPU_TORCH_PYTHON")


def _deep_dense(tmp: Path) -> Path:
    layers = [{"Dense": {"units": 64, "activation": "relu"}} for _ in range(1000)]
    path = tmp / "dense-1000.json"
    path.write_text(json.dumps({"name": "dense-1000", "input_shape": [64], "layers": layers}))
    return path


def _cases(tmp: Path) -> dict[str, tuple[list[str], float, int | None, str]]:
    """name -> (arguments, target seconds, target peak RSS bytes, the Python that runs it)."""
    llama = ["torch_models:llama_7b", "--input-shape", "2048", "--input-dtype", "int64"]
    cases = {
        "summary digits": (["summary", "digits"], 3.0, None, sys.executable),
        "summary 1,000-layer Dense spec": (["summary", str(_deep_dense(tmp))], 2.0, None, sys.executable),
        "summary 7B decoder": (["summary", *llama], 3.0, 350 * 2 ** 20, sys.executable),
        "fit 7B decoder, h100-80gb, Adam": (["fit", *llama, "--device", "h100-80gb", "--train", "adam"], 15.0, None,
                                            sys.executable),
    }
    if CPU_PYTHON:
        cases["summary 7B decoder, CPU-only torch"] = (["summary", *llama], 3.0, 350 * 2 ** 20, CPU_PYTHON)
    return cases


def _torch_version(python: str) -> str:
    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


def _run(args: list[str], python: str = sys.executable) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit status) of one child process."""
    start = time.perf_counter()
    child = subprocess.run([python, "-c", LAUNCHER, *args], cwd=TESTS, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    wall = time.perf_counter() - start
    peak_kib = int(child.stderr.strip().splitlines()[-1].split()[1])
    return wall, peak_kib * 1024, child.returncode


def _spread(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def test_cli_whole_process(benchmark, tmp_path):
    cases = _cases(tmp_path)
    walls: dict[str, list[float]] = {name: [] for name in cases}
    rss: dict[str, list[int]] = {name: [] for name in cases}

    def rounds() -> None:
        for _ in range(ROUNDS):
            for name, (args, _, _, python) in cases.items():
                wall, peak, code = _run(args, python)
                assert code in (0, 3), (name, code)    # 3: "nothing fits" is an answer
                walls[name].append(wall)
                rss[name].append(peak)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    rows = []
    for name, (args, target_s, target_rss, _) in cases.items():
        wall, peak = _spread(walls[name]), max(rss[name])
        met = wall["median"] <= target_s and (target_rss is None or peak <= target_rss)
        benchmark.extra_info[name] = {"wall_s": wall, "max_rss_bytes": peak, "target_s": target_s,
                                      "target_rss_bytes": target_rss, "met": met}
        shown = " ".join(Path(a).name if a.startswith("/") else a for a in args)
        rows.append(f"| {name} | `modelsize {shown}` | {wall['median']:.2f} s "
                    f"({wall['min']:.2f}–{wall['max']:.2f}) | {peak / 2 ** 20:.0f} MiB | ≤ {target_s:g} s"
                    + (f", ≤ {target_rss / 2 ** 20:.0f} MiB" if target_rss else "") + f" | {'yes' if met else 'no'} |")
    import torch
    cpu_build = f"; the CPU-only row: torch {_torch_version(CPU_PYTHON)}" if CPU_PYTHON else ""
    table = "\n".join([
        "# Whole-process time of the CLI", "",
        f"{ROUNDS} runs of each command as a child process, interleaved; median (min–max) wall time and the "
        "largest peak RSS. Written by `benchmarks/test_cli_process.py`.", "",
        "| Case | Command | Wall time | Peak RSS | Target | Met? |", "|:---|:---|---:|---:|:---|:---|", *rows, "",
        f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__}{cpu_build}, Python {sys.version.split()[0]}.",
        ""])
    (ROOT / "results" / "cli_speed.md").write_text(table, encoding="utf-8")
    assert all(walls.values())
