"""Tests of bnbook.chapters.ch8_explanations (the measurements of chapter 8 and
its NoisyAffine layer), of Tanh, and of chapter 8's training recipe: fit with
an SGD that decays the Linear weights only. Math checks in float64."""

import numpy as np
import pytest

from bnbook.chapters.ch8_explanations import (GradientShiftRecorder, NoisyAffine, NormRecorder, along_gradient,
                                              feature_drift, gradient_shift, layer_statistics, loss_and_gradients)
from bnbook.gradcheck import check_layer_gradients, numerical_gradient, relative_error
from bnbook.layers import Linear, ReLU, Sequential, Tanh
from bnbook.losses import softmax_cross_entropy
from bnbook.models import build_mlp
from bnbook.normalization import BatchNorm1d
from bnbook.optimizers import SGD
from bnbook.training import fit


def _data(n=32, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def _net(bn, seed=0, act=ReLU):
    rng = np.random.default_rng(seed)
    layers = [Linear(6, 5, bias=not bn, rng=rng, dtype=np.float64)]
    if bn:
        layers.append(BatchNorm1d(5, dtype=np.float64))
    layers += [act(), Linear(5, 4, bias=not bn, rng=rng, dtype=np.float64)]
    if bn:
        layers.append(BatchNorm1d(4, dtype=np.float64))
    layers += [act(), Linear(4, 3, rng=rng, dtype=np.float64)]
    return Sequential(*layers)


def _state(model):
    arrays = [p.copy() for _, p, _ in model.params()]
    arrays += [a.copy() for layer in model.layers for a in
               (getattr(layer, "running_mean", None), getattr(layer, "running_var", None))
               if a is not None]
    return arrays


def _same_state(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


# --------------------------------------------------------------------------
# Tanh and NoisyAffine
# --------------------------------------------------------------------------
def test_tanh_backward_matches_numerical_gradient():
    rng = np.random.default_rng(1)
    x, dout = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    layer = Tanh()
    layer.forward(x)
    assert relative_error(layer.backward(dout), numerical_gradient(Tanh().forward, x, dout)) < 1e-7


def test_noisy_affine_backward_matches_numerical_gradient():
    rng = np.random.default_rng(2)
    x, dout = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    layer = NoisyAffine(4, seed=3)
    layer.forward(x)
    dx = layer.backward(dout)
    num = numerical_gradient(lambda z: NoisyAffine(4, seed=3).forward(z), x, dout)
    assert relative_error(dx, num) < 1e-7


def test_noisy_affine_draws_within_its_ranges_and_changes_every_step():
    x = np.zeros((3, 1000))
    layer = NoisyAffine(1000, shift=0.5, scale=1.5, seed=4)
    b1, b2 = layer.forward(x)[0], layer.forward(x)[0]        # x = 0: the output is the shift
    assert np.abs(b1).max() <= 0.5 and np.abs(b1).max() > 0.45
    assert not np.allclose(b1, b2)
    layer.forward(np.ones((3, 1000)))
    (s,) = layer._saved  # the scales of the last training-mode pass
    assert s.min() >= 1 / 1.5 - 1e-6 and s.max() <= 1.5 + 1e-6


def test_noisy_affine_is_identity_in_eval_mode_and_checks_input():
    x = np.ones((2, 3))
    assert NoisyAffine(3).eval().forward(x) is x
    with pytest.raises(ValueError, match="shape"):
        NoisyAffine(4).forward(x)
    with pytest.raises(ValueError, match="shift"):
        NoisyAffine(3, scale=0.5)


# --------------------------------------------------------------------------
# loss_and_gradients, gradient_shift
# --------------------------------------------------------------------------
def test_loss_and_gradients_match_numerical_gradients_and_keep_state():
    net = _net(bn=True)
    x, y = _data()
    before = _state(net)
    _, grads = loss_and_gradients(net, x, y)
    assert _same_state(before, _state(net))
    errors = check_layer_gradients(net, softmax_cross_entropy, x, y)
    assert max(errors.values()) < 1e-6
    _, analytic = loss_and_gradients(net, x, y)
    assert all(np.array_equal(grads[k], analytic[k]) for k in grads)


def test_gradient_shift_is_zero_for_the_first_layer_and_for_a_zero_step():
    net = _net(bn=False)
    x, y = _data()
    rel, cos = gradient_shift(net, x, y, lr=0.5, names=["0.W"])["0.W"]
    assert rel == 0.0 and cos == pytest.approx(1.0)        # nothing before layer 0 moves
    rel, _ = gradient_shift(net, x, y, lr=1e-300, names=["2.W"])["2.W"]
    assert rel < 1e-12


def test_gradient_shift_matches_a_step_taken_by_hand():
    net = _net(bn=True)
    x, y = _data()
    lr = 0.3
    before = _state(net)
    rel, cos = gradient_shift(net, x, y, lr, ["3.W"])["3.W"]
    assert _same_state(before, _state(net))
    _, g = loss_and_gradients(net, x, y)
    for name, p, _ in net.params():
        if name.startswith(("0.", "1.")):                   # the layers before layer 3
            p -= lr * g[name]
    _, g2 = loss_and_gradients(net, x, y)
    diff = np.linalg.norm(g["3.W"] - g2["3.W"]) / np.linalg.norm(g["3.W"])
    c = np.sum(g["3.W"] * g2["3.W"]) / np.linalg.norm(g["3.W"]) / np.linalg.norm(g2["3.W"])
    assert rel == pytest.approx(diff, rel=1e-10) and cos == pytest.approx(c, rel=1e-10)
    assert rel > 1e-3                                        # the step did change the gradient


def test_gradient_shift_recorder_records_each_call():
    net = _net(bn=False)
    x, y = _data()
    rec = GradientShiftRecorder(x, y, 0.1, ["2.W"])
    rec(0, net)
    rec(5, net)
    steps, rel, cos = rec.arrays()
    assert list(steps) == [0, 5] and rel["2.W"].shape == (2,) and np.all(np.abs(cos["2.W"]) <= 1)


# --------------------------------------------------------------------------
# along_gradient
# --------------------------------------------------------------------------
def test_along_gradient_slope_is_minus_the_squared_gradient_norm():
    net = _net(bn=False)
    x, y = _data()
    before = _state(net)
    etas = np.array([1e-6, 1e-3])
    res = along_gradient(net, x, y, etas)
    assert _same_state(before, _state(net))
    slope = (res["losses"][0] - res["loss0"]) / 1e-6
    assert slope == pytest.approx(-res["grad_norm"] ** 2, rel=1e-3)   # dL/deta = -||g||^2
    assert res["grad_change"][0] < res["grad_change"][1]
    assert res["beta"] == pytest.approx(np.max(res["grad_change"] / (etas * res["grad_norm"])))


def test_along_gradient_beta_of_a_linear_softmax_model_is_bounded_by_its_hessian():
    # One Linear layer + mean softmax cross-entropy: the Hessian's largest
    # eigenvalue is at most max_i (||x_i||^2 + 1) / 2 (the softmax Hessian has
    # norm <= 1/2; +1 for the bias), so no change of gradient per distance can exceed it.
    rng = np.random.default_rng(5)
    net = Sequential(Linear(6, 3, rng=rng, dtype=np.float64))
    x, y = _data()
    res = along_gradient(net, x, y, [1e-3, 1e-2, 1e-1])
    bound = np.max(np.sum(x ** 2, axis=1) + 1) / 2
    assert 0 < res["beta"] <= bound


# --------------------------------------------------------------------------
# layer_statistics, feature_drift
# --------------------------------------------------------------------------
def test_layer_statistics_counts_saturated_tanh_units_and_gradient_norms():
    rng = np.random.default_rng(6)
    net = Sequential(Linear(6, 50, init="normal", gain=10.0, rng=rng, dtype=np.float64), Tanh(),
                     Linear(50, 3, rng=rng, dtype=np.float64))
    x, y = _data()
    stats = layer_statistics(net, x, y)
    h = np.tanh(x @ net[0].W + net[0].b)
    assert stats["saturated"] == [pytest.approx(np.mean(np.abs(h) > 0.97))]
    assert stats["saturated"][0] > 0.5
    _, grads = loss_and_gradients(net, x, y)
    assert stats["weight_grad"] == [pytest.approx(np.linalg.norm(grads["0.W"])),
                                    pytest.approx(np.linalg.norm(grads["2.W"]))]


def test_output_recorder_records_what_the_next_layer_sees():
    from bnbook.chapters.ch8_explanations import OutputRecorder

    net = _net(bn=True)
    x, _ = _data()
    before = _state(net)
    rec = OutputRecorder(x, upto=3)                          # Linear, BatchNorm1d, ReLU
    rec(0, net)
    assert _same_state(before, _state(net))
    expected = np.maximum(net[1].forward(net[0].forward(x)), 0)
    assert rec.steps == [0] and np.allclose(rec.snapshots[0], expected)


def test_feature_drift_of_a_shifted_copy():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((400, 5))
    assert feature_drift([a, a, a]) == 0.0
    assert feature_drift([a, a + 0.5]) == pytest.approx(0.5 / np.mean(a.std(axis=0)))
    with pytest.raises(ValueError):
        feature_drift([a])


# --------------------------------------------------------------------------
# fit with weight decay on the Linear weights, NormRecorder: scale invariance under SGD
# --------------------------------------------------------------------------
def _decay_weights(model, lr, weight_decay):
    """Chapter 8's optimizer: SGD decaying the Linear weights (names ending ".W") only."""
    params = model.params()
    return SGD([{"params": [t for t in params if t[0].endswith(".W")], "weight_decay": weight_decay},
                {"params": [t for t in params if not t[0].endswith(".W")]}], lr=lr)


def _train(model, x, y, *, steps, lr, batch_size, seed=0, weight_decay=0.0, callback=None):
    """``steps`` SGD steps of full batches, reshuffled every epoch (what train_sgd did)."""
    return fit(model, (x, y), _decay_weights(model, lr, weight_decay), epochs=steps, max_steps=steps,
               batch_size=batch_size, seed=seed, drop_last=True, callback=callback, callback_every=1,
               progress=False)


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_sgd_decaying_the_weights_matches_steps_taken_by_hand(decay):
    x, y = _data(n=40)
    a, b = _net(bn=True), _net(bn=True)
    hist = _train(a, x, y, steps=3, lr=0.1, batch_size=20, seed=0, weight_decay=decay)
    rng = np.random.default_rng(0)
    perm = rng.permutation(40)
    batches = [perm[:20], perm[20:], rng.permutation(40)[:20]]
    losses = []
    for idx in batches:
        loss, g = loss_and_gradients(b, x[idx], y[idx])
        losses.append(loss)
        for name, p, _ in b.params():
            if name.endswith(".W"):
                p -= 0.1 * (g[name] + decay * p)   # W -= lr * (dW + weight_decay * W)
            else:
                p -= 0.1 * g[name]                 # biases, gamma and beta are not decayed
    assert hist.steps == 3 and len(hist.batch_loss) == 3
    np.testing.assert_allclose(hist.batch_loss, losses, rtol=1e-12)
    assert all(np.allclose(p, q, rtol=1e-12, atol=1e-14)
               for (_, p, _), (_, q, _) in zip(a.params(), b.params()))


def test_weights_feeding_batch_norm_grow_without_decay_and_shrink_with_it():
    x, y = _data(n=64)
    for decay in (0.0, 0.5):
        net = _net(bn=True)
        rec = NormRecorder(["0.W"])
        _train(net, x, y, steps=20, lr=0.5, batch_size=32, seed=0, weight_decay=decay, callback=rec)
        norms = np.array(rec.norms["0.W"])
        assert len(norms) == 21 and np.isnan(rec.rel_step["0.W"][0])
        if decay == 0:   # gradient orthogonal to W: ||W||^2 grows by lr^2 ||g||^2 each step
            assert np.all(np.diff(norms) >= -1e-12) and norms[-1] > norms[0]
        else:
            assert norms[-1] < norms[0]


def test_sgd_rejects_a_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        _decay_weights(build_mlp([6, 4, 3]), lr=0.1, weight_decay=-1.0)


def test_training_on_fewer_samples_than_one_batch_is_refused():
    x, y = _data(n=10)
    with pytest.raises(ValueError, match="batch"):
        _train(build_mlp([6, 4, 3]), x.astype(np.float32), y, steps=1, lr=0.1, batch_size=20)


# --------------------------------------------------------------------------
# build_net
# --------------------------------------------------------------------------
def test_build_net_draws_the_same_weights_as_build_mlp():
    from bnbook.chapters.ch8_explanations import build_net

    for bn in (False, True):
        a = build_mlp([8, 6, 5, 3], batchnorm=bn, seed=4)
        b = build_net([8, 6, 5, 3], batchnorm=bn, seed=4, dropout=0.5,
                      noise=(0.5, 1.5) if bn else None)
        wa = [p for n, p, _ in a.params() if n.endswith("W")]
        wb = [p for n, p, _ in b.params() if n.endswith("W")]
        assert len(wa) == len(wb) == 3 and all(np.array_equal(u, v) for u, v in zip(wa, wb))
    kinds = [type(layer).__name__ for layer in b.layers]
    assert kinds == ["Linear", "BatchNorm1d", "NoisyAffine", "ReLU", "Dropout",
                     "Linear", "BatchNorm1d", "NoisyAffine", "ReLU", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="batchnorm"):
        build_net([8, 6, 3], noise=(1.0, 2.0))
    with pytest.raises(ValueError, match="activation"):
        build_net([8, 6, 3], activation="elu")
