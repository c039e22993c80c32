"""Tests of bnbook.batchnorm: the functional forward/backward, the staged
backward, the BatchNorm1d layer, folding, and input validation.

Everything that checks mathematics runs in float64; each assert states its
tolerance. Comparisons with PyTorch live in test_torch_parity.py.
"""

import hashlib

import numpy as np
import pytest

from bnbook.normalization import BatchNorm1d, batchnorm_eval, fold_batchnorm
from bnbook.batchnorm import (BNCache, batchnorm_backward, batchnorm_backward_staged, batchnorm_forward)
from bnbook.checks import NonFiniteError
from bnbook.gradcheck import numerical_gradient, relative_error
from bnbook.layers import Linear


def random_case(seed, m=None, d=None, scale=None, shift=None, eps=None):
    """A random float64 batch with non-trivial gamma/beta and an upstream gradient."""
    rng = np.random.default_rng(seed)
    m = m if m is not None else int(rng.integers(2, 40))
    d = d if d is not None else int(rng.integers(1, 12))
    scale = scale if scale is not None else 10.0 ** rng.uniform(-3, 3)
    shift = shift if shift is not None else rng.uniform(-100, 100)
    eps = eps if eps is not None else 10.0 ** rng.uniform(-8, -1)
    x = shift + scale * rng.standard_normal((m, d))
    gamma = rng.uniform(0.2, 3.0, d) * rng.choice([-1.0, 1.0], d)
    beta = rng.standard_normal(d)
    dout = rng.standard_normal((m, d))
    return x, gamma, beta, dout, eps


# --------------------------------------------------------------------------
# the worked example of the seed document, digit for digit
# --------------------------------------------------------------------------
WORKED_Z = np.array([[6, 3, 7], [4, 6, 9], [2, 6, 7], [4, 3, 7], [7, 2, 5], [4, 1, 7], [5, 1, 4]])
WORKED_Q = np.array([
    [0.95346238, -0.07293249, 0.28603871],
    [-0.38138495, 1.45864972, 1.62088604],
    [-1.71623228, 1.45864972, 0.28603871],
    [-0.38138495, -0.07293249, 0.28603871],
    [1.62088604, -0.58345989, -1.04880861],
    [-0.38138495, -1.09398729, 0.28603871],
    [0.28603871, -1.09398729, -1.71623228],
])
WORKED_MU = np.array([4.57142857, 3.14285714, 6.57142857])
WORKED_VAR = np.array([2.24489796, 3.83673469, 2.24489796])
WORKED_DQ = np.array([
    [1.32921217, -0.77003345, -0.31628036],
    [-0.99081039, -1.07081626, -1.43871328],
    [0.56441685, 0.29572189, -1.62640423],
    [0.2195652, 0.6788048, 1.88927273],
    [0.9615384, 0.1040112, -0.48116532],
    [0.85022853, 1.45342467, 1.05773744],
    [0.16556161, 0.51501838, -1.33693569],
])
WORKED_DGAMMA = np.array([1.87446152, -3.33807569, 0.75442823])
WORKED_DBETA = np.array([3.09971237, 1.20613122, -2.25248871])
WORKED_DZ = np.array([
    [0.42119623, -0.49884504, -0.01690198],
    [-0.888674, -0.27953285, -0.86205837],
    [0.38788918, 0.41812232, -0.89130965],
    [-0.0808407, 0.24082659, 1.45513635],
    [0.05651819, -0.17691132, -0.03093201],
    [0.34007894, 0.38771122, 0.90015001],
    [-0.23616783, -0.09137091, -0.55408435],
])


def worked_example_inputs():
    np.random.seed(42)
    z = np.random.randint(0, 10, size=(7, 3))
    np.random.seed(24)
    dq = np.random.randn(7, 3)
    return z, dq


def test_worked_example_inputs_are_the_printed_ones():
    z, dq = worked_example_inputs()
    assert np.array_equal(z, WORKED_Z)
    np.testing.assert_allclose(dq, WORKED_DQ, rtol=0, atol=1e-8)  # printed to 8 decimals


