"""Layer normalization (Ba, Kiros & Hinton, 2016): statistics per sample.

Shapes as in :mod:`bnbook.batchnorm`: ``x`` is ``(m, d)``, ``m`` samples and
``d`` features. Layer norm takes the mean and the (biased) variance of each
*row* -- over the ``d`` features of one sample -- so its output for a sample
never depends on the rest of the batch, a batch of one is fine, and training
and inference compute the same thing (no running statistics). ``gamma`` and
``beta`` still have shape ``(d,)``: one scale and shift per feature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .batchnorm import _as_float, _check_eps, _check_param
from .layers import Layer

__all__ = ["LNCache", "layernorm_forward", "layernorm_backward", "LayerNorm"]


@dataclass
class LNCache:
    """What the forward pass keeps: ``xhat`` (m, d), ``inv_std`` (m, 1),
    ``gamma`` (d,)."""

    xhat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray


def _check_input(x, name: str = "x") -> np.ndarray:
    x = _as_float(x)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (m, d) (batch, features); got shape {x.shape}"
        )
    if x.shape[1] < 2:
        raise ValueError(
            f"layer norm needs at least 2 features per sample; got {name} of shape "
            f"{x.shape}. With one feature the per-sample variance is 0 and every "
            "output equals beta."
        )
    return x


def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """Layer norm of ``x`` (m, d), any m >= 1, d >= 2.

    ``out[i] = gamma * (x[i] - mean(x[i])) / sqrt(var(x[i]) + eps) + beta``
    with the mean and biased variance over the features of row i.
    Returns ``out`` (m, d) and an :class:`LNCache` for the backward pass.
    """
    x = _check_input(x)
    d = x.shape[1]
    gamma = _check_param(gamma, d, "gamma", x.dtype)
    beta = _check_param(beta, d, "beta", x.dtype)
    eps = _check_eps(eps)
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=1, keepdims=True)
    if not np.all(np.isfinite(var)):
        bad = np.flatnonzero(~np.isfinite(var[:, 0]))
        raise ValueError(
            f"x contains non-finite values (NaN or inf) in sample(s) {bad[:10].tolist()}"
        )
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv_std
    return xhat * gamma + beta, LNCache(xhat, inv_std, gamma)


def layernorm_backward(dout, cache: LNCache):
    """Gradients of layer norm; ``dout`` (m, d).

    The batch-norm formula with the roles of the axes swapped (sums now run
    over the d features of each row):
    ``dx = inv_std / d * (d * g - sum(g) - xhat * sum(g * xhat))``, ``g = dout * gamma``.
    Returns ``dx`` (m, d), ``dgamma`` (d,), ``dbeta`` (d,).
    """
    dout = _as_float(dout)
    if dout.shape != cache.xhat.shape:
        raise ValueError(
            f"dout must have the shape of x {cache.xhat.shape}; got {dout.shape}"
        )
    xhat = cache.xhat
    d = xhat.shape[1]
    dbeta = dout.sum(axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    g = dout * cache.gamma
    dx = (cache.inv_std / d) * (d * g - g.sum(axis=1, keepdims=True)
                                - xhat * np.sum(g * xhat, axis=1, keepdims=True))
    return dx, dgamma, dbeta


class LayerNorm(Layer):
    """Layer-norm layer for (m, d) inputs; same protocol as the layers of
    :mod:`bnbook.layers` (forward, backward, params, train/eval).

    Training and eval mode compute the same function. ``gamma`` (ones) and
    ``beta`` (zeros) have shape (d,); after :meth:`backward`, ``dgamma`` and
    ``dbeta`` hold their gradients.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, dtype=np.float32):
        if int(num_features) != num_features or num_features < 2:
            raise ValueError(f"num_features must be an integer >= 2; got {num_features!r}")
        d = int(num_features)
        self.num_features = d
        self.eps = _check_eps(eps)
        self.gamma = np.ones(d, dtype=dtype)
        self.beta = np.zeros(d, dtype=dtype)
        self.dgamma = np.zeros_like(self.gamma)
        self.dbeta = np.zeros_like(self.beta)
        self._cache: LNCache | None = None

    def params(self):
        return [("gamma", self.gamma, self.dgamma), ("beta", self.beta, self.dbeta)]

    def forward(self, x):
        """Normalize each row of ``x`` (m, num_features); returns (m, num_features)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected x of shape (m, {self.num_features}); got shape {x.shape}"
            )
        out, self._cache = layernorm_forward(x, self.gamma, self.beta, self.eps)
        return out

    def backward(self, dout):
        """Return dx (m, d); store ``dgamma`` and ``dbeta`` in place."""
        if self._cache is None:
            raise RuntimeError("LayerNorm.backward() called before forward()")
        dx, dgamma, dbeta = layernorm_backward(dout, self._cache)
        self.dgamma[...] = dgamma
        self.dbeta[...] = dbeta
        return dx

    def __repr__(self) -> str:
        return f"LayerNorm({self.num_features}, eps={self.eps:g})"
