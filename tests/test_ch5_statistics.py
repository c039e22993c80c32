"""Chapter 5's statistics: running averages and momentum conventions
(bnbook.chapters.ch5_statistics), population statistics
(bnbook.normalization.recompute_bn_statistics), accuracy with batch statistics,
and fit on batches given in order (what chapter 5's train_on_batches did)."""

import numpy as np
import pytest

from bnbook import BatchNorm1d, build_mlp, evaluate, fit, softmax_cross_entropy
from bnbook.chapters.ch5_statistics import ema, ema_startup_bias, half_life, keras_to_pytorch
from bnbook.normalization import bn_inputs, bn_layers, recompute_bn_statistics
from bnbook.training import accuracy_with_batch_statistics


def test_ema_matches_closed_form_and_conventions():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    for m in (0.0, 0.01, 0.1, 0.5, 1.0):
        run = ema(v, m, init=0.5)
        assert run.shape == (51, 3)
        w = (1 - m) ** np.arange(50)[::-1]
        expect = (1 - m) ** 50 * 0.5 + m * (w[:, None] * v).sum(axis=0)
        np.testing.assert_allclose(run[-1], expect, rtol=0, atol=1e-12)
        np.testing.assert_allclose(run, ema(v, 1 - m, 0.5, "keras"), rtol=0, atol=1e-12)
    assert keras_to_pytorch(0.99) == pytest.approx(0.01, rel=1e-12)


def test_ema_bias_and_half_life():
    t = np.arange(30)
    np.testing.assert_allclose(ema(np.full(29, 3.0), 0.2, init=1.0), 3.0 + ema_startup_bias(0.2, t, 1.0, 3.0),
                               rtol=1e-12, atol=0)
    assert half_life(0.5) == pytest.approx(1.0, rel=1e-12)
    assert half_life(0.0) == np.inf
    assert 0.5 ** (1 / half_life(0.1)) == pytest.approx(0.9, rel=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        ema([1.0], 1.5)
    with pytest.raises(ValueError, match="convention"):
        ema([1.0], 0.1, convention="tf")
    with pytest.raises(ValueError, match="momentum"):
        keras_to_pytorch(-0.1)


def test_layer_running_stats_follow_ema():
    layer = BatchNorm1d(3, momentum=0.3, dtype=np.float64)
    xs = np.random.default_rng(1).normal(1.0, 2.0, size=(10, 5, 3))
    for xb in xs:
        layer.forward(xb)
    np.testing.assert_allclose(layer.running_mean, ema(xs.mean(axis=1), 0.3, 0.0)[-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.running_var, ema(xs.var(axis=1, ddof=1), 0.3, 1.0)[-1], rtol=1e-12)


def _net(seed=0):
    net = build_mlp([6, 5, 4, 3], batchnorm=True, seed=seed, dtype=np.float64)
    x = np.random.default_rng(seed).normal(2.0, 3.0, size=(257, 6))
    y = np.random.default_rng(seed + 1).integers(0, 3, size=257)
    return net, x, y


def test_recompute_gives_exact_population_statistics():
    net, x, y = _net()
    net.train()
    before = [p.copy() for _, p, _ in net.params()]
    recompute_bn_statistics(net, x, batch_size=50)
    assert net.training  # mode restored
    for (_, p, _), q in zip(net.params(), before):
        assert np.array_equal(p, q)  # only the statistics change
    # reference: propagate the whole set at once in eval mode, layer by layer
    h = x
    net.eval()
    for layer in net.layers:
        if isinstance(layer, BatchNorm1d):
            np.testing.assert_allclose(layer.running_mean, h.mean(axis=0), rtol=0, atol=1e-12)
            np.testing.assert_allclose(layer.running_var, h.var(axis=0, ddof=1), rtol=1e-12)
        h = layer.forward(h)
    ins = bn_inputs(net, x, batch_size=64)
    assert len(ins) == len(bn_layers(net)) == 2
    np.testing.assert_allclose(ins[1].mean(axis=0), bn_layers(net)[1].running_mean, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        recompute_bn_statistics(net, x[:1])


def test_batch_statistics_accuracy_leaves_model_unchanged():
    net, x, y = _net(3)
    recompute_bn_statistics(net, x)
    net.eval()
    saved = [(b.running_mean.copy(), b.running_var.copy()) for b in bn_layers(net)]
    acc = accuracy_with_batch_statistics(net, x, y, batch_size=64)  # last batch of 1 merged
    assert 0.0 <= acc <= 1.0
    assert not net.training
    for b, (mu, var) in zip(bn_layers(net), saved):
        assert np.array_equal(b.running_mean, mu) and np.array_equal(b.running_var, var)
    # with one batch holding everything, training mode uses the population (biased) statistics
    full = accuracy_with_batch_statistics(net, x, y, batch_size=len(x))
    assert abs(full - evaluate(net, x, y)) <= 0.02


def test_fit_with_given_batches_trains_on_them_in_order():
    net, x, y = _net(4)
    order = [np.arange(i, i + 32) for i in range(0, 256, 32)]
    first_loss, _ = softmax_cross_entropy(build_mlp([6, 5, 4, 3], batchnorm=True, seed=4, dtype=np.float64)
                                          .forward(x[order[0]]), y[order[0]])
    hist = fit(net, (x, y), epochs=1, lr=0.05, batches=lambda epoch, rng: order, progress=False)
    losses = np.array(hist.batch_loss)
    assert losses.shape == (8,) and np.all(np.isfinite(losses)) and hist.steps == 8
    assert losses[0] == first_loss  # the first batch given is the first trained on
    net2, _, _ = _net(4)
    again = fit(net2, (x, y), epochs=1, lr=0.05, batches=lambda epoch, rng: order, progress=False)
    np.testing.assert_allclose(again.batch_loss, losses, rtol=1e-12)