def test_worked_example_forward_reproduces_printed_q_mu_var():
    z, _ = worked_example_inputs()
    out, cache = batchnorm_forward(z, np.ones(3), np.zeros(3), eps=1e-6)
    np.testing.assert_allclose(out, WORKED_Q, rtol=0, atol=1e-7)
    np.testing.assert_allclose(cache.mu, WORKED_MU, rtol=0, atol=1e-7)
    np.testing.assert_allclose(cache.var, WORKED_VAR, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_staged])
def test_worked_example_backward_reproduces_printed_gradients(backward):
    z, dq = worked_example_inputs()
    _, cache = batchnorm_forward(z, np.ones(3), np.zeros(3), eps=1e-6)
    dz, dgamma, dbeta = backward(dq, cache)
    np.testing.assert_allclose(dgamma, WORKED_DGAMMA, rtol=0, atol=1e-7)
    np.testing.assert_allclose(dbeta, WORKED_DBETA, rtol=0, atol=1e-7)
    np.testing.assert_allclose(dz, WORKED_DZ, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------
# forward: definition, dtypes, cache
# --------------------------------------------------------------------------
def test_forward_matches_definition_and_fills_cache():
    x, gamma, beta, _, eps = random_case(0, m=9, d=4)
    out, cache = batchnorm_forward(x, gamma, beta, eps)
    mu = x.mean(axis=0)
    var = x.var(axis=0)  # biased
    expected = gamma * (x - mu) / np.sqrt(var + eps) + beta
    assert isinstance(cache, BNCache)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.mu, mu, rtol=1e-13)
    np.testing.assert_allclose(cache.var, var, rtol=1e-12)
    np.testing.assert_allclose(cache.xc, x - mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.std, np.sqrt(var + eps), rtol=1e-12)
    np.testing.assert_allclose(cache.inv_std * cache.std, 1.0, rtol=1e-14)
    np.testing.assert_allclose(cache.xhat, (x - mu) / np.sqrt(var + eps), rtol=1e-12, atol=1e-12)
    assert cache.eps == eps


def test_integer_input_is_computed_in_float64():
    z = np.arange(12).reshape(4, 3) ** 2
    assert np.issubdtype(z.dtype, np.integer)
    out, cache = batchnorm_forward(z, np.ones(3, dtype=np.float32), np.zeros(3, dtype=np.float32))
    assert out.dtype == np.float64
    assert cache.xhat.dtype == np.float64
    expected, _ = batchnorm_forward(z.astype(np.float64), np.ones(3), np.zeros(3))
    assert np.array_equal(out, expected)


def test_float32_input_stays_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    out, cache = batchnorm_forward(x, np.ones(5), np.zeros(5))  # float64 params
    assert out.dtype == np.float32
    dx, dgamma, dbeta = batchnorm_backward(rng.standard_normal((16, 5)).astype(np.float32), cache)
    assert dx.dtype == np.float32 and dgamma.dtype == np.float32 and dbeta.dtype == np.float32
    ref, _ = batchnorm_forward(x.astype(np.float64), np.ones(5), np.zeros(5))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)  # float32 rounding


def test_forward_does_not_modify_inputs():
    x, gamma, beta, _, eps = random_case(2, m=6, d=3)
    copies = x.copy(), gamma.copy(), beta.copy()
    batchnorm_forward(x, gamma, beta, eps)
    for a, b in zip((x, gamma, beta), copies):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("eps", [1e-5, 1e-1, 1.0])
def test_output_has_mean_zero_and_variance_var_over_var_plus_eps(seed, eps):
    x, _, _, _, _ = random_case(seed, m=25, d=6, scale=0.5)
    out, cache = batchnorm_forward(x, np.ones(6), np.zeros(6), eps)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=0), cache.var / (cache.var + eps), rtol=1e-11)


@pytest.mark.parametrize("seed", range(10))
def test_dx_sums_to_zero_and_is_orthogonal_to_xhat(seed):
    # eps far below the variance: x-hat has unit variance and dx is orthogonal to it
    scale = 10.0 ** (seed / 2 - 2)  # 1e-2 .. 1e2.5
    eps = 1e-14 * scale**2
    x, gamma, beta, dout, _ = random_case(seed, scale=scale, shift=3 * scale)
    _, cache = batchnorm_forward(x, gamma, beta, eps)
    dx, _, _ = batchnorm_backward(dout, cache)
    # tolerance relative to the size of the terms that cancel
    mag = np.abs(dx).sum(axis=0) * np.abs(cache.xhat).max(axis=0)
    assert np.all(np.abs(dx.sum(axis=0)) <= 1e-12 * np.abs(dx).sum(axis=0))
    assert np.all(np.abs((dx * cache.xhat).sum(axis=0)) <= 1e-10 * mag)


