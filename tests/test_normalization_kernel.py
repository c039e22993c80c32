"""The one normalization kernel: chapter 2-3's exhibit equals it, and every layer that
normalizes gets the same numbers from it as from the formula written for that layer.

Exact equality (same bits) where the operations are the same in the same order; otherwise
float64 with the tolerance stated at the assert.
"""
import numpy as np
import pytest

from bnbook import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GroupNorm, LayerNorm, Linear, ReLU, Sequential,
                    recompute_bn_statistics)
from bnbook.batchnorm import batchnorm_backward, batchnorm_backward_staged, batchnorm_forward
from bnbook.normalization import ghost_batchnorm_forward, normalize, normalize_backward
from bnbook.sync_batchnorm import sync_batchnorm_backward, sync_batchnorm_forward


def batch(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, shape) * rng.uniform(0.01, 100, shape[-1]) + rng.uniform(-100, 100, shape[-1]))
    return x.astype(dtype), rng.standard_normal(shape).astype(dtype), rng.normal(1, 0.5, shape[-1]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 1), (7, 3), (100, 300)])
def test_exhibit_forward_and_backward_equal_the_kernel_bit_for_bit(shape, dtype):
    x, dout, gamma = batch(shape, dtype)
    beta = -gamma
    y, cache = batchnorm_forward(x, gamma, beta)
    xhat, kcache = normalize(x, (0,))
    assert np.array_equal(y, gamma * xhat + beta)
    for node in ("mu", "var", "inv_std", "xhat"):
        assert np.array_equal(getattr(cache, node).reshape(-1), getattr(kcache, node).reshape(-1)), node
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    kdx, s1, s2 = normalize_backward(dout, kcache, scale=gamma)
    assert np.array_equal(dx, kdx) and np.array_equal(dbeta, s1[0]) and np.array_equal(dgamma, s2[0])


