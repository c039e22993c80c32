"""Dropout (Srivastava et al., 2014), the "inverted" form used by PyTorch.

Used by chapter 8 (why batch norm helps), where the regularizing effect of
batch norm is compared with that of dropout. The layer follows the protocol of
:class:`bnbook.layers.Layer`: ``forward``, ``backward``, ``params`` (none),
``train()`` / ``eval()``.

In training mode each entry is kept with probability ``1 - p`` and the kept
entries are divided by ``1 - p``, so the expected output equals the input and
evaluation mode is simply the identity.
"""
from __future__ import annotations

import numpy as np

from .layers import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Inverted dropout with drop probability ``p`` and its own seeded generator.

    ``x`` (any shape) -> ``out`` of the same shape:

    * training mode: ``out = x * mask / (1 - p)`` with ``mask`` a fresh
      Bernoulli(1 - p) draw (0 or 1) of ``x``'s shape on every call;
    * eval mode: ``out = x``.

    ``seed`` seeds the generator of the masks (a ``numpy.random.Generator``
    may be passed instead), so a run is repeatable.
    """

    def __init__(self, p: float = 0.5, seed=0):
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop probability p must lie in [0, 1); got {p!r}")
        self.p = p
        self.rng = np.random.default_rng(seed)
        self._scaled_mask = None

    def forward(self, x):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"Dropout expects a float array; got dtype {x.dtype}")
        if not self.training or self.p == 0.0:
            self._scaled_mask = None
            return x
        keep = 1.0 - self.p
        mask = self.rng.random(x.shape) < keep
        self._scaled_mask = mask.astype(x.dtype) / x.dtype.type(keep)
        return x * self._scaled_mask

    def backward(self, dout):
        """``dx = dout * mask / (1 - p)`` (training) or ``dout`` (eval, or p = 0)."""
        if self._scaled_mask is None:
            return dout
        if np.shape(dout) != self._scaled_mask.shape:
            raise ValueError(f"dout has shape {np.shape(dout)}; the last forward pass "
                             f"had shape {self._scaled_mask.shape}")
        return dout * self._scaled_mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
