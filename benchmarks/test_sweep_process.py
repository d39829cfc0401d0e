"""The real Ctrl-C during ``modelsize sweep`` (two processes of the CLI: about 30 s on a loaded
2-core machine, too slow for tests/; ``tests/test_sweep.py`` interrupts in-process)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_sweep import GRID, _cells, _files, _saved   # noqa: E402


def test_ctrl_c_stops_the_running_cell_and_keeps_the_finished_ones(tmp_path):
    """The real Ctrl-C (SIGINT to the process group) once the first cell's file is written; the
    cells measured in a child process. --resume then measures the rest and leaves those files."""
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "profiler", *GRID[:3], "2,4,8", *GRID[4:], "--results-dir", str(runs)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not _saved(runs) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    kept = _files(runs)
    assert 1 <= len(kept) < 3 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("modelsize: interrupted: the cell at batch ")
    assert f"kept {len(kept)} finished cell file" in err
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = _files(runs)
    assert {name: after[name] for name in kept} == kept
    assert _cells(runs) == [(2, "float32"), (4, "float32"), (8, "float32")]
    assert resumed.stderr.count("already saved, skipped") == len(kept)
