"""Thread counts (issue 9): under OMP_NUM_THREADS = 1, 2, 4 and 8, and with --threads 1, 2, 4, 8
(torch.set_num_threads: oneDNN then runs that many threads even on fewer CPUs), every peak that
``profile`` predicts for the accuracy zoo in bfloat16 (whose oneDNN scratchpads are per thread)
and float32 equals what it measures in the same process. Each setting runs in a fresh process
(OpenMP reads the variable when torch starts); results/threads.md gets the table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accuracy import RESULTS

ZOO = sorted(str(p) for p in (Path(__file__).parent / "zoo").glob("*.yaml"))
SETTINGS = [("OMP_NUM_THREADS", n) for n in (1, 2, 4, 8)] + [("--threads", n) for n in (1, 4, 8)]
CASES = [(path, dtype, setting) for setting in SETTINGS for dtype in ("bfloat16", "float32") for path in ZOO]
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if len(ROWS) == len(CASES):
        lines = ["# Thread counts: predicted against measured peaks (CPU)", "",
                 "Each model of the accuracy zoo at batch 8, profiled in a fresh process under the setting; "
                 "`threads` is what torch ran with. Exact: every peak (inference, SGD, Adam, first steps) "
                 "predicted to the byte.", "", "| setting | dtype | model | threads | exact peaks | largest error |",
                 "|---|---|---|---:|---:|---:|"]
        for r in ROWS:
            lines.append(f"| {r['setting']} | {r['dtype']} | {r['model']} | {r['threads']} | "
                         f"{r['exact']}/{r['peaks']} | {r['worst'] * 100:+.3f}% |")
        exact = sum(r["exact"] for r in ROWS)
        total = sum(r["peaks"] for r in ROWS)
        lines += ["", f"Over all settings: {exact} of {total} peaks exact."]
        (RESULTS / "threads.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("path,dtype,setting", CASES,
                         ids=[f"{s[0]}={s[1]}-{d}-{Path(p).stem}" for p, d, s in CASES])
def test_thread_setting(benchmark, path, dtype, setting):
    variable, value = setting
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    args = [sys.executable, "-m", "profiler", "profile", path, "--batch", "8", "--dtype", dtype, "--repeats", "1",
            "--warmup", "0", "--format", "json", "--no-save"]
    if variable == "OMP_NUM_THREADS":
        env[variable] = str(value)
    else:
        args += ["--threads", str(value)]

    def run():
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    result = benchmark.pedantic(run, rounds=1, iterations=1)
    errors = result["relative_error"]
    peaks = [k for k in errors if "peak_bytes" in k]
    ROWS.append({"setting": f"{variable}={value}" if variable != "--threads" else f"--threads {value}",
                 "dtype": dtype, "model": Path(path).stem, "threads": result["options"]["threads"],
                 "peaks": len(peaks), "exact": sum(errors[k] == 0 for k in peaks),
                 "worst": max((errors[k] for k in peaks), key=abs)})
