"""Ghost batch norm: BatchNorm1d(ghost_batch_size=g), whose backward is the
ghost batch norm's gradient, and ghost_batchnorm_forward (chapter 7)."""
from __future__ import annotations

import numpy as np
import pytest

from bnbook.batchnorm import batchnorm_backward, batchnorm_forward
from bnbook.chapters.ch6_mnist import ArticleBatchNorm1d
from bnbook.gradcheck import numerical_gradient, relative_error
from bnbook.layers import Linear, Sequential
from bnbook.losses import softmax_cross_entropy
from bnbook.normalization import BatchNorm1d, ghost_batchnorm_forward


def _data(m=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(2.0, 3.0, size=(m, d)), rng.normal(1.0, 0.5, size=d), rng.normal(size=d), rng.normal(size=(m, d))


@pytest.mark.parametrize("g", [2, 3, 4, 6])
def test_ghost_forward_and_backward_equal_batchnorm_on_each_group(g):
    # tolerance 1e-12 (float64); the groups are consecutive rows, so a wrong
    # split (strided, or transposed) would normalize other rows together and fail
    x, gamma, beta, dout = _data()
    out, cache = ghost_batchnorm_forward(x, gamma, beta, g)
    bn = BatchNorm1d(5, dtype=np.float64, ghost_batch_size=g)
    bn.gamma[...], bn.beta[...] = gamma, beta
    np.testing.assert_allclose(bn.forward(x), out, rtol=0, atol=1e-12)
    dx = bn.backward(dout)
    assert bn.batch_stats.mean.shape == bn.batch_stats.var.shape == (12 // g, 5) and bn.batch_stats.count == g
    assert cache.mu.shape == cache.var.shape == (12 // g, 1, 5)
    ref_dgamma, ref_dbeta = np.zeros(5), np.zeros(5)
    for k, a in enumerate(range(0, 12, g)):
        ref_out, ref_cache = batchnorm_forward(x[a:a + g], gamma, beta)
        ref_dx, dg, db = batchnorm_backward(dout[a:a + g], ref_cache)
        np.testing.assert_allclose(out[a:a + g], ref_out, rtol=0, atol=1e-12)
        np.testing.assert_allclose(dx[a:a + g], ref_dx, rtol=0, atol=1e-12)
        for stats in (cache.mu[k, 0], bn.batch_stats.mean[k]):
            np.testing.assert_allclose(stats, ref_cache.mu.reshape(-1), rtol=1e-12, atol=1e-12)
        for stats in (cache.var[k, 0], bn.batch_stats.var[k]):
            np.testing.assert_allclose(stats, ref_cache.var.reshape(-1), rtol=1e-12, atol=1e-12)
        ref_dgamma += dg
        ref_dbeta += db
    np.testing.assert_allclose(bn.dgamma, ref_dgamma, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn.dbeta, ref_dbeta, rtol=0, atol=1e-12)


def test_ghost_groups_are_consecutive_rows_not_strided():
    x, gamma, beta, _ = _data()
    out, _ = ghost_batchnorm_forward(x, gamma, beta, 4)
    strided, _ = batchnorm_forward(x[0::3], gamma, beta)        # rows 0, 3, 6, 9: not a group
    assert not np.allclose(out[0::3], strided, atol=1e-3)
    assert np.allclose(out.reshape(3, 4, 5).mean(axis=1), beta, atol=1e-12)   # each group's output has mean beta


@pytest.mark.parametrize("g", [2, 4])
def test_ghost_layer_backward_matches_numerical_gradient(g):
    # float64, centred differences with h = 1e-5: relative error below 1e-7 for dx, dgamma, dbeta.
    # eps = 1, comparable to the data's variance: with eps << variance a group of 2 gives
    # xhat = +-1 whatever x is, dx is about 0, and a relative error of it means nothing
    x, gamma, beta, dout = _data(m=8, d=3, seed=g)
    x = (x - 2.0) / 3.0
    bn = BatchNorm1d(3, eps=1.0, dtype=np.float64, ghost_batch_size=g)
    bn.gamma[...], bn.beta[...] = gamma, beta
    bn.forward(x)
    dx = bn.backward(dout)

    def f_x(z):
        return ghost_batchnorm_forward(z, gamma, beta, g, eps=1.0)[0]

    errors = {
        "dx": relative_error(dx, numerical_gradient(f_x, x.copy(), dout)),
        "dgamma": relative_error(bn.dgamma, numerical_gradient(
            lambda p: ghost_batchnorm_forward(x, p, beta, g, eps=1.0)[0], gamma.copy(), dout)),
        "dbeta": relative_error(bn.dbeta, numerical_gradient(
            lambda p: ghost_batchnorm_forward(x, gamma, p, g, eps=1.0)[0], beta.copy(), dout)),
    }
    assert max(errors.values()) < 1e-7, errors


def test_ghost_network_gradients_match_numerical_gradient():
    # a Linear -> ghost BN -> Linear network in float64: every parameter's relative error below 1e-6
    from bnbook.gradcheck import check_layer_gradients
    rng = np.random.default_rng(3)
    net = Sequential(Linear(4, 6, bias=False, rng=rng, dtype=np.float64),
                     BatchNorm1d(6, dtype=np.float64, ghost_batch_size=3),
                     Linear(6, 3, rng=rng, dtype=np.float64))
    net[1].gamma[...] = rng.normal(1.0, 0.3, 6)
    errors = check_layer_gradients(net, softmax_cross_entropy, rng.normal(size=(9, 4)), rng.integers(0, 3, 9))
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ghost_size_equal_to_the_batch_is_the_plain_layer(dtype):
    # tolerance: equal up to 1e-6 relative in float32, 1e-12 in float64 (same arithmetic on one group)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    x, _, _, dout = _data(m=10, d=4, seed=1)
    x, dout = x.astype(dtype), dout.astype(dtype)
    ghost, plain = BatchNorm1d(4, dtype=dtype, ghost_batch_size=10), BatchNorm1d(4, dtype=dtype)
    for _ in range(3):
        np.testing.assert_allclose(ghost.forward(x), plain.forward(x), rtol=tol, atol=tol)
        np.testing.assert_allclose(ghost.backward(dout), plain.backward(dout), rtol=tol, atol=tol)
    for a, b in [(ghost.dgamma, plain.dgamma), (ghost.dbeta, plain.dbeta),
                 (ghost.running_mean, plain.running_mean), (ghost.running_var, plain.running_var)]:
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_ghost_running_averages_take_one_update_per_group_in_order():
    # the documented rule: the same as feeding the plain layer each group in turn (tolerance 1e-12)
    x, _, _, _ = _data(m=12, d=5, seed=2)
    ghost, plain = BatchNorm1d(5, dtype=np.float64, ghost_batch_size=4), BatchNorm1d(5, dtype=np.float64)
    ghost.forward(x)
    for a in range(0, 12, 4):
        plain.forward(x[a:a + 4])
    np.testing.assert_allclose(ghost.running_mean, plain.running_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ghost.running_var, plain.running_var, rtol=0, atol=1e-12)


def test_ghost_eval_mode_is_the_plain_eval():
    x, _, _, _ = _data(m=12, d=5, seed=4)
    ghost, plain = BatchNorm1d(5, dtype=np.float64, ghost_batch_size=4), BatchNorm1d(5, dtype=np.float64)
    ghost.forward(x)
    plain.running_mean[...], plain.running_var[...] = ghost.running_mean, ghost.running_var
    ghost.eval(), plain.eval()
    assert np.array_equal(ghost.forward(x[:5]), plain.forward(x[:5]))   # any batch size in eval mode


def test_ghost_param_grads_sum_scales_by_the_whole_batch():
    x, _, _, dout = _data(m=8, d=3, seed=5)
    mean_bn = BatchNorm1d(3, dtype=np.float64, ghost_batch_size=2)
    sum_bn = ArticleBatchNorm1d(3, eps=1e-5, dtype=np.float64, param_grads="sum")
    sum_bn.ghost_batch_size = 2
    mean_bn.forward(x), sum_bn.forward(x)
    np.testing.assert_allclose(sum_bn.backward(dout), mean_bn.backward(dout), rtol=0, atol=0)
    np.testing.assert_allclose(sum_bn.dgamma, 8 * mean_bn.dgamma, rtol=1e-15)


def test_ghost_refuses_a_batch_that_is_not_a_multiple_of_the_group_size():
    bn = BatchNorm1d(3, ghost_batch_size=4)
    with pytest.raises(ValueError, match=r"multiple of ghost_batch_size=4.*batch of 10 rows"):
        bn.forward(np.ones((10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="multiple of ghost_batch_size=4"):
        bn.forward(np.ones((2, 3), dtype=np.float32))


@pytest.mark.parametrize("g", [1, 0, -3])
def test_ghost_refuses_a_group_size_below_two(g):
    with pytest.raises(ValueError, match="ghost_batch_size must be at least 2"):
        BatchNorm1d(3, ghost_batch_size=g)
    bn = BatchNorm1d(3)
    with pytest.raises(ValueError, match="ghost_batch_size must be at least 2"):
        bn.ghost_batch_size = g                  # the attribute is checked too


@pytest.mark.parametrize("g", [2.0, "4", True])
def test_ghost_refuses_a_group_size_that_is_not_an_int(g):
    with pytest.raises(ValueError, match="ghost_batch_size must be an int"):
        BatchNorm1d(3, ghost_batch_size=g)


def test_ghost_backward_refuses_dout_of_another_shape():
    x, _, _, _ = _data()
    bn = BatchNorm1d(5, dtype=np.float64, ghost_batch_size=3)
    bn.forward(x)
    with pytest.raises(ValueError, match=r"dout must have the shape of the last x \(12, 5\)"):
        bn.backward(np.ones((12, 4)))
    with pytest.raises(ValueError, match="dout must have the shape of the last x"):
        bn.backward(np.ones((4, 3, 5)))  # the ghost view itself is not a valid dout


def test_ghost_repr_names_the_option():
    assert "ghost_batch_size=25" in repr(BatchNorm1d(3, ghost_batch_size=25))
    assert "ghost" not in repr(BatchNorm1d(3))


def test_ghost_groups_count_as_batches_in_the_cumulative_average():
    """With momentum=None each group is one batch of the cumulative average, as
    calling the plain layer on each group in turn (torch.split) would count it:
    after one step of 12 rows in groups of 3, num_batches_tracked is 4 and the
    running mean is the plain mean of the four group means (float64, 1e-12)."""
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, (12, 5))
    layer = BatchNorm1d(5, momentum=None, dtype=np.float64, ghost_batch_size=3)
    layer.forward(x)
    groups = x.reshape(4, 3, 5)
    assert layer.num_batches_tracked == 4
    np.testing.assert_allclose(layer.running_mean, groups.mean(axis=1).mean(axis=0),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.running_var, groups.var(axis=1, ddof=1).mean(axis=0),
                               rtol=0, atol=1e-12)
