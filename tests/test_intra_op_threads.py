"""`core.device.intra_op_threads`: what `sweep run --task-id I --threads N` runs its step under.

Contract: for the block, torch's intra-op threads and every BLAS / OpenMP pool that threadpoolctl sees (NumPy's
OpenBLAS, which the filters' SVDs run on; scikit-learn's OpenMP) are N; after it, each is what it was before, also
when the block raises; None changes nothing. Until 2026-12-01 only torch's threads were set, and a one-thread step's
SVDs ran on every core."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.cluster  # noqa: F401 (loads scikit-learn's OpenMP and SciPy's OpenBLAS, pools the filters use)
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from poisonbench.core.device import intra_op_threads


def pools(api: str) -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == api]


@pytest.fixture
def two_threads_everywhere():
    """A known start: torch and every pool at 2 threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    with threadpool_limits(limits=2):
        assert len(pools("blas")) >= 1 and len(pools("openmp")) >= 1, "no pool seen: the contract cannot be checked"
        yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3])
def test_torch_and_the_blas_pools_run_the_block_with_the_threads_asked_then_get_theirs_back(
        two_threads_everywhere, threads):
    with intra_op_threads(threads):
        assert torch.get_num_threads() == threads
        assert set(pools("blas")) == set(pools("openmp")) == {threads}
        x = np.random.default_rng(0).standard_normal((97, 31)).astype(np.float32)  # an SVD on that pool
        assert np.allclose(np.linalg.svd(x, compute_uv=False), np.linalg.svd(x.astype(np.float64), compute_uv=False),
                           rtol=1e-4)
    assert torch.get_num_threads() == 2
    assert set(pools("blas")) == set(pools("openmp")) == {2}


def test_the_threads_come_back_when_the_block_raises(two_threads_everywhere):
    with pytest.raises(RuntimeError, match="inside"), intra_op_threads(1):
        assert torch.get_num_threads() == 1 and set(pools("blas")) == {1}
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    assert set(pools("blas")) == {2}


def test_none_changes_nothing(two_threads_everywhere):
    blas, openmp = pools("blas"), pools("openmp")
    with intra_op_threads(None):
        assert torch.get_num_threads() == 2
        assert pools("blas") == blas and pools("openmp") == openmp
    assert torch.get_num_threads() == 2 and pools("blas") == blas