@pytest.mark.parametrize("seed", range(10))
def test_dx_sums_to_zero_and_its_xhat_component_is_the_eps_term(seed):
    # For any eps: sum(dx) = 0 and sum(dx * xhat) = gamma * dgamma * eps / (var + eps) / std
    x, gamma, beta, dout, eps = random_case(seed)
    _, cache = batchnorm_forward(x, gamma, beta, eps)
    dx, dgamma, _ = batchnorm_backward(dout, cache)
    mag = np.abs(dx).sum(axis=0) * np.abs(cache.xhat).max(axis=0)
    assert np.all(np.abs(dx.sum(axis=0)) <= 1e-12 * np.abs(dx).sum(axis=0))
    expected = gamma * dgamma * cache.inv_std * eps / (cache.var + eps)
    assert np.all(np.abs((dx * cache.xhat).sum(axis=0) - expected) <= 1e-10 * mag)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("a, b", [(3.0, -7.0), (1e-3, 5.0), (250.0, 1e4)])
def test_output_unchanged_when_a_feature_is_scaled_and_shifted(seed, a, b):
    x, gamma, beta, _, _ = random_case(seed, m=20, d=4, scale=1.0, shift=0.0)
    y = x.copy()
    y[:, 2] = a * y[:, 2] + b
    # With eps negligible next to the variance the output is unchanged ...
    out_x, _ = batchnorm_forward(x, gamma, beta, eps=1e-14)
    out_y, _ = batchnorm_forward(y, gamma, beta, eps=1e-14)
    np.testing.assert_allclose(out_y, out_x, rtol=0, atol=1e-7)
    # ... and exactly: BN(a x + b; eps) = BN(x; eps / a^2) in the scaled feature.
    eps = 1e-3
    out_y, _ = batchnorm_forward(y, gamma, beta, eps=eps)
    ref, _ = batchnorm_forward(x[:, 2:3], gamma[2:3], beta[2:3], eps=eps / a**2)
    np.testing.assert_allclose(out_y[:, 2:3], ref, rtol=0, atol=1e-9)
    out_x, _ = batchnorm_forward(x, gamma, beta, eps=eps)
    np.testing.assert_array_equal(np.delete(out_y, 2, axis=1), np.delete(out_x, 2, axis=1))


def test_constant_feature_gives_beta():
    x = np.column_stack([np.full(5, 3.0), np.arange(5.0)])
    out, _ = batchnorm_forward(x, np.array([2.0, 1.0]), np.array([0.5, 0.0]), eps=1e-5)
    np.testing.assert_allclose(out[:, 0], 0.5, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------
# backward: numerical gradients, staged vs compact
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_backward_matches_numerical_gradient(seed):
    x, gamma, beta, dout, _ = random_case(seed, m=8, d=5, scale=2.0, shift=1.0, eps=1e-5)
    _, cache = batchnorm_forward(x, gamma, beta, 1e-5)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)

    num_dx = numerical_gradient(lambda v: batchnorm_forward(v, gamma, beta, 1e-5)[0], x, dout)
    num_dgamma = numerical_gradient(lambda g: batchnorm_forward(x, g, beta, 1e-5)[0], gamma, dout)
    num_dbeta = numerical_gradient(lambda b: batchnorm_forward(x, gamma, b, 1e-5)[0], beta, dout)
    assert relative_error(dx, num_dx) < 1e-7
    assert relative_error(dgamma, num_dgamma) < 1e-7
    assert relative_error(dbeta, num_dbeta) < 1e-7


def test_staged_backward_matches_numerical_gradient():
    x, gamma, beta, dout, _ = random_case(11, m=6, d=3, scale=1.0, shift=0.0)
    _, cache = batchnorm_forward(x, gamma, beta, 1e-3)
    dx, dgamma, dbeta = batchnorm_backward_staged(dout, cache)
    num_dx = numerical_gradient(lambda v: batchnorm_forward(v, gamma, beta, 1e-3)[0], x, dout)
    num_dgamma = numerical_gradient(lambda g: batchnorm_forward(x, g, beta, 1e-3)[0], gamma, dout)
    assert relative_error(dx, num_dx) < 1e-7
    assert relative_error(dgamma, num_dgamma) < 1e-7
    assert relative_error(dbeta, dout.sum(axis=0)) < 1e-15


