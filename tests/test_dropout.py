"""Tests of bnbook.layers.Dropout: the inverted-dropout forward pass in both
modes, the gradient (centred differences, float64), seeding and bad input."""

import numpy as np
import pytest

from bnbook.layers import Dropout
from bnbook.gradcheck import check_layer_gradients, numerical_gradient, relative_error
from bnbook.layers import Linear, ReLU, Sequential
from bnbook.losses import softmax_cross_entropy


def test_eval_mode_is_the_identity():
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    layer = Dropout(0.5, seed=0).eval()
    assert layer.forward(x) is x
    assert np.array_equal(layer.backward(x), x)


def test_training_mode_zeroes_a_fraction_p_and_scales_the_rest():
    p = 0.3
    x = np.ones((200, 500))
    out = Dropout(p, seed=1).forward(x)
    dropped = np.mean(out == 0)
    assert abs(dropped - p) < 0.01                       # 100,000 draws: std 0.0014
    assert np.allclose(out[out != 0], 1 / (1 - p), rtol=0, atol=1e-12)


def test_expected_output_equals_input():
    x = np.random.default_rng(2).standard_normal((4, 3))
    layer = Dropout(0.5, seed=3)
    mean = np.mean([layer.forward(x) for _ in range(20_000)], axis=0)
    assert np.allclose(mean, x, atol=0.05 * np.abs(x).max())   # std of the mean: |x| / 141


def test_backward_matches_numerical_gradient():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5))
    dout = rng.standard_normal((6, 5))

    def f(z):                                    # the same mask on every call
        return Dropout(0.4, seed=5).forward(z)

    layer = Dropout(0.4, seed=5)
    layer.forward(x)
    dx = layer.backward(dout)
    assert relative_error(dx, numerical_gradient(f, x, dout)) < 1e-7


def test_gradients_of_a_network_with_dropout_match_numerical_gradients():
    class FixedMaskDropout(Dropout):             # reseeded at every forward pass
        def forward(self, x):
            self.rng = np.random.default_rng(6)
            return super().forward(x)

    rng = np.random.default_rng(7)
    net = Sequential(Linear(4, 6, rng=rng, dtype=np.float64), ReLU(), FixedMaskDropout(0.5),
                     Linear(6, 3, rng=rng, dtype=np.float64))
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    errors = check_layer_gradients(net, softmax_cross_entropy, x, y)
    assert max(errors.values()) < 1e-7, errors


def test_same_seed_gives_same_masks_and_new_calls_give_new_masks():
    x = np.ones((10, 10))
    a, b = Dropout(0.5, seed=8), Dropout(0.5, seed=8)
    first = a.forward(x)
    assert np.array_equal(first, b.forward(x))
    assert not np.array_equal(first, a.forward(x))


def test_p_zero_passes_everything_through_in_training_mode():
    x = np.arange(6.0).reshape(2, 3)
    layer = Dropout(0.0)
    assert np.array_equal(layer.forward(x), x)
    assert np.array_equal(layer.backward(x), x)


def test_dtype_is_kept():
    x = np.ones((3, 4), dtype=np.float32)
    assert Dropout(0.5).forward(x).dtype == np.float32


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_probability_is_rejected(p):
    with pytest.raises(ValueError, match="drop probability"):
        Dropout(p)


def test_integer_input_is_rejected():
    with pytest.raises(ValueError, match="float"):
        Dropout(0.5).forward(np.ones((2, 2), dtype=np.int64))


def test_backward_with_wrong_shape_is_rejected():
    layer = Dropout(0.5)
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        layer.backward(np.ones((3, 3)))
