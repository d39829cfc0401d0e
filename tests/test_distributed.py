"""Scale-out memory against real torch.distributed runs (2 gloo ranks) and FSDP2's own sharding."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from profiler.distributed import launch, predict
from profiler.distributed.job import Job
from profiler.distributed.strategies import Strategy
from isa import REASON, workspace_off


def _mlp() -> torch.nn.Module:
    """Uneven on purpose: 65 rows split over 2 ranks are 33 and 32 (FSDP2 pads rank 1)."""
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 65),
                               torch.nn.ReLU(), torch.nn.Linear(65, 10))


def _conv() -> torch.nn.Module:
    """A stranger's 3-layer conv net: oneDNN's NCHW weight gradient is made blocked and copied out
    last, so at the backward peak of the second convolution its 9,280 B of weight and bias
    gradient are the kernel's buffers (workspace), not gradients yet."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(16 * 32 * 32, 10))


class _Table(torch.nn.Module):
    """Adds a table made once, at the first forward, from a 512 KiB scratch (as a rotary cache
    is): the first step peaks above the steady one at small batches."""

    def __init__(self) -> None:
        super().__init__()
        self.table: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            self.table = torch.ones(2048, 64).sum(0)
        return x + self.table


def _cached() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(32, 64), _Table(), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def _job(strategy: str, optimizer: str, world: int = 2, *, amp: str | None = None, dtype: str = "float32",
         checkpoint: tuple[str, ...] = (), **options: object) -> Job:
    return Job(_mlp, ((32,),), ("float",), (None,), 8, Strategy(strategy, **options), world, optimizer=optimizer,
               amp=amp, dtype=dtype, checkpoint=checkpoint).with_outputs()


#: DDP and ZeRO-1 (SGD, Adam); then mixed precision, a bfloat16 model and activation checkpointing
_EXACT = [_job(s, o, bucket_cap_mb=0.01) for s in ("ddp", "zero1") for o in ("sgd", "adam")]
_EXACT += [_job("fsdp", "adam", fsdp_wrap=("Linear",), amp="bfloat16"),   # MixedPrecisionPolicy
           _job("zero1", "adam", amp="bfloat16"),                        # autocast
           _job("ddp", "adam", dtype="bfloat16"),
           _job("fsdp", "adam", fsdp_wrap=("Linear",), checkpoint=("Linear",)),
           Job(_conv, ((3, 32, 32),), ("float",), (None,), 2, Strategy("ddp"), 2).with_outputs()]
_FSDP = [_job("fsdp", o, reshard_after_forward=r, fsdp_wrap=("Linear",)) for o in ("sgd", "adam")
         for r in (True, False)]


_BUDGET = "200KiB"


@pytest.fixture(scope="module")
def fitted() -> dict:
    """``fit --world-size 2 --strategy fsdp`` (Adam) on a CPU budget."""
    from profiler.distributed.fit import solve
    from profiler.planning.fit import make_budget
    return solve(_job("fsdp", "adam", fsdp_wrap=("Linear",)), make_budget(memory=_BUDGET, device=None, target="cpu", reserve=None,
                                                   margin=None))


_CACHED = Job(_cached, ((32,),), ("float",), (None,), 8, Strategy("ddp"), 2, optimizer="adam").with_outputs()


@pytest.fixture(scope="module")
def first_fitted() -> dict:
    """``fit --world-size 2 --strategy ddp`` (Adam) of the model whose first step binds."""
    from profiler.distributed.fit import solve
    from profiler.planning.fit import make_budget
    return solve(_CACHED, make_budget(memory="600KiB", device=None, target="cpu", reserve=None, margin=None))


@pytest.fixture(scope="module")
def measured(fitted, first_fitted) -> list[list[launch.RankMeasurement]]:
    """One launch of 2 gloo ranks runs every job in turn (the ranks start once): the exact cases,
    then each fit's answer and the next batch."""
    from profiler.distributed.fit import _at_batch
    b, c = fitted["batch_per_rank"], first_fitted["batch_per_rank"]
    return launch.measure_all(_EXACT + _FSDP + [_at_batch(_CACHED, n) for n in (c, c + 1)]
                              + [_at_batch(_job("fsdp", "adam", fsdp_wrap=("Linear",)), n) for n in (b, b + 1)])


@pytest.fixture(scope="module")
def predicted() -> list[list[predict.RankPrediction]]:
    """Every rank of the exact and FSDP2 cases, predicted once for the tests that read them."""
    return [predict.predict(job) for job in _EXACT + _FSDP]