def gradient_scales(dout, cache):
    """The size of the terms each gradient is a sum of: errors are measured
    against these, not against the result, which can be a near-total
    cancellation (e.g. dx of a batch of two is O(eps / var))."""
    return (np.max(np.abs(cache.gamma * cache.inv_std)) * np.max(np.abs(dout)),
            np.max(np.abs(dout * cache.xhat).sum(axis=0)),
            np.max(np.abs(dout).sum(axis=0)))


def test_staged_and_compact_backward_agree_over_many_random_cases():
    """300 random cases: batch 2..39, 1..11 features, scales 1e-3..1e3, shifts up
    to 100, eps 1e-8..1e-1, gamma of both signs. Tolerance 1e-10 relative to the
    size of the terms of each gradient (see gradient_scales)."""
    for seed in range(300):
        x, gamma, beta, dout, eps = random_case(1000 + seed)
        _, cache = batchnorm_forward(x, gamma, beta, eps)
        compact = batchnorm_backward(dout, cache)
        staged = batchnorm_backward_staged(dout, cache)
        scales = gradient_scales(dout, cache)
        for name, c, s, scale in zip(("dx", "dgamma", "dbeta"), compact, staged, scales):
            assert c.shape == s.shape == (cache.x.shape if name == "dx" else gamma.shape)
            err = np.max(np.abs(c - s))
            assert err <= 1e-10 * scale, (seed, name, err, scale)


def test_staged_and_compact_backward_agree_hypothesis():
    # hypothesis is in requirements.txt: a missing install fails here, never skips
    import hypothesis
    from hypothesis import strategies as st

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                         database=None)
    @hypothesis.given(
        m=st.integers(2, 30), d=st.integers(1, 8),
        log_scale=st.floats(-4, 4), shift=st.floats(-1e3, 1e3),
        log_eps=st.floats(-10, 0), seed=st.integers(0, 2**32 - 1),
    )
    def check(m, d, log_scale, shift, log_eps, seed):
        x, gamma, beta, dout, eps = random_case(seed, m, d, 10.0**log_scale, shift, 10.0**log_eps)
        _, cache = batchnorm_forward(x, gamma, beta, eps)
        compact = batchnorm_backward(dout, cache)
        staged = batchnorm_backward_staged(dout, cache)
        for c, s, scale in zip(compact, staged, gradient_scales(dout, cache)):
            assert np.max(np.abs(c - s)) <= 1e-10 * scale

    check()


def test_backward_with_integer_input_is_float64():
    z, dq = worked_example_inputs()
    _, cache = batchnorm_forward(z, np.ones(3), np.zeros(3), eps=1e-6)
    dx, _, _ = batchnorm_backward(dq, cache)
    assert dx.dtype == np.float64


# --------------------------------------------------------------------------
# eval-mode function
# --------------------------------------------------------------------------
def test_batchnorm_eval_matches_definition_and_accepts_one_sample():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 4))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    out = batchnorm_eval(x, gamma, beta, mean, var, eps=1e-5)
    np.testing.assert_allclose(out, gamma * (x - mean) / np.sqrt(var + 1e-5) + beta,
                               rtol=1e-13, atol=1e-14)


def test_batchnorm_eval_with_batch_statistics_equals_training_forward():
    x, gamma, beta, _, eps = random_case(4, m=12, d=5)
    out, cache = batchnorm_forward(x, gamma, beta, eps)
    out_eval = batchnorm_eval(x, gamma, beta, cache.mu, cache.var, eps)
    np.testing.assert_allclose(out_eval, out, rtol=0, atol=1e-9 * np.abs(out).max())


# --------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------
def test_layer_initial_state():
    bn = BatchNorm1d(4)
    assert bn.training
    assert bn.gamma.dtype == np.float32
    assert np.array_equal(bn.gamma, np.ones(4)) and np.array_equal(bn.beta, np.zeros(4))
    assert np.array_equal(bn.running_mean, np.zeros(4))
    assert np.array_equal(bn.running_var, np.ones(4))
    assert [name for name, _, _ in bn.params()] == ["gamma", "beta"]
    assert bn.params()[0][1] is bn.gamma and bn.params()[0][2] is bn.dgamma


