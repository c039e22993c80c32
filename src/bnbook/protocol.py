"""The layer protocol every layer of the book follows, and the input checks they share.

Used by every chapter that builds a network (chapters 1 and 3-7) through
:mod:`bnbook.layers`, :mod:`bnbook.batchnorm` and :mod:`bnbook.layernorm`,
which import this module (and not each other) for :class:`Layer`, the
checks, and :class:`NonFiniteError`.

Shapes: a batch ``x`` is ``(m, d)`` -- ``m`` samples, ``d`` features; a
per-feature parameter such as ``gamma`` is ``(d,)``.
"""
from __future__ import annotations

import inspect
import numbers
from functools import lru_cache

import numpy as np

__all__ = [
    "WeightBiasLayer",
    "Layer",
    "NormLayer",
    "NonFiniteError",
    "as_float",
    "check_batch",
    "check_param",
    "check_eps",
    "init_scale_shift",
    "check_momentum",
    "check_finite",
    "iter_layers",
    "accepts_need_input_grad",
]


class NonFiniteError(ValueError):
    """A NaN or inf where a finite number is needed.

    Raised where the non-finite value is found (a layer's input or batch
    statistics); :func:`bnbook.train.fit` catches this class to tell a
    diverging run from a bug.
    """


# --------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------
def as_float(x) -> np.ndarray:
    """``x`` as a floating array: float arrays unchanged, integers and bools as float64."""
    x = np.asarray(x)
    if x.dtype.kind != "f":  # dtype.kind: same test as np.issubdtype, 10x cheaper
        x = x.astype(np.float64)
    return x


def check_batch(x, features: int | None = None, name: str = "x") -> np.ndarray:
    """``x`` as a floating 2-D array of shape (m, features) (any width if None)."""
    x = as_float(x)
    if x.ndim != 2 or (features is not None and x.shape[1] != features):
        width = "d" if features is None else features
        raise ValueError(
            f"{name} must be 2-D of shape (m, {width}) (batch, features); got shape {x.shape}"
        )
    return x


def check_param(p, d: int, name: str, dtype) -> np.ndarray:
    """A finite (d,) parameter, in ``dtype``."""
    p = np.asarray(p)
    if p.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},) to match x; got shape {p.shape}")
    if not np.isfinite(p).all():  # the method skips np.all's Python wrapper
        raise NonFiniteError(f"{name} contains non-finite values (NaN or inf)")
    return p.astype(dtype, copy=False)


def check_eps(eps: float) -> float:
    """A positive finite ``eps``, as a float."""
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    return float(eps)


def init_scale_shift(layer, d: int, dtype) -> None:
    """Give a normalization layer its ``dtype`` and learned scale and shift:
    ``gamma`` (ones), ``beta`` (zeros) and their gradients ``dgamma``,
    ``dbeta``, all of shape (d,)."""
    layer.dtype = np.dtype(dtype)
    layer.gamma = np.ones(d, dtype=layer.dtype)
    layer.beta = np.zeros(d, dtype=layer.dtype)
    layer.dgamma = np.zeros_like(layer.gamma)
    layer.dbeta = np.zeros_like(layer.beta)