def _isa_off(job: Job) -> bool:
    return workspace_off(dtype=job.dtype, amp=job.amp, convolutions=job.factory is _conv)


def _isa_measured(job: Job) -> None:
    if _isa_off(job):
        pytest.skip(REASON)


@pytest.mark.parametrize("index", range(len(_EXACT)))
def test_peaks_predicted_equal_measured(measured, predicted, index: int) -> None:
    _isa_measured(_EXACT[index])
    predicted = predicted[index]
    got = measured[index]
    assert [p.start_bytes for p in predicted] == [m.start_bytes for m in got]
    assert [p.peak_bytes for p in predicted] == [m.peak_bytes for m in got]


@pytest.mark.parametrize("index", range(len(_EXACT + _FSDP)))
def test_measured_breakdown_is_the_predicted_one(measured, predicted, index: int) -> None:
    """Each rank's bytes alive at its measured peak by category (the runner's peak_breakdown, run
    in the rank): they sum to the measured peak and every category is the predicted one (DDP's
    buckets are gradients, gloo's copies communication, autocast's casts weight casts)."""
    _isa_measured((_EXACT + _FSDP)[index])
    for p, m in zip(predicted[index], measured[index]):
        assert sum(m.breakdown.values()) == m.peak_bytes
        assert m.breakdown == p.breakdown
        assert p.first.bytes == m.first_peak_bytes   # the first step's peak too (the fit reads it)


def test_collectives_buffers_are_communication(measured, predicted) -> None:
    """Every rank's breakdown has the category, on both sides, for DDP, ZeRO-1 and FSDP2, equal;
    DDP's and ZeRO-1's collectives run in place (nothing in it), FSDP2's peaks hold gloo's
    copies or the padding of the reduce-scatter input."""
    for job, p_ranks, m_ranks in zip(_EXACT + _FSDP, predicted, measured):
        if _isa_off(job):   # another peak moment off the modelled ISA
            continue
        for p, m in zip(p_ranks, m_ranks):
            assert p.breakdown["communication"] == m.breakdown["communication"]
            if job.strategy.name != "fsdp":
                assert m.breakdown["communication"] == 0
    fsdp = [m.breakdown["communication"] for ranks in measured[len(_EXACT):len(_EXACT + _FSDP)] for m in ranks]
    assert max(fsdp) > 0


