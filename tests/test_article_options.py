"""Options that rebuild the "10 Days of Grad" code's conventions (chapter 6):
batch norm's parameter gradients summed over the batch, biased running
variance, N(0, 1) biases, no output bias, and batches fixed after one shuffle.
Math checks in float64; tolerances stated at each assert."""

import numpy as np
import pytest

from bnbook.normalization import BatchNorm1d
from bnbook.layers import Linear
from bnbook.models import build_mlp
from bnbook.losses import softmax_cross_entropy
from bnbook.training import fit


def _bn_step(param_grads, x, dout):
    bn = BatchNorm1d(x.shape[1], dtype=np.float64, param_grads=param_grads)
    bn.forward(x)
    dx = bn.backward(dout)
    return dx, bn.dgamma.copy(), bn.dbeta.copy()


def test_summed_param_grads_are_m_times_the_averaged_ones_and_dx_is_unchanged():
    rng = np.random.default_rng(0)
    m = 16
    x = rng.normal(2.0, 3.0, (m, 5))
    dout = rng.standard_normal((m, 5))
    dx_mean, dg_mean, db_mean = _bn_step("mean", x, dout)
    dx_sum, dg_sum, db_sum = _bn_step("sum", x, dout)
    np.testing.assert_allclose(dg_sum, m * dg_mean, rtol=1e-12)  # float64 rounding only
    np.testing.assert_allclose(db_sum, m * db_mean, rtol=1e-12)
    np.testing.assert_array_equal(dx_sum, dx_mean)  # the input gradient is untouched


def test_summed_param_grads_equal_the_gradient_of_the_summed_loss():
    # dgamma with param_grads="sum" on the batch-averaged loss equals the
    # gradient of the summed loss with respect to gamma (float64, rtol 1e-10)
    rng = np.random.default_rng(1)
    m, d = 8, 4
    x = rng.standard_normal((m, d))
    y = rng.integers(0, d, m)
    bn = BatchNorm1d(d, dtype=np.float64, param_grads="sum")
    _, dlogits = softmax_cross_entropy(bn.forward(x), y, "mean")
    bn.backward(dlogits)
    bn_sum = BatchNorm1d(d, dtype=np.float64)
    _, dlogits_sum = softmax_cross_entropy(bn_sum.forward(x), y, "sum")
    bn_sum.backward(dlogits_sum)
    np.testing.assert_allclose(bn.dgamma, bn_sum.dgamma, rtol=1e-10)
    np.testing.assert_allclose(bn.dbeta, bn_sum.dbeta, rtol=1e-10, atol=1e-14)


def test_param_grads_rejects_unknown_value():
    with pytest.raises(ValueError, match="param_grads"):
        BatchNorm1d(3, param_grads="median")


@pytest.mark.parametrize("unbiased, factor", [(True, 10 / 9), (False, 1.0)])
def test_running_var_takes_the_biased_or_unbiased_batch_variance(unbiased, factor):
    x = np.random.default_rng(2).normal(0.0, 2.0, (10, 3))
    bn = BatchNorm1d(3, dtype=np.float64, momentum=1.0, unbiased_running_var=unbiased)
    bn.forward(x)
    np.testing.assert_allclose(bn.running_var, factor * x.var(axis=0), rtol=1e-12)


def test_normal_bias_init_draws_unit_normal_biases_from_its_own_generator():
    lin = Linear(4, 5000, bias_init="normal", bias_rng=3, rng=0)
    assert abs(lin.b.mean()) < 0.05 and abs(lin.b.std() - 1.0) < 0.05  # 5000 draws: SE 0.014
    np.testing.assert_array_equal(lin.W, Linear(4, 5000, rng=0).W)  # weights unaffected
    with pytest.raises(ValueError, match="bias_init"):
        Linear(2, 2, bias_init="ones")


def test_build_mlp_article_networks_share_weights_and_have_the_articles_biases():
    kw = dict(init="normal", gain=0.01, bias_init="normal", seed=4)
    plain = build_mlp([6, 5, 4, 3], **kw)
    bn = build_mlp([6, 5, 4, 3], batchnorm=True, output_bias=False, bn_eps=1e-12,
                   bn_param_grads="sum", bn_unbiased_running_var=False, **kw)
    w_plain = [layer.W for layer in plain.layers if isinstance(layer, Linear)]
    w_bn = [layer.W for layer in bn.layers if isinstance(layer, Linear)]
    for a, b in zip(w_plain, w_bn):
        np.testing.assert_array_equal(a, b)
    assert all(abs(w.std() - 0.01) < 0.005 for w in w_plain)  # 0.01 * N(0, 1)
    assert all(layer.b is not None and np.abs(layer.b).max() > 0.1
               for layer in plain.layers if isinstance(layer, Linear))
    assert all(layer.b is None for layer in bn.layers if isinstance(layer, Linear))
    bns = [layer for layer in bn.layers if isinstance(layer, BatchNorm1d)]
    assert [b.param_grads for b in bns] == ["sum", "sum"] and bns[0].eps == 1e-12
    assert not bns[0].unbiased_running_var


class _RecordBatches:
    """A stand-in model that records the labels of every batch it sees."""

    training = True

    def __init__(self):
        self.seen = []

    def train(self, mode=True):
        return self

    def eval(self):
        return self

    def params(self):
        return []

    def forward(self, x):
        self.seen.append(x[:, 0].copy())
        return np.zeros((len(x), 2), dtype=np.float32)

    def backward(self, dout, need_input_grad=True):
        return None


@pytest.mark.parametrize("shuffle, same", [("once", True), ("every epoch", False)])
def test_fit_shuffle_once_repeats_the_same_batches_every_epoch(shuffle, same):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.zeros(20, dtype=np.int64)
    model = _RecordBatches()
    fit(model, (x, y, x[:4], y[:4]), epochs=2, lr=0.1, batch_size=5, progress=False,
        shuffle=shuffle)
    first, second = model.seen[0:4], model.seen[5:9]  # seen[4]: the evaluation after epoch 1
    assert all(np.array_equal(a, b) for a, b in zip(first, second)) == same
    assert sorted(np.concatenate(first).tolist()) == list(range(0, 40, 2))  # one pass each


def test_fit_rejects_unknown_shuffle():
    x = np.zeros((4, 2), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="shuffle"):
        fit(build_mlp([2, 3, 2]), (x, y, x, y), epochs=1, lr=0.1, shuffle="never",
            progress=False)
