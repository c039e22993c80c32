"""Batch norm with statistics synchronized across workers (bnbook.sync_batchnorm, chapter 7).

"Equal" below means equal up to the rounding of sums taken in another order
(per shard, then over shards): in float64 the tolerance is 1e-12 absolute on
outputs and gradients of order one.
"""
from __future__ import annotations

import numpy as np
import pytest

from bnbook.batchnorm import batchnorm_backward, batchnorm_forward
from bnbook.sync_batchnorm import (CommLog, all_reduce, chan_combine, sync_batch_stats, sync_batchnorm_backward,
                                   sync_batchnorm_forward)

TOL = 1e-12


def _batch(sizes, d=6, seed=0, loc=1.0, scale=3.0):
    rng = np.random.default_rng(seed)
    shards = [rng.normal(loc, scale, size=(m, d)) for m in sizes]
    douts = [rng.normal(size=(m, d)) for m in sizes]
    return shards, douts, rng.normal(1.0, 0.5, size=d), rng.normal(size=d)


@pytest.mark.parametrize("method", ["chan", "sums"])
@pytest.mark.parametrize("sizes", [(8, 8), (5, 5, 5, 5), (3, 7, 2, 8), (1, 9), (2, 2, 2, 2, 2, 2)])
def test_sync_forward_and_backward_equal_single_device_on_the_whole_batch(sizes, method):
    shards, douts, gamma, beta = _batch(sizes)
    outs, cache = sync_batchnorm_forward(shards, gamma, beta, method=method)
    dxs, dgamma, dbeta = sync_batchnorm_backward(douts, cache)
    ref, ref_cache = batchnorm_forward(np.concatenate(shards), gamma, beta)
    ref_dx, ref_dgamma, ref_dbeta = batchnorm_backward(np.concatenate(douts), ref_cache)
    assert [o.shape for o in outs] == [s.shape for s in shards]
    np.testing.assert_allclose(np.concatenate(outs), ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(np.concatenate(dxs), ref_dx, rtol=0, atol=TOL)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=0, atol=TOL)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=0, atol=TOL)


def test_per_worker_batchnorm_is_not_the_full_batch_batchnorm():
    # the thing synchronization fixes: each shard normalized alone is off by order one
    shards, _, gamma, beta = _batch((4, 4, 4, 4))
    ref, _ = batchnorm_forward(np.concatenate(shards), gamma, beta)
    alone = np.concatenate([batchnorm_forward(s, gamma, beta)[0] for s in shards])
    assert np.max(np.abs(alone - ref)) > 0.1


@pytest.mark.parametrize("k", [2, 4, 8])
def test_numbers_communicated_are_2d_plus_1_forward_and_2d_backward_per_worker(k):
    d = 6
    shards, douts, gamma, beta = _batch([3] * k, d=d)
    for method in ("chan", "sums"):
        log = CommLog()
        _, cache = sync_batchnorm_forward(shards, gamma, beta, method=method, log=log)
        sync_batchnorm_backward(douts, cache, log=log)
        assert [size for _, size in log.calls] == [2 * d + 1, 2 * d]
        assert log.per_worker == 4 * d + 1


def test_all_reduce_sums_over_workers_and_refuses_mismatched_shapes():
    parts = [np.array([1.0, 2.0]), np.array([10.0, 20.0]), np.array([100.0, 200.0])]
    assert np.array_equal(all_reduce(parts), [111.0, 222.0])
    with pytest.raises(ValueError, match="one shape"):
        all_reduce([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="at least one"):
        all_reduce([])


def test_chan_combine_gives_the_count_mean_and_m2_of_the_union():
    # float64, tolerance 1e-12 relative
    rng = np.random.default_rng(1)
    a, b = rng.normal(5.0, 2.0, (7, 3)), rng.normal(-1.0, 0.5, (4, 3))
    def summary(s):
        return np.concatenate([[len(s)], s.mean(axis=0), ((s - s.mean(axis=0)) ** 2).sum(axis=0)])
    both = np.concatenate([a, b])
    np.testing.assert_allclose(chan_combine(summary(a), summary(b)), summary(both), rtol=1e-12)


def test_sum_of_squares_variance_cancels_in_float32_where_chan_stays_accurate():
    # float32 data with a large mean: 1e4 + N(0, 1). The variance is 1; the one-pass formula
    # S2 / n - mu^2 subtracts two numbers near 1e8 whose float32 rounding alone is about 8.
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((4000, 8))).astype(np.float32)
    true_var = x.astype(np.float64).var(axis=0)
    shards = np.split(x, 4)
    _, _, var_sums = sync_batch_stats(shards, method="sums")
    _, _, var_chan = sync_batch_stats(shards, method="chan")
    assert var_sums.dtype == var_chan.dtype == np.float32
    err_sums = np.max(np.abs(var_sums / true_var - 1))
    err_chan = np.max(np.abs(var_chan / true_var - 1))
    assert err_chan < 1e-3                  # Chan: three or more correct digits
    assert err_sums > 0.5                   # sums: not even the first digit
    assert err_sums > 100 * err_chan


def test_sync_forward_refuses_bad_shards():
    with pytest.raises(ValueError, match="shard 1 has shape"):
        sync_batchnorm_forward([np.ones((2, 3)), np.ones((2, 4))], np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="one floating dtype"):
        sync_batchnorm_forward([np.ones((2, 3)), np.ones((2, 3), dtype=np.float32)], np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        sync_batchnorm_forward([np.ones((1, 3))], np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="method must be"):
        sync_batch_stats([np.ones((2, 3))], method="welford")


def test_sync_backward_refuses_douts_of_other_shapes():
    shards, _, gamma, beta = _batch((3, 5))
    _, cache = sync_batchnorm_forward(shards, gamma, beta)
    with pytest.raises(ValueError, match="douts must have the shards' shapes"):
        sync_batchnorm_backward([np.ones((5, 6)), np.ones((3, 6))], cache)
