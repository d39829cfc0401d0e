"""Measurements in a child process (issue 10, items 2-3): a child killed mid-measurement is
reported in one line and what follows still runs; Ctrl-C ends the command with 130 and saves
nothing; the child measures what the process itself would."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from profiler.measuring import isolated
from profiler.measuring.devices import DoesNotFit

ZOO = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo"


def _measuring_children(root: psutil.Process) -> list[psutil.Process]:
    """Processes the forkserver forked (the measurements), below ``root``."""
    found = []
    for process in root.children(recursive=True):
        try:
            parent = process.parent()
            if parent is not None and "forkserver" in " ".join(parent.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _kill_the_first_measurement(root: psutil.Process, sig: int, stop: threading.Event) -> None:
    """Signal the first measuring children that are still alive half a second after they were
    seen; one gone by then (a short-lived one, or a starved thread on a loaded machine) is passed
    over and the search goes on, so the signal reaches a running measurement."""
    while not stop.is_set():
        children = _measuring_children(root)
        if children:
            time.sleep(0.5)   # mid-measurement
            delivered = False
            for child in children:
                try:
                    child.send_signal(sig)
                    delivered = True
                except psutil.NoSuchProcess:
                    continue
            if delivered:
                return
        time.sleep(0.05)


def test_a_killed_child_is_reported_and_the_next_measurement_runs():
    reference = {"model": "digits"}
    options = {"batch": 8, "device": "cpu", "warmup": 0, "repeats": 200000, "optimizers": ()}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_first_measurement, args=(psutil.Process(), signal.SIGKILL, stop))
    killer.start()
    try:
        with pytest.raises(DoesNotFit, match=r"killed by signal 9 \(SIGKILL\) while measuring"):
            isolated.measure(dict(reference), options)
    finally:
        stop.set()
        killer.join()
    measured, _ = isolated.measure(dict(reference), {**options, "repeats": 1})   # the sweep goes on
    assert measured["inference_peak_bytes"] > 0


def test_the_cli_says_does_not_fit_when_its_child_is_killed(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "profiler", "measure", "digits", "--batch", "8",
                                "--repeats", "200000", "--optimizers", "sgd"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_first_measurement,
                              args=(psutil.Process(process.pid), signal.SIGKILL, stop))
    killer.start()
    try:
        out, err = process.communicate(timeout=300)
    finally:
        stop.set()
        killer.join()
    assert process.returncode == 3, err
    assert "killed by signal 9" in err and len(err.strip().splitlines()) == 1


def _default_sigint():
    """A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: the
    command under test gets the terminal's default, as a foreground command would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_profile_saves_nothing_and_exits_130(tmp_path):
    runs = tmp_path / "runs"
    first = subprocess.run([sys.executable, "-m", "profiler", "profile", "digits", "--batch", "2", "--repeats", "1",
                            "--results-dir", str(runs)], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    kept = {p.name: p.read_bytes() for p in runs.iterdir()}
    process = subprocess.Popen([sys.executable, "-m", "profiler", "profile", "digits", "--batch", "8", "--repeats",
                                "200000", "--results-dir", str(runs)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=_default_sigint)
    root = psutil.Process(process.pid)
    deadline = time.time() + 120
    while not _measuring_children(root) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)   # what the terminal does on Ctrl-C: the whole group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in runs.iterdir()} == kept   # no partial file, the earlier one intact


@pytest.mark.parametrize("name", ["mlp", "cnn-bn", "lstm"])
def test_the_child_measures_what_the_process_does(name):
    path = str(ZOO / f"{name}.yaml")
    def profile(*extra):
        out = subprocess.run([sys.executable, "-m", "profiler", "profile", path, "--batch", "4", "--repeats", "1",
                              "--warmup", "0", "--format", "json", "--no-save", *extra],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        measured = json.loads(out.stdout)["measured"]
        time = measured["time"]   # the child sends the times back too
        assert {"forward", "train_sgd", "train_adam", "layers", "ops", "instrumented_ms"} <= set(time)
        return {k: v for k, v in measured.items() if k.endswith("_bytes") and isinstance(v, int)}
    assert profile() == profile("--in-process")
