"""Tests of bnbook.layers: gradients of every layer by centred differences
(float64), the Sequential container, initialisation, build_mlp, SGD and the
softmax cross-entropy loss."""

import numpy as np
import pytest

from bnbook.normalization import BatchNorm1d
from bnbook.gradcheck import check_layer_gradients, numerical_gradient, relative_error
from bnbook.optimizers import SGD
from bnbook.layers import Layer, Linear, ReLU, Sequential, Sigmoid, Tanh, init_weights
from bnbook.losses import softmax_cross_entropy
from bnbook.models import build_mlp


# --------------------------------------------------------------------------
# gradients of single layers, float64
# --------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_matches_numerical_gradient(bias):
    rng = np.random.default_rng(0)
    lin = Linear(4, 3, bias=bias, rng=rng, dtype=np.float64)
    if bias:
        lin.b[...] = rng.standard_normal(3)
    x = rng.standard_normal((6, 4))
    dout = rng.standard_normal((6, 3))
    lin.forward(x)
    dx = lin.backward(dout)
    assert relative_error(dx, numerical_gradient(lin.forward, x, dout)) < 1e-8
    assert relative_error(lin.dW, numerical_gradient(lambda w: lin.forward(x), lin.W, dout)) < 1e-8
    if bias:
        assert relative_error(lin.db, numerical_gradient(lambda b: lin.forward(x), lin.b, dout)) < 1e-8
    else:
        assert lin.b is None and lin.db is None
        assert [name for name, _, _ in lin.params()] == ["W"]


def test_linear_backward_without_input_grad_returns_none_but_stores_dW():
    rng = np.random.default_rng(1)
    lin = Linear(3, 2, rng=rng, dtype=np.float64)
    x, dout = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    lin.forward(x)
    assert lin.backward(dout, need_input_grad=False) is None
    np.testing.assert_allclose(lin.dW, x.T @ dout, rtol=1e-14)
    np.testing.assert_allclose(lin.db, dout.sum(axis=0), rtol=1e-14)


def test_linear_rejects_wrong_input_shape():
    lin = Linear(3, 2)
    with pytest.raises(ValueError, match=r"shape \(m, 3\)"):
        lin.forward(np.ones((4, 5), dtype=np.float32))
    with pytest.raises(RuntimeError, match=r"needs a forward\(\) first"):
        Linear(3, 2).backward(np.ones((4, 2)))


def test_relu_backward_matches_numerical_gradient_away_from_the_kink():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 5))
    x[np.abs(x) < 1e-2] = 0.5  # centred differences with h = 1e-5 never cross 0
    dout = rng.standard_normal((7, 5))
    relu = ReLU()
    out = relu.forward(x)
    assert np.array_equal(out, np.where(x > 0, x, 0.0))
    dx = relu.backward(dout)
    assert relative_error(dx, numerical_gradient(relu.forward, x, dout)) < 1e-9


def test_sigmoid_forward_is_stable_and_backward_matches_numerical_gradient():
    rng = np.random.default_rng(3)
    sig = Sigmoid()
    x = rng.standard_normal((6, 4))
    dout = rng.standard_normal((6, 4))
    np.testing.assert_allclose(sig.forward(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    dx = sig.backward(dout)
    assert relative_error(dx, numerical_gradient(sig.forward, x, dout)) < 1e-7
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow
        big = sig.forward(np.array([[-1000.0, 1000.0]]))
    np.testing.assert_array_equal(big, [[0.0, 1.0]])
    assert sig.forward(np.zeros((2, 2), dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softmax_cross_entropy_gradient_matches_numerical_gradient(reduction):
    rng = np.random.default_rng(4)
    logits = 2 * rng.standard_normal((8, 5))
    y = rng.integers(0, 5, 8)
    loss, dlogits = softmax_cross_entropy(logits, y, reduction)
    num = numerical_gradient(lambda z: np.asarray(softmax_cross_entropy(z, y, reduction)[0]),
                             logits, np.float64(1.0))
    # entries down to 1e-4: the loss's rounding noise / h limits the agreement
    assert relative_error(dlogits, num) < 1e-7


def test_softmax_cross_entropy_value_and_stability():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([2, 0])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[[0, 1], y]))
    loss, d = softmax_cross_entropy(logits, y)
    assert abs(loss - expected) < 1e-14
    # shifting every logit of a row changes nothing; huge logits do not overflow
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss_big, d_big = softmax_cross_entropy(logits + 1e4, y)
    assert abs(loss_big - loss) < 1e-10
    np.testing.assert_allclose(d_big, d, rtol=0, atol=1e-12)
    # gradient rows sum to zero
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-15)


def test_softmax_cross_entropy_sum_is_exactly_m_times_mean():
    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 64, 100):
        logits = rng.standard_normal((m, 10))
        y = rng.integers(0, 10, m)
        loss_mean, g_mean = softmax_cross_entropy(logits, y, "mean")
        loss_sum, g_sum = softmax_cross_entropy(logits, y, "sum")
        # the "mean" gradient is the "sum" gradient divided by m, so multiplying
        # back by m reproduces it to the last bit or two
        np.testing.assert_allclose(g_sum, m * g_mean, rtol=1e-15, atol=1e-16)
        assert abs(loss_sum - m * loss_mean) <= 1e-13 * abs(loss_sum)


