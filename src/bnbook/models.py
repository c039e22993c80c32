"""The networks the chapters train: fully connected (chapters 1 and 3-8) and convolutional (chapter 9).

Both builders draw the weights layer by layer from one generator seeded with
``seed``, so the networks with and without normalization start from the same
weights.
"""
from __future__ import annotations

import numpy as np

from .convolution import Conv2d, MaxPool2d, Flatten
from .layers import Dropout, Linear, ReLU, Sequential, Sigmoid, Tanh
from .normalization import BatchNorm1d, BatchNorm2d, GroupNorm

__all__ = ["build_mlp", "build_cnn"]


def build_mlp(sizes, batchnorm=False, activation: str = "relu", init: str | None = None,
              gain: float = 1.0, seed=0, dtype=np.float32, bn_momentum: float | None = 0.1,
              bn_eps: float = 1e-5, output_bias: bool = True, dropout: float = 0.0):
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Each hidden layer is ``Linear -> [batch norm] -> activation -> [Dropout]``
    (``activation``: ``"relu"``, ``"sigmoid"`` or ``"tanh"``; ``dropout``:
    the drop probability, 0 for no Dropout layer); with batch
    norm the hidden Linear layers have no bias (beta takes its role). The
    output layer is a Linear (with a bias unless ``output_bias=False``) and
    no activation: the loss applies the softmax.

    ``batchnorm`` is False, True (a :class:`~bnbook.normalization.BatchNorm1d`
    with ``bn_momentum`` and ``bn_eps``) or a function ``width -> layer`` that
    makes the normalization layer (or a list of layers, inserted in order;
    chapters 6 and 8 pass their variants).
    Weights are drawn layer by layer from one generator seeded with ``seed``,
    so networks with and without batch norm start from the same weights;
    the k-th Dropout layer's masks come from a generator seeded ``(seed, 2, k)``.
    ``init`` defaults to He for ReLU and Xavier otherwise; ``gain``
    multiplies every weight's standard deviation.

    Example: ``build_mlp([784, 300, 50, 10], batchnorm=True)``.
    """
    acts = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}; got {activation!r}")
    if init is None:
        init = "he" if activation == "relu" else "xavier"
    if batchnorm is True:
        def batchnorm(width):
            return BatchNorm1d(width, eps=bn_eps, momentum=bn_momentum, dtype=dtype)
    rng = np.random.default_rng(seed)
    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-2], sizes[1:-1])):
        layers.append(Linear(fan_in, fan_out, bias=not batchnorm, init=init, gain=gain,
                             rng=rng, dtype=dtype))
        if batchnorm:
            norm = batchnorm(fan_out)
            layers += norm if isinstance(norm, list) else [norm]
        layers.append(acts[activation]())
        if dropout:
            layers.append(Dropout(dropout, seed=(seed, 2, k)))
    layers.append(Linear(sizes[-2], sizes[-1], bias=output_bias, init=init, gain=gain,
                         rng=rng, dtype=dtype))
    return Sequential(*layers)


def build_cnn(norm: str | None = "batch", channels=(8, 16), groups: int = 4, seed=0,
              dtype=np.float32):
    """The small convolutional network of chapter 9, for (N, 1, 28, 28) images:

    ``conv 3x3 (1 -> c1, pad 1) -> [norm] -> ReLU -> 2x2 max pool ->
    conv 3x3 (c1 -> c2, pad 1) -> [norm] -> ReLU -> 2x2 max pool ->
    Flatten -> Linear(c2 * 7 * 7, 10)``

    norm : None, ``"batch"`` (:class:`~bnbook.normalization.BatchNorm2d`) or
        ``"group"`` (:class:`~bnbook.normalization.GroupNorm` with ``groups``
        groups). With a normalization the convolutions have no bias (its
        ``beta`` takes that role).

    Weights are drawn layer by layer from one generator seeded with ``seed``,
    so the networks with and without normalization start from the same weights.
    """
    makers = {None: None, "batch": lambda c: BatchNorm2d(c, dtype=dtype),
              "group": lambda c: GroupNorm(groups, c, dtype=dtype)}
    if norm not in makers:
        raise ValueError(f"norm must be None, 'batch' or 'group'; got {norm!r}")
    rng = np.random.default_rng(seed)
    c1, c2 = channels
    layers = []
    for cin, cout in [(1, c1), (c1, c2)]:
        layers.append(Conv2d(cin, cout, 3, pad=1, bias=norm is None, rng=rng, dtype=dtype))
        if norm is not None:
            layers.append(makers[norm](cout))
        layers += [ReLU(), MaxPool2d()]
    layers += [Flatten(), Linear(c2 * 7 * 7, 10, rng=rng, dtype=dtype)]
    return Sequential(*layers)