def check_momentum(momentum: float | None, upper_open: bool = False,
                   allow_none: bool = False) -> float | None:
    """A momentum in [0, 1] (in [0, 1) with ``upper_open``), as a float.

    With ``allow_none`` (batch norm's running averages), ``None`` passes
    through unchanged: it asks for a cumulative average instead of an
    exponential one. Every other caller refuses it."""
    if momentum is None:
        if allow_none:
            return None
        raise ValueError("momentum must be a number here; got None")
    if not isinstance(momentum, numbers.Real):
        raise ValueError(f"momentum must be a number{' or None' if allow_none else ''}; "
                         f"got {momentum!r}")
    if not (0.0 <= momentum < 1.0 if upper_open else 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must lie in [0, {'1)' if upper_open else '1]'}"
                         f"{' or be None' if allow_none else ''}; got {momentum!r}")
    return float(momentum)


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``values`` (a (d,) statistic or a
    batch) holds NaN or inf; ``what`` completes "x contains non-finite values ..."."""
    if not np.isfinite(values).all():
        bad = np.flatnonzero((~np.isfinite(values)).reshape(len(values), -1).any(axis=1))
        raise NonFiniteError(
            f"x contains non-finite values (NaN or inf){what} {bad[:10].tolist()}"
        )


# --------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------
class Layer:
    """Base class of every layer; a parameter-free layer that is the same in both modes.

    The protocol (what :class:`~bnbook.layers.Sequential`, the optimizer
    :class:`~bnbook.layers.SGD` and :func:`~bnbook.train.fit` rely on):

    * ``forward(x)`` -> output, keeping what ``backward`` needs; ``x`` is
      ``(m, d)`` for the book's fully connected layers;
    * ``backward(dout, need_input_grad=True)`` -> the gradient w.r.t. the
      input, shaped like the last ``x``; it stores the gradients of the
      layer's parameters (in the arrays ``params()`` returns). With
      ``need_input_grad=False`` (the first layer of a network, whose input is
      data) a layer may skip that gradient and return None. A layer whose
      ``backward`` takes only ``dout`` still works: :func:`accepts_need_input_grad`
      tells, and :class:`~bnbook.layers.Sequential` then always asks for dx;
    * ``params()`` -> a list of ``(name, value, gradient)`` triples whose
      arrays the optimizer updates in place (empty here);
    * ``train(mode=True)`` / ``eval()`` set the attribute ``training`` and
      return the layer (only batch norm behaves differently in the two modes);
    * calling the layer is ``forward``.

    Subclasses with per-feature parameters set ``num_features`` and check
    their input with :meth:`_check_input`.
    """

    training = True
    num_features: int | None = None

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout, need_input_grad: bool = True):
        raise NotImplementedError

    def params(self) -> list:
        return []

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def _check_input(self, x) -> np.ndarray:
        """``x`` as a floating (m, num_features) array, or a ValueError naming the layer."""
        return check_batch(x, self.num_features, name=f"{type(self).__name__}'s input x")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightBiasLayer(Layer):
    """A layer whose parameters are a weight ``W`` and an optional bias ``b``
    (``None`` when absent), with gradients ``dW`` and ``db``: Linear
    (chapters 1-9) and Conv2d (chapter 9)."""

    def params(self):
        p = [("W", self.W, self.dW)]
        if self.b is not None:
            p.append(("b", self.b, self.db))
        return p


class NormLayer(Layer):
    """A normalization layer with a per-feature scale ``gamma`` (ones) and
    shift ``beta`` (zeros), shape (num_features,), and their gradients
    ``dgamma``, ``dbeta`` (filled by ``backward``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, dtype=np.float32,
                 min_features: int = 1):
        if int(num_features) != num_features or num_features < min_features:
            kind = "a positive integer" if min_features == 1 else f"an integer >= {min_features}"
            raise ValueError(f"num_features must be {kind}; got {num_features!r}")
        d = int(num_features)
        self.num_features = d
        self.eps = check_eps(eps)
        init_scale_shift(self, d, dtype)
        self._cache = None

    def params(self) -> list:
        return [("gamma", self.gamma, self.dgamma), ("beta", self.beta, self.dbeta)]


def accepts_need_input_grad(layer) -> bool:
    """Whether ``layer.backward`` takes the ``need_input_grad`` argument."""
    return _backward_takes_need_input_grad(type(layer))


@lru_cache(maxsize=None)
def _backward_takes_need_input_grad(cls) -> bool:
    try:
        return "need_input_grad" in inspect.signature(cls.backward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def iter_layers(model) -> list:
    """The layers of ``model``, in order: a Sequential's ``layers``, or ``[model]``."""
    return list(getattr(model, "layers", [model]))