@pytest.mark.parametrize("y, match", [
    (np.array([0, 1, 3]), r"labels must lie in 0\.\.2"),
    (np.array([0, -1, 2]), r"labels must lie in 0\.\.2"),
    (np.array([0, 1]), r"shape \(3,\)"),
    (np.array([[0], [1], [2]]), r"shape \(3,\)"),
    (np.array([0.0, 1.0, 2.0]), "integer labels"),
])
def test_softmax_cross_entropy_rejects_bad_labels(y, match):
    with pytest.raises(ValueError, match=match):
        softmax_cross_entropy(np.zeros((3, 3)), y)


def test_softmax_cross_entropy_rejects_bad_logits_and_reduction():
    with pytest.raises(ValueError, match="logits must be 2-D"):
        softmax_cross_entropy(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction"):
        softmax_cross_entropy(np.zeros((3, 3)), np.array([0, 1, 2]), "max")


# --------------------------------------------------------------------------
# a whole network: Linear - BatchNorm - ReLU - Linear - softmax CE
# --------------------------------------------------------------------------
def small_bn_network(seed=0):
    rng = np.random.default_rng(seed)
    net = Sequential(
        Linear(5, 7, bias=False, rng=rng, dtype=np.float64),
        BatchNorm1d(7, dtype=np.float64),
        ReLU(),
        Linear(7, 3, rng=rng, dtype=np.float64),
    )
    net[1].gamma[...] = rng.uniform(0.5, 1.5, 7)
    net[1].beta[...] = 0.3 * rng.standard_normal(7)
    net[3].b[...] = rng.standard_normal(3)
    x = rng.standard_normal((10, 5))
    y = rng.integers(0, 3, 10)
    return net, x, y


def test_network_gradients_match_numerical_gradients():
    net, x, y = small_bn_network()
    # no ReLU input lies near the kink, where centred differences are invalid
    pre_relu = net[1].forward(net[0].forward(x))
    assert np.min(np.abs(pre_relu)) > 1e-3
    logits = net.forward(x)
    _, dlogits = softmax_cross_entropy(logits, y)
    dx = net.backward(dlogits)
    analytic = {name: g.copy() for name, _, g in net.params()}
    assert sorted(analytic) == ["0.W", "1.beta", "1.gamma", "3.W", "3.b"]

    def loss_at(_):
        return np.asarray(softmax_cross_entropy(net.forward(x), y)[0])

    for name, p, _ in net.params():
        err = relative_error(analytic[name], numerical_gradient(loss_at, p, np.float64(1.0)))
        assert err < 1e-7, (name, err)
    assert relative_error(dx, numerical_gradient(loss_at, x, np.float64(1.0))) < 1e-7


def test_check_layer_gradients_reports_small_errors_for_the_network():
    net, x, y = small_bn_network(seed=0)
    errors = check_layer_gradients(net, softmax_cross_entropy, x, y)
    assert set(errors) == {"0.W", "1.gamma", "1.beta", "3.W", "3.b", "x"}
    assert max(errors.values()) < 1e-7, errors


def test_network_with_sigmoid_gradients_match_numerical_gradients():
    net = build_mlp([4, 6, 5, 3], batchnorm=True, activation="sigmoid", seed=1,
                    dtype=np.float64)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    errors = check_layer_gradients(net, softmax_cross_entropy, x, y)
    # a deeper net with saturating units has gradient entries near 1e-4, where the
    # rounding noise of the centred difference (~1e-11) costs a digit: 1e-6 here
    assert max(errors.values()) < 1e-6, errors


# --------------------------------------------------------------------------
# Sequential, initialisation, build_mlp, SGD
# --------------------------------------------------------------------------
def test_sequential_params_names_and_in_place_sgd_update():
    net, x, y = small_bn_network()
    names = [name for name, _, _ in net.params()]
    assert names == ["0.W", "1.gamma", "1.beta", "3.W", "3.b"]
    # the triples hold the layers' own arrays, not copies
    values = dict((n, v) for n, v, _ in net.params())
    assert values["0.W"] is net[0].W and values["1.gamma"] is net[1].gamma
    assert values["3.b"] is net[3].b
    _, dlogits = softmax_cross_entropy(net.forward(x), y)
    net.backward(dlogits)
    before = {n: v.copy() for n, v, _ in net.params()}
    grads = {n: g.copy() for n, _, g in net.params()}
    SGD(net, lr=0.1).step()
    for n, v, _ in net.params():
        np.testing.assert_array_equal(v, before[n] - 0.1 * grads[n])
    np.testing.assert_array_equal(net[0].W, before["0.W"] - 0.1 * grads["0.W"])


def test_sequential_train_eval_reach_every_layer_and_indexing_works():
    net = build_mlp([3, 4, 2], batchnorm=True)
    assert len(net) == 4
    assert isinstance(net[0], Linear) and isinstance(net[1], BatchNorm1d)
    assert isinstance(net[2], ReLU) and isinstance(net[3], Linear)
    net.eval()
    assert not net.training and all(not layer.training for layer in net.layers)
    net.train()
    assert net.training and all(layer.training for layer in net.layers)


def test_sequential_backward_returns_input_gradient_or_none():
    net, x, y = small_bn_network()
    _, dlogits = softmax_cross_entropy(net.forward(x), y)
    dx = net.backward(dlogits)
    dW = net[0].dW.copy()
    assert dx.shape == x.shape
    net.forward(x)
    assert net.backward(dlogits, need_input_grad=False) is None
    np.testing.assert_allclose(net[0].dW, dW, rtol=1e-14)


@pytest.mark.parametrize("method, std", [
    ("he", np.sqrt(2 / 400)), ("xavier", np.sqrt(2 / 600)), ("normal", 1.0)])
def test_init_weights_standard_deviation(method, std):
    w = init_weights(400, 200, method, gain=0.5, rng=0, dtype=np.float64)
    assert w.shape == (400, 200)
    # 80,000 draws: the sample std is within 1% of the target
    assert abs(w.std() / (0.5 * std) - 1) < 0.01
    assert abs(w.mean()) < 0.05 * 0.5 * std
    assert init_weights(3, 2, method, dtype=np.float32).dtype == np.float32


def test_init_weights_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown init method"):
        init_weights(3, 2, "orthogonal")


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_build_mlp_same_seed_gives_identical_weights_with_and_without_bn(activation):
    sizes = [20, 16, 12, 4]
    plain = build_mlp(sizes, batchnorm=False, activation=activation, seed=7)
    bn = build_mlp(sizes, batchnorm=True, activation=activation, seed=7)
    plain_lin = [layer for layer in plain.layers if isinstance(layer, Linear)]
    bn_lin = [layer for layer in bn.layers if isinstance(layer, Linear)]
    assert len(plain_lin) == len(bn_lin) == 3
    for a, b in zip(plain_lin, bn_lin):
        assert a.W.shape == b.W.shape
        np.testing.assert_array_equal(a.W, b.W)
    # the hidden Linear layers of the BN network have no bias; the output layer has
    assert all(layer.b is None for layer in bn_lin[:-1])
    assert bn_lin[-1].b is not None
    assert all(layer.b is not None for layer in plain_lin)
    # structure: Linear, BN, act per hidden layer, then Linear
    act = ReLU if activation == "relu" else Sigmoid
    assert [type(layer) for layer in bn.layers] == [Linear, BatchNorm1d, act] * 2 + [Linear]
    assert [type(layer) for layer in plain.layers] == [Linear, act] * 2 + [Linear]
    # another seed gives other weights
    other = build_mlp(sizes, seed=8, activation=activation)
    assert not np.array_equal(other[0].W, plain[0].W)


def test_build_mlp_options():
    net = build_mlp([5, 4, 3], batchnorm=True, dtype=np.float64, bn_momentum=0.3,
                    bn_eps=1e-3, gain=2.0, init="normal", seed=0)
    assert net[0].W.dtype == np.float64 and net[1].gamma.dtype == np.float64
    assert net[1].momentum == 0.3 and net[1].eps == 1e-3
    ref = init_weights(5, 4, "normal", gain=2.0, rng=np.random.default_rng(0), dtype=np.float64)
    np.testing.assert_array_equal(net[0].W, ref)
    assert isinstance(build_mlp([5, 4, 3], activation="tanh")[1], Tanh)
    with pytest.raises(ValueError, match="activation"):
        build_mlp([5, 4, 3], activation="softsign")


class OneParam:
    """A 'model' with a single parameter vector whose gradient we set by hand."""

    def __init__(self):
        self.p = np.array([1.0, -2.0])
        self.g = np.zeros(2)

    def params(self):
        return [("p", self.p, self.g)]


def test_sgd_momentum_follows_v_equals_mu_v_plus_g_then_p_minus_lr_v():
    model = OneParam()
    opt = SGD(model, lr=0.5, momentum=0.9)
    p, v = model.p.copy(), np.zeros(2)
    for g in ([1.0, 2.0], [-3.0, 0.5], [0.25, 0.25]):
        model.g[...] = g
        opt.step()
        v = 0.9 * v + np.array(g)
        p = p - 0.5 * v
        np.testing.assert_allclose(model.p, p, rtol=1e-15)


def test_sgd_without_momentum_is_plain_gradient_descent():
    model = OneParam()
    opt = SGD(model, lr=0.1)
    model.g[...] = [1.0, -1.0]
    opt.step()
    opt.step()
    np.testing.assert_allclose(model.p, [0.8, -1.8], rtol=1e-15)


@pytest.mark.parametrize("lr", [0.0, -0.1, np.nan])
def test_sgd_rejects_learning_rate_not_positive(lr):
    with pytest.raises(ValueError, match="learning rate must be positive"):
        SGD(OneParam(), lr=lr)


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_sgd_rejects_momentum_outside_0_1(momentum):
    with pytest.raises(ValueError, match="momentum"):
        SGD(OneParam(), lr=0.1, momentum=momentum)


def test_in_mode_switches_mode_and_restores_it_even_after_an_error():
    from bnbook.layers import in_mode
    net = build_mlp([4, 3, 2], batchnorm=True, dtype=np.float64, seed=0)
    net.train()
    with in_mode(net, training=False):
        assert not net.training and not net[1].training
    assert net.training and net[1].training
    with pytest.raises(RuntimeError):
        with in_mode(net, training=False):
            raise RuntimeError("inside the block")
    assert net.training and net[1].training


def test_running_stats_kept_undoes_training_mode_forward_passes():
    from bnbook.layers import running_stats_kept
    net = build_mlp([4, 3, 2], batchnorm=True, dtype=np.float64, seed=0)
    before_mean, before_var = net[1].running_mean.copy(), net[1].running_var.copy()
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(16, 4))
    with running_stats_kept(net):
        net.forward(x)
        assert not np.array_equal(net[1].running_mean, before_mean)  # the pass moved them ...
    assert np.array_equal(net[1].running_mean, before_mean)          # ... and they are back, bit for bit
    assert np.array_equal(net[1].running_var, before_var)


