"""Two layers that chapter 8's experiments need beyond :mod:`bnbook.layers`.

* :class:`Tanh` -- the saturating nonlinearity of the depth experiment;
* :class:`NoisyAffine` -- a random per-feature scale and shift, redrawn at
  every training step, placed after a batch-norm layer to make the
  distribution of its output move on purpose (the "noisy batch norm"
  experiment of Santurkar et al., 2018).

Both follow the protocol of :class:`bnbook.layers.Layer`.
"""
from __future__ import annotations

from itertools import pairwise

import numpy as np

from .layers import Layer

__all__ = ["NoisyAffine", "Tanh", "build_net"]


class Tanh(Layer):
    """``tanh(x)`` elementwise; any shape. ``dx = dout * (1 - y^2)``."""

    def forward(self, x):
        self._y = np.tanh(x)
        return self._y

    def backward(self, dout):
        return dout * (1.0 - self._y * self._y)


class NoisyAffine(Layer):
    """``out = s * x + b`` with a fresh random ``s``, ``b`` (d,) at every
    training-mode forward pass; the identity in eval mode.

    Per feature, ``b`` is uniform on ``[-shift, shift]`` and ``log s`` is
    uniform on ``[-log(scale), log(scale)]`` (so ``s`` lies between
    ``1/scale`` and ``scale``, with median 1). ``x`` (m, d) -> ``out`` (m, d).
    The noise has no parameters to learn; ``seed`` seeds its generator.
    """

    def __init__(self, num_features: int, shift: float = 1.0, scale: float = 2.0, seed=0):
        if not shift >= 0 or not scale >= 1:
            raise ValueError(f"need shift >= 0 and scale >= 1; got shift={shift!r}, scale={scale!r}")
        self.num_features = int(num_features)
        self.shift, self.scale = float(shift), float(scale)
        self.rng = np.random.default_rng(seed)
        self._s = None

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"NoisyAffine expects input of shape (m, {self.num_features}); "
                             f"got shape {x.shape}")
        if not self.training:
            self._s = None
            return x
        d = self.num_features
        log_scale = np.log(self.scale)
        self._s = np.exp(self.rng.uniform(-log_scale, log_scale, d)).astype(x.dtype)
        b = self.rng.uniform(-self.shift, self.shift, d).astype(x.dtype)
        return self._s * x + b

    def backward(self, dout):
        return dout if self._s is None else dout * self._s

    def __repr__(self) -> str:
        return f"NoisyAffine({self.num_features}, shift={self.shift}, scale={self.scale})"


def build_net(sizes, *, batchnorm: bool = False, activation: str = "relu", dropout: float = 0.0,
              noise: tuple | None = None, init: str | None = None, gain: float = 1.0,
              seed: int = 0, dtype=np.float32):
    """A fully connected network like :func:`bnbook.layers.build_mlp`, with the
    extra options chapter 8 needs.

    Each hidden layer is ``Linear -> [BatchNorm1d -> [NoisyAffine]] ->
    activation -> [Dropout]``; the output layer is a Linear with bias.
    ``activation``: ``"relu"``, ``"tanh"`` or ``"sigmoid"``; ``dropout``: the
    drop probability (0: no Dropout layer); ``noise``: ``(shift, scale)`` of a
    :class:`NoisyAffine` after every batch norm (needs ``batchnorm=True``).
    Weights are drawn as in ``build_mlp`` (one generator seeded with ``seed``,
    layer by layer), so the same ``seed`` gives the same weights with and
    without batch norm, dropout or noise; the Dropout and NoisyAffine layers
    get generators of their own, derived from ``seed``.
    """
    from .batchnorm import BatchNorm1d
    from .dropout import Dropout
    from .layers import Linear, ReLU, Sequential, Sigmoid

    acts = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}; got {activation!r}")
    if noise is not None and not batchnorm:
        raise ValueError("noise is added after batch norm: it needs batchnorm=True")
    if init is None:
        init = "he" if activation == "relu" else "xavier"
    rng = np.random.default_rng(seed)
    layers = []
    for k, (fan_in, fan_out) in enumerate(pairwise(sizes[:-1])):
        layers.append(Linear(fan_in, fan_out, bias=not batchnorm, init=init, gain=gain,
                             rng=rng, dtype=dtype))
        if batchnorm:
            layers.append(BatchNorm1d(fan_out, dtype=dtype))
            if noise is not None:
                layers.append(NoisyAffine(fan_out, *noise, seed=(seed, 1, k)))
        layers.append(acts[activation]())
        if dropout:
            layers.append(Dropout(dropout, seed=(seed, 2, k)))
    layers.append(Linear(sizes[-2], sizes[-1], bias=True, init=init, gain=gain, rng=rng, dtype=dtype))
    return Sequential(*layers)
