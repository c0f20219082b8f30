"""`sweep run --workers auto` (poisonbench/sweeps/sizing.py; docs/sweeps.md, "Several runs on one device"): K runs
per device from its free memory and the runs' measured peak, capped by the cores and at 16, K × D workers with the
cores split between them; without a GPU one worker with all the cores. The rule is pure and pinned here with
Hypothesis; the CLI's wiring with the machine's figures injected."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonbench.experiment.records import RunStore
from poisonbench.sweeps import execute, sizing
from poisonbench.sweeps.sizing import (
    DEFAULT_PEAK_MIB,
    MAX_PER_DEVICE,
    MEMORY_SHARE,
    auto_sizing,
    fitting,
    parse_workers,
    per_device,
    record_peaks,
    run_footprint_mib,
    size,
    threads_each,
)

from .conftest import write_npz

memory = st.floats(min_value=1.0, max_value=4e6, allow_nan=False, allow_infinity=False)  # MiB: up to 4 TiB
peak = st.floats(min_value=1.0, max_value=2e5, allow_nan=False, allow_infinity=False)
cores = st.integers(min_value=1, max_value=1024)
devices = st.integers(min_value=1, max_value=16)


@given(memory, peak)
def test_fitting_is_the_largest_count_whose_footprints_fit(m, p):
    k, each, usable = fitting(m, p), run_footprint_mib(p), MEMORY_SHARE * m
    assert k >= 0
    assert k * each <= usable < (k + 1) * each


@settings(max_examples=300)
@given(st.integers(min_value=1, max_value=64), peak)
def test_fitting_at_the_limit_exactly(k, p):
    """Memory for exactly k runs gives k; the next float below gives k - 1 (no floor off by one either way)."""
    each = run_footprint_mib(p)
    m = k * each / MEMORY_SHARE
    while MEMORY_SHARE * m < k * each:  # the smallest float memory whose share holds k footprints
        m = math.nextafter(m, math.inf)
    while MEMORY_SHARE * math.nextafter(m, 0) >= k * each:
        m = math.nextafter(m, 0)
    assert fitting(m, p) == k
    assert fitting(math.nextafter(m, 0), p) == k - 1


def the_old_fitting(memory_mib: float, peak_mib: float) -> int:
    """fitting before it was bounded (a walk of one step at a time from the quotient's floor): the reference on
    realistic figures, where the walk is a step or two."""
    usable, each = MEMORY_SHARE * memory_mib, run_footprint_mib(peak_mib)
    if not usable > 0 or not each > 0 or not math.isfinite(usable / each):
        return 0
    k = max(0, math.floor(usable / each))
    while (k + 1) * each <= usable:
        k += 1
    while k > 0 and k * each > usable:
        k -= 1
    return k


def product(k: int, each: float) -> float:
    try:
        return k * each
    except OverflowError:  # an int beyond the float range
        return math.inf


anything = st.one_of(st.floats(), st.sampled_from([1e300, -1e300, math.inf, -math.inf, math.nan, 0.0, 1e-300,
                                                   1.7e308, -426.6666, -426.0]))


@settings(max_examples=500, deadline=None)
@given(anything, anything)
def test_fitting_answers_fast_over_every_float(m, p):
    """Absurd figures (1e300 MiB took longer than anyone would wait: the old walk stepped k by one from a quotient
    whose float could no longer tell k from k + 1) answer in well under a second, with the largest k whose
    footprints fit; infinite or NaN memory or peak, or nothing usable, answer 0."""
    start = time.perf_counter()
    k = fitting(m, p)
    assert time.perf_counter() - start < 0.5
    usable, each = MEMORY_SHARE * m, run_footprint_mib(p)
    assert isinstance(k, int) and k >= 0
    if not (usable > 0 and each > 0 and math.isfinite(usable) and math.isfinite(each)):
        assert k == 0
    else:
        assert product(k, each) <= usable < product(k + 1, each)


def test_fitting_on_absurd_figures():
    for m, p in [(1e300, 1000.0), (1e308, DEFAULT_PEAK_MIB), (1.7e308, 1e-300), (1e300, -426.6666)]:
        start = time.perf_counter()
        k, usable, each = fitting(m, p), MEMORY_SHARE * m, run_footprint_mib(p)
        assert time.perf_counter() - start < 0.5
        assert k > 10**290 and product(k, each) <= usable < product(k + 1, each)
    assert fitting(math.inf, 1000.0) == fitting(1e6, math.inf) == fitting(1e6, math.nan) == 0
    assert fitting(math.inf, math.nan) == fitting(-math.inf, 1000.0) == fitting(1e6, 1.6e308) == 0


@settings(max_examples=300)
@given(memory, peak)
def test_fitting_is_as_before_on_realistic_figures(m, p):
    assert fitting(m, p) == the_old_fitting(m, p)


def test_fitting_on_round_figures():
    each = run_footprint_mib(1000.0)  # 1.2 × 1000 + 512 = 1712 MiB
    assert each == pytest.approx(1712.0)
    assert fitting(10 * 1712.0 / 0.9 + 1e-6, 1000.0) == 10
    assert fitting(10 * 1712.0 / 0.9 - 1e-3, 1000.0) == 9
    assert fitting(0.0, 1000.0) == fitting(-5.0, 1000.0) == fitting(float("nan"), 1000.0) == 0


@given(memory, peak, cores, devices, st.integers(min_value=1, max_value=64))
def test_per_device_is_bounded_by_memory_cores_and_cap_and_at_least_one(m, p, c, d, cap):
    k = per_device(m, p, c, d, cap)
    assert 1 <= k <= cap
    assert k == 1 or k <= fitting(m, p)
    assert k == 1 or k * d <= c  # each worker keeps at least one thread
    assert k == max(1, min(fitting(m, p), c // d, cap))  # and it is the largest such


@given(peak, cores, devices)
def test_memory_smaller_than_one_run_still_runs_one_at_a_time(p, c, d):
    m = run_footprint_mib(p) / MEMORY_SHARE * 0.999
    assert fitting(m, p) == 0
    assert per_device(m, p, c, d) == 1
    assert size(m, p, "measured", c, d).per_device == 1
    assert "not even one run fits" in size(m, p, "measured", c, d).source


@given(memory, memory, peak, cores, devices)
def test_more_memory_never_fewer_runs_and_a_larger_peak_never_more(m1, m2, p, c, d):
    lo, hi = sorted((m1, m2))
    assert per_device(lo, p, c, d) <= per_device(hi, p, c, d)
    assert per_device(m1, p, c, d) >= per_device(m1, p * 2, c, d)


@given(memory, peak, cores, devices)
def test_the_workers_split_the_cores_and_the_line_names_the_figures(m, p, c, d):
    chosen = size(m, p, "the largest of 3 record(s) of this grid", c, d)
    assert chosen.workers == chosen.per_device * d
    assert chosen.threads == threads_each(chosen.workers, c) >= 1
    assert chosen.workers * chosen.threads <= c or chosen.threads == 1  # never more threads than cores, one at least
    line = chosen.line()
    assert line.startswith(f"{chosen.workers} worker")
    assert f"{chosen.per_device} per device × {d} device" in line
    assert f"{chosen.threads} thread" in line and "from " in line and "the largest of 3 record(s)" in line


@given(cores)
def test_without_a_gpu_auto_is_one_worker_with_all_the_cores(c):
    chosen = size(None, DEFAULT_PEAK_MIB, "x", c, 0)
    assert (chosen.workers, chosen.per_device, chosen.threads) == (1, 1, c)
    assert chosen.line().startswith("1 worker: no GPU")
    assert auto_sizing(0, [], set(), cores=c).workers == 1


def test_an_unreadable_free_memory_gives_one_run_per_device():
    chosen = size(None, DEFAULT_PEAK_MIB, "x", 64, 4)
    assert (chosen.per_device, chosen.workers, chosen.threads) == (1, 4, 16)
    assert "could not be read" in chosen.line()


def test_an_h200_with_the_packaged_resnet18_figure():
    """139 GiB free, 3.9 GiB a run: memory holds 24, so 16 cores give 16 runs of one thread, 64 cores the cap."""
    assert fitting(139 * 1024, DEFAULT_PEAK_MIB) == 24
    assert size(139 * 1024, DEFAULT_PEAK_MIB, "x", 16, 1).line().startswith(
        "16 workers: 16 per device × 1 device, 1 thread each")
    assert "bound by the cores" in size(139 * 1024, DEFAULT_PEAK_MIB, "x", 12, 1).source
    assert "bound by the cap of 16" in size(139 * 1024, DEFAULT_PEAK_MIB, "x", 64, 1).source
    assert "bound by memory" in size(40 * 1024, DEFAULT_PEAK_MIB, "x", 64, 1).source
    assert size(40 * 1024, DEFAULT_PEAK_MIB, "x", 64, 1).per_device == 7


def test_the_peak_comes_from_the_records_the_grids_first():
    records = [{"run_id": "a", "cost": {"peak_cuda_mib": 900.0}}, {"run_id": "b", "cost": {"peak_cuda_mib": 5000}},
               {"run_id": "c", "cost": {"peak_rss_mib": 9999.0}},  # a CPU run: no GPU peak
               {"run_id": "d", "cost": {"peak_cuda_mib": True}}, {"run_id": "e", "cost": {"peak_cuda_mib": -1}},
               {"run_id": "f", "cost": {"peak_cuda_mib": float("nan")}}, {"run_id": "g", "cost": "?"}, "junk"]
    assert record_peaks(records, {"a", "c"}) == (900.0, "the largest of 1 record(s) of this grid")
    assert record_peaks(records, {"z"}) == (5000.0, "the largest of 2 record(s) in the workspace")
    assert record_peaks(records[2:]) is None
    chosen = auto_sizing(1, records, {"a"}, cores=32, memory=[20000.0, 1.0])
    assert chosen.per_device == fitting(20000.0, 900.0) == 11 and "900 MiB peak per run" in chosen.line()
    chosen = auto_sizing(2, records[2:], set(), cores=32, memory=[100000.0, 30000.0])  # the smaller device sizes K
    assert chosen.per_device == fitting(30000.0, DEFAULT_PEAK_MIB) == 5 and chosen.workers == 10
    assert "packaged ResNet-18" in chosen.line()


def test_the_cap_keeps_the_workers_within_the_pools_limit():
    chosen = auto_sizing(32, [], set(), cores=4096, memory=[1e6] * 32, max_workers=execute.MAX_WORKERS)
    assert chosen.per_device == execute.MAX_WORKERS // 32 and chosen.workers == execute.MAX_WORKERS
    assert auto_sizing(2, [], set(), cores=4096, memory=[1e6] * 2, max_workers=256).per_device == MAX_PER_DEVICE


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("AUTO", None), (" 3 ", 3), ("1", 1),
                                                 ("256", 256)])
def test_workers_is_a_count_or_auto(value, expected):
    assert parse_workers(value, 256) == expected


@pytest.mark.parametrize(("value", "message"), [("0", "--workers must be in 1..256, got 0"),
                                                ("257", "--workers must be in 1..256, got 257"),
                                                ("two", "--workers must be an integer in 1..256 or auto, got 'two'"),
                                                ("1.5", "or auto, got '1.5'")])
def test_a_bad_workers_value_is_refused_in_one_line(value, message, cli, tmp_path):
    from poisonbench.core.errors import PoisonbenchError

    with pytest.raises(PoisonbenchError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_workers(value, 256)
    code, _, err = cli("sweep", "run", "demo", "--workers", value, "--results", tmp_path / "r")
    assert code == 2 and message in err
    assert not (tmp_path / "r").exists()


class FakePool:
    """Stands for `LocalPool`: records how it was made, runs nothing."""

    made: list[tuple[int, int | None]] = []

    def __init__(self, plan, workers, on_start=None, on_finish=None, threads=None):
        FakePool.made.append((workers, threads))
        self.stopped_by = None

    def run(self, steps):
        return []


@pytest.mark.parametrize(("gpus", "threads", "expected", "line"), [
    (2, None, (2 * 5, 3), "--workers auto: 10 workers: 5 per device × 2 devices, 3 threads each, from 30000 MiB "
                          "free per device, 3859 MiB peak per run (the packaged"),
    (2, 1, (10, 1), "3 threads each, from 30000 MiB free per device"),  # --threads stands, and the line says so
    (0, None, (1, 32), "1 worker: no GPU, 32 threads each, from 32 cores"),
])
def test_sweep_run_workers_auto_sizes_the_pool_and_says_how(gpus, threads, expected, line, cli, tmp_path,
                                                            monkeypatch):
    grid = tmp_path / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{write_npz(tmp_path)}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\n'
                    'method = "none"\n')
    monkeypatch.setattr(execute, "gpu_count", lambda device: gpus)
    monkeypatch.setattr(execute, "LocalPool", FakePool)
    monkeypatch.setattr(sizing, "free_memory_mib", lambda: [100000.0, 30000.0][:gpus])
    monkeypatch.setattr(sizing, "cores_available", lambda: 32)
    FakePool.made = []
    args = ["--threads", str(threads)] if threads else []
    code, _, err = cli("sweep", "run", grid, "--workers", "auto", "--results", tmp_path / "r", "--no-report", *args)
    assert code == 1  # the fake pool ran nothing: the grid is not complete
    assert FakePool.made == [expected]
    said = " ".join(err.split())
    assert "sweep g: --workers auto: " in said and line in said
    assert ("(--threads 1 instead)" in said) == bool(threads)


def test_sweep_run_workers_auto_reads_the_workspaces_peaks(cli, tmp_path, monkeypatch):
    grid = tmp_path / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{write_npz(tmp_path)}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\n'
                    'method = "none"\n')
    monkeypatch.setattr(execute, "gpu_count", lambda device: 1)
    monkeypatch.setattr(execute, "LocalPool", FakePool)
    monkeypatch.setattr(sizing, "free_memory_mib", lambda: [40000.0])
    monkeypatch.setattr(sizing, "cores_available", lambda: 64)
    monkeypatch.setattr(RunStore, "all", lambda self: [{"run_id": "x", "cost": {"peak_cuda_mib": 1500.0}}])
    FakePool.made = []
    code, _, err = cli("sweep", "run", grid, "--workers", "auto", "--results", tmp_path / "r", "--no-report")
    assert code == 1
    assert FakePool.made == [(fitting(40000.0, 1500.0), 64 // fitting(40000.0, 1500.0))] == [(15, 4)]
    assert "1500 MiB peak per run (the largest of 1 record(s) in the workspace)" in " ".join(err.split())


# --- whole lines and the edges mutation testing found unpinned (issue 82, 2026-11-28) ---------------------------

@pytest.mark.parametrize(("c", "line"), [
    (1, "1 worker: no GPU, 1 thread each, from 1 core: one run at a time with all of them (the default)"),
    (2, "1 worker: no GPU, 2 threads each, from 2 cores: one run at a time with all of them (the default)"),
])
def test_the_no_gpu_line_whole(c, line):
    assert size(None, DEFAULT_PEAK_MIB, "x", c, 0).line() == line


def test_the_unreadable_memory_and_nothing_fits_lines_whole():
    assert size(None, 100.0, "x", 8, 2).line() == (
        "2 workers: 1 per device × 2 devices, 4 threads each, from the GPU's free memory, which could not be read "
        "(one run per device)")
    assert size(100.0, 1000.0, "the records", 3, 1).line() == (
        "1 worker: 1 per device × 1 device, 3 threads each, from 100 MiB free per device, 1000 MiB peak per run "
        "(the records), 3 cores: bound by memory (not even one run fits: one at a time)")


@pytest.mark.parametrize(("workers", "c", "expected"), [(1, 8, 8), (1, 1, 1), (0, 8, 8), (3, 8, 2), (9, 8, 1)])
def test_threads_each_splits_the_cores_one_at_least(workers, c, expected):
    assert threads_each(workers, c) == expected


@pytest.mark.parametrize(("m", "p"), [(0.0, 100.0), (-5.0, 100.0), (math.nan, 100.0), (math.inf, 100.0),
                                      (1e6, math.nan), (1e6, -1e9), (1e6, math.inf)])
def test_fitting_is_zero_for_memory_or_footprints_that_are_not_positive_finite(m, p):
    assert fitting(m, p) == 0


def test_fitting_counts_footprints_below_one_mib():
    """The contract is arithmetic (the largest k with k × footprint ≤ share × memory), whatever the sizes: a
    footprint of 0.5 MiB (a peak below −CONTEXT_MIB, as only a caller can pass) in 0.9 MiB fits once."""
    p = (0.5 - sizing.CONTEXT_MIB) / sizing.ALLOCATOR_SLACK
    assert run_footprint_mib(p) == pytest.approx(0.5)
    assert fitting(1.0, p) == 1
    assert fitting(2.0, p) == 3  # 1.8 / 0.5


def _child(monkeypatch, stdout="", returncode=0, raises=None):
    """Stub the child process `free_memory_mib` starts; the calls it was given."""
    import subprocess

    calls = []

    def run(args, **kwargs):
        calls.append((args, kwargs))
        if raises is not None:
            raise raises
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(sizing.subprocess, "run", run)
    return calls


def test_free_memory_is_read_in_a_child_process_one_figure_per_device(monkeypatch):
    calls = _child(monkeypatch, stdout="torch says hello\n[1024.5, 2048]\n")
    assert sizing.free_memory_mib(timeout=7.0) == [1024.5, 2048.0]
    (args, kwargs), = calls
    assert args[0] == sizing.sys.executable and args[1] == "-c"
    assert args[2] == ("import json, torch\n"  # the whole program the child runs
                       "print(json.dumps([torch.cuda.mem_get_info(i)[0] / 2**20 "
                       "for i in range(torch.cuda.device_count())]))")
    assert kwargs["timeout"] == 7.0 and kwargs["env"]["OMP_NUM_THREADS"] == "1"
    assert kwargs["capture_output"] is True and kwargs["text"] is True


@pytest.mark.parametrize(("stdout", "returncode", "raises"), [
    ("[1024]\n", 1, None),                      # the child failed
    ("[]\n", 0, None),                          # no device
    ("{}\n", 0, None),                          # not a list
    ("not json\n", 0, None),
    ("", 0, None),                              # nothing printed
    ("", 0, OSError("no python")),
    ("", 0, __import__("subprocess").TimeoutExpired("python", 1.0)),
])
def test_free_memory_that_cannot_be_read_is_none(monkeypatch, stdout, returncode, raises):
    _child(monkeypatch, stdout=stdout, returncode=returncode, raises=raises)
    assert sizing.free_memory_mib() is None


def test_the_cores_are_the_processs_affinity(monkeypatch):
    monkeypatch.setattr(sizing.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert sizing.cores_available() == 3
    monkeypatch.delattr(sizing.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(sizing.os, "cpu_count", lambda: None)
    assert sizing.cores_available() == 1
    monkeypatch.setattr(sizing.os, "cpu_count", lambda: 6)
    assert sizing.cores_available() == 6