@pytest.mark.parametrize("shape", [(2, 1), (7, 3), (100, 300)])
def test_staged_backward_equals_the_kernel(shape):
    """The node-by-node walk against the kernel, float64: relative error below 1e-9."""
    x, dout, gamma = batch(shape, np.float64)
    _, cache = batchnorm_forward(x, gamma, 0 * gamma)
    dx, dgamma, dbeta = batchnorm_backward_staged(dout, cache)
    kdx, s1, s2 = normalize_backward(dout, normalize(x, (0,))[1], scale=gamma)
    scale = np.abs(kdx).max()
    assert np.abs(dx - kdx).max() <= 1e-9 * scale
    np.testing.assert_allclose(dgamma, s2[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(dbeta, s1[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm1d_training_step_is_the_exhibit_bit_for_bit(dtype):
    """The layer passes the kernel a workspace; that changes where arrays live, not their bits."""
    x, dout, gamma = batch((100, 300), dtype)
    layer = BatchNorm1d(300, dtype=dtype)
    layer.gamma[...] = gamma
    for _ in range(2):                                      # the second step reuses the workspace
        y = layer.forward(x)
        dx = layer.backward(dout)
    ref, cache = batchnorm_forward(x, gamma, layer.beta)
    rdx, rdgamma, rdbeta = batchnorm_backward(dout, cache)
    assert np.array_equal(y, ref) and np.array_equal(dx, rdx)
    assert np.array_equal(layer.dgamma, rdgamma) and np.array_equal(layer.dbeta, rdbeta)


def test_ghost_batches_are_the_exhibit_on_each_group():
    x, dout, gamma = batch((12, 5), np.float64)
    layer = BatchNorm1d(5, dtype=np.float64, ghost_batch_size=4)
    layer.gamma[...] = gamma
    y, dx = layer.forward(x), layer.backward(dout)
    parts = [batchnorm_forward(x[i:i + 4], gamma, layer.beta) for i in range(0, 12, 4)]
    back = [batchnorm_backward(dout[i:i + 4], c) for i, (_, c) in zip(range(0, 12, 4), parts)]
    assert np.array_equal(y, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(y, ghost_batchnorm_forward(x, gamma, layer.beta, 4)[0])
    assert np.array_equal(dx, np.concatenate([b[0] for b in back]))
    np.testing.assert_allclose(layer.dgamma, sum(b[1] for b in back), rtol=1e-13)


def test_batchnorm2d_is_batchnorm1d_on_the_channel_columns():
    """Against an explicit channels-last reshape, float64, within 1e-12 (the sums run over
    memory in another order, so the last bits may differ)."""
    x = np.random.default_rng(1).normal(2, 3, (4, 3, 5, 5))
    dout = np.random.default_rng(2).standard_normal(x.shape)
    bn2, bn1 = BatchNorm2d(3, dtype=np.float64), BatchNorm1d(3, dtype=np.float64)
    rows = np.moveaxis(x, 1, -1).reshape(-1, 3)
    y1 = np.moveaxis(bn1.forward(rows).reshape(4, 5, 5, 3), -1, 1)
    dx1 = np.moveaxis(bn1.backward(np.moveaxis(dout, 1, -1).reshape(-1, 3)).reshape(4, 5, 5, 3), -1, 1)
    np.testing.assert_allclose(bn2.forward(x), y1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn2.backward(dout), dx1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn2.running_var, bn1.running_var, rtol=1e-12)


def test_layer_and_group_norm_use_the_kernel_over_their_axes():
    """Written out with NumPy's mean and var, float64: agreement within 1e-12."""
    x = np.random.default_rng(3).normal(1, 2, (4, 6, 3, 3))
    gn = GroupNorm(2, 6, dtype=np.float64)
    g = x.reshape(4, 2, -1)
    ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(gn.forward(x), ref, rtol=0, atol=1e-12)
    r = x.reshape(4, -1)
    ln = LayerNorm(r.shape[1], dtype=np.float64)
    ref = (r - r.mean(1, keepdims=True)) / np.sqrt(r.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln.forward(r), ref, rtol=0, atol=1e-12)


def test_synchronized_batchnorm_is_the_kernel_with_the_whole_batchs_statistics():
    """Two workers against one batch norm of the concatenation, float64: within 1e-12."""
    x, dout, gamma = batch((11, 4), np.float64)
    beta = np.zeros(4)
    outs, cache = sync_batchnorm_forward([x[:5], x[5:]], gamma, beta)
    dxs, dgamma, dbeta = sync_batchnorm_backward([dout[:5], dout[5:]], cache)
    y, c = batchnorm_forward(x, gamma, beta)
    dx, rdgamma, rdbeta = batchnorm_backward(dout, c)
    np.testing.assert_allclose(np.concatenate(outs), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate(dxs), dx, rtol=0, atol=1e-12 * np.abs(dx).max())
    np.testing.assert_allclose(dgamma, rdgamma, rtol=1e-12)
    np.testing.assert_allclose(dbeta, rdbeta, rtol=1e-12)


def test_population_statistics_of_a_network_with_image_and_row_batch_norms():
    """recompute_bn_statistics takes each layer's input as it comes: images for BatchNorm2d,
    rows after Flatten for BatchNorm1d (float64, against NumPy's mean and var, 1e-12)."""
    rng = np.random.default_rng(4)
    model = Sequential(Conv2d(1, 2, 3, pad=1, rng=0, dtype=np.float64), BatchNorm2d(2, dtype=np.float64), ReLU(),
                       Flatten(), Linear(32, 3, bias=False, rng=0, dtype=np.float64), BatchNorm1d(3, dtype=np.float64))
    x = rng.standard_normal((10, 1, 4, 4))
    bn2, bn1 = recompute_bn_statistics(model, x, batch_size=4)
    z = model[0].forward(x)
    np.testing.assert_allclose(bn2.running_var, z.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    h = model[4].forward(model[3].forward(model[2].forward(bn2.eval().forward(z))))
    np.testing.assert_allclose(bn1.running_mean, h.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(bn1.running_var, h.var(axis=0, ddof=1), rtol=1e-12)
