"""Tests of bnbook.normalization: forward, backward (float64 gradient check), layer."""
import numpy as np
import pytest

from bnbook import Linear, ReLU, Sequential, numerical_gradient, relative_error
from bnbook.normalization import LayerNorm, layernorm_backward, layernorm_forward
from bnbook.losses import softmax_cross_entropy


def test_forward_normalizes_each_sample():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(6, 8))
    out, _ = layernorm_forward(x, np.ones(8), np.zeros(8), eps=1e-12)
    np.testing.assert_allclose(out.mean(axis=1), 0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=1), 1, rtol=0, atol=1e-9)
    # one sample alone gives the same row: no dependence on the batch
    single, _ = layernorm_forward(x[2:3], np.ones(8), np.zeros(8), eps=1e-12)
    assert np.array_equal(single[0], out[2])


def test_gamma_beta_and_dtype():
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    g, b = np.arange(1, 6, dtype=np.float32), np.full(5, 0.5, dtype=np.float32)
    out, (norm, _) = layernorm_forward(x, g, b)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, norm.xhat * g + b, rtol=1e-15, atol=0)  # the same products


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_check_float64(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=(5, 7))
    gamma, beta = rng.normal(size=7), rng.normal(size=7)
    dout = rng.normal(size=(5, 7))
    _, cache = layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)
    assert relative_error(dx, numerical_gradient(
        lambda z: layernorm_forward(z, gamma, beta)[0], x, dout)) < 1e-7
    assert relative_error(dgamma, numerical_gradient(
        lambda g: layernorm_forward(x, g, beta)[0], gamma.copy(), dout)) < 1e-7
    assert relative_error(dbeta, numerical_gradient(
        lambda b: layernorm_forward(x, gamma, b)[0], beta.copy(), dout)) < 1e-7


def test_layer_in_a_network_batch_of_one():
    net = Sequential(Linear(4, 6, rng=0, dtype=np.float64), LayerNorm(6, dtype=np.float64),
                     ReLU(), Linear(6, 3, rng=1, dtype=np.float64))
    x = np.random.default_rng(2).normal(size=(1, 4))
    loss, dlogits = softmax_cross_entropy(net.forward(x), np.array([1]))
    net.backward(dlogits)
    ln = net[1]
    assert ln.dgamma.shape == (6,) and np.all(np.isfinite(ln.dgamma))
    assert [n for n, _, _ in net.params()] == ["0.W", "0.b", "1.gamma", "1.beta", "3.W", "3.b"]
    net.eval()
    assert np.array_equal(net.forward(x), net.train().forward(x))


def test_validation():
    with pytest.raises(ValueError, match="2-D"):
        layernorm_forward(np.ones(4), np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 features"):
        layernorm_forward(np.ones((3, 1)), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="gamma"):
        layernorm_forward(np.ones((3, 4)), np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match="eps"):
        layernorm_forward(np.ones((3, 4)), np.ones(4), np.zeros(4), eps=0)
    with pytest.raises(ValueError, match="non-finite"):
        layernorm_forward(np.array([[1.0, np.nan]]), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        LayerNorm(4).forward(np.ones((2, 5)))
    with pytest.raises(RuntimeError):
        LayerNorm(4).backward(np.ones((2, 4)))
    with pytest.raises(ValueError):
        LayerNorm(1)
