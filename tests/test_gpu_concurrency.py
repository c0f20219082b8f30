"""benchmarks/gpu_concurrency.py: K training runs at once on one device behind a barrier, and the CUDA-graph line.
Its sizing and aggregation rules are pinned here (Hypothesis for the bounds, exactly at each limit); the workers
themselves run in tests/test_gpu_check.py's tiny check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def gc():
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_concurrency

    yield gpu_concurrency
    sys.path.remove(str(BENCHMARKS))


@given(k=st.integers(1, 64), cores=st.integers(1, 256))
def test_threads_split_the_cores_and_never_fall_below_one(gc, k, cores):
    threads = gc.worker_threads(k, cores)
    assert threads == max(1, cores // k)
    assert threads * k <= cores or threads == 1


def test_threads_split_the_cores_the_process_may_run_on(gc, monkeypatch):
    """As `sweep run --workers K`: the affinity's cores (a cpuset of 3 on a larger machine), not `os.cpu_count()`."""
    from poisonbench.sweeps import execute

    monkeypatch.setattr(execute.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(execute.os, "cpu_count", lambda: 64)
    assert [gc.worker_threads(k) for k in (1, 2, 3, 4)] == [3, 1, 1, 1]


def test_threads_at_the_limits(gc):
    assert gc.worker_threads(16, 16) == 1 and gc.worker_threads(17, 16) == 1 and gc.worker_threads(8, 16) == 2
    assert gc.worker_threads(3, 16) == 5  # 16 / 3 does not divide: the floor


@given(k=st.integers(1, 32), peak=st.floats(1, 10_000), total=st.floats(1, 200_000))
def test_k_fits_when_k_peaks_are_within_the_share_of_the_card(gc, k, peak, total):
    assert gc.fits(k, peak, total) == (k * peak <= gc.MEMORY_SHARE * total)


def test_fits_exactly_at_the_limit_and_with_unknown_sizes(gc):
    assert gc.fits(4, 900.0, 4000.0)  # 4 × 900 = 3,600 = 0.9 × 4,000: at the limit, in
    assert not gc.fits(4, 900.1, 4000.0)
    assert gc.fits(16, None, 1000.0) and gc.fits(16, 500.0, None)  # a CPU, or K = 1 not yet measured


def test_the_aggregate_counts_every_workers_images_over_the_shared_time(gc):
    """3 workers of 1,000 rows × 2 epochs ending 1, 2 and 4 s after the barrier opened: 6,000 images in 4 s."""
    assert gc.aggregate(1000, 2, 10.0, [11.0, 12.0, 14.0]) == 1500.0
    assert gc.aggregate(1000, 2, 10.0, [14.0]) == 500.0
