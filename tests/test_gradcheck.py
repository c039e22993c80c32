"""Tests of bnbook.gradcheck."""

import numpy as np
import pytest

from bnbook.gradcheck import (check_layer_gradients, check_random_direction, check_sampled_entries, numerical_gradient,
                              relative_error)
from bnbook.layers import Linear, Sequential
from bnbook.models import build_mlp
from bnbook.losses import softmax_cross_entropy


def test_numerical_gradient_matches_analytic_gradient_of_cube():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (4, 3))
    dout = rng.standard_normal((4, 3))
    num = numerical_gradient(lambda v: v**3, x, dout)
    # centred differences are exact up to h^2 f'''/6 = 1e-10 here, plus rounding
    np.testing.assert_allclose(num, 3 * x**2 * dout, rtol=0, atol=1e-9)
    assert relative_error(num, 3 * x**2 * dout) < 1e-8


def test_numerical_gradient_of_a_function_mixing_entries():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 5))
    x = rng.standard_normal((4, 3))
    dout = rng.standard_normal((4, 5))
    num = numerical_gradient(lambda v: np.tanh(v @ a), x, dout)
    analytic = (dout * (1 - np.tanh(x @ a) ** 2)) @ a.T
    assert relative_error(num, analytic) < 1e-8


def test_numerical_gradient_restores_x():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4))
    original = x.copy()
    seen = []

    def f(v):
        seen.append(v.copy())
        return np.sin(v)

    numerical_gradient(f, x, np.ones((3, 4)), h=1e-3)
    assert np.array_equal(x, original)  # bit for bit
    # f saw x with exactly one entry moved by +-h each time
    assert len(seen) == 2 * x.size
    for v in seen:
        diff = v - original
        assert np.count_nonzero(diff) == 1 and np.abs(diff).max() == pytest.approx(1e-3, rel=1e-9)


def test_numerical_gradient_returns_float64_and_rejects_bad_arguments():
    x32 = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    num = numerical_gradient(lambda v: 2 * v, x32, np.ones((2, 3)), h=1e-2)
    assert num.dtype == np.float64
    np.testing.assert_allclose(num, 2.0, rtol=1e-4)
    with pytest.raises(ValueError, match="float array"):
        numerical_gradient(lambda v: v, np.arange(3), np.ones(3))
    with pytest.raises(ValueError, match="step h must be positive"):
        numerical_gradient(lambda v: v, np.ones(3), np.ones(3), h=0.0)


def test_relative_error_on_known_values():
    assert relative_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1, rel=1e-12)
    assert relative_error([2.0, 3.0], [2.0, 3.0]) == 0.0
    # the maximum over entries, each relative to its own size
    assert relative_error([1.0, 100.0], [1.0, 101.0]) == pytest.approx(1 / 201, rel=1e-12)
    assert relative_error([1.0, -1.0], [1.0, 1.0]) == pytest.approx(1.0, rel=1e-15)
    # the floor 1e-8 keeps tiny numbers from producing huge relative errors
    assert relative_error([0.0], [1e-10]) == pytest.approx(1e-2, rel=1e-12)
    assert relative_error([0.0], [0.0]) == 0.0
    assert relative_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    # symmetric in its arguments
    assert relative_error([3.0, 1.0], [2.0, 5.0]) == relative_error([2.0, 5.0], [3.0, 1.0])


def test_relative_error_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.ones(3), np.ones((3, 1)))


class _BrokenLinear(Linear):
    """A Linear layer with a planted bug: its weight gradient is ``error`` times
    the true one (the other gradients are right)."""

    def __init__(self, *args, error: float, **kw):
        super().__init__(*args, **kw)
        self.error = error

    def backward(self, dout, need_input_grad=True):
        dx = super().backward(dout, need_input_grad)
        self.dW *= self.error
        return dx


def test_check_layer_gradients_flags_a_wrong_gradient():
    rng = np.random.default_rng(3)
    net = Sequential(Linear(4, 3, rng=rng, dtype=np.float64))
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    good = check_layer_gradients(net, softmax_cross_entropy, x, y)
    assert set(good) == {"0.W", "0.b", "x"} and max(good.values()) < 1e-8

    broken = Sequential(_BrokenLinear(4, 3, rng=np.random.default_rng(3), dtype=np.float64,
                                      error=1.01))  # a 1% error in one gradient
    errors = check_layer_gradients(broken, softmax_cross_entropy, x, y)
    assert errors["0.W"] > 1e-3
    assert errors["0.b"] < 1e-8 and errors["x"] < 1e-8


def test_check_layer_gradients_leaves_the_running_statistics_as_they_were():
    """Hundreds of training-mode forward passes run inside the check; the
    running statistics of every batch-norm layer are put back afterwards."""
    net = build_mlp([5, 6, 4], batchnorm=True, dtype=np.float64, seed=0)
    rng = np.random.default_rng(5)
    x, y = rng.normal(2.0, 3.0, (8, 5)), rng.integers(0, 4, 8)
    bn = net[1]
    bn.running_mean[...] = rng.standard_normal(6)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 6)
    before = bn.running_mean.copy(), bn.running_var.copy()
    errors = check_layer_gradients(net, softmax_cross_entropy, x, y)
    assert max(errors.values()) < 1e-6
    np.testing.assert_array_equal(bn.running_mean, before[0])  # tolerance: none
    np.testing.assert_array_equal(bn.running_var, before[1])


def _small_net_and_broken_copy():
    rng = np.random.default_rng(4)
    net = Sequential(Linear(4, 3, rng=rng, dtype=np.float64))
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    broken = Sequential(_BrokenLinear(4, 3, rng=np.random.default_rng(4), dtype=np.float64,
                                      error=1.1))  # a 10% error in one gradient
    return net, broken, x, y


def test_check_sampled_entries_passes_correct_and_flags_wrong_gradients():
    net, broken, x, y = _small_net_and_broken_copy()
    good = check_sampled_entries(net, softmax_cross_entropy, x, y, n=5, rng=np.random.default_rng(0))
    assert set(good) == {"0.W", "0.b"} and max(good.values()) < 1e-8  # float64, h = 1e-5
    bad = check_sampled_entries(broken, softmax_cross_entropy, x, y, n=5, rng=np.random.default_rng(0))
    assert bad["0.W"] > 1e-2 and bad["0.b"] < 1e-8
    with pytest.raises(ValueError, match="positive integer"):
        check_sampled_entries(net, softmax_cross_entropy, x, y, n=0, rng=np.random.default_rng(0))


def test_check_random_direction_matches_gradient_and_restores_parameters():
    net, broken, x, y = _small_net_and_broken_copy()
    before = [p.copy() for _, p, _ in net.params()]
    num, ana, err = check_random_direction(net, softmax_cross_entropy, x, y, rng=np.random.default_rng(1))
    assert err < 1e-8 and num == pytest.approx(ana, rel=1e-7)  # centred difference, h = 1e-5, float64
    assert all(np.array_equal(p, b) for (_, p, _), b in zip(net.params(), before))  # bit for bit
    _, _, err_bad = check_random_direction(broken, softmax_cross_entropy, x, y, rng=np.random.default_rng(1))
    assert err_bad > 1e-3  # a 10% error in dW moves <grad, u> by a few percent of its size


def test_relative_error_never_exceeds_one():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    assert relative_error(a, b) <= 1.0
    assert relative_error(a, -a) == 1.0 and relative_error(a, np.zeros_like(a)) == 1.0