def test_sequential_gives_need_input_grad_to_its_first_layer_only():
    """need_input_grad reaches the first layer (a Linear then skips dx, a
    network's input needs none); every later layer is asked for its dx."""

    class Scale(Layer):  # records the need_input_grad it is given
        def __init__(self):
            self.asked = []

        def forward(self, x):
            self._saved = True
            return 2.0 * x

        def backward(self, dout, need_input_grad=True):
            self._saved_for_backward()
            self.asked.append(need_input_grad)
            return 2.0 * dout

    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    lin = Linear(3, 2, rng=0, dtype=np.float64)
    net = Sequential(lin)
    net.forward(x)
    assert net.backward(dout, need_input_grad=False) is None
    np.testing.assert_allclose(lin.dW, x.T @ dout, rtol=1e-14)  # the parameter gradients all the same
    first, last = Scale(), Scale()
    net = Sequential(first, Linear(3, 2, rng=0, dtype=np.float64), last)
    net.forward(x)
    np.testing.assert_allclose(net.backward(dout, need_input_grad=False),
                               4.0 * dout @ net[1].W.T, rtol=1e-15, atol=0)
    assert first.asked == [False] and last.asked == [True]
    net.backward(dout)
    assert first.asked == [False, True] and last.asked == [True, True]


def test_layer_inputs_are_what_each_layer_receives_in_eval_mode():
    from bnbook.layers import layer_inputs

    net = build_mlp([4, 6, 5, 3], batchnorm=True, seed=1, dtype=np.float64)
    x = np.random.default_rng(2).normal(1.0, 2.0, (23, 4))
    net.forward(x)  # a training step moves the running statistics away from 0 and 1
    rm = net[1].running_mean.copy()
    picked = layer_inputs(net, x, lambda i, layer: isinstance(layer, BatchNorm1d), batch_size=5)
    assert net.training and len(picked) == 2
    np.testing.assert_array_equal(net[1].running_mean, rm)  # eval mode: nothing updated
    net.eval()
    np.testing.assert_array_equal(picked[0], net[0].forward(x))  # tolerance: none, the same products
    np.testing.assert_array_equal(picked[1], net[3].forward(net[2].forward(net[1].forward(picked[0]))))
    whole = layer_inputs(net, x, lambda i, layer: isinstance(layer, BatchNorm1d))
    for a, b in zip(whole, picked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # chunks of 5 rows: same values
