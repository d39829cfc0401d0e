"""Edges of the CLI (issue 10, items 5-7): bad sizes and batches, a closed pipe, fit --verify's
exit status, the results folder, and hostile YAML; each ends in one line and its exit status."""
import json
import os
import resource
import subprocess
import sys

import pytest

from profiler import cli

CLI = [sys.executable, "-m", "profiler"]


def _run(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("args", [
    ["fit", "digits", "--train", "adam", "--memory", "-5GiB"],
    ["fit", "digits", "--train", "adam", "--memory", "0"],
    ["fit", "digits", "--train", "adam", "--memory", "5XB"],
    ["fit", "digits", "--train", "adam", "--memory", "1GiB", "--reserve", "-1MiB"],
    ["summary", "digits", "--batch", str(2 ** 40)],
    ["summary", "digits", "--batch", "0"],
    ["summary", "digits", "--no-such-option"],
])
def test_bad_options_end_in_one_line(args):
    out = _run(*args)
    assert out.returncode == 2
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    """The output is larger than a pipe's buffer (64 KiB), so the writer meets the closed end."""
    spec = tmp_path / "wide.json"
    spec.write_text(json.dumps({"input_shape": [8], "layers": [{"Dense": {"units": 8}}] * 400}))
    process = subprocess.Popen([*CLI, "summary", str(spec), "--format", "json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.read(10)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == cli.EXIT_CLOSED_PIPE
    assert stderr == ""


def _limited_memory():
    limit = 1 << 30   # 1 GiB of address space: the expanded bomb would need ~10 GB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_the_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    lines = ["defs:", "  - &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["name: *a8", "input_shape: [4]", "layers: [{Dense: {units: 2}}]"]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1000
    out = _run("summary", str(bomb), preexec_fn=_limited_memory)
    assert out.returncode == 2, out.stderr
    assert "aliases" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_deep_nesting_is_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 500 + "]" * 500 + "\n")
    out = _run("summary", str(deep))
    assert out.returncode == 2 and "nested more than" in out.stderr


def test_fit_verify_exits_4_when_the_prediction_did_not_hold(monkeypatch, capsys):
    from profiler.planning import fit

    class NotHeld:
        def as_dict(self):
            return {"held": False, "batch": 1, "measured": {}, "over_at_next": None}
    monkeypatch.setattr(fit, "verify", lambda source, answer, **options: NotHeld())
    monkeypatch.setattr("profiler.report.fit_tables.render_fit", lambda result, **kw: "table\n")
    assert cli.main(["fit", "digits", "--memory", "1MiB", "--train", "sgd", "--verify"]) == cli.EXIT_PREDICTION_FAILED


def test_an_unwritable_results_folder_is_found_before_measuring(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    measured = []
    monkeypatch.setattr("profiler.workflow.profile", lambda *a, **k: measured.append(1))
    assert cli.main(["profile", "digits", "--results-dir", str(blocker / "runs")]) == cli.EXIT_BAD_INPUT
    assert measured == []
    assert "results-dir" in capsys.readouterr().err


def test_a_failed_save_still_prints_the_figures(tmp_path, monkeypatch, capsys):
    def refuse(result, directory):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("profiler.report.results.save", refuse)
    code = cli.main(["profile", "digits", "--batch", "2", "--repeats", "1", "--warmup", "0", "--format", "json",
                     "--results-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1
    assert '"measured"' in out.out and "No space left on device" in out.err
