"""Layer normalization (Ba, Kiros & Hinton, 2016): statistics per sample (chapter 7).

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

from .protocol import NormLayer, as_float, check_batch, check_eps, check_finite, check_param

__all__ = ["LNCache", "layernorm_forward", "layernorm_backward", "LayerNorm"]


@dataclass
class LNCache:
    """What the forward pass keeps: ``xhat`` (m, d), ``inv_std`` (m, 1),
    ``gamma`` (d,)."""

    xhat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray


def _check_input(x, name: str = "x") -> np.ndarray:
    x = check_batch(x, name=name)
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
    gamma = check_param(gamma, d, "gamma", x.dtype)
    beta = check_param(beta, d, "beta", x.dtype)
    eps = check_eps(eps)
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=1, keepdims=True)
    check_finite(var, " in sample(s)")
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
    dout = as_float(dout)
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


class LayerNorm(NormLayer):
    """Layer-norm layer for (m, d) inputs; same protocol as the layers of
    :mod:`bnbook.layers` (forward, backward, params, train/eval).

    Training and eval mode compute the same function. ``gamma`` (ones) and
    ``beta`` (zeros) have shape (d,); after :meth:`backward`, ``dgamma`` and
    ``dbeta`` hold their gradients.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, dtype=np.float32):
        super().__init__(num_features, eps, dtype, min_features=2)

    def forward(self, x):
        """Normalize each row of ``x`` (m, num_features); returns (m, num_features)."""
        out, self._cache = layernorm_forward(self._check_input(x), self.gamma, self.beta,
                                             self.eps)
        return out

    def backward(self, dout, need_input_grad: bool = True):
        """Return dx (m, d); store ``dgamma`` and ``dbeta`` in place."""
        if self._cache is None:
            raise RuntimeError("LayerNorm.backward() called before forward()")
        dx, self.dgamma[...], self.dbeta[...] = layernorm_backward(dout, self._cache)
        return dx

    def __repr__(self) -> str:
        return f"LayerNorm({self.num_features}, eps={self.eps:g})"
