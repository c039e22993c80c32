"""Linear regression by gradient descent, and the drifting network of chapter 1.

Chapter 1 ("why normalize at all") needs three things, all small:

* data whose two features live on very different scales, the least-squares
  loss of a linear model on them (also on a grid, for contour plots), and
  gradient descent with its whole path recorded;
* the preprocessing steps that fix the scales: standardization, min-max
  scaling and whitening (ZCA or PCA), plus the condition number that says
  how much they help;
* a small deep network, trained with :func:`bnbook.training.fit`, whose hidden
  pre-activations are recorded on a fixed probe batch while it trains.

Shapes: a data matrix ``X`` is ``(n, d)`` (n samples, d features), targets
``y`` are ``(n,)``, a weight vector ``w`` is ``(d,)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import Linear, ReLU, Sigmoid, in_mode, running_stats_kept
from ..models import build_mlp

__all__ = [
    "make_scaled_features",
    "make_correlated_features",
    "make_linear_targets",
    "LeastSquares",
    "DescentResult",
    "gradient_descent",
    "steps_bound",
    "condition_number",
    "standardize",
    "min_max_scale",
    "whiten",
    "fix_eigenvector_signs",
    "with_intercept",
    "two_scale_problems",
    "make_teacher_data",
    "PreactivationRecorder",
    "drift_network",
    "hidden_activations",
    "activation_conditioning",
    "distribution_drift",
]


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def make_scaled_features(n: int = 200, ranges=((1.0, 5.0), (10.0, 50.0)), seed=0) -> np.ndarray:
    """Independent uniform features, feature ``j`` drawn from ``ranges[j]``.

    Returns ``X`` of shape ``(n, len(ranges))``, float64.
    """
    rng = np.random.default_rng(seed)
    lo = np.array([r[0] for r in ranges], dtype=float)
    hi = np.array([r[1] for r in ranges], dtype=float)
    return lo + (hi - lo) * rng.random((n, len(ranges)))


def make_correlated_features(n: int = 300, means=(3.0, 50_000.0), stds=(1.0, 20_000.0),
                             rho: float = 0.8, seed=0) -> np.ndarray:
    """Two jointly Gaussian features with the given means, standard deviations
    and correlation ``rho``. Returns ``X`` of shape ``(n, 2)``."""
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (-1, 1); got {rho!r}")
    rng = np.random.default_rng(seed)
    s = np.asarray(stds, dtype=float)
    cov = np.array([[1.0, rho], [rho, 1.0]]) * np.outer(s, s)
    return rng.multivariate_normal(np.asarray(means, dtype=float), cov, size=n)


def make_linear_targets(X, w, noise: float = 0.5, bias: float = 0.0, seed=1) -> np.ndarray:
    """Targets ``y = X @ w + bias + noise * N(0, 1)``, shape ``(n,)``."""
    X = np.asarray(X, dtype=float)
    rng = np.random.default_rng(seed)
    return X @ np.asarray(w, dtype=float) + bias + noise * rng.standard_normal(len(X))


def with_intercept(X) -> np.ndarray:
    """``X`` (n, d) with a first column of ones appended in front: (n, d + 1)."""
    X = np.asarray(X, dtype=float)
    return np.column_stack([np.ones(len(X)), X])


# --------------------------------------------------------------------------
# the least-squares problem
# --------------------------------------------------------------------------
class LeastSquares:
    """The loss ``L(w) = ||X w - y||^2 / (2 n)`` of a linear model without intercept.

    (Give ``X`` a column of ones, :func:`with_intercept`, for a model with one.)

    ``L`` is a quadratic: ``L(w) = w^T H w / 2 - g^T w + c`` with the Hessian
    ``H = X^T X / n`` (d, d), ``g = X^T y / n`` (d,) and ``c = y^T y / (2 n)``.
    Everything gradient descent does on it is governed by the eigenvalues of
    ``H``.
    """

    def __init__(self, X, y):
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (n, d) and y (n,); got {X.shape} and {y.shape}")
        n = X.shape[0]
        self.X, self.y = X, y
        self.H = X.T @ X / n
        self.g = X.T @ y / n
        self.c = float(y @ y) / (2 * n)
        self.eigenvalues = np.linalg.eigvalsh(self.H)  # ascending
        self.w_star = np.linalg.solve(self.H, self.g)
        self.min_loss = float(self.loss(self.w_star))

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def lam_min(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def lam_max(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def kappa(self) -> float:
        """Condition number ``lambda_max / lambda_min`` of the Hessian."""
        return self.lam_max / self.lam_min

    @property
    def best_lr(self) -> float:
        """The constant step size ``2 / (lambda_min + lambda_max)``: the one with
        the best worst-case guarantee, because it minimizes the largest
        per-step contraction ``max_i |1 - lr * lambda_i|`` over the Hessian's
        eigenvalues (another step can still take fewer steps from a given start)."""
        return 2.0 / (self.lam_min + self.lam_max)

    def loss(self, w) -> np.ndarray:
        """Loss at ``w`` of shape ``(..., d)``; returns shape ``(...)``."""
        w = np.asarray(w, dtype=float)
        quad = np.einsum("...i,ij,...j->...", w, self.H, w)
        return 0.5 * quad - w @ self.g + self.c

    def loss_grid(self, w1, w2) -> np.ndarray:
        """Loss on a grid for d = 2: ``w1``, ``w2`` of equal shape -> that shape."""
        if self.d != 2:
            raise ValueError("loss_grid needs a problem with exactly two weights")
        return self.loss(np.stack([w1, w2], axis=-1))

    def grad(self, w) -> np.ndarray:
        """Gradient ``H w - g``, shape ``(d,)``."""
        return self.H @ np.asarray(w, dtype=float) - self.g


@dataclass
class DescentResult:
    """A gradient-descent run: ``path`` (k + 1, d) iterates including the start,
    ``losses`` (k + 1,), ``steps_to_target`` (first step whose loss is at or
    below the target, None if never) and ``diverged``."""

    path: np.ndarray
    losses: np.ndarray
    steps_to_target: int | None
    diverged: bool

    @property
    def steps(self) -> int:
        return len(self.losses) - 1


def gradient_descent(problem: LeastSquares, lr: float, w0, max_steps: int = 10_000,
                     target_loss: float | None = None) -> DescentResult:
    """Full-batch gradient descent ``w <- w - lr * grad(w)`` from ``w0`` (d,).

    Stops at ``target_loss`` (if given), after ``max_steps`` steps, or when the
    loss exceeds 1e6 times its starting value (divergence).
    """
    w = np.array(w0, dtype=float)
    path, losses = [w.copy()], [float(problem.loss(w))]
    hit = 0 if target_loss is not None and losses[0] <= target_loss else None
    diverged = False
    for k in range(1, max_steps + 1):
        if hit is not None:
            break
        w = w - lr * problem.grad(w)
        loss = float(problem.loss(w))
        path.append(w.copy())
        losses.append(loss)
        if not np.isfinite(loss) or loss > 1e6 * max(losses[0], 1e-300):
            diverged = True
            break
        if target_loss is not None and loss <= target_loss:
            hit = k
    return DescentResult(np.array(path), np.array(losses), hit, diverged)


def steps_bound(kappa: float, excess0: float, target_excess: float) -> int:
    """Steps after which gradient descent with the best constant step
    ``2 / (lambda_min + lambda_max)`` is guaranteed to have brought the excess
    loss ``L - L*`` from ``excess0`` down to ``target_excess``.

    Each step multiplies the excess by at most ``rho^2`` with
    ``rho = (kappa - 1) / (kappa + 1)``; for large kappa this is about
    ``(kappa / 4) * ln(excess0 / target_excess)`` steps.
    """
    if target_excess >= excess0:
        return 0
    rho = (kappa - 1.0) / (kappa + 1.0)
    if rho <= 0.0:
        return 1
    return int(np.ceil(np.log(excess0 / target_excess) / (-2.0 * np.log(rho))))


def condition_number(X, intercept: bool = False) -> float:
    """Condition number of the least-squares Hessian ``X^T X / n`` of ``X`` (n, d);
    with ``intercept=True`` a column of ones is included (a model with a bias).
    A Hessian that is singular to rounding (smallest eigenvalue at most 1e-13
    times the largest) has condition number ``inf``."""
    X = with_intercept(X) if intercept else np.asarray(X, dtype=float)
    ev = np.linalg.eigvalsh(X.T @ X / len(X))
    if ev[0] <= 1e-13 * ev[-1]:  # singular to rounding: a constant (e.g. dead) feature
        return float("inf")
    return float(ev[-1] / ev[0])


def two_scale_problems(ratio: float = 10.0, n: int = 200, noise: float = 0.5, seed=0):
    """The running example of chapter 1 at a given feature scale ratio.

    ``x1 ~ U(1, 5)`` and ``x2 ~ U(ratio, 5 * ratio)``; targets
    ``y = 2 x1 + (3 / ratio) x2 + noise``. Over their ranges ``x1`` moves
    ``y`` by 8 and ``x2`` by 12 at every ratio: both features matter, on
    comparable terms, and the raw weights differ by the ratio.
    Returns ``(raw, std)``: the :class:`LeastSquares` problem of the model
    ``y ~ w1 x1 + w2 x2`` on the raw features, and that of
    ``y - mean(y) ~ v1 z1 + v2 z2`` on the standardized features ``z`` (with
    centred features the best intercept is ``mean(y)`` whatever ``v`` is, so
    it is fitted once and gradient descent only has to find ``v``).
    """
    X = make_scaled_features(n, ((1.0, 5.0), (ratio, 5.0 * ratio)), seed=seed)
    y = make_linear_targets(X, (2.0, 3.0 / ratio), noise=noise, seed=seed + 1)
    Z, _, _ = standardize(X)
    return LeastSquares(X, y), LeastSquares(Z, y - y.mean())


# --------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------
def standardize(X):
    """Per-feature zero mean and unit variance.

    Returns ``(Z, mean, std)`` with ``Z = (X - mean) / std`` (n, d) and the
    statistics (d,) (population std, ``ddof=0``), to apply to new data.
    """
    X = np.asarray(X, dtype=float)
    mean, std = X.mean(axis=0), X.std(axis=0)
    if np.any(std == 0):
        raise ValueError("a feature is constant; it cannot be standardized")
    return (X - mean) / std, mean, std


def min_max_scale(X):
    """Per-feature rescaling onto [0, 1]: returns ``(S, lo, hi)`` with
    ``S = (X - lo) / (hi - lo)`` (n, d) and the column minima/maxima (d,)."""
    X = np.asarray(X, dtype=float)
    lo, hi = X.min(axis=0), X.max(axis=0)
    if np.any(hi == lo):
        raise ValueError("a feature is constant; it cannot be min-max scaled")
    return (X - lo) / (hi - lo), lo, hi


def fix_eigenvector_signs(U, rtol: float = 1e-6) -> np.ndarray:
    """Eigenvectors (the columns of ``U``, (d, k)) with a sign that does not
    depend on the machine.

    An eigenvector is defined only up to its sign, and which sign
    ``np.linalg.eigh`` returns depends on the LAPACK/BLAS build and kernel
    (OpenBLAS's Haswell kernel flips some). Each column is multiplied by -1
    if needed so that its largest-magnitude entry is positive; among entries
    whose magnitudes tie to a relative ``rtol`` (as in ``(1, -1) / sqrt(2)``,
    where rounding alone would pick the winner) the first one counts.
    Returns a new array of U's shape.
    """
    U = np.array(U, dtype=float)
    if U.ndim != 2:
        raise ValueError(f"U must be 2-D (d, k), one eigenvector per column; got shape {U.shape}")
    mag = np.abs(U)
    near_max = mag >= (1.0 - rtol) * mag.max(axis=0)    # (d, k)
    lead = np.argmax(near_max, axis=0)                   # first such entry per column, (k,)
    signs = np.sign(U[lead, np.arange(U.shape[1])])
    signs[signs == 0] = 1.0                              # an all-zero column stays as it is
    return U * signs


def whiten(X, method: str = "zca", eps: float = 0.0):
    """Decorrelate and standardize: the result has identity covariance.

    With the covariance ``C = U diag(lam) U^T`` of ``X`` (population, ddof=0):

    * ``"pca"``: ``W = U diag(1 / sqrt(lam + eps))`` -- rotate onto the
      principal axes, then scale each to unit variance (the signs of the
      axes are fixed by :func:`fix_eigenvector_signs`, so the result is the
      same on every machine);
    * ``"zca"``: ``W = U diag(1 / sqrt(lam + eps)) U^T`` -- the same, rotated
      back, so the whitened data stay as close as possible to the original.

    Returns ``(Zw, mean, W)`` with ``Zw = (X - mean) @ W`` (n, d), ``W`` (d, d).
    """
    if method not in ("zca", "pca"):
        raise ValueError(f"method must be 'zca' or 'pca'; got {method!r}")
    X = np.asarray(X, dtype=float)
    mean = X.mean(axis=0)
    Xc = X - mean
    lam, U = np.linalg.eigh(Xc.T @ Xc / len(X))
    U = fix_eigenvector_signs(U)  # PCA's result must not depend on the LAPACK build
    W = U / np.sqrt(lam + eps)
    if method == "zca":
        W = W @ U.T
    return Xc @ W, mean, W


# --------------------------------------------------------------------------
# the drifting network
# --------------------------------------------------------------------------
def make_teacher_data(n: int = 4000, d: int = 20, classes: int = 4, hidden: int = 32,
                      seed=0):
    """A classification task with standardized inputs and a nonlinear rule.

    ``x`` (n, d) float32 are N(0, 1) inputs (already normalized, on purpose);
    the labels ``y`` (n,) int64 are the argmax of a random one-hidden-layer
    tanh "teacher" network.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w1 = rng.standard_normal((d, hidden)) / np.sqrt(d)
    w2 = rng.standard_normal((hidden, classes))
    y = np.argmax(np.tanh(2.0 * x @ w1) @ w2, axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def drift_network(sizes=(20, 64, 64, 64, 64, 4), seed=0, **kw):
    """The deep ReLU network without batch norm that chapter 1 watches drift
    (:func:`bnbook.models.build_mlp` with He initialization)."""
    return build_mlp(list(sizes), batchnorm=False, seed=seed, **kw)


def _hidden_passes(model, x, training: bool):
    """Run ``x`` through ``model`` up to its last Linear layer and yield
    ``(layer, input, output)`` for every layer on the way. ``training=True``
    uses training mode (batch norm normalizes with the statistics of ``x``
    itself) and restores the running statistics afterwards; ``False`` uses
    eval mode. Either way the model is left as it was."""
    linear_idx = [i for i, layer in enumerate(model.layers) if isinstance(layer, Linear)]
    with running_stats_kept(model), in_mode(model, training=training):
        h = x
        for layer in model.layers[:linear_idx[-1]]:
            out = layer.forward(h)
            yield layer, h, out
            h = out


def hidden_activations(model, x, training: bool = False) -> list[np.ndarray]:
    """The output of every hidden nonlinearity (ReLU or sigmoid) of ``model``
    (a :class:`~bnbook.layers.Sequential` MLP) on the batch ``x`` (n, d_in):
    a list with one array (n, units_j) per hidden layer, the inputs of the
    next Linear layer. ``training`` as in :class:`PreactivationRecorder`."""
    return [np.array(out, copy=True) for layer, _, out in _hidden_passes(model, np.asarray(x), training)
            if isinstance(layer, (ReLU, Sigmoid))]


def activation_conditioning(A) -> tuple[float, float]:
    """How well conditioned the inputs ``A`` (n, units) of a linear layer are,
    as the condition numbers of two (units, units) matrices:

    * ``A^T A / n``, the uncentred second moment, which is the Hessian of a
      least-squares loss in the layer's weights (section 1 of chapter 1); it
      equals ``C + mu mu^T``, so a nonzero mean ``mu`` adds curvature along
      ``mu`` (non-negative ReLU outputs always have one);
    * the covariance ``C`` (the centred matrix), what is left once the means
      are removed.

    Returns ``(uncentred, centred)``; ``inf`` where a unit is constant (dead).
    """
    A = np.asarray(A, dtype=float)
    return condition_number(A), condition_number(A - A.mean(axis=0))


def distribution_drift(values):
    """How far the distribution of each unit moved from the first record.

    ``values`` (k, p, units): one unit's values on a probe batch of p samples
    at k recorded steps (one entry of :attr:`PreactivationRecorder.values`).
    Returns ``(shift, spread)``, both (k,): the median over units of
    ``|mean_t - mean_0| / std_0`` (how far the mean moved, in initial
    standard deviations) and of ``std_t / std_0`` (by what factor the spread
    changed).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 3:
        raise ValueError(f"values must be (steps, samples, units); got shape {v.shape}")
    m, s = v.mean(axis=1), v.std(axis=1)          # (k, units)
    return np.median(np.abs(m - m[0]) / s[0], axis=1), np.median(s / s[0], axis=1)


class PreactivationRecorder:
    """A ``callback(step, model)`` for :func:`bnbook.training.fit` that records,
    on a fixed ``probe`` batch (p, d_in), a hidden quantity of every hidden
    layer:

    * ``where="linear"`` (default): the output of every Linear layer but the
      last (the pre-activations ``z = x W + b``);
    * ``where="nonlinearity"``: the input of every hidden nonlinearity (the
      same as "linear" without batch norm; the batch-norm output with it).

    ``training=False`` (default) measures in eval mode; ``True`` in training
    mode, where batch norm normalizes with the probe batch's own statistics
    (the running statistics are put back afterwards). A measurement changes
    nothing in the model. ``steps``, if given, is the set of training steps
    to record at (others are skipped; use ``callback_every=1``).

    After training: ``steps`` (k,) and ``values[j]`` (k, p, units_j) for the
    j-th hidden layer.
    """

    def __init__(self, probe, where: str = "linear", training: bool = False, steps=None):
        if where not in ("linear", "nonlinearity"):
            raise ValueError(f"where must be 'linear' or 'nonlinearity'; got {where!r}")
        self.probe = np.asarray(probe)
        self.where, self.training = where, bool(training)
        self._at = None if steps is None else {int(s) for s in steps}
        self.steps: list[int] = []
        self._values: list[list[np.ndarray]] = []

    def __call__(self, step: int, model) -> None:
        if self._at is not None and int(step) not in self._at:
            return
        linear_idx = [i for i, layer in enumerate(model.layers) if isinstance(layer, Linear)]
        rec = []
        for layer, h_in, h_out in _hidden_passes(model, self.probe, self.training):
            if self.where == "linear" and isinstance(layer, Linear):
                rec.append(np.array(h_out, copy=True))
            elif self.where == "nonlinearity" and isinstance(layer, (ReLU, Sigmoid)):
                rec.append(np.array(h_in, copy=True))
        assert len(rec) == len(linear_idx) - 1, "one record per hidden layer"
        self.steps.append(int(step))
        self._values.append(rec)

    @property
    def values(self) -> list[np.ndarray]:
        """One array (k, p, units) per hidden layer."""
        return [np.stack([v[j] for v in self._values]) for j in range(len(self._values[0]))]
