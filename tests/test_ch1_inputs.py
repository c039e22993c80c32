"""Tests for bnbook.chapters.ch1_inputs (chapter 1's helpers) and the two plots it uses."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnbook import plots  # noqa: E402
from bnbook.chapters.ch1_inputs import (LeastSquares, PreactivationRecorder, activation_conditioning,  # noqa: E402
                                        condition_number, distribution_drift, drift_network,
                                        fix_eigenvector_signs, gradient_descent, hidden_activations,
                                        make_correlated_features, make_linear_targets, make_scaled_features,
                                        make_teacher_data, min_max_scale, standardize, steps_bound, whiten,
                                        with_intercept)
from bnbook.models import build_mlp  # noqa: E402
from bnbook.training import fit  # noqa: E402


@pytest.fixture
def two_scales():
    X = make_scaled_features(200, ((1, 5), (10, 50)), seed=0)
    y = make_linear_targets(X, (2.0, 0.3), noise=0.5, seed=1)
    return X, y


def test_features_ranges_and_shapes():
    X = make_scaled_features(500, ((1, 5), (1000, 99999)), seed=3)
    assert X.shape == (500, 2)
    assert X[:, 0].min() >= 1 and X[:, 0].max() <= 5
    assert X[:, 1].min() >= 1000 and X[:, 1].max() <= 99999
    C = make_correlated_features(5000, means=(0, 0), stds=(1, 10), rho=0.6, seed=0)
    assert abs(np.corrcoef(C.T)[0, 1] - 0.6) < 0.03
    with pytest.raises(ValueError):
        make_correlated_features(rho=1.0)


def test_least_squares_matches_lstsq_and_gradient(two_scales):
    X, y = two_scales
    p = LeastSquares(X, y)
    w_ref = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(p.w_star, w_ref, rtol=1e-9)
    w = np.array([0.3, -0.2])
    assert p.loss(w) == pytest.approx(np.sum((X @ w - y) ** 2) / (2 * len(y)), rel=1e-12)
    np.testing.assert_allclose(p.grad(w), X.T @ (X @ w - y) / len(y), rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.linalg.norm(p.grad(p.w_star)), 0, atol=1e-9)
    # the grid version agrees with the pointwise one
    w1, w2 = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(0, 2, 3))
    grid = p.loss_grid(w1, w2)
    assert grid.shape == (3, 4)
    assert grid[1, 2] == pytest.approx(p.loss([w1[1, 2], w2[1, 2]]), rel=1e-12)


def test_standardizing_cuts_condition_number_and_steps(two_scales):
    X, y = two_scales
    raw = LeastSquares(X, y)
    Z, _, _ = standardize(X)
    std = LeastSquares(Z, y - y.mean())
    assert raw.kappa > 100 and std.kappa < 2
    assert raw.kappa == pytest.approx(condition_number(X), rel=1e-12)
    target = 1.001 * raw.min_loss
    r_raw = gradient_descent(raw, raw.best_lr, np.zeros(2), 100_000, target)
    r_std = gradient_descent(std, std.best_lr, np.zeros(2), 100_000, target)
    assert r_std.steps_to_target < 10 < 100 * r_std.steps_to_target < r_raw.steps_to_target
    # the theory bound holds
    for p, r in ((raw, r_raw), (std, r_std)):
        bound = steps_bound(p.kappa, p.loss(np.zeros(2)) - p.min_loss, target - p.min_loss)
        assert r.steps_to_target <= bound
    assert r_raw.path.shape == (r_raw.steps_to_target + 1, 2)


def test_gradient_descent_diverges_above_two_over_lambda_max(two_scales):
    X, y = two_scales
    p = LeastSquares(X, y)
    r = gradient_descent(p, 2.1 / p.lam_max, np.zeros(2), 5000)
    assert r.diverged and r.steps < 5000
    assert not gradient_descent(p, 1.9 / p.lam_max, np.zeros(2), 500).diverged


def test_preprocessing_properties():
    X = make_correlated_features(400, seed=2)
    Z, mean, std = standardize(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1, rtol=1e-12)
    S, lo, hi = min_max_scale(X)
    np.testing.assert_allclose(S.min(0), 0, atol=1e-15)
    np.testing.assert_allclose(S.max(0), 1, rtol=1e-15)
    for method in ("zca", "pca"):
        W, m, A = whiten(X, method)
        np.testing.assert_allclose(np.cov(W.T, bias=True), np.eye(2), atol=1e-10)
        np.testing.assert_allclose((X - m) @ A, W, rtol=1e-12, atol=1e-12)
    zca, _, A = whiten(X, "zca")
    np.testing.assert_allclose(A, A.T, atol=1e-12)  # ZCA's matrix is symmetric
    with pytest.raises(ValueError):
        whiten(X, "cholesky")
    with pytest.raises(ValueError):
        standardize(np.ones((5, 2)))


@pytest.mark.parametrize("standardized", [False, True])
def test_pca_whitening_ignores_the_sign_eigh_returns(monkeypatch, standardized):
    # Which sign of each eigenvector LAPACK returns depends on the machine
    # (OpenBLAS's Haswell kernel flips some). Pretend eigh returned every
    # sign combination: PCA whitening must give the same result (float64,
    # exact: only signs change).
    X = make_correlated_features(300, means=(3.0, 50_000.0), stds=(1.0, 20_000.0),
                                 rho=0.8, seed=0)
    if standardized:  # the principal axes are the diagonals: |entries| tie at 1/sqrt(2)
        X = standardize(X)[0]
    reference = whiten(X, "pca")
    true_eigh = np.linalg.eigh
    for flips in ([-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]):
        f = np.array(flips)
        monkeypatch.setattr(np.linalg, "eigh",
                            lambda a, f=f: (true_eigh(a)[0], true_eigh(a)[1] * f))
        for got, want in zip(whiten(X, "pca"), reference):
            np.testing.assert_array_equal(got, want)
    monkeypatch.undo()


def test_fixed_eigenvector_signs_put_the_largest_entry_positive():
    # float64; ties to 1e-6 relative: the first entry of the tie counts
    a = 1 / np.sqrt(2)
    U = np.array([[-0.6, a * (1 - 1e-15), 0.0], [0.8, -a, 0.0], [0.0, 0.0, -1.0]])
    F = fix_eigenvector_signs(U)
    np.testing.assert_array_equal(F, U * np.array([1.0, 1.0, -1.0]))
    np.testing.assert_array_equal(fix_eigenvector_signs(-U), F)
    with pytest.raises(ValueError, match="2-D"):
        fix_eigenvector_signs(np.ones(3))


def test_with_intercept_makes_preprocessing_equivalent():
    X = make_correlated_features(300, seed=0)
    y = make_linear_targets(X, (1.5, 1e-4), bias=2.0, seed=1)
    losses = [LeastSquares(with_intercept(F), y).min_loss
              for F in (X, min_max_scale(X)[0], standardize(X)[0], whiten(X)[0])]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-8)
    assert condition_number(whiten(X)[0], intercept=True) == pytest.approx(1.0, abs=1e-9)


def test_teacher_data_and_recorder():
    x, y = make_teacher_data(600, d=8, classes=3, seed=0)
    assert x.shape == (600, 8) and x.dtype == np.float32
    assert y.shape == (600,) and set(np.unique(y)) <= {0, 1, 2}
    net = drift_network((8, 16, 16, 3), seed=0)
    rec = PreactivationRecorder(x[:50])
    fit(net, (x[100:], y[100:], x[:100], y[:100]), epochs=2, lr=0.1, batch_size=50,
        progress=False, callback=rec, callback_every=5)
    assert rec.steps == [0, 5, 10, 15, 20]
    vals = rec.values
    assert [v.shape for v in vals] == [(5, 50, 16), (5, 50, 16)]
    # the first record is the untrained network's first pre-activation
    assert not np.allclose(vals[0][0], vals[0][-1], rtol=1e-3, atol=0)  # they moved by more than 0.1 %


def test_recorder_sees_batchnorm_outputs_and_leaves_the_model_alone():
    x, y = make_teacher_data(400, d=8, classes=3, seed=0)
    net = build_mlp([8, 16, 16, 3], batchnorm=True, seed=0, dtype=np.float64)
    rec = PreactivationRecorder(x[:100], where="nonlinearity", training=True, steps={0, 3, 6, 9})
    lin = PreactivationRecorder(x[:100])
    fit(net, (x[100:], y[100:], x[:100], y[:100]), epochs=1, lr=0.1, batch_size=50,
        progress=False, callback=lambda s, m: (rec(s, m), lin(s, m)), callback_every=1)
    assert rec.steps == [0, 3, 6] and lin.steps == list(range(7))  # 6 steps were made
    # the inputs of the ReLUs are batch-norm outputs on the probe's own statistics
    # (gamma, beta still near 1, 0 at step 0 at lr 0.1; float64, tolerances stated)
    for v in rec.values:
        np.testing.assert_allclose(v[0].mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(v[0].std(axis=0), 1, atol=1e-4)
    # ... whereas the Linear outputs are not normalized
    assert np.abs(lin.values[1][0].mean(axis=0)).max() > 0.1
    # measuring in training mode did not touch the running statistics: they saw
    # the 6 training batches only (momentum 0.1: 1 - 0.9**6 of the way from 0)
    bn = net.layers[1]
    assert np.abs(bn.running_mean).max() < 1.0 and not np.allclose(bn.running_mean, 0)
    before = bn.running_mean.copy()
    hidden_activations(net, x[:50], training=True)
    np.testing.assert_array_equal(bn.running_mean, before)
    with pytest.raises(ValueError, match="where"):
        PreactivationRecorder(x, where="relu")


def test_hidden_activations_and_their_conditioning():
    x = np.random.default_rng(0).standard_normal((500, 6))
    net = build_mlp([6, 10, 10, 2], seed=1, dtype=np.float64)
    acts = hidden_activations(net, x)
    assert [a.shape for a in acts] == [(500, 10), (500, 10)]
    # the first is ReLU(x W1 + b1), computed by hand
    lin = net.layers[0]
    np.testing.assert_allclose(acts[0], np.maximum(x @ lin.W + lin.b, 0), rtol=1e-12)
    unc, cen = activation_conditioning(acts[0])
    assert unc == pytest.approx(condition_number(acts[0]), rel=1e-12)
    # non-negative activations: the mean adds curvature, centring removes it
    assert unc > 1.5 * cen > 1.5
    # a dead (constant) unit makes both matrices singular
    dead = np.column_stack([acts[0], np.zeros(500)])
    assert activation_conditioning(dead) == (float("inf"), float("inf"))


def test_drift_measures_mean_shift_in_initial_stds_and_spread_factor():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2000, 3)) * np.array([1.0, 2.0, 4.0])  # (samples, units)
    # step 1: every unit shifted by half its std; step 2: every spread doubled
    values = np.stack([base, base + 0.5 * base.std(0), 2 * base])
    shift, spread = distribution_drift(values)
    np.testing.assert_allclose(shift, [0, 0.5, np.median(np.abs(base.mean(0)) / base.std(0))],
                               rtol=1e-12)
    np.testing.assert_allclose(spread, [1, 1, 2], rtol=1e-12)
    with pytest.raises(ValueError, match="steps, samples, units"):
        distribution_drift(base)


def test_plot_helpers_run(two_scales):
    X, y = two_scales
    p = LeastSquares(X, y)
    r = gradient_descent(p, 1.6 / p.lam_max, np.zeros(2), 200)
    ax = plots.plot_descent(p, r, title="t")
    assert ax.get_title() == "t"
    plt.close("all")