def test_fsdp_reduce_scatter_buffers_are_communication(measured, predicted) -> None:
    """FSDP2's peaks are in the second Linear's post-backward reduce-scatter: its packed input
    (each parameter's gradient padded to ceil(65 / 2) rows per rank) and gloo's copy of it are
    both alive, communication on both sides (reshard or not, SGD or Adam)."""
    second = _mlp()[2]
    rows = -(-second.out_features // 2) * 2
    packed = sum(rows * p[0].numel() * p.element_size() for p in second.parameters())
    for p_ranks, m_ranks in zip(predicted[len(_EXACT):], measured[len(_EXACT):len(_EXACT + _FSDP)]):
        for p, m in zip(p_ranks, m_ranks):
            assert p.at == "backward 2 (RegisterPostBackwardFunctionBackward)"
            assert m.breakdown["communication"] == p.breakdown["communication"] >= 2 * packed


def test_zero1_partitions_the_adam_state(measured) -> None:
    """Each rank keeps the state of its own partition: the ranks' steady starts differ."""
    got = measured[3]   # _EXACT[3]: zero1, adam
    assert got[0].start_bytes != got[1].start_bytes


@pytest.mark.parametrize("index", range(len(_FSDP)))
def test_fsdp_peaks_predicted_equal_measured(measured, predicted, index: int) -> None:
    """Per rank: the padded shards, what is alive when the steady step starts, and its peak
    (all-gather and reduce-scatter buffers, gloo's copies, unsharded parameters and gradients)."""
    predicted = predicted[len(_EXACT) + index]
    got = measured[len(_EXACT) + index]
    assert [p.param_bytes for p in predicted] == [m.param_bytes for m in got]
    assert [p.start_bytes for p in predicted] == [m.start_bytes for m in got]
    assert [p.peak_bytes for p in predicted] == [m.peak_bytes for m in got]


@pytest.mark.parametrize("world", [2, 8, 64])
def test_fake_group_shards_are_fsdp2s(world: int) -> None:
    """Rank r holds torch.chunk's share of every parameter's rows, stored padded to
    ceil(rows / N) rows; the ranks' shares add up to the model."""
    job = _job("fsdp", "sgd", world, fsdp_wrap=("Linear",))
    ranks = predict.predict(job)
    model = _mlp()
    total = sum(p.numel() for p in model.parameters())
    assert sum(r.local_param_numel for r in ranks) == total
    for name, p in model.named_parameters():
        rows = p.shape[0]
        rest = p.numel() // rows
        sizes = list(torch.arange(rows).chunk(world))
        expected = [len(c) * rest for c in sizes] + [0] * (world - len(sizes))
        assert [r.shard_numel[name] for r in ranks] == expected
    padded = sum(-(-p.shape[0] // world) * (p.numel() // p.shape[0]) * p.element_size()
                 for p in model.parameters())
    assert {r.param_bytes for r in ranks} == {padded}
    peak = max(ranks, key=lambda r: r.peak_bytes)
    assert peak.peak_bytes >= peak.start_bytes > padded


def test_world_size_beyond_this_machine_is_refused() -> None:
    with pytest.raises(Exception, match="world size"):
        launch.measure(_job("ddp", "sgd", launch.max_local_ranks() + 1))


def test_ranks_take_gloo_on_cpus_and_nccl_on_their_own_gpu() -> None:
    """The launch's choice per device kind: gloo on the CPU; NCCL on CUDA, rank r on cuda:r (set
    as its current device); as many CUDA ranks as this machine has GPUs."""
    assert launch.rank_device("cpu", 1) == ("gloo", torch.device("cpu"))
    assert launch.rank_device("cuda", 0) == ("nccl", torch.device("cuda", 0))
    assert launch.rank_device("cuda", 3) == ("nccl", torch.device("cuda", 3))
    assert launch.max_local_ranks("cuda") == torch.cuda.device_count()
    with pytest.raises(Exception, match="world size"):
        launch.measure(replace(_job("ddp", "sgd"), device_kind="cuda", world=torch.cuda.device_count() + 1))


def test_profile_on_cuda_ranks_is_refused_without_enough_gpus(capsys) -> None:
    """``profile --world-size N --device cuda`` goes to NCCL ranks; with fewer GPUs than ranks,
    one line (exit 2) before anything is built."""
    from profiler.cli import main
    gpus = torch.cuda.device_count()
    assert main(["profile", "digits", "--world-size", str(gpus + 1), "--device", "cuda", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "world-size" in err and "CUDA" in err


def test_summary_predicts_every_rank_from_the_command_line(capsys) -> None:
    """``summary --world-size 8 --strategy fsdp``: eight ranks, their shards adding up to the
    model's parameters, the peak rank named."""
    import json
    from profiler.cli import main
    assert main(["summary", "dense-514", "--batch", "4", "--format", "json"]) == 0
    params = json.loads(capsys.readouterr().out)["totals"]["params"]
    assert main(["summary", "dense-514", "--batch", "4", "--world-size", "8", "--strategy", "fsdp",
                 "--optimizers", "adam", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ranks = result["predicted_ranks"]["adam"]
    assert [r["rank"] for r in ranks] == list(range(8))
    assert sum(r["local_param_numel"] for r in ranks) == params
    peak = result["peak_rank"]["adam"]
    assert ranks[peak]["peak_bytes"] == max(r["peak_bytes"] for r in ranks)


def test_profile_measures_the_ranks_from_the_command_line(capsys) -> None:
    import json
    from profiler.cli import main
    assert main(["profile", "digits", "--batch", "4", "--world-size", "2", "--strategy", "zero1",
                 "--optimizers", "adam", "--no-save", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    predicted = [r["peak_bytes"] for r in result["predicted_ranks"]["adam"]]
    assert predicted == [r["peak_bytes"] for r in result["measured_ranks"]["adam"]]
    assert result["relative_error_ranks"]["adam"] == [0.0, 0.0]
    for rank, both in zip(result["measured_ranks"]["adam"], result["breakdown_comparison_ranks"]["adam"]):
        assert sum(v["measured"] for v in both.values()) == rank["peak_bytes"]


def test_profile_refuses_more_ranks_than_cpus(capsys) -> None:
    from profiler.cli import main
    assert main(["profile", "digits", "--world-size", str(launch.max_local_ranks() + 1), "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "world-size" in err


def test_fit_per_rank_batch_holds_on_real_ranks(fitted, measured) -> None:
    """At the fit's answer every measured rank is within the budget and its peak is the predicted
    one; at the next batch some rank is over it."""
    b = fitted["batch_per_rank"]
    assert b > 1 and fitted["replays"] >= 4
    at, over = measured[-2:]
    assert max(m.peak_bytes for m in at) == fitted["peak"]["bytes"] <= fitted["usable_bytes"]
    assert max(m.peak_bytes for m in over) == fitted["next"]["bytes"] > fitted["usable_bytes"]


def test_zero1_ranks_grouped_by_their_partition() -> None:
    """At world size 64 the 6 parameters of the MLP land on 6 ranks (ZeroRedundancyOptimizer's
    partition); the other 58 hold none and are replayed once for all."""
    job = _job("zero1", "adam", 64)
    groups = predict.rank_groups(job)
    assert sorted(len(g) for g in groups) == [1] * 6 + [58]
    ranks = predict.predict(job)
    empty = next(g for g in groups if len(g) == 58)
    assert len({ranks[r].peak_bytes for r in empty}) == 1
    assert ranks[empty[0]].peak_bytes < max(r.peak_bytes for r in ranks)


def test_fit_takes_the_first_step_where_it_binds(first_fitted, fitted, measured) -> None:
    """A table made once at the first forward from a 512 KiB scratch: the first step binds, the
    answer says so, and on the real ranks the first step's peak is the predicted figure, within
    the budget at the answer and over it at the next batch (the steady step alone would allow
    far more). The FSDP2 fit's steady step binds."""
    b = first_fitted["batch_per_rank"]
    at, over = measured[len(_EXACT + _FSDP):len(_EXACT + _FSDP) + 2]
    assert first_fitted["binding_step"] == "first" and fitted["binding_step"] == "steady"
    assert first_fitted["peak"]["at"].startswith("first step")
    assert max(m.first_peak_bytes for m in at) == first_fitted["peak"]["bytes"] <= first_fitted["usable_bytes"]
    assert max(m.first_peak_bytes for m in over) == first_fitted["next"]["bytes"] > first_fitted["usable_bytes"]
    assert max(m.peak_bytes for m in over) < first_fitted["usable_bytes"]   # the steady step fits there
    assert b > 1


def _tasks(root, threads: dict[str, tuple[str, str]]) -> str:
    """A made-up /proc/self/task: thread id -> (name, state)."""
    for tid, (name, state) in threads.items():
        (root / tid).mkdir(parents=True)
        (root / tid / "comm").write_text(name + "\n")
        (root / tid / "stat").write_text(f"{tid} ({name}) {state} 1 2 3\n")
    return str(root)


def test_a_wait_returns_once_the_gloo_workers_sleep(tmp_path) -> None:
    """The measured wait's settling, on a made-up thread table: a gloo worker still running (or
    runnable) keeps it waiting until the limit, then it says so; other threads do not count."""
    awake = _tasks(tmp_path / "awake", {"11": ("pt_gloo_runloop", "S"), "12": ("pt_gloo_runloop", "R"),
                                        "13": ("python", "R")})
    assert sorted(launch.gloo_workers(awake)) == ["11", "12"]
    assert not launch.gloo_workers_asleep(0.01, tasks=awake)
    asleep = _tasks(tmp_path / "asleep", {"11": ("pt_gloo_runloop", "S"), "12": ("pt_gloo_runloop", "S"),
                                          "13": ("python", "R")})
    assert launch.gloo_workers_asleep(0.01, tasks=asleep)


def test_gloo_frees_are_recorded_after_a_settled_wait(tmp_path, monkeypatch) -> None:
    """On a real (1-rank) gloo group: its worker threads are found by name, and with the settled
    wait every buffer a reduce-scatter and an all-gather allocate is freed where the profiler sees
    it (no free left to put back), none of the waits giving up."""
    import torch.distributed as dist
    from profiler.measuring.memory_trace import _event_tree, capture, profiled
    from profiler.measuring import peak_breakdown
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x, out = torch.ones(4096), torch.empty(4096)

        def calls() -> None:
            for _ in range(50):
                dist.reduce_scatter_single(out, x)
                dist.all_gather_single(x, out)

        launch.UNSETTLED.clear()
        with launch._workers_let_go(), capture():
            prof = profiled(calls)
        assert launch.gloo_workers() and not launch.UNSETTLED
    finally:
        dist.destroy_process_group()
    monkeypatch.setattr(peak_breakdown, "_unrecorded_frees", lambda events: events)
    events = peak_breakdown.allocations(_event_tree(prof), torch.device("cpu"))
    made = [e for e in events if e.nbytes > 0]
    assert len(made) >= 100 and sum(e.nbytes for e in events) == 0 and len(events) == 2 * len(made)
