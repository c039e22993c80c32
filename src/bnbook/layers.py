"""The layer contract, and the layers of fully connected networks.

Used by every chapter from 1 to 9 (chapter 9 adds :mod:`bnbook.convolution`).

Every layer of the package subclasses :class:`Layer` and keeps its contract
(``tests/test_layer_contract.py`` checks it for every exported layer class):

* ``forward(x)`` returns the output and keeps, in ``self._saved``, what
  ``backward`` needs;
* ``backward(dout, need_input_grad=True)`` returns the gradient with respect
  to the last input (or None when ``need_input_grad`` is False and the layer
  can skip it), and writes its parameters' gradients *in place* into the
  arrays ``params()`` returned; called before a forward pass it raises a
  ``RuntimeError``;
* ``params()`` lists ``(name, value, gradient)`` triples of the layer's own
  arrays, which an optimizer updates in place (by default those named in
  ``param_names``, the gradient of ``p`` being ``dp``);
* ``train(mode=True)`` / ``eval()`` set ``training`` and return the layer;
* ``release()`` drops what ``forward`` kept (an evaluation needs no backward).

Here: :class:`Linear`, :class:`ReLU`, :class:`Sigmoid`, :class:`Tanh`,
:class:`Dropout`, :class:`Sequential`, and helpers that walk a model or run
it in a given mode. The networks the chapters train are built in
:mod:`bnbook.models`; the
normalization layers live in :mod:`bnbook.normalization`, the convolutional
ones in :mod:`bnbook.convolution`. Batches have shape ``(m, d)``.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .checks import check_batch

__all__ = [
    "Layer",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Dropout",
    "Sequential",
    "init_weights",
    "iter_layers",
    "in_mode",
    "running_stats_kept",
    "layer_inputs",
]


class Layer:
    """Base class of every layer: the contract of the module docstring.

    A subclass sets ``self._saved`` in ``forward`` and reads it in
    ``backward`` through :meth:`_saved_for_backward`, which raises when no
    forward pass came first. This base is a parameter-free layer that
    behaves the same in both modes.
    """

    training = True
    _saved = None
    #: names of the parameter attributes; the gradient of ``p`` is in ``dp``
    param_names: tuple = ()

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout, need_input_grad: bool = True):
        raise NotImplementedError

    def params(self) -> list:
        """``(name, value, gradient)`` for each name in ``param_names`` whose value is not None."""
        return [(name, getattr(self, name), getattr(self, "d" + name))
                for name in self.param_names if getattr(self, name) is not None]

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def release(self) -> None:
        """Forget what the last forward pass kept for ``backward``."""
        self._saved = None

    def _saved_for_backward(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward() first"
                               + (" in training mode" if hasattr(self, "running_mean") else ""))
        return self._saved

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def init_weights(fan_in: int, fan_out: int, method: str = "he", gain: float = 1.0,
                 rng=None, dtype=np.float32) -> np.ndarray:
    """Draw a (fan_in, fan_out) weight matrix from a zero-mean normal.

    method : ``"he"`` (std ``sqrt(2 / fan_in)``, for ReLU), ``"xavier"``
        (std ``sqrt(2 / (fan_in + fan_out))``, for sigmoid/tanh) or
        ``"normal"`` (std 1). The std is multiplied by ``gain``.
    rng : a ``numpy.random.Generator`` or a seed.
    """
    rng = np.random.default_rng(rng)
    stds = {"he": np.sqrt(2.0 / fan_in), "xavier": np.sqrt(2.0 / (fan_in + fan_out)), "normal": 1.0}
    if method not in stds:
        raise ValueError(f"unknown init method {method!r}; use 'he', 'xavier' or 'normal'")
    w = rng.standard_normal((fan_in, fan_out)) * (gain * stds[method])
    return w.astype(dtype)


class Linear(Layer):
    """Affine layer ``y = x @ W + b``: ``x`` (m, in) -> ``y`` (m, out).

    ``W`` is (in_features, out_features), ``b`` (out_features,) and zero at
    the start, or None with ``bias=False`` (the usual choice before batch
    norm, whose shift ``beta`` makes a bias redundant).
    """

    param_names = ("W", "b")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "he", gain: float = 1.0, rng=None, dtype=np.float32):
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.W = init_weights(self.in_features, self.out_features, init, gain, rng, dtype)
        self.dW = np.zeros_like(self.W)
        self.b = np.zeros(self.out_features, dtype=dtype) if bias else None
        self.db = np.zeros_like(self.b) if bias else None

    def forward(self, x):
        x = check_batch(x, self.in_features, name="Linear's input x")
        self._saved = x
        out = x @ self.W
        if self.b is not None:
            out += self.b
        return out

    def backward(self, dout, need_input_grad: bool = True):
        """Store dW (in, out) and db (out,); return dx (m, in), or None when
        ``need_input_grad`` is False (the first layer of a network)."""
        x = self._saved_for_backward()
        np.matmul(x.T, dout, out=self.dW)
        if self.b is not None:
            np.sum(dout, axis=0, out=self.db)
        return dout @ self.W.T if need_input_grad else None

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.b is not None})"


class ReLU(Layer):
    """``max(x, 0)`` elementwise; any shape."""

    def forward(self, x):
        self._saved = x > 0
        return np.maximum(x, 0)

    def backward(self, dout, need_input_grad: bool = True):
        return dout * self._saved_for_backward()


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))`` elementwise; any shape. ``dx = dout * y * (1 - y)``."""

    def forward(self, x):
        e = np.exp(-np.abs(x))  # never overflows; both branches give the same function
        y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        self._saved = y
        return y

    def backward(self, dout, need_input_grad: bool = True):
        y = self._saved_for_backward()
        return dout * y * (1.0 - y)


