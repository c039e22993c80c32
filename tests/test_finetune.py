"""Frozen batch-norm layers for fine-tuning (bnbook.normalization, chapter 7)."""
import copy

import numpy as np
import pytest

from bnbook import build_mlp, fit, numerical_gradient, relative_error
from bnbook.normalization import FrozenBatchNorm1d, freeze_batchnorm


def train_on_batches(model, x, y, batches, lr):
    """One pass of SGD over ``batches`` (index arrays), in order; the loss of each."""
    return fit(model, (x, y), epochs=1, lr=lr, batches=lambda epoch, rng: batches,
               progress=False).batch_loss


def _trained_net(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=(200, 6))
    y = rng.integers(0, 3, size=200)
    net = build_mlp([6, 8, 3], batchnorm=True, seed=seed, dtype=np.float64)
    train_on_batches(net, x, y, [np.arange(i, i + 20) for i in range(0, 200, 20)], lr=0.1)
    return net, x, y


def test_frozen_forward_equals_eval_mode_in_both_modes():
    net, x, _ = _trained_net()
    frozen = freeze_batchnorm(net)
    expected = net.eval().forward(x)
    for mode in (True, False):
        frozen.train(mode)
        np.testing.assert_allclose(frozen.forward(x), expected, rtol=0, atol=1e-12)


def test_frozen_backward_matches_numerical_gradient():
    net, _, _ = _trained_net()
    layer = FrozenBatchNorm1d(net[1])
    z = np.random.default_rng(1).normal(size=(5, 8))
    dout = np.random.default_rng(2).normal(size=(5, 8))
    layer.forward(z)
    dx = layer.backward(dout)
    num = numerical_gradient(lambda v: layer.forward(v), z, dout)
    assert relative_error(dx, num) < 1e-8      # float64 central differences


def test_finetuning_frozen_model_changes_weights_but_not_batchnorm():
    net, x, y = _trained_net()
    bn = net[1]
    before = {k: copy.deepcopy(getattr(bn, k)) for k in ("running_mean", "running_var", "gamma", "beta")}
    w_before = net[0].W.copy()
    train_on_batches(freeze_batchnorm(net), x, y, [np.arange(0, 50), np.arange(50, 100)], lr=0.1)
    for k, v in before.items():
        assert np.array_equal(getattr(bn, k), v), k
    assert not np.allclose(net[0].W, w_before)


def test_freezing_something_else_is_refused():
    with pytest.raises(ValueError, match="BatchNorm1d"):
        FrozenBatchNorm1d(object())
