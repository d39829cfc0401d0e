"""``compare`` of 50 result files: read, matched and rendered in under a second (issue 12).

The 50 files are one real ``profile`` of digits, edited into 10 machines (host, threads, times)
× 5 batches, so the table has 5 rows of 10 columns. Timed: loading the files, the comparison and
the text table (what ``modelsize compare DIR`` does after the interpreter and its imports).
"""
from __future__ import annotations

import json
import statistics

from profiler import cli
from profiler.report import compare

FILES = 50
LIMIT_S = 1.0


def test_compare_of_50_result_files_renders_under_a_second(benchmark, tmp_path):
    real = tmp_path / "real"
    assert cli.main(["profile", "digits", "--batch", "2", "--repeats", "1", "--warmup", "0", "--optimizers",
                     "sgd,adam", "--in-process", "--results-dir", str(real)]) == 0
    (path,) = real.iterdir()
    result = json.loads(path.read_text())
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(FILES):
        machine, batch = divmod(i, 5)
        edited = json.loads(json.dumps(result))
        edited["machine_info"]["hostname"] = f"machine-{machine}"
        edited["options"]["threads"] = 1 + machine
        edited["options"]["batch"] = edited["batch"] = 2 ** batch
        for run in ("forward", "train_sgd", "train_adam"):
            edited["measured"]["time"][run]["median_ms"] = 1.0 + i
        (runs / f"{i:02d}.json").write_text(json.dumps(edited))

    def render():
        data = compare.compare(compare.load_results([str(runs)]), baseline=1)
        return compare.render_table(data)

    table = benchmark.pedantic(render, rounds=10, warmup_rounds=1)
    assert table.count("[10]") == 2   # legend and header: ten columns
    assert table.count("parameters") == 5   # five rows
    median = statistics.median(benchmark.stats.stats.data)
    benchmark.extra_info["median_s"] = median
    assert median < LIMIT_S, f"compare of {FILES} files took {median:.3f} s"
