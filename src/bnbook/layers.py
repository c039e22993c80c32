"""Layers for small fully connected networks, written out in NumPy (chapters 1 and 3-7).

Every layer subclasses :class:`~bnbook.protocol.Layer` (re-exported here as
``bnbook.layers.Layer``), whose docstring states the protocol: ``forward(x)``,
``backward(dout, need_input_grad=True)``, ``params()``, ``train()`` /
``eval()`` and the attribute ``training``. Batches have shape ``(m, d)``.

Here: Linear, ReLU, Sigmoid, the softmax cross-entropy loss, Sequential,
:func:`build_mlp` (the networks of chapters 1 and 3-7), SGD, and two context
managers (:func:`in_mode`, :func:`running_stats_kept`). The batch-norm layer,
:class:`~bnbook.batchnorm.BatchNorm1d`, lives in :mod:`bnbook.batchnorm` and
follows the same protocol.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .batchnorm import BatchNorm1d
from .protocol import Layer, WeightBiasLayer, accepts_need_input_grad, check_momentum, iter_layers

__all__ = [
    "Layer",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Sequential",
    "SoftmaxCrossEntropy",
    "softmax_cross_entropy",
    "init_weights",
    "build_mlp",
    "SGD",
    "in_mode",
    "running_stats_kept",
    "layer_inputs",
]


def init_weights(fan_in: int, fan_out: int, method: str = "he", gain: float = 1.0,
                 rng=None, dtype=np.float32) -> np.ndarray:
    """Draw a (fan_in, fan_out) weight matrix from a zero-mean normal.

    method : ``"he"`` (std ``sqrt(2 / fan_in)``, for ReLU), ``"xavier"``
        (std ``sqrt(2 / (fan_in + fan_out))``, for sigmoid/tanh) or
        ``"normal"`` (std 1). The std is multiplied by ``gain``, so
        ``method="normal", gain=0.01`` gives N(0, 0.01^2) weights.
    rng : a ``numpy.random.Generator`` or a seed.
    """
    rng = np.random.default_rng(rng)
    if method == "he":
        std = np.sqrt(2.0 / fan_in)
    elif method == "xavier":
        std = np.sqrt(2.0 / (fan_in + fan_out))
    elif method == "normal":
        std = 1.0
    else:
        raise ValueError(f"unknown init method {method!r}; use 'he', 'xavier' or 'normal'")
    w = rng.standard_normal((fan_in, fan_out)) * (gain * std)
    return w.astype(dtype)


class Linear(WeightBiasLayer):
    """Affine layer ``y = x @ W + b``.

    ``W`` has shape (in_features, out_features), ``b`` shape (out_features,)
    (absent when ``bias=False``: the usual choice before batch norm, whose
    shift ``beta`` makes a bias redundant). ``x`` (m, in) -> ``y`` (m, out).

    ``bias_init`` : ``"zeros"`` (default) or ``"normal"``: N(0, 1) biases drawn
    from ``bias_rng`` (a Generator or seed), as the "10 Days of Grad" code
    does (chapter 6).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "he", gain: float = 1.0, rng=None, dtype=np.float32,
                 bias_init: str = "zeros", bias_rng=None):
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.num_features = self.in_features  # the input width _check_input asks for
        self.W = init_weights(self.in_features, self.out_features, init, gain, rng, dtype)
        self.dW = np.zeros_like(self.W)
        if bias_init == "zeros":
            b = np.zeros(self.out_features, dtype=dtype)
        elif bias_init == "normal":
            b = np.random.default_rng(bias_rng).standard_normal(self.out_features).astype(dtype)
        else:
            raise ValueError(f"bias_init must be 'zeros' or 'normal'; got {bias_init!r}")
        self.b = b if bias else None
        self.db = np.zeros_like(self.b) if bias else None
        self._x = None

    def forward(self, x):
        x = self._check_input(x)
        self._x = x
        out = x @ self.W
        if self.b is not None:
            out += self.b
        return out

    def backward(self, dout, need_input_grad: bool = True):
        """Store dW (in, out) and db (out,); return dx (m, in), or None when
        ``need_input_grad`` is False (the first layer of a network)."""
        if self._x is None:
            raise RuntimeError("Linear.backward() called before forward()")
        np.matmul(self._x.T, dout, out=self.dW)
        if self.b is not None:
            np.sum(dout, axis=0, out=self.db)
        return dout @ self.W.T if need_input_grad else None

    def __repr__(self) -> str:
        return (f"Linear({self.in_features}, {self.out_features}, "
                f"bias={self.b is not None})")


