"""The long fuzz run (issue 10, item 4): tests/test_fuzz.py with 5,000 random (not derandomized)
examples per test — specs, random text as YAML and JSON, mutated Keras documents. Any traceback
fails it; the count tried is in the pytest output."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fuzz_long(benchmark):
    env = {**os.environ, "MODELSIZE_FUZZ_EXAMPLES": "5000"}

    def run():
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_fuzz.py"), "--hypothesis-show-statistics"],
                              env=env, capture_output=True, text=True, cwd=ROOT)
    out = benchmark.pedantic(run, rounds=1, iterations=1)
    assert out.returncode == 0, out.stdout[-4000:]