def test_layer_running_statistics_follow_torch_update_rule():
    rng = np.random.default_rng(5)
    bn = BatchNorm1d(3, eps=1e-5, momentum=0.2, dtype=np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(6):
        m = 4 + step
        x = rng.normal(2.0, 3.0, (m, 3))
        bn.forward(x)
        rm = 0.8 * rm + 0.2 * x.mean(axis=0)
        rv = 0.8 * rv + 0.2 * x.var(axis=0, ddof=1)  # unbiased
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-13)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-13)


def test_layer_training_forward_uses_biased_batch_variance_and_backward_stores_grads():
    x, gamma, beta, dout, _ = random_case(6, m=10, d=4)
    bn = BatchNorm1d(4, eps=1e-3, dtype=np.float64)
    bn.gamma[...] = gamma
    bn.beta[...] = beta
    out = bn.forward(x)
    ref, cache = batchnorm_forward(x, gamma, beta, 1e-3)
    np.testing.assert_array_equal(out, ref)
    dx = bn.backward(dout)
    rdx, rdgamma, rdbeta = batchnorm_backward(dout, cache)
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(bn.dgamma, rdgamma)
    np.testing.assert_array_equal(bn.dbeta, rdbeta)
    # the gradients are stored in the arrays params() hands out
    assert bn.params()[0][2] is bn.dgamma and bn.params()[1][2] is bn.dbeta


def test_layer_eval_uses_running_statistics_and_leaves_them_unchanged():
    rng = np.random.default_rng(7)
    bn = BatchNorm1d(3, dtype=np.float64)
    for _ in range(3):
        bn.forward(rng.normal(1.0, 2.0, (8, 3)))
    bn.gamma[...] = [0.5, 2.0, -1.0]
    bn.beta[...] = [0.1, -0.2, 0.3]
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    bn.eval()
    assert not bn.training
    x = rng.standard_normal((5, 3))
    out = bn.forward(x)
    np.testing.assert_allclose(out, bn.gamma * (x - rm) / np.sqrt(rv + bn.eps) + bn.beta,
                               rtol=1e-13, atol=1e-14)
    assert np.array_equal(bn.running_mean, rm) and np.array_equal(bn.running_var, rv)
    # eval output of a row does not depend on the rest of the batch
    np.testing.assert_allclose(bn.forward(x[:1]), out[:1], rtol=1e-15, atol=0)
    bn.train()
    assert bn.training


def test_layer_batch_of_one_works_in_eval_mode():
    bn = BatchNorm1d(4).eval()
    out = bn.forward(np.ones((1, 4), dtype=np.float32))
    assert out.shape == (1, 4)
    np.testing.assert_allclose(out, 1.0 / np.sqrt(1.0 + 1e-5), rtol=1e-6)