class ReLU(Layer):
    """``max(x, 0)`` elementwise; any shape."""

    def forward(self, x):
        self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, dout, need_input_grad: bool = True):
        return dout * self._mask


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))`` elementwise; any shape."""

    def forward(self, x):
        # exp(-|x|) never overflows; both branches give the same function.
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, dout, need_input_grad: bool = True):
        return dout * self._y * (1.0 - self._y)


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
        return float(losses.sum() / m), grad  # the mean, without np.mean's Python wrapper
    return float(losses.sum()), grad


class SoftmaxCrossEntropy:
    """Callable wrapper of :func:`softmax_cross_entropy` with a fixed reduction."""

    def __init__(self, reduction: str = "mean"):
        self.reduction = reduction

    def __call__(self, logits, y):
        return softmax_cross_entropy(logits, y, self.reduction)

    def __repr__(self) -> str:
        return f"SoftmaxCrossEntropy(reduction={self.reduction!r})"


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def params(self):
        """``(name, value, gradient)`` for every parameter; names like ``"0.W"``."""
        return [(f"{i}.{name}", value, grad)
                for i, layer in enumerate(self.layers)
                for name, value, grad in layer.params()]

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout, need_input_grad: bool = True):
        """Back-propagate ``dout`` (m, out); return dx (m, in) or None.

        ``need_input_grad`` goes to the first layer (if its ``backward``
        takes it; see :class:`~bnbook.protocol.Layer`): with False, a first
        Linear skips the (unused) gradient w.r.t. the network's input, a third
        of the work of its backward pass. Every other layer is asked for dx.
        """
        if not self.layers:
            return dout
        for i in range(len(self.layers) - 1, 0, -1):
            dout = self.layers[i].backward(dout)
        first = self.layers[0]
        if not need_input_grad and accepts_need_input_grad(first):
            return first.backward(dout, need_input_grad=False)
        return first.backward(dout)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def build_mlp(sizes, batchnorm: bool = False, activation: str = "relu",
              init: str | None = None, gain: float = 1.0, seed=0,
              dtype=np.float32, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
              bias_init: str = "zeros", output_bias: bool = True,
              bn_param_grads: str = "mean", bn_unbiased_running_var: bool = True):
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Each hidden layer is ``Linear -> [BatchNorm1d] -> activation``; with
    ``batchnorm=True`` the hidden Linear layers have no bias (beta takes its
    role). The output layer is a Linear with bias and no activation (the
    loss applies the softmax).

    Weights are drawn layer by layer from one generator seeded with ``seed``,
    so the networks with and without batch norm start from the *same*
    weights. ``init`` defaults to He for ReLU and Xavier for sigmoid; ``gain``
    multiplies every weight's standard deviation.

    ``bias_init="normal"`` draws the biases from N(0, 1), from a second
    generator (seeded from ``seed``), so the weights stay those of the same
    seed with or without biases. ``output_bias=False`` drops the output
    layer's bias too. ``bn_param_grads`` and ``bn_unbiased_running_var`` are
    passed to every :class:`~bnbook.batchnorm.BatchNorm1d` (``param_grads``,
    ``unbiased_running_var``). Chapter 6 uses these options to rebuild the
    "10 Days of Grad" networks.

    Example: ``build_mlp([784, 300, 50, 10], batchnorm=True)``.
    """
    acts = {"relu": ReLU, "sigmoid": Sigmoid}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}; got {activation!r}")
    if init is None:
        init = "he" if activation == "relu" else "xavier"
    rng = np.random.default_rng(seed)
    bias_rng = np.random.default_rng([seed, 1]) if bias_init == "normal" else None
    layers = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(Linear(fan_in, fan_out, bias=not batchnorm, init=init, gain=gain,
                             rng=rng, dtype=dtype, bias_init=bias_init, bias_rng=bias_rng))
        if batchnorm:
            layers.append(BatchNorm1d(fan_out, eps=bn_eps, momentum=bn_momentum, dtype=dtype,
                                      param_grads=bn_param_grads,
                                      unbiased_running_var=bn_unbiased_running_var))
        layers.append(acts[activation]())
    layers.append(Linear(sizes[-2], sizes[-1], bias=output_bias, init=init, gain=gain,
                         rng=rng, dtype=dtype, bias_init=bias_init, bias_rng=bias_rng))
    return Sequential(*layers)


class SGD:
    """Plain stochastic gradient descent, optionally with momentum.

    ``step()`` updates every parameter of ``model.params()`` in place:
    ``v = momentum * v + g`` and ``p -= lr * v`` (``v = g`` without momentum).
    """

    def __init__(self, model, lr: float, momentum: float = 0.0):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive; got {lr!r}")
        self.model, self.lr = model, float(lr)
        self.momentum = check_momentum(momentum, upper_open=True)
        self._velocity = {}

    def step(self) -> None:
        for name, p, g in self.model.params():
            if self.momentum:
                v = self._velocity.setdefault(name, np.zeros_like(p))
                v *= self.momentum
                v += g
                g = v
            p -= self.lr * g


@contextmanager
def in_mode(model, training: bool):
    """Run a ``with`` block with ``model`` in training (True) or eval (False)
    mode, and give it back its previous mode afterwards."""
    was_training = getattr(model, "training", True)
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def running_stats_kept(model):
    """Run a ``with`` block, then put back every ``running_mean`` and
    ``running_var`` of ``model``'s layers (a Sequential or a single layer):
    training-mode forward passes made inside leave no trace in them (nor in
    a batch-norm layer's ``num_batches_tracked``)."""
    saved = [(arr, arr.copy()) for layer in iter_layers(model)
             for arr in (getattr(layer, "running_mean", None), getattr(layer, "running_var", None))
             if arr is not None]
    counts = [(layer, layer.num_batches_tracked) for layer in iter_layers(model)
              if hasattr(layer, "num_batches_tracked")]
    try:
        yield model
    finally:
        for arr, old in saved:
            arr[...] = old
        for layer, n in counts:
            layer.num_batches_tracked = n


def layer_inputs(model, x, select, batch_size: int | None = None) -> list:
    """What the chosen layers of ``model`` receive for data ``x`` (n, d_in).

    ``select(index, layer)`` picks the layers; the network runs in eval mode
    (no running statistics change; the previous mode is restored), ``batch_size``
    rows at a time (None: all at once). Returns one new array (n, width) per
    picked layer, in order: the input of that layer, i.e. the output of the
    layer before it. Used for batch norm's inputs (chapters 5 and 7) and
    chapter 1's pre-activations.
    """
    x = np.asarray(x)
    step = len(x) if batch_size is None else int(batch_size)
    found = []
    with in_mode(model, training=False):
        chunks = [x[i:i + step] for i in range(0, len(x), max(step, 1))]
        for i, layer in enumerate(iter_layers(model)):
            if select(i, layer):
                found.append(np.concatenate(chunks))
            chunks = [layer.forward(c) for c in chunks]
    return found
