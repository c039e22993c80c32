"""Batch norm derived node by node: the exhibit of chapters 2-4.

Chapter 2 builds :func:`batchnorm_forward` as ten elementary operations,
chapter 3 takes the gradient through them one node at a time
(:func:`batchnorm_backward_staged`) and simplifies it to a closed form
(:func:`batchnorm_backward`), and chapter 4 checks both numerically. The
layer, :class:`~bnbook.normalization.BatchNorm1d`, and every other layer
that normalizes use the same mathematics through the kernel of
:mod:`bnbook.normalization`; ``tests/test_batchnorm.py`` asserts that these
functions and that kernel agree.

Shapes: ``x`` is a mini-batch of shape ``(m, d)`` -- ``m`` samples, ``d``
features. Statistics are taken over the batch axis (axis 0), so means,
variances, ``gamma`` and ``beta`` all have shape ``(d,)``. The names are
the book's notation (``book/notation.md``): ``mu``, ``xc``, ``sq``,
``var``, ``v``, ``std``, ``inv_std``, ``xhat``, ``z``, ``y``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_batch, check_eps, check_finite, check_param

__all__ = [
    "BNCache",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_staged",
]


def _check_forward_args(x, gamma, beta, eps):
    """The arguments of a training-mode forward pass, checked: ``x`` (m, d)
    floating with m >= 2, ``gamma`` and ``beta`` finite (d,) in x's dtype."""
    x = check_batch(x)
    if x.shape[0] < 2:
        raise ValueError(
            f"batch norm in training mode needs a batch of at least 2 samples; "
            f"got x of shape {x.shape}. With one sample the batch variance is 0 "
            "and every output equals beta. Use eval mode for single samples, or drop "
            "/ merge the last partial batch."
        )
    d = x.shape[1]
    return x, check_param(gamma, d, "gamma", x.dtype), check_param(beta, d, "beta", x.dtype), check_eps(eps)


@dataclass
class BNCache:
    """What the forward pass keeps for the backward pass.

    Every array is named for the node of the computational graph it holds.
    ``x``, ``xc`` and ``xhat`` have shape ``(m, d)``; the others ``(d,)``.
    """

    x: np.ndarray  # input
    mu: np.ndarray  # 1. batch mean
    xc: np.ndarray  # 2. centred input x - mu
    var: np.ndarray  # 4. biased batch variance mean(xc**2)
    std: np.ndarray  # 6. sqrt(var + eps)
    inv_std: np.ndarray  # 7. 1 / std
    xhat: np.ndarray  # 8. normalized input xc * inv_std
    gamma: np.ndarray  # scale
    beta: np.ndarray  # shift
    eps: float


def batchnorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Training-mode batch norm with the statistics of the batch itself.

    Parameters
    ----------
    x : array of shape (m, d), m >= 2. Integer input is computed in float64;
        float32 input stays float32.
    gamma, beta : arrays of shape (d,).
    eps : positive float added to the (biased) variance.

    Returns
    -------
    out : array of shape (m, d), ``gamma * (x - mu) / sqrt(var + eps) + beta``.
    cache : :class:`BNCache` for :func:`batchnorm_backward`.

    Raises :class:`~bnbook.checks.NonFiniteError` (a ValueError) if a
    feature's variance is NaN or inf (non-finite or overflowing input).
    """
    x, gamma, beta, eps = _check_forward_args(x, gamma, beta, eps)
    m = x.shape[0]

    mu = x.sum(axis=0) / m      # 1 mean      mu = (1/m) sum_i x_i
    xc = x - mu                 # 2 centre    c_i = x_i - mu
    sq = xc ** 2                # 3 square    q_i = c_i^2
    var = sq.sum(axis=0) / m    # 4 variance  sigma^2 = (1/m) sum_i q_i  (biased)
    check_finite(var, ", or values so large that their variance overflows, in feature(s)")
    v = var + eps               # 5 add eps   v = sigma^2 + eps
    std = np.sqrt(v)            # 6 root      s = sqrt(v)
    inv_std = 1.0 / std         # 7 invert    r = 1 / s
    xhat = xc * inv_std         # 8 normalize xhat_i = c_i r
    z = gamma * xhat            # 9 scale     z_i = gamma xhat_i
    y = z + beta                # 10 shift    y_i = z_i + beta
    return y, BNCache(x, mu, xc, var, std, inv_std, xhat, gamma, beta, eps)


def _check_dout(dout, cache: BNCache) -> np.ndarray:
    dout = np.asarray(dout)
    if dout.shape != cache.xhat.shape:
        raise ValueError(
            f"dout must have the shape of x {cache.xhat.shape}; got {dout.shape}"
        )
    return dout if dout.dtype.kind == "f" else dout.astype(np.float64)


def batchnorm_backward(dout, cache: BNCache):
    """Gradients of batch norm, compact closed form.

    ``dx = gamma / (m * s) * (m * dout - sum(dout) - xhat * sum(dout * xhat))``
    with sums over the batch axis and ``s = sqrt(var + eps)``.

    Parameters
    ----------
    dout : array of shape (m, d), the gradient of the loss w.r.t. the output.
    cache : from :func:`batchnorm_forward`.

    Returns
    -------
    dx : (m, d);  dgamma : (d,);  dbeta : (d,).
    """
    dout = _check_dout(dout, cache)
    m = dout.shape[0]
    xhat, gamma, inv_std = cache.xhat, cache.gamma, cache.inv_std
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std / m) * (m * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def batchnorm_backward_staged(dout, cache: BNCache):
    """Gradients of batch norm by the chain rule, one line per graph node.

    The forward graph, in order (the book's notation)::

        1 mu = mean(x)          6 std = sqrt(v)
        2 xc = x - mu           7 inv_std = 1 / std
        3 sq = xc ** 2          8 xhat = xc * inv_std
        4 var = mean(sq)        9 z = gamma * xhat
        5 v = var + eps        10 y = z + beta   (the output; its gradient is dout)

    The backward pass visits the nodes in reverse. Same shapes and return
    values as :func:`batchnorm_backward`.
    """
    dout = _check_dout(dout, cache)
    m = dout.shape[0]
    x, xc, xhat = cache.x, cache.xc, cache.xhat
    std, inv_std, gamma = cache.std, cache.inv_std, cache.gamma

    dbeta = dout.sum(axis=0)                     # 10  y = z + beta
    dz = dout                                    # 10  (z passes dout on unchanged)
    dgamma = (dz * xhat).sum(axis=0)             # 9   z = gamma * xhat
    dxhat = dz * gamma                           # 9
    dinv_std = (dxhat * xc).sum(axis=0)          # 8   xhat = xc * inv_std
    dxc_direct = dxhat * inv_std                 # 8   (first path into xc)
    dstd = -dinv_std / std**2                    # 7   inv_std = 1 / std
    dv = 0.5 * dstd / std                        # 6   std = sqrt(v)
    dvar = dv                                    # 5   v = var + eps
    dsq = np.broadcast_to(dvar / m, x.shape)     # 4   var = mean(sq)
    dxc_square = 2.0 * xc * dsq                  # 3   sq = xc ** 2 (second path)
    dxc = dxc_direct + dxc_square                # the two paths into xc add up
    dmu = -dxc.sum(axis=0)                       # 2   xc = x - mu
    dx_direct = dxc                              # 2   (first path into x)
    dx_mean = np.broadcast_to(dmu / m, x.shape)  # 1   mu = mean(x) (second path)
    dx = dx_direct + dx_mean
    return dx, dgamma, dbeta