class Tanh(Layer):
    """``tanh(x)`` elementwise; any shape. ``dx = dout * (1 - y^2)``."""

    def forward(self, x):
        y = np.tanh(x)
        self._saved = y
        return y

    def backward(self, dout, need_input_grad: bool = True):
        y = self._saved_for_backward()
        return dout * (1.0 - y * y)


class Dropout(Layer):
    """Inverted dropout (Srivastava et al., 2014), as PyTorch does it (chapter 8).

    Training mode: ``out = x * mask / (1 - p)`` with ``mask`` a fresh
    Bernoulli(1 - p) draw of ``x``'s shape at every call, so the expected
    output is the input; eval mode (or ``p = 0``): ``out = x``. ``seed``
    (or a Generator) seeds the masks.
    """

    def __init__(self, p: float = 0.5, seed=0):
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop probability p must lie in [0, 1); got {p!r}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"Dropout expects a float array; got dtype {x.dtype}")
        if not self.training or self.p == 0.0:
            self._saved = (None, x.shape)
            return x
        keep = 1.0 - self.p
        scaled_mask = (self.rng.random(x.shape) < keep).astype(x.dtype) / x.dtype.type(keep)
        self._saved = (scaled_mask, x.shape)
        return x * scaled_mask

    def backward(self, dout, need_input_grad: bool = True):
        """``dx = dout * mask / (1 - p)`` (training) or ``dout`` (eval, or p = 0)."""
        scaled_mask, shape = self._saved_for_backward()
        if np.shape(dout) != shape:
            raise ValueError(f"dout has shape {np.shape(dout)}; the last forward pass "
                             f"had shape {shape}")
        return dout if scaled_mask is None else dout * scaled_mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def release(self) -> None:
        for layer in self.layers:
            layer.release()

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

        ``need_input_grad`` goes to the first layer: with False, a first
        Linear skips the gradient with respect to the network's input (data
        needs none), a third of its backward pass.
        """
        for i in range(len(self.layers) - 1, 0, -1):
            dout = self.layers[i].backward(dout)
        if not self.layers:
            return dout
        return self.layers[0].backward(dout, need_input_grad=need_input_grad)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def iter_layers(model) -> list:
    """The layers of ``model``, in order: a Sequential's ``layers``, or ``[model]``."""
    return list(getattr(model, "layers", [model]))


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
    """Run a ``with`` block, then put back every ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` of ``model``'s layers:
    training-mode forward passes made inside leave no trace in them."""
    layers = [layer for layer in iter_layers(model) if hasattr(layer, "running_mean")]
    saved = [(layer, layer.running_mean.copy(), layer.running_var.copy(),
              layer.num_batches_tracked) for layer in layers]
    try:
        yield model
    finally:
        for layer, mean, var, n in saved:
            layer.running_mean[...] = mean
            layer.running_var[...] = var
            layer.num_batches_tracked = n


def layer_inputs(model, x, select, batch_size: int | None = None) -> list:
    """What the chosen layers of ``model`` receive for data ``x`` (n, d_in).

    ``select(index, layer)`` picks the layers; the network runs in eval mode
    (the previous mode is restored), ``batch_size`` rows at a time (None: all
    at once). Returns one new array (n, width) per picked layer, in order.
    Used for batch norm's inputs (chapters 5 and 7) and chapter 1's
    pre-activations.
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
