"""Fine-tuning with frozen batch-norm layers (chapter 7, section on shifted data).

A *frozen* batch-norm layer keeps its running statistics and its ``gamma`` and
``beta`` fixed, in training as in evaluation: it is the fixed affine map
``x -> gamma * (x - running_mean) / sqrt(running_var + eps) + beta`` per feature.
Back-propagation passes through it (``dx = dout * gamma / sqrt(running_var + eps)``),
so the layers around it can be fine-tuned while it stays as it was.

:func:`freeze_batchnorm` wraps every :class:`~bnbook.batchnorm.BatchNorm1d` of a
Sequential model; the returned model shares all layers (and so all weights)
with the original, which after fine-tuning holds the tuned weights and the
unchanged batch-norm layers.
"""
from __future__ import annotations

import numpy as np

from .batchnorm import BatchNorm1d, batchnorm_eval
from .layers import Layer, Sequential

__all__ = ["FrozenBatchNorm1d", "freeze_batchnorm"]


class FrozenBatchNorm1d(Layer):
    """A :class:`BatchNorm1d` used as a fixed affine map in both modes.

    ``forward(x)``: x (m, d) -> (m, d), with the wrapped layer's running
    statistics, ``gamma`` and ``beta``; any m >= 1. ``backward(dout)``: (m, d)
    -> dx (m, d). No parameters are trained and no statistics are updated.
    """

    def __init__(self, bn: BatchNorm1d):
        if not isinstance(bn, BatchNorm1d):
            raise ValueError(f"expected a BatchNorm1d to freeze; got {type(bn).__name__}")
        self.bn = bn
        self._scale = None

    def forward(self, x):
        bn = self.bn
        out = batchnorm_eval(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)
        self._scale = bn.gamma / np.sqrt(bn.running_var + bn.eps)
        return out

    __call__ = forward

    def backward(self, dout):
        if self._scale is None:
            raise RuntimeError("FrozenBatchNorm1d.backward() called before forward()")
        return np.asarray(dout) * self._scale

    def __repr__(self) -> str:
        return f"FrozenBatchNorm1d({self.bn!r})"


def freeze_batchnorm(model: Sequential) -> Sequential:
    """A Sequential that shares ``model``'s layers, each BatchNorm1d frozen.

    Training the returned model (e.g. with
    :func:`bnbook.inference_stats.train_on_batches`) updates the weights of
    ``model``'s other layers in place and leaves its batch-norm layers
    (statistics, gamma, beta) exactly as they were.
    """
    return Sequential(*[FrozenBatchNorm1d(layer) if isinstance(layer, BatchNorm1d) else layer
                        for layer in model.layers])
