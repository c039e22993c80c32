"""The loss every chapter trains with: softmax followed by cross-entropy.

Shapes: ``logits`` (m, c) for m samples and c classes, labels ``y`` (m,).
"""
from __future__ import annotations

import numpy as np

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(logits, y, reduction: str = "mean"):
    """Softmax followed by the cross-entropy loss, and its gradient.

    Parameters
    ----------
    logits : (m, c) scores.
    y : (m,) integer class labels in ``0 .. c-1``.
    reduction : ``"mean"`` (average over the batch, the convention of this
        book and of PyTorch) or ``"sum"`` (sum over the batch: the gradient is
        m times larger, as in code that back-propagates ``p - onehot(y)``).

    Returns
    -------
    loss : float;  dlogits : (m, c).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D of shape (m, c); got shape {logits.shape}")
    y = np.asarray(y)
    m, c = logits.shape
    if y.shape != (m,) or y.dtype.kind not in "iu":  # signed or unsigned integers
        raise ValueError(f"y must be {m} integer labels of shape ({m},); got {y.dtype} {y.shape}")
    if m and (y.min() < 0 or y.max() >= c):
        raise ValueError(f"labels must lie in 0..{c - 1}; got {y.min()}..{y.max()}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    expz = np.exp(shifted)
    sumexp = expz.sum(axis=1, keepdims=True)
    rows = np.arange(m)
    losses = np.log(sumexp[:, 0]) - shifted[rows, y]
    grad = expz / sumexp
    grad[rows, y] -= 1.0
    if reduction == "mean":
        grad /= m
        return float(losses.sum() / m), grad
    return float(losses.sum()), grad