def test_layer_backward_without_training_forward_raises():
    bn = BatchNorm1d(2)
    with pytest.raises(RuntimeError, match="forward"):
        bn.backward(np.ones((3, 2)))
    bn.eval().forward(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        bn.backward(np.ones((3, 2)))


# --------------------------------------------------------------------------
# the same bits as the book's saved outputs
# --------------------------------------------------------------------------
# SHA-256 (first 16 hex digits) of one float32 training step and one eval
# forward of the layer, as computed by the implementation that produced the
# chapters' saved outputs.
# The step is elementwise IEEE arithmetic and sums over the batch axis in row
# order, so its bits do not depend on the machine. A change of rounding (a
# reordered formula, a fused multiply, another summation) changes the digest.
SAME_BITS = {
    (100, 300): "0aed6ccb93a49f27",
    (100, 50): "4580f1a3dec9f3fd",
    (60, 100): "6d79e508e2f595e3",
    (256, 1024): "831acafdc4f5c8a7",
}


@pytest.mark.parametrize("m, d", list(SAME_BITS))
def test_layer_step_keeps_the_bits_of_the_saved_chapters(m, d):
    rng = np.random.default_rng(m * 1000 + d)
    x = rng.normal(0.5, 2.0, (m, d)).astype(np.float32)
    dout = rng.standard_normal((m, d)).astype(np.float32)
    layer = BatchNorm1d(d)
    layer.gamma[...] = rng.uniform(0.5, 2.0, d)
    layer.beta[...] = rng.standard_normal(d)
    out = layer.forward(x)
    dx = layer.backward(dout)
    ev = layer.eval().forward(x)
    h = hashlib.sha256()
    for a in (out, dx, layer.dgamma, layer.dbeta, layer.running_mean, layer.running_var, ev):
        h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest()[:16] == SAME_BITS[(m, d)]  # tolerance: none, the same bits


@pytest.mark.parametrize("m, d", [(100, 300), (100, 50), (60, 100), (5, 1), (2, 7), (256, 1024)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_step_is_the_functional_forward_and_backward(m, d, dtype):
    """The layer adds running statistics and buffers, nothing else: its output
    and gradients are those of batchnorm_forward / batchnorm_backward, bit for
    bit, and what it returned from one step is not overwritten by the next."""
    rng = np.random.default_rng(12)
    layer = BatchNorm1d(d, dtype=dtype)
    layer.gamma[...] = rng.uniform(0.5, 2.0, d)
    layer.beta[...] = rng.standard_normal(d)
    returned = []
    for _ in range(2):
        x = rng.normal(1.0, 2.0, (m, d)).astype(dtype)
        dout = rng.standard_normal((m, d)).astype(dtype)
        out, cache = batchnorm_forward(x, layer.gamma, layer.beta, layer.eps)
        dx, dgamma, dbeta = batchnorm_backward(dout, cache)
        got_out, got_dx = layer.forward(x), layer.backward(dout)
        np.testing.assert_array_equal(got_out, out)  # tolerance: none
        np.testing.assert_array_equal(got_dx, dx)
        np.testing.assert_array_equal(layer.dgamma, dgamma)
        np.testing.assert_array_equal(layer.dbeta, dbeta)
        returned.append((got_out, got_dx, out.copy(), dx.copy()))
    got_out, got_dx, out, dx = returned[0]
    np.testing.assert_array_equal(got_out, out)  # step 2 left step 1's results alone
    np.testing.assert_array_equal(got_dx, dx)


@pytest.mark.parametrize("layer_dtype, x_dtype", [(np.float32, np.float64),
                                                  (np.float64, np.float32)])
@pytest.mark.parametrize("training", [True, False])
def test_layer_refuses_a_batch_of_another_dtype_naming_both(layer_dtype, x_dtype, training):
    bn = BatchNorm1d(3, dtype=layer_dtype).train(training)
    before = bn.running_var.copy()
    with pytest.raises(ValueError) as err:
        bn.forward(np.ones((4, 3), dtype=x_dtype))
    assert np.dtype(layer_dtype).name in str(err.value) and np.dtype(x_dtype).name in str(err.value)
    np.testing.assert_array_equal(bn.running_var, before)  # nothing was updated
    assert bn.running_var.dtype == layer_dtype


def test_non_finite_input_raises_non_finite_error_in_both_modes():
    x = np.ones((4, 3), dtype=np.float32)
    x[1, 2] = np.nan
    for training in (True, False):
        with pytest.raises(NonFiniteError, match=r"non-finite.*\[(2|1)\]"):
            BatchNorm1d(3).train(training).forward(x)
    assert issubclass(NonFiniteError, ValueError)


# --------------------------------------------------------------------------
# folding into the preceding linear layer
# --------------------------------------------------------------------------
def trained_linear_bn(dtype, bias, seed=0, d_in=6, d=5):
    rng = np.random.default_rng(seed)
    lin = Linear(d_in, d, bias=bias, rng=rng, dtype=dtype)
    if bias:
        lin.b[...] = rng.standard_normal(d)
    bn = BatchNorm1d(d, momentum=0.3, dtype=dtype)
    for _ in range(5):  # non-trivial running statistics
        bn.forward(lin.forward(rng.normal(0.7, 2.0, (32, d_in)).astype(dtype)))
    bn.gamma[...] = rng.uniform(0.5, 2.0, d) * rng.choice([-1, 1], d)
    bn.beta[...] = rng.standard_normal(d)
    bn.eval()
    x = rng.normal(0.7, 2.0, (50, d_in)).astype(dtype)
    return lin, bn, x


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_folding_gives_the_outputs_of_linear_then_eval_batchnorm(dtype, tol, bias):
    lin, bn, x = trained_linear_bn(dtype, bias)
    assert np.all(np.abs(bn.running_mean) > 1e-2)  # the statistics are non-trivial
    assert np.all(np.abs(bn.running_var - 1.0) > 1e-2)
    ref = bn.forward(lin.forward(x))
    w, b = fold_batchnorm(lin.W, lin.b, bn)
    assert w.shape == lin.W.shape and b.shape == (lin.out_features,)
    assert w.dtype == dtype and b.dtype == dtype
    out = x @ w + b
    rel = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
    assert rel <= tol, rel


def test_folding_rejects_weight_of_wrong_shape():
    bn = BatchNorm1d(3)
    with pytest.raises(ValueError, match="weight"):
        fold_batchnorm(np.ones((4, 5)), None, bn)


# --------------------------------------------------------------------------
# bad input: every one raises a ValueError naming the problem
# --------------------------------------------------------------------------
def good(m=5, d=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((m, d)), np.ones(d), np.zeros(d)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4), ()])
def test_forward_rejects_x_not_2d(shape):
    _, gamma, beta = good()
    with pytest.raises(ValueError, match="2-D"):
        batchnorm_forward(np.ones(shape), gamma, beta)


@pytest.mark.parametrize("name", ["gamma", "beta"])
@pytest.mark.parametrize("shape", [(4,), (1, 3), (3, 1), ()])
def test_forward_rejects_gamma_beta_of_wrong_shape(name, shape):
    x, gamma, beta = good()
    kwargs = {"gamma": gamma, "beta": beta, name: np.ones(shape)}
    with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\)"):
        batchnorm_forward(x, **kwargs)


