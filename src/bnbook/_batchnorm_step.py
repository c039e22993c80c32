"""The speed path of :class:`bnbook.batchnorm.BatchNorm1d`'s training step (private).

Read :func:`bnbook.batchnorm.batchnorm_forward` and
:func:`bnbook.batchnorm.batchnorm_backward` for the mathematics: this module
performs the same operations on the same operands in the same order -- so
the layer's outputs have the same bits as those functions' (pinned by
``tests/test_batchnorm.py``) -- but writes the (m, d) intermediates into
arrays the layer keeps from step to step, instead of new ones.

Why, by measurement (``benchmarks/batchnorm_kernels.py --baseline``, which
times the plain functions' version side by side): a fresh (m, d) array
from the allocator costs page faults (the OS hands out zeroed pages), and
at the book's (100, 300) a training step of the plain version took about
1.1-1.5 times as long as this one; at (256, 1024) about 1.7 times.
"""
from __future__ import annotations

import numpy as np

from .protocol import check_finite


class StepBuffers:
    """Named arrays kept from one training step to the next (one set per layer)."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, like: np.ndarray) -> np.ndarray:
        """An array of ``like``'s shape and dtype (its old contents are garbage)."""
        buf = self._arrays.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._arrays[name] = np.empty_like(like)
        return buf


def forward(x, gamma, beta, eps, buffers: StepBuffers):
    """batchnorm_forward on checked arguments; xc, sq and xhat live in ``buffers``.
    Returns ``(out, (mu, xc, var, std, inv_std, xhat))``; ``out`` is a new array."""
    m = x.shape[0]
    mu = x.sum(axis=0) / m
    xc = np.subtract(x, mu, out=buffers("xc", x))
    sq = np.square(xc, out=buffers("sq", x))
    var = sq.sum(axis=0) / m
    check_finite(var, ", or values so large that their variance overflows, in feature(s)")
    std = np.sqrt(var + eps)
    inv_std = 1.0 / std
    xhat = np.multiply(xc, inv_std, out=buffers("xhat", x))
    out = np.multiply(gamma, xhat)
    np.add(out, beta, out=out)
    return out, (mu, xc, var, std, inv_std, xhat)


def backward(dout, xhat, gamma, inv_std, buffers: StepBuffers):
    """batchnorm_backward's arithmetic in place: returns ``(dx, dgamma, dbeta)``;
    the products live in a buffer, ``dx`` is a new array."""
    m = dout.shape[0]
    t = buffers("t", dout)
    dbeta = dout.sum(axis=0)
    dgamma = np.multiply(dout, xhat, out=t).sum(axis=0)
    dx = np.multiply(xhat, dgamma)                 # xhat * dgamma
    np.multiply(m, dout, out=t)                    # m * dout
    np.subtract(t, dbeta, out=t)                   # - dbeta
    np.subtract(t, dx, out=dx)                     # - xhat * dgamma
    np.multiply(gamma * inv_std / m, dx, out=dx)   # times gamma * inv_std / m
    return dx, dgamma, dbeta
