"""The "10 Days of Grad" code's conventions, rebuilt by chapter 6's drivers
(bnbook.chapters.ch6_mnist): batch norm's parameter gradients summed over the
batch and the biased running variance (ArticleBatchNorm1d), N(0, 1) biases and
no output bias (build_net), and batches fixed after one shuffle (one_shuffle,
train_net(shuffle="once")).
Math checks in float64; tolerances stated at each assert."""

import numpy as np
import pytest

from bnbook.chapters.ch6_mnist import ArticleBatchNorm1d, build_net, one_shuffle, train_net
from bnbook.layers import Linear
from bnbook.losses import softmax_cross_entropy
from bnbook.normalization import BatchNorm1d
from bnbook.training import fit


def _bn_step(param_grads, x, dout):
    bn = ArticleBatchNorm1d(x.shape[1], eps=1e-5, dtype=np.float64, param_grads=param_grads)
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


def test_article_layer_with_the_plain_conventions_is_the_plain_layer_bit_for_bit():
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (16, 5))
    dout = rng.standard_normal((16, 5))
    article = ArticleBatchNorm1d(5, eps=1e-5, dtype=np.float64, param_grads="mean",
                                 unbiased_running_var=True)
    plain = BatchNorm1d(5, eps=1e-5, dtype=np.float64)
    np.testing.assert_array_equal(article.forward(x), plain.forward(x))
    np.testing.assert_array_equal(article.backward(dout), plain.backward(dout))
    for name in ("dgamma", "dbeta", "running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(article, name), getattr(plain, name))


def test_summed_param_grads_equal_the_gradient_of_the_summed_loss():
    # dgamma with param_grads="sum" on the batch-averaged loss equals the
    # gradient of the summed loss with respect to gamma (float64, rtol 1e-10)
    rng = np.random.default_rng(1)
    m, d = 8, 4
    x = rng.standard_normal((m, d))
    y = rng.integers(0, d, m)
    bn = ArticleBatchNorm1d(d, eps=1e-5, dtype=np.float64, param_grads="sum")
    _, dlogits = softmax_cross_entropy(bn.forward(x), y, "mean")
    bn.backward(dlogits)
    bn_sum = BatchNorm1d(d, dtype=np.float64)
    _, dlogits_sum = softmax_cross_entropy(bn_sum.forward(x), y, "sum")
    bn_sum.backward(dlogits_sum)
    np.testing.assert_allclose(bn.dgamma, bn_sum.dgamma, rtol=1e-10)
    np.testing.assert_allclose(bn.dbeta, bn_sum.dbeta, rtol=1e-10, atol=1e-14)


def test_param_grads_rejects_unknown_value():
    with pytest.raises(ValueError, match="param_grads"):
        ArticleBatchNorm1d(3, param_grads="median")


@pytest.mark.parametrize("unbiased, factor", [(True, 10 / 9), (False, 1.0)])
def test_running_var_takes_the_biased_or_unbiased_batch_variance(unbiased, factor):
    x = np.random.default_rng(2).normal(0.0, 2.0, (10, 3))
    bn = ArticleBatchNorm1d(3, dtype=np.float64, momentum=1.0, unbiased_running_var=unbiased)
    bn.forward(x)
    np.testing.assert_allclose(bn.running_var, factor * x.var(axis=0), rtol=1e-12)


def test_normal_bias_init_draws_unit_normal_biases_from_its_own_generator():
    sizes = (4, 5000, 3)
    net = build_net("plain", sizes=sizes, bias_init="normal", seed=3)
    b = net.layers[0].b
    assert abs(b.mean()) < 0.05 and abs(b.std() - 1.0) < 0.05  # 5000 draws: SE 0.014
    # the generator seeded [seed, 1], one draw per Linear layer in order
    bias_rng = np.random.default_rng([3, 1])
    np.testing.assert_array_equal(b, bias_rng.standard_normal(5000).astype(np.float32))
    np.testing.assert_array_equal(net.layers[2].b, bias_rng.standard_normal(3).astype(np.float32))
    zeros = build_net("plain", sizes=sizes, seed=3)
    for a, z in zip(net.layers[::2], zeros.layers[::2]):
        np.testing.assert_array_equal(a.W, z.W)  # weights unaffected
        assert not z.b.any()  # the default: zero biases
    with pytest.raises(ValueError, match="bias_init"):
        build_net("plain", sizes=sizes, bias_init="ones")


def test_build_net_article_networks_share_weights_and_have_the_articles_biases():
    kw = dict(sizes=(6, 5, 4, 3), init="normal", gain=0.01, bias_init="normal", seed=4)
    plain = build_net("plain", **kw)
    bn = build_net("BN", bn_output_bias=False, bn_eps=1e-12, bn_param_grads="sum",
                   bn_unbiased_running_var=False, **kw)
    w_plain = [layer.W for layer in plain.layers if isinstance(layer, Linear)]
    w_bn = [layer.W for layer in bn.layers if isinstance(layer, Linear)]
    for a, b in zip(w_plain, w_bn):
        np.testing.assert_array_equal(a, b)
    assert all(abs(w.std() - 0.01) < 0.005 for w in w_plain)  # 0.01 * N(0, 1)
    assert all(layer.b is not None and np.abs(layer.b).max() > 0.1
               for layer in plain.layers if isinstance(layer, Linear))
    assert all(layer.b is None for layer in bn.layers if isinstance(layer, Linear))
    bns = [layer for layer in bn.layers if isinstance(layer, BatchNorm1d)]
    assert all(isinstance(b, ArticleBatchNorm1d) for b in bns)
    assert [b.param_grads for b in bns] == ["sum", "sum"] and bns[0].eps == 1e-12
    assert not bns[0].unbiased_running_var
    # the book's conventions give the plain layer
    book = build_net("BN", sizes=(6, 5, 4, 3), seed=4)
    assert all(type(layer) is BatchNorm1d for layer in book.layers if isinstance(layer, BatchNorm1d))


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

    def release(self):
        pass

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
    batches = one_shuffle(20, 5) if shuffle == "once" else None  # None: fit's default order
    fit(model, (x, y, x[:4], y[:4]), epochs=2, lr=0.1, batch_size=5, progress=False,
        batches=batches)
    first, second = model.seen[0:4], model.seen[5:9]  # seen[4]: the evaluation after epoch 1
    assert all(np.array_equal(a, b) for a, b in zip(first, second)) == same
    assert sorted(np.concatenate(first).tolist()) == list(range(0, 40, 2))  # one pass each


def test_train_net_shuffle_once_trains_on_one_shuffle(blobs):
    data = blobs(n=60, d=8, c=3)
    kw = dict(sizes=(8, 6, 3), lr=0.1, epochs=3, batch_size=20, seed=2, progress=False)
    hist = train_net(data, "plain", shuffle="once", **kw)
    model = build_net("plain", sizes=(8, 6, 3), seed=2)
    ref = fit(model, data, epochs=3, lr=0.1, batch_size=20, seed=2, batches=one_shuffle(60, 20),
              progress=False)
    assert hist.batch_loss == ref.batch_loss and hist.test_acc == ref.test_acc
    every = train_net(data, "plain", shuffle="every epoch", **kw)
    assert every.batch_loss[:3] == hist.batch_loss[:3]  # the same first permutation
    assert every.batch_loss[3:] != hist.batch_loss[3:]


def test_train_net_rejects_unknown_shuffle():
    x = np.zeros((4, 2), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="shuffle"):
        train_net((x, y, x, y), "plain", sizes=(2, 3, 2), epochs=1, lr=0.1, shuffle="never",
                  progress=False)