# inf - inf in the centring step warns on the way to the ValueError
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_forward_rejects_non_finite_x(bad):
    x, gamma, beta = good()
    x[2, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        batchnorm_forward(x, gamma, beta)


@pytest.mark.parametrize("name", ["gamma", "beta"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_forward_rejects_non_finite_gamma_beta(name, bad):
    x, gamma, beta = good()
    params = {"gamma": gamma, "beta": beta}
    params[name][1] = bad
    with pytest.raises(ValueError, match=rf"{name} contains non-finite"):
        batchnorm_forward(x, **params)


@pytest.mark.parametrize("eps", [0.0, -1e-5, np.nan, np.inf])
def test_forward_rejects_eps_not_positive(eps):
    x, gamma, beta = good()
    with pytest.raises(ValueError, match="eps must be a positive"):
        batchnorm_forward(x, gamma, beta, eps=eps)


def test_forward_rejects_batch_of_one_in_training_mode():
    x, gamma, beta = good(m=1)
    with pytest.raises(ValueError, match="batch of at least 2"):
        batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="batch of at least 2"):
        BatchNorm1d(3, dtype=x.dtype).forward(x)


@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_staged])
@pytest.mark.parametrize("shape", [(5, 4), (4, 3), (15,), (3, 5)])
def test_backward_rejects_dout_of_another_shape(backward, shape):
    x, gamma, beta = good()
    _, cache = batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="dout must have the shape of x"):
        backward(np.ones(shape), cache)


@pytest.mark.parametrize("shape", [(5, 4), (5,), (5, 3, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_layer_rejects_wrong_feature_count(shape, training):
    bn = BatchNorm1d(3).train(training)
    with pytest.raises(ValueError, match=r"BatchNorm1d's input x must be 2-D of shape \(m, 3\)"):
        bn.forward(np.ones(shape, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_layer_rejects_non_finite_x_in_eval_mode(bad):
    bn = BatchNorm1d(3).eval()
    x = np.ones((4, 3), dtype=np.float32)
    x[0, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        bn.forward(x)


def test_layer_rejects_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm1d(0)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm1d(3, eps=0.0)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm1d(3, momentum=1.5)


def test_eval_function_rejects_bad_statistics():
    x, gamma, beta = good()
    with pytest.raises(ValueError, match="var must have shape"):
        batchnorm_eval(x, gamma, beta, np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="mean contains non-finite"):
        batchnorm_eval(x, gamma, beta, np.array([0.0, np.nan, 0.0]), np.ones(3))
    with pytest.raises(ValueError, match="eps"):
        batchnorm_eval(x, gamma, beta, np.zeros(3), np.ones(3), eps=-1.0)
